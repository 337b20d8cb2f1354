#!/usr/bin/env bash
# The controls of method.md §10 on the bundled chest X-ray ViT: `scripts/reproduce_controls.sh --dataset chest_xray`,
# with the same environment variables, stages (saes, validation, test, analysis) and outputs
# (docs/results/chest_xray_controls, runs/controls_saes). Every stage is resumable.
#
#   bash scripts/reproduce_chest_xray_controls.sh                       # everything (hours on a 2-core CPU)
#   STAGES=validation bash scripts/reproduce_chest_xray_controls.sh     # stop after the validation selection
#   TEST_LIMIT=64 NUM_PROCESSES=1 bash scripts/reproduce_chest_xray_controls.sh
#   REPORT_ONLY=1 bash scripts/reproduce_chest_xray_controls.sh         # rebuild the reports from what is done
set -euo pipefail
exec bash "$(dirname "$0")/reproduce_controls.sh" --dataset chest_xray "$@"
