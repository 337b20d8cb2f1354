#!/usr/bin/env bash
# The demo command: sets up .venv when missing, then runs FGA on the bundled model and example images.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure_venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/python scripts/demo.py "$@"
