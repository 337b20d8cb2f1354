#!/usr/bin/env bash
# The thesis protocol (method.md §6) on a bundled ViT (hf_fga.bundled.list_domains()): validation sweeps, then the
# test split with the configuration chosen on validation. Every stage is resumable: re-running skips what is done.
#
#   bash scripts/reproduce.sh --dataset chest_xray          # all stages; wall times in $OUT/wall_times.txt
#   bash scripts/reproduce.sh --dataset breast_ultrasound   # the same protocol on the breast ultrasound ViT
#   bash scripts/reproduce.sh --dataset cifar10             # the CIFAR-10 ViT (build it first:
#                                                           # scripts/build_cifar10_assets.sh)
#   VALIDATION_LIMIT=64 TEST_LIMIT=618 NUM_PROCESSES=2 bash scripts/reproduce.sh --dataset chest_xray
#   REPORT_ONLY=1 bash scripts/reproduce.sh --dataset chest_xray  # rebuild every report from what is done
#   VALIDATION_ONLY=1 bash scripts/reproduce.sh --dataset breast_ultrasound  # stop before the test split
#
# Per domain: chest_xray validates on the validation patients carved out of the train split (the file names in
# hf_fga/bundled/splits.json) and tests on 618 images; breast_ultrasound validates on the data set's own validation
# split (117 images) and tests on its 118 test images; cifar10 (assets built outside the package, in
# $HF_FGA_CIFAR10_DIR, default runs/cifar10_assets) validates on 256 of the 5,000 validation rows that
# scripts/train_cifar10.py carved out of the train split (its splits.json, `validation_rows`: the images have no file
# names, so the ids are row indices) and tests on 2,000 of its 10,000 test images (TEST_LIMIT: a seeded random order,
# so a larger limit extends the same run). None of the three has patient ids beyond chest X-ray: breast ultrasound and
# CIFAR-10 statistics are image-level. scripts/reproduce_chest_xray.sh is `--dataset chest_xray`.
#
# Selection rule, fixed before any test image is scored: the FGA `combined` configuration with the highest mean
# % improvement over TransMM across SaCo, Faithfulness Correlation and Pixel Flipping (papers preset) on the
# validation images (hf_fga.evaluation.statistics.rank_configurations).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/evaluation_stages.sh
domain_argument "$@"
# per domain: assets, dataset, validation split and size, test size, and how images are named (IDS: the id column
# arguments; IDS_KEY: the split file's list of validation ids)
IDS=(--id_column file_name); IDS_KEY=validation_file_names; VALIDATION_SIZE=64
case $DOMAIN in
  chest_xray) ASSETS=hf_fga/bundled; DATASET=chest_xray_pneumonia; VALIDATION_SPLIT=train; TEST_SIZE=618 ;;
  breast_ultrasound) ASSETS=hf_fga/bundled/breast_ultrasound; DATASET=breast_ultrasound; VALIDATION_SPLIT=validation
    TEST_SIZE=118 ;;
  cifar10) ASSETS=${HF_FGA_CIFAR10_DIR:-runs/cifar10_assets}; DATASET=cifar10; VALIDATION_SPLIT=train
    VALIDATION_SIZE=256; TEST_SIZE=2000; IDS=(); IDS_KEY=validation_rows
    if [ ! -f "$ASSETS/model/config.json" ] || [ ! -f "$ASSETS/splits.json" ]; then
      echo "the cifar10 domain is not built at $ASSETS (no model/config.json or splits.json): run" \
        "bash scripts/build_cifar10_assets.sh first (or set HF_FGA_CIFAR10_DIR to where it was built)." >&2
      exit 1
    fi ;;
  *) echo "unknown dataset $DOMAIN: the domains are chest_xray, breast_ultrasound and cifar10" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::UserWarning"
DATA=${DATA:-../shared/data/$DATASET}
VALIDATION_LIMIT=${VALIDATION_LIMIT:-$VALIDATION_SIZE}
TEST_LIMIT=${TEST_LIMIT:-$TEST_SIZE}
NUM_PROCESSES=${NUM_PROCESSES:-2}
OUT=${OUT:-docs/results/$DOMAIN}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

COMMON=(--dataset "$DATA" "${IDS[@]}" --model "$ASSETS/model" --sae "$ASSETS/saes"
        --mean_residuals "$ASSETS/mean_residuals.safetensors" --batch_size 8)
VALIDATION=(--split "$VALIDATION_SPLIT" --include_ids "$ASSETS/splits.json" --ids_key "$IDS_KEY"
            --limit "$VALIDATION_LIMIT" --seed 0 --presets papers --output_dir "$OUT/validation")

best() {  # best: the best FGA combined configuration of the validation run (extra arguments filter it)
  $PY scripts/select_configuration.py "$OUT/validation" --variant combined --best "$@"
}

# 1. single-block sweeps: combined, activation, gradient over every block (κ = 0.5, c_max = 10)
stage validation_single_blocks "${COMMON[@]}" "${VALIDATION[@]}" --methods transmm,fga \
  --variants combined,activation,gradient --layer_sets "0;1;2;3;4;5"
# 2. a few multi-block sets around the best single blocks
sets=$($PY scripts/select_configuration.py "$OUT/validation" --variant combined --multi_block_sets 4)
[ -n "${REPORT_ONLY:-}" ] || echo "multi-block sets: $sets" | tee -a "$OUT/wall_times.txt"
stage validation_multi_block "${COMMON[@]}" "${VALIDATION[@]}" --methods transmm,fga --variants combined \
  --layer_sets "$sets"
# 3. κ × c_max on the best set
chosen_set=$(best | cut -d'|' -f3)
[ -n "${REPORT_ONLY:-}" ] || echo "best set: $chosen_set" | tee -a "$OUT/wall_times.txt"
stage validation_kappa_cmax "${COMMON[@]}" "${VALIDATION[@]}" --methods transmm,fga --variants combined \
  --layer_sets "$chosen_set" --kappas 0.1,0.5,1.0 --cmaxes 2,10,50
chosen=$(best --layers "$chosen_set")
[ -n "${REPORT_ONLY:-}" ] || echo "chosen configuration: $chosen" | tee -a "$OUT/wall_times.txt"
echo "chosen configuration: $chosen" > "$OUT/chosen_configuration.txt"
[ -z "${VALIDATION_ONLY:-}" ] || exit 0
IFS='|' read -r _ _ layers kappa cmax <<< "$chosen"
# 4. test split, chosen configuration only, every method and control, both presets (random order: a run stopped
#    early has scored a random subset; re-running continues it)
stage test "${COMMON[@]}" --split test --limit "$TEST_LIMIT" --seed 0 --presets papers,thesis \
  --methods transmm,fga,rollout,raw-attention \
  --variants combined,activation,gradient,no-sae,shuffled,centered,mean-centered \
  --layer_sets "$layers" --kappas "$kappa" --cmaxes "$cmax" --output_dir "$OUT/test"
# 5. the thesis's claims on the test run (hf_fga.evaluation.claims, paired Wilcoxon per image, as the thesis tested):
#    claims.md beside its report
$PY scripts/thesis_claims.py "$OUT/test" --config "$chosen" --output "$OUT/test/claims.md" > /dev/null
