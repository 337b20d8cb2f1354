#!/usr/bin/env bash
# The thesis protocol (method.md §6) on the bundled chest X-ray ViT: `scripts/reproduce.sh --dataset chest_xray`, with
# the same environment variables and outputs (docs/results/chest_xray). Every stage is resumable.
#
#   bash scripts/reproduce_chest_xray.sh               # all stages; wall times in $OUT/wall_times.txt
#   VALIDATION_LIMIT=64 TEST_LIMIT=618 NUM_PROCESSES=2 bash scripts/reproduce_chest_xray.sh
#   REPORT_ONLY=1 bash scripts/reproduce_chest_xray.sh  # rebuild every report from what is done (e.g. after a stop)
set -euo pipefail
exec bash "$(dirname "$0")/reproduce.sh" --dataset chest_xray "$@"
