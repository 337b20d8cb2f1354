#!/usr/bin/env bash
# The test command: sets up .venv when missing, then runs the offline test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure_venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
