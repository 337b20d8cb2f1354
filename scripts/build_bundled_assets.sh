#!/usr/bin/env bash
# The exact commands that produced the bundled assets in hf_fga/bundled/ (run from the repository root, on CPU).
# The model card (hf_fga/bundled/model/README.md) quotes the commands below verbatim.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python scripts/train_classifier.py --output_dir runs/classifier --export_dir hf_fga/bundled/model --splits_path hf_fga/bundled/splits.json --epochs 50 --low_res_epochs 42 --warmup_epochs 2 --seed 0
.venv/bin/python scripts/export_bundled_examples.py --seed 0 --per_class 6
