#!/usr/bin/env bash
# The exact commands that produced the bundled assets in hf_fga/bundled/ (run from the repository root, on CPU).
# The model card (hf_fga/bundled/model/README.md) quotes the commands below verbatim. The last line re-runs the
# (finished) classifier command: it resumes, reuses the one recorded test evaluation and re-writes the model card
# with the SAE table. Block 5 is retrained narrower (expansion 2) and merged into the set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python scripts/train_classifier.py --output_dir runs/classifier --export_dir hf_fga/bundled/model --splits_path hf_fga/bundled/splits.json --epochs 50 --low_res_epochs 42 --warmup_epochs 2 --seed 0
.venv/bin/python scripts/export_bundled_examples.py --seed 0 --per_class 6
.venv/bin/python scripts/export_sae_images.py --output_dir runs/chest_xray_train_without_validation
.venv/bin/python scripts/train_sae.py --model_name_or_path hf_fga/bundled/model --output_dir runs/saes_v3 --dataset_name_or_path runs/chest_xray_train_without_validation --dataset_label chest_xray_pneumonia --license cc-by-4.0 --expansion_factor 4 --k 32 --epochs 1 --batch_size 2048 --lr 0.001 --warmup_steps 30 --dead_tokens 50000 --aux_coefficient 0.0625 --cache_dir runs/sae_activations --seed 0
.venv/bin/python scripts/train_sae.py --model_name_or_path hf_fga/bundled/model --output_dir runs/saes_b5 --dataset_name_or_path runs/chest_xray_train_without_validation --dataset_label chest_xray_pneumonia --license cc-by-4.0 --blocks 5 --expansion_factor 2 --k 32 --epochs 1 --batch_size 2048 --lr 0.001 --warmup_steps 30 --dead_tokens 50000 --aux_coefficient 0.0625 --cache_dir runs/sae_activations_b5 --seed 0
.venv/bin/python scripts/compute_bundled_mean_residuals.py --data_dir runs/chest_xray_train_without_validation
.venv/bin/python scripts/merge_sae_sets.py --base runs/saes_v3 --override runs/saes_b5 --output hf_fga/bundled/saes
.venv/bin/python scripts/train_classifier.py --output_dir runs/classifier --export_dir hf_fga/bundled/model --splits_path hf_fga/bundled/splits.json --epochs 50 --low_res_epochs 42 --warmup_epochs 2 --seed 0
