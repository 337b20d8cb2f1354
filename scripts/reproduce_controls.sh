#!/usr/bin/env bash
# The controls of method.md §10 on a bundled ViT (hf_fga.bundled.list_domains()), as pre-registered in
# docs/results/<domain>_controls/plan.md: the SAEs and dictionaries, then validation selection (γ of transmm-power,
# m of selective), then the test split (only what scripts/reproduce.sh did not already score), then the
# pre-registered tests. Every stage is resumable: re-running this script skips what is done.
#
#   bash scripts/reproduce_controls.sh --dataset chest_xray          # everything (hours on a 2-core CPU)
#   bash scripts/reproduce_controls.sh --dataset breast_ultrasound   # the same controls on the breast ultrasound ViT
#   bash scripts/reproduce_controls.sh --dataset cifar10             # needs docs/results/cifar10_controls/plan.md
#   STAGES=validation bash scripts/reproduce_controls.sh --dataset breast_ultrasound  # stop after the selection
#   TEST_LIMIT=64 NUM_PROCESSES=1 bash scripts/reproduce_controls.sh --dataset chest_xray
#   REPORT_ONLY=1 bash scripts/reproduce_controls.sh --dataset chest_xray   # rebuild the reports from what is done
#   TEST_STAGES=ev090,ev075 bash scripts/reproduce_controls.sh --dataset chest_xray  # only these test stages
#
# TEST_STAGES (default controls,pca,random,ev090,ev075) picks the test stages; the saes stage then builds or restores
# only the SAE sets they score (lower_fidelity for ev090 / ev075, dictionaries for pca / random). A finished stage
# need not run again, and its SAE set need not exist: a rebuild on another machine can differ in the last bits
# (scripts/build_controls_saes.py refuses a set whose fingerprint differs from the scored one).
# Per domain: chest_xray validates on 256 images of the validation patients carved out of the train split (the file
# names in hf_fga/bundled/splits.json) and tests on 618 images; breast_ultrasound validates on the data set's own
# validation split (117 images) and tests on its 118 test images; cifar10 (built outside the package by
# scripts/build_cifar10_assets.sh) validates on 256 of the validation rows of its train split (splits.json,
# `validation_rows`, row-index ids) and tests on 2,000 images, as scripts/reproduce.sh does. Its pre-registration
# (docs/results/cifar10_controls/plan.md) is committed, and scripts/build_controls_saes.py and
# scripts/controls_analysis.py take --domain cifar10 (row-index ids, its build folder); they need the domain built.
# A domain whose plan is not committed is refused (PLAN overrides the plan's path, for the tests).
# scripts/reproduce_chest_xray_controls.sh is `--dataset chest_xray`.
#
# The chosen configuration (blocks, κ, c_max) is scripts/reproduce.sh's (docs/results/<domain>/
# chosen_configuration.txt, or $CHOSEN); the TransMM, combined, centered, mean-centered and no-sae test scores are
# read from its test run (docs/results/<domain>/test).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/evaluation_stages.sh
domain_argument "$@"
IDS=(--id_column file_name); IDS_KEY=validation_file_names  # how images are named (cifar10: row indices)
# the chest X-ray SAE folder keeps its first name (runs/controls_saes), so that its finished parts are reused
case $DOMAIN in
  chest_xray) ASSETS=hf_fga/bundled; DATASET=chest_xray_pneumonia; VALIDATION_SPLIT=train; VALIDATION_SIZE=256
    TEST_SIZE=618; CONTROLS_SAES=runs/controls_saes ;;
  breast_ultrasound) ASSETS=hf_fga/bundled/breast_ultrasound; DATASET=breast_ultrasound; VALIDATION_SPLIT=validation
    VALIDATION_SIZE=117; TEST_SIZE=118; CONTROLS_SAES=runs/breast_ultrasound_controls_saes ;;
  cifar10) ASSETS=${HF_FGA_CIFAR10_DIR:-runs/cifar10_assets}; DATASET=cifar10; VALIDATION_SPLIT=train
    VALIDATION_SIZE=256; TEST_SIZE=2000; CONTROLS_SAES=runs/cifar10_controls_saes; IDS=(); IDS_KEY=validation_rows ;;
  *) echo "unknown dataset $DOMAIN: the domains are chest_xray, breast_ultrasound and cifar10" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::UserWarning"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's hf_fga (a worktree's, not the venv's install)
DATA=${DATA:-/work/shared/data/$DATASET}
VALIDATION_LIMIT=${VALIDATION_LIMIT:-$VALIDATION_SIZE}
TEST_LIMIT=${TEST_LIMIT:-$TEST_SIZE}
NUM_PROCESSES=${NUM_PROCESSES:-2}
STAGES=${STAGES:-saes,validation,test,analysis}
TEST_STAGES=${TEST_STAGES:-controls,pca,random,ev090,ev075}
OUT=${OUT:-docs/results/${DOMAIN}_controls}
SAES=${SAES:-$CONTROLS_SAES}
CHOSEN=${CHOSEN:-docs/results/$DOMAIN/chosen_configuration.txt}
PY=${PY:-.venv/bin/python}
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }
has_test() { [[ ",$TEST_STAGES," == *",$1,"* ]]; }
for name in ${TEST_STAGES//,/ }; do
  case $name in controls|pca|random|ev090|ev075) ;; *)
    echo "unknown test stage $name in TEST_STAGES: use controls, pca, random, ev090, ev075 (comma-separated)" >&2
    exit 2 ;;
  esac
done
SAE_STAGES=()  # the SAE sets the chosen test stages score
{ has_test ev090 || has_test ev075; } && SAE_STAGES+=(lower_fidelity)
{ has_test pca || has_test random; } && SAE_STAGES+=(dictionaries)

