#!/usr/bin/env bash
# Every registered method on one harness (issue 13), as pre-registered in docs/results/methods/plan.md: CAAP's block
# range on validation, then the test split (both presets, completeness, seconds per image), then the report
# docs/results/methods.md. Every stage is resumable: re-running skips what is stored.
#
#   bash scripts/compare_methods.sh                                   # everything (hours on a 2-core CPU)
#   STAGES=validation bash scripts/compare_methods.sh                 # only the CAAP block-range selection
#   TEST_LIMIT=618 NUM_PROCESSES=1 STAGES=test bash scripts/compare_methods.sh
#   STAGES=report bash scripts/compare_methods.sh                     # the report from what is stored
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::UserWarning"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DATA:-../shared/data/chest_xray_pneumonia}
TEST_LIMIT=${TEST_LIMIT:-618}
NUM_PROCESSES=${NUM_PROCESSES:-1}
STAGES=${STAGES:-validation,test,report}
OUT=${OUT:-docs/results/methods}
PY=${PY:-.venv/bin/python}
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }
[ -n "$(git log --format=%h -1 -- "$OUT/plan.md" 2>/dev/null)" ] || {
  echo "$OUT/plan.md is not committed: the plan must precede every test-split score." >&2; exit 1; }

source scripts/evaluation_stages.sh
stage() {  # stage NAME ARGS...: run, and log its wall time
  local name=$1 start; shift; start=$(date +%s)
  launch "$@"
  echo "$name $(( $(date +%s) - start )) s ($(date -u +%FT%TZ))" | tee -a "$OUT/wall_times.txt"
}

IFS='|' read -r _ _ LAYERS KAPPA CMAX <<< "$(sed 's/^chosen configuration: //' docs/results/chest_xray/chosen_configuration.txt)"
FGA=(--sae hf_fga/bundled/saes --mean_residuals hf_fga/bundled/mean_residuals.safetensors
     --layer_sets "$LAYERS" --kappas "$KAPPA" --cmaxes "$CMAX")
COMMON=(--dataset "$DATA" --id_column file_name --model hf_fga/bundled/model --batch_size 8 --num_threads 1)
CAAP_RANGES=(1-3 0-5 1-5 0-2 2-4 3-5)  # plan.md: the default (1, 3) first, so that a tie keeps it

if has_stage validation; then
  methods=$(printf 'caap@block_range=%s,' "${CAAP_RANGES[@]}")
  stage validation_caap "${COMMON[@]}" --split train --include_ids hf_fga/bundled/splits.json \
    --ids_key validation_file_names --limit 64 --seed 0 --presets papers --methods "transmm,${methods%,}" \
    --output_dir "$OUT/validation"
fi
if [ -f "$OUT/validation/summary.csv" ]; then
  CAAP=$($PY scripts/select_configuration.py "$OUT/validation" --method caap --best | cut -d'|' -f2)
  echo "chosen on validation: caap@$CAAP" > "$OUT/chosen_parameters.txt"
fi

if has_stage test; then
  [ -n "${CAAP:-}" ] || { echo "no CAAP block range chosen yet: run the validation stage first." >&2; exit 1; }
  TEST=(--split test --limit "$TEST_LIMIT" --seed 0 --presets papers,thesis)
  stage test_methods "${COMMON[@]}" "${TEST[@]}" "${FGA[@]}" --variants combined \
    --metrics saco,faithfulness_correlation,pixel_flipping,completeness \
    --methods "transmm+libragrad,fga+libragrad,gradient-x-input,gradient-x-input+libragrad,integrated-gradients,integrated-gradients+libragrad,grad-cam,grad-cam+libragrad,cp-lrp,attnlrp,caap@$CAAP" \
    --output_dir "$OUT/test"
  # the configurations issue 7 scored: only their completeness error and seconds per image (no perturbation)
  stage test_reused "${COMMON[@]}" "${TEST[@]}" "${FGA[@]}" --variants combined,mean-centered \
    --metrics completeness --methods transmm,fga,rollout,raw-attention --output_dir "$OUT/test_reused"
fi

if has_stage report; then
  $PY scripts/methods_report.py --data "$DATA" --runs "$OUT/test" "$OUT/test_reused" \
    --reused docs/results/chest_xray/test --output "$OUT"
fi
