# Shared by the reproduction scripts: which domain a script runs on, and how a stage of
# scripts/evaluate_faithfulness.py is launched and timed (launch and stage read NUM_PROCESSES, PY and OUT).

domain_argument() {  # domain_argument "$@": sets DOMAIN from --dataset NAME (default chest_xray)
  DOMAIN=chest_xray
  while [ $# -gt 0 ]; do
    case $1 in
      --dataset) DOMAIN=$2; shift 2 ;;
      --dataset=*) DOMAIN=${1#--dataset=}; shift ;;
      *) echo "unknown argument $1: pass --dataset chest_xray, breast_ultrasound or cifar10" >&2; exit 2 ;;
    esac
  done
}

launch() {  # one process per CPU core share; accelerate 1.15 starts N CPU processes only with --multi_gpu
  if [ "$NUM_PROCESSES" -gt 1 ]; then
    OMP_NUM_THREADS=$(( $(nproc) / NUM_PROCESSES > 0 ? $(nproc) / NUM_PROCESSES : 1 )) \
      .venv/bin/accelerate launch --multi_gpu --num_processes "$NUM_PROCESSES" --num_machines 1 \
      --mixed_precision no --dynamo_backend no scripts/evaluate_faithfulness.py "$@"
  else
    $PY scripts/evaluate_faithfulness.py "$@"
  fi
}

stage() {  # stage NAME ARGS...: run (only rebuild the report with REPORT_ONLY set), and log the wall time; a
           # stage whose --output_dir already held result parts is logged as resumed (its time covers only this run)
  local name=$1 start dir="" previous="" resumed=""; shift
  if [ -n "${REPORT_ONLY:-}" ]; then
    $PY scripts/evaluate_faithfulness.py "$@" --report_only
    return
  fi
  for argument in "$@"; do [ "$previous" = --output_dir ] && dir=$argument; previous=$argument; done
  if [ -n "$dir" ] && compgen -G "$dir/results/part-*.parquet" > /dev/null; then
    resumed=" (resumed: parts of an earlier run were kept; this is the time of this run only)"
  fi
  start=$(date +%s)
  launch "$@"
  echo "$name $(( $(date +%s) - start )) s ($(date -u +%FT%TZ))$resumed" | tee -a "$OUT/wall_times.txt"
}