PLAN=${PLAN:-docs/results/${DOMAIN}_controls/plan.md}
if [ -z "$(git log --format=%h -1 -- "$PLAN" 2>/dev/null)" ]; then
  echo "$PLAN is not committed: the pre-registration must be committed before any control is scored." >&2
  exit 1
fi
if [ ! -f "$CHOSEN" ]; then
  echo "$CHOSEN does not exist: the controls use the configuration chosen on validation by the thesis protocol;" \
    "run scripts/reproduce.sh --dataset $DOMAIN first (its validation stages write it)." >&2
  exit 1
fi
mkdir -p "$OUT"

CONFIG=$(sed 's/^chosen configuration: //' "$CHOSEN")
IFS='|' read -r _ _ LAYERS KAPPA CMAX <<< "$CONFIG"
GRID=(--layer_sets "$LAYERS" --kappas "$KAPPA" --cmaxes "$CMAX")
COMMON=(--dataset "$DATA" "${IDS[@]}" --model "$ASSETS/model" --batch_size 8)
VALIDATION_IDS=(--split "$VALIDATION_SPLIT" --include_ids "$ASSETS/splits.json" --ids_key "$IDS_KEY"
                --limit "$VALIDATION_LIMIT" --seed 0)
IMPORTANCE=$OUT/feature_importance.safetensors

# 1. lower-fidelity SAEs and matched dictionaries (plan.md §5) of the gated blocks, one thread, niced
if has_stage saes && [ -z "${REPORT_ONLY:-}" ] && [ ${#SAE_STAGES[@]} -gt 0 ]; then
  SAE_STAGE_FLAG=()  # the script's default is both stages
  [ ${#SAE_STAGES[@]} -eq 2 ] || SAE_STAGE_FLAG=(--stages "${SAE_STAGES[0]}")
  nice -n 10 $PY scripts/build_controls_saes.py --domain "$DOMAIN" --data "$DATA" --blocks "$LAYERS" \
    --validation_images "$VALIDATION_LIMIT" --output_dir "$SAES" --report_dir "$OUT/saes" "${SAE_STAGE_FLAG[@]}"
fi

# 2. validation: S_ℓ (feature importances) on the validation sample, then γ and m by the protocol's rule (papers)
if has_stage validation; then
  if [ ! -f "$IMPORTANCE" ] && [ -z "${REPORT_ONLY:-}" ]; then
    $PY scripts/compute_feature_importance.py --dataset "$DATA" "${IDS[@]}" "${VALIDATION_IDS[@]}" \
      --model "$ASSETS/model" --sae "$ASSETS/saes" --layers "$LAYERS" --output "$IMPORTANCE"
  fi
  stage validation_controls "${COMMON[@]}" "${VALIDATION_IDS[@]}" --sae "$ASSETS/saes" \
    --feature_importance "$IMPORTANCE" --presets papers --methods transmm,fga \
    --variants "combined,transmm-power@1.5,transmm-power@2,transmm-power@3,transmm-power@4,selective@16,selective@64,selective@256" \
    "${GRID[@]}" --output_dir "$OUT/validation"
fi
chosen_value() {  # chosen_value VARIANT: the parameter of the best VARIANT@x configuration on validation
  $PY scripts/select_configuration.py "$OUT/validation" --variant "$1" --best | cut -d'|' -f2 | cut -d@ -f2
}
if [ -f "$OUT/validation/summary.csv" ]; then
  GAMMA=$(chosen_value transmm-power); M=$(chosen_value selective)
  echo "chosen on validation: gamma=$GAMMA m=$M" > "$OUT/chosen_parameters.txt"
fi

# 3. test split: only what scripts/reproduce.sh did not score (not even TransMM: --skip_reference); both presets;
#    its image order
if has_stage test; then
  [ -n "${GAMMA:-}" ] || { echo "no validation selection yet: run the validation stage first." >&2; exit 1; }
  TEST=(--split test --limit "$TEST_LIMIT" --seed 0 --presets papers,thesis --methods fga --skip_reference "${GRID[@]}")
  ! has_test controls || stage test_controls "${COMMON[@]}" "${TEST[@]}" --sae "$ASSETS/saes" \
    --feature_importance "$IMPORTANCE" \
    --variants "error-scaled@0.5,error-scaled@2,error-scaled@4,error-only,transmm-power@$GAMMA,random-gates,selective@$M" \
    --output_dir "$OUT/test"
  ! has_test pca || stage test_pca "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/pca" --variants combined \
    --output_dir "$OUT/test_pca"
  ! has_test random || stage test_random "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/random" --variants combined \
    --output_dir "$OUT/test_random"
  ! has_test ev090 || stage test_ev090 "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/ev0.90" --variants combined,centered \
    --output_dir "$OUT/test_ev090"
  ! has_test ev075 || stage test_ev075 "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/ev0.75" --variants combined,centered \
    --output_dir "$OUT/test_ev075"
fi

# 4. the pre-registered tests (plan.md §3), on scripts/reproduce.sh's test run and this script's
if has_stage analysis && [ -f "$OUT/test_ev075/summary.csv" ]; then
  $PY scripts/controls_analysis.py --domain "$DOMAIN" --data "$DATA" --config "$CONFIG" --gamma "$GAMMA" --m "$M" \
    --controls "$OUT/test" --pca "$OUT/test_pca" --random "$OUT/test_random" --ev090 "$OUT/test_ev090" \
    --ev075 "$OUT/test_ev075" --output_dir "$OUT/test"
fi
