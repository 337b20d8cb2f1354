#!/usr/bin/env bash
# The exact commands that produced the bundled breast ultrasound assets in hf_fga/bundled/breast_ultrasound/ (run from
# the repository root, on CPU; each command is resumable or cheap to re-run). The model card
# (hf_fga/bundled/breast_ultrasound/model/README.md) quotes the commands below verbatim. The examples are drawn before
# the model is evaluated; the last line re-runs the (finished) classifier command: it resumes, reuses the one recorded
# test evaluation and re-writes the model card with the SAE table. The training line is run F of
# docs/results/breast_ultrasound_classifier.md (selected on validation over runs A-G; runs E and G are the same
# command with --low_res_epochs 0 and --seed 2 / 4, and A-D are listed there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
.venv/bin/python scripts/export_bundled_examples.py --domain breast_ultrasound --seed 0 --per_class 4
.venv/bin/python scripts/train_classifier.py --dataset breast_ultrasound --init_from hf_fga/bundled/model --output_dir runs/busi_F --export_dir hf_fga/bundled/breast_ultrasound/model --splits_path hf_fga/bundled/breast_ultrasound/splits.json --epochs 40 --low_res_epochs 16 --warmup_epochs 2 --batch_size 32 --learning_rate 0.001 --crop_scale_min 0.7 --max_rotation_deg 10 --brightness 0.1 --contrast 0.1 --num_threads 1 --seed 3
.venv/bin/python scripts/train_sae.py --model_name_or_path hf_fga/bundled/breast_ultrasound/model --output_dir runs/busi_saes --dataset_name_or_path ../shared/data/breast_ultrasound --dataset_split train --dataset_label breast_ultrasound --license cc0-1.0 --expansion_factor 2 --k 32 --epochs 8 --batch_size 2048 --lr 0.001 --warmup_steps 30 --dead_tokens 50000 --aux_coefficient 0.0625 --eval_fraction 0.1 --cache_dir runs/busi_sae_activations --seed 0 --torch_threads 1
.venv/bin/python scripts/merge_sae_sets.py --base runs/busi_saes --output hf_fga/bundled/breast_ultrasound/saes
.venv/bin/python scripts/compute_bundled_mean_residuals.py --domain breast_ultrasound --num_threads 1
.venv/bin/python scripts/train_classifier.py --dataset breast_ultrasound --init_from hf_fga/bundled/model --output_dir runs/busi_F --export_dir hf_fga/bundled/breast_ultrasound/model --splits_path hf_fga/bundled/breast_ultrasound/splits.json --epochs 40 --low_res_epochs 16 --warmup_epochs 2 --batch_size 32 --learning_rate 0.001 --crop_scale_min 0.7 --max_rotation_deg 10 --brightness 0.1 --contrast 0.1 --num_threads 1 --seed 3
