#!/usr/bin/env bash
# The exact commands that produced the bundled breast ultrasound assets in hf_fga/bundled/breast_ultrasound/ (run from
# the repository root, on CPU; each command is resumable or cheap to re-run). The model card
# (hf_fga/bundled/breast_ultrasound/model/README.md) quotes the commands below verbatim. The examples are drawn before
# the model is evaluated; the last line re-runs the (finished) classifier command: it resumes, reuses the one recorded
# test evaluation and re-writes the model card with the SAE table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
.venv/bin/python scripts/export_bundled_examples.py --domain breast_ultrasound --seed 0 --per_class 4
.venv/bin/python scripts/train_classifier.py --dataset breast_ultrasound --init_from hf_fga/bundled/model --output_dir runs/breast_ultrasound_classifier --export_dir hf_fga/bundled/breast_ultrasound/model --splits_path hf_fga/bundled/breast_ultrasound/splits.json --epochs 45 --low_res_epochs 30 --warmup_epochs 2 --batch_size 32 --learning_rate 0.0005 --crop_scale_min 0.7 --max_rotation_deg 10 --brightness 0.1 --contrast 0.1 --num_threads 1 --seed 0
