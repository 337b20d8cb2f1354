"""
Faithfulness evaluation of TransMM, FGA and baselines on a dataset (method.md §5–7), resumable and sharded.

Plain `python scripts/evaluate_faithfulness.py ...` or `accelerate launch --num_processes N scripts/...`: each
process takes every N-th chunk of images; the merged results equal a single process's bit for bit when every
process runs the same number of torch threads (`--num_threads`: accelerate launch otherwise gives each of N processes
cores / N threads, which changes float32 sums in their last bits). On a machine without GPUs,
launch N CPU processes with `accelerate launch --multi_gpu --num_processes N` (torchrun + gloo; accelerate 1.15's
`--cpu --num_processes N` starts a single process unless given `--mpirun_hostfile`). Per-image rows go to
OUTPUT/results/part-*.parquet as each chunk finishes (re-running skips what is stored); the report (report.md,
summary.csv, diagnostics.csv, figures/) is rebuilt at the end, or alone with --report_only.

Example (validation sweep of single blocks on the bundled chest X-ray model):

    accelerate launch --multi_gpu --num_processes 2 scripts/evaluate_faithfulness.py \
        --dataset ../shared/data/chest_xray_pneumonia --split train --id_column file_name \
        --include_ids hf_fga/bundled/splits.json --ids_key validation_file_names \
        --model MODEL_DIR --sae SAE_DIR --methods transmm,fga --variants combined,activation,gradient \
        --layer_sets "0;1;2;3;4;5" --presets both --num_threads 8 --output_dir runs/validation_blocks
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from hf_fga.evaluation.arguments import DataArguments, EvaluationArguments, ModelArguments
from hf_fga.evaluation.runner import describe, run_evaluation


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((DataArguments, ModelArguments, EvaluationArguments), description=__doc__)
    data_args, model_args, eval_args = parser.parse_args_into_dataclasses(args=argv)
    summary = run_evaluation(data_args, model_args, eval_args)
    if summary.report:
        print(f"report: {summary.report}")
    print(describe(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
