#!/usr/bin/env bash
# The controls of method.md §10 on the bundled chest X-ray ViT, as pre-registered in
# docs/results/chest_xray_controls/plan.md: the SAEs and dictionaries, then validation selection (γ of transmm-power,
# m of selective), then the test split (only what issue 7 did not already score), then the pre-registered tests.
# Every stage is resumable: re-running this script skips what is done.
#
#   bash scripts/reproduce_chest_xray_controls.sh                       # everything (hours on a 2-core CPU)
#   STAGES=validation bash scripts/reproduce_chest_xray_controls.sh     # stop after the validation selection
#   TEST_LIMIT=64 NUM_PROCESSES=1 bash scripts/reproduce_chest_xray_controls.sh
#   REPORT_ONLY=1 bash scripts/reproduce_chest_xray_controls.sh         # rebuild the reports from what is done
#
# The chosen configuration (blocks, κ, c_max) is issue 7's (docs/results/chest_xray/chosen_configuration.txt); the
# TransMM, combined, centered, mean-centered and no-sae test scores are read from docs/results/chest_xray/test.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::UserWarning"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's hf_fga (a worktree's, not the venv's install)
DATA=${DATA:-/work/shared/data/chest_xray_pneumonia}
VALIDATION_LIMIT=${VALIDATION_LIMIT:-256}
TEST_LIMIT=${TEST_LIMIT:-618}
NUM_PROCESSES=${NUM_PROCESSES:-2}
STAGES=${STAGES:-saes,validation,test,analysis}
OUT=${OUT:-docs/results/chest_xray_controls}
SAES=${SAES:-runs/controls_saes}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }

PLAN=docs/results/chest_xray_controls/plan.md
if [ -z "$(git log --format=%h -1 -- "$PLAN" 2>/dev/null)" ]; then
  echo "$PLAN is not committed: the pre-registration must be committed before any control is scored." >&2
  exit 1
fi

source scripts/evaluation_stages.sh

stage() {  # stage NAME ARGS...: run, and log its wall time
  local name=$1; shift
  if [ -n "${REPORT_ONLY:-}" ]; then
    $PY scripts/evaluate_faithfulness.py "$@" --report_only
    return
  fi
  local start; start=$(date +%s)
  launch "$@"
  echo "$name $(( $(date +%s) - start )) s ($(date -u +%FT%TZ))" | tee -a "$OUT/wall_times.txt"
}

IFS='|' read -r _ _ LAYERS KAPPA CMAX <<< "$(sed 's/^chosen configuration: //' docs/results/chest_xray/chosen_configuration.txt)"
GRID=(--layer_sets "$LAYERS" --kappas "$KAPPA" --cmaxes "$CMAX")
COMMON=(--dataset "$DATA" --id_column file_name --model hf_fga/bundled/model --batch_size 8)
VALIDATION_IDS=(--split train --include_ids hf_fga/bundled/splits.json --ids_key validation_file_names
                --limit "$VALIDATION_LIMIT" --seed 0)
IMPORTANCE=$OUT/feature_importance.safetensors

# 1. lower-fidelity SAEs and matched dictionaries (plan.md §5), one thread, niced
if has_stage saes && [ -z "${REPORT_ONLY:-}" ]; then
  nice -n 10 $PY scripts/build_controls_saes.py --data "$DATA" --output_dir "$SAES" --report_dir "$OUT/saes"
fi

# 2. validation: S_ℓ (feature importances) on the validation sample, then γ and m by issue 7's rule (papers preset)
if has_stage validation; then
  if [ ! -f "$IMPORTANCE" ] && [ -z "${REPORT_ONLY:-}" ]; then
    $PY scripts/compute_feature_importance.py --dataset "$DATA" --id_column file_name "${VALIDATION_IDS[@]}" \
      --model hf_fga/bundled/model --sae hf_fga/bundled/saes --layers "$LAYERS" --output "$IMPORTANCE"
  fi
  stage validation_controls "${COMMON[@]}" "${VALIDATION_IDS[@]}" --sae hf_fga/bundled/saes \
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

# 3. test split: only what issue 7 did not score (not even TransMM: --skip_reference); both presets; issue 7's image order
if has_stage test; then
  [ -n "${GAMMA:-}" ] || { echo "no validation selection yet: run the validation stage first." >&2; exit 1; }
  TEST=(--split test --limit "$TEST_LIMIT" --seed 0 --presets papers,thesis --methods fga --skip_reference "${GRID[@]}")
  stage test_controls "${COMMON[@]}" "${TEST[@]}" --sae hf_fga/bundled/saes --feature_importance "$IMPORTANCE" \
    --variants "error-scaled@0.5,error-scaled@2,error-scaled@4,error-only,transmm-power@$GAMMA,random-gates,selective@$M" \
    --output_dir "$OUT/test"
  stage test_pca "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/pca" --variants combined --output_dir "$OUT/test_pca"
  stage test_random "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/random" --variants combined --output_dir "$OUT/test_random"
  stage test_ev090 "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/ev0.90" --variants combined,centered --output_dir "$OUT/test_ev090"
  stage test_ev075 "${COMMON[@]}" "${TEST[@]}" --sae "$SAES/ev0.75" --variants combined,centered --output_dir "$OUT/test_ev075"
fi

# 4. the pre-registered tests (plan.md §3)
if has_stage analysis && [ -f "$OUT/test_ev075/summary.csv" ]; then
  $PY scripts/controls_analysis.py --data "$DATA" --gamma "$GAMMA" --m "$M" --output_dir "$OUT/test"
fi
