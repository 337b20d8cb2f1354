#!/usr/bin/env bash
# The commands that build the CIFAR-10 domain (issue 16) OUTSIDE the package: its assets are too large to ship, so they
# go to $HF_FGA_CIFAR10_DIR (default runs/cifar10_assets/, where hf_fga.bundled.domain_root("cifar10") looks) with the
# layout of a bundled domain: model/, saes/, mean_residuals.safetensors, splits.json, examples/. Run from anywhere; every
# command resumes or is cheap to re-run, so re-running this script after an interruption continues where it stopped.
#
#   bash scripts/build_cifar10_assets.sh               # build (a GPU: about an hour; CPU only: DEVICE=cpu, days)
#   bash scripts/build_cifar10_assets.sh --evaluate    # build, then scripts/reproduce.sh --dataset cifar10
#   DEVICE=cpu HF_FGA_CIFAR10_DIR=/data/cifar10_assets bash scripts/build_cifar10_assets.sh
#   DEVICE=cpu THREADS=2 TRAIN_DIR=<a committed folder> bash scripts/build_cifar10_assets.sh   # CPU, across checkouts
#
# 1. The ViT (scripts/train_cifar10.py: 32 px, patch 4, 64 patches, 6 blocks, from scratch, 200 epochs), its split
#    file (validation_rows: 5,000 stratified train rows) and its test metrics. The recipe is the same on CPU and GPU
#    (batch 512, learning rate 2e-3, the defaults otherwise): DEVICE only chooses where it runs, so an interrupted run
#    can resume on the other device. The examples are drawn from the test split before the model is evaluated.
# 2. The train split without the validation rows (as for chest X-ray), on which the SAEs and mean residuals are fitted.
# 3. Top-K SAEs for all 6 blocks. 45,000 images x 64 patches = 2.88 M tokens per block (3x the chest X-ray set's
#    0.9 M), d_in = 192: expansion 8 (d_sae = 1,536) gives every feature about 60,000 expected firings per epoch at
#    k = 32 (k / d_sae = 2 %), enough to keep dead features well under 10 %; k = 32 (1/6 of d_in) is the chest X-ray
#    setting that reached explained variance >= 0.90 there; 2 epochs of 4,096-token batches = about 1,270 steps per
#    block; 5 % of the images (2,250, 144,000 tokens) held out for the quality table. The float16 activation cache is
#    2.88 M x 192 x 2 B = 1.1 GB per block (6.6 GB in all, under runs/cifar10_sae_activations). If a block misses
#    EV >= 0.90 or dead < 10 %, retrain it alone (--blocks i) and merge it with --override, as the chest X-ray build did.
# 4. merge_sae_sets writes the set (with its card) into the domain folder; the mean residuals (mean-centered control).
# 5. The classifier command again: it resumes a finished run (nothing is trained, the one recorded test evaluation is
#    reused) and re-writes the model card (model/README.md) with the SAE quality table. Last: check the domain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EVALUATE=
while [ $# -gt 0 ]; do
  case $1 in
    --evaluate) EVALUATE=1; shift ;;
    *) echo "unknown argument $1: pass nothing, or --evaluate to run scripts/reproduce.sh --dataset cifar10 after" >&2
      exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export HF_FGA_CIFAR10_DIR=${HF_FGA_CIFAR10_DIR:-$PWD/runs/cifar10_assets}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's hf_fga (a worktree's, not the venv's install)
DATA=${DATA:-../shared/data/cifar10}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs}
TRAIN_DIR=${TRAIN_DIR:-$RUNS/cifar10}  # the classifier's run folder (checkpoint in 9 MiB shards: committable)
THREADS=${THREADS:-1}                  # the classifier's torch threads (on a CPU: the free cores)
PY=${PY:-.venv/bin/python}
A=$HF_FGA_CIFAR10_DIR
mkdir -p "$A"
$PY scripts/export_bundled_examples.py --domain cifar10 --data_dir "$DATA" --seed 0 --per_class 2
$PY scripts/train_cifar10.py --data_dir "$DATA" --output_dir "$TRAIN_DIR" --cache_dir "$RUNS/cifar10_cache" --checkpoint_shard_mb 9 --num_threads "$THREADS" --export_dir "$A/model" --splits_path "$A/splits.json" --device "$DEVICE" --batch_size 512 --learning_rate 2e-3 --epochs 200 --seed 0
$PY scripts/export_sae_images.py --data_dir "$DATA" --splits_path "$A/splits.json" --id_column none --ids_key validation_rows --output_dir "$RUNS/cifar10_train_without_validation"
$PY scripts/train_sae.py --model_name_or_path "$A/model" --output_dir "$RUNS/cifar10_saes" --dataset_name_or_path "$RUNS/cifar10_train_without_validation" --dataset_split train --dataset_label cifar10 --license unknown --expansion_factor 8 --k 32 --epochs 2 --batch_size 4096 --lr 0.001 --warmup_steps 50 --dead_tokens 50000 --aux_coefficient 0.0625 --eval_fraction 0.05 --harvest_batch_size 256 --cache_dir "$RUNS/cifar10_sae_activations" --seed 0
$PY scripts/merge_sae_sets.py --base "$RUNS/cifar10_saes" --output "$A/saes"
$PY scripts/compute_bundled_mean_residuals.py --domain cifar10 --data_dir "$RUNS/cifar10_train_without_validation" --batch_size 256
$PY scripts/train_cifar10.py --data_dir "$DATA" --output_dir "$TRAIN_DIR" --cache_dir "$RUNS/cifar10_cache" --checkpoint_shard_mb 9 --num_threads "$THREADS" --export_dir "$A/model" --splits_path "$A/splits.json" --device "$DEVICE" --batch_size 512 --learning_rate 2e-3 --epochs 200 --seed 0
$PY -c "from hf_fga import bundled; m = bundled.missing_assets('cifar10'); print('\n'.join(m) or 'cifar10 domain complete: ' + str(bundled.domain_root('cifar10'))); raise SystemExit(bool(m))"
[ -z "$EVALUATE" ] || bash scripts/reproduce.sh --dataset cifar10
