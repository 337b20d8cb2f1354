"""
The evaluation loop behind `scripts/evaluate_faithfulness.py`: select images, attribute every configuration of the
grid, score each under every preset, and write per-image rows to parquet chunk by chunk, resumably.

Sharding. The selected images are cut into chunks of `batch_size` in dataset order; chunk c goes to process
c mod world_size. A chunk's composition never depends on the number of processes, and all randomness is seeded per
image (by its dataset row index), so merged results are bitwise identical for any number of processes **at the same
number of torch threads per process** (`--num_threads`, recorded in run.json; a resume with another count is
refused). The thread count changes how float32 matrix products and sums are split, hence their last bits: with
`accelerate launch`'s default of cores / N threads per process, 1 and 2 processes differ by up to ~2e-8 in the
scores.

Modules: `selection` (which images), `run_setup` (threads, presets, grid, model, SAEs, mean residuals), `scoring`
(one chunk: attributions, metrics, rows), `storage` (parquet parts); this module shards the chunks and runs them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState
from tqdm.auto import tqdm

from ..precision import check_precision
from .arguments import DataArguments, EvaluationArguments, ModelArguments
from .configuration import parse_list
from .precision_check import write_precision_check
from .report import write_report
from .run_setup import (
    build_grid,
    load_evaluation_model,
    parse_presets,
    preset_overrides,
    process_state,
    torch_threads,
)
from .scoring import evaluate_chunk
from .selection import check_columns, label_column, label_names, load_split, select_images
from .storage import DIAGNOSTICS_FOLDER, RESULTS_FOLDER, check_run_description, completed_keys, write_part


@dataclass
class RunSummary:
    """What one call of [`run_evaluation`] did in this process."""

    images: int = 0
    chunks_computed: int = 0
    chunks_skipped: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    report: str | None = None


def run_evaluation(
    data_args: DataArguments,
    model_args: ModelArguments,
    eval_args: EvaluationArguments,
    state: PartialState | None = None,
) -> RunSummary:
    """
    Evaluate this process's shard (see the module docstring), skipping every row already stored in
    `eval_args.output_dir`, then (main process, after all processes finish) write the report. Runs with
    `eval_args.num_threads` torch threads (see the module docstring for what the thread count changes).
    """
    with torch_threads(eval_args.num_threads) as num_threads:
        return _run_evaluation(data_args, model_args, eval_args, state, num_threads)


def _run_evaluation(
    data_args: DataArguments,
    model_args: ModelArguments,
    eval_args: EvaluationArguments,
    state: PartialState | None,
    num_threads: int,
) -> RunSummary:
    state = state or process_state()
    output_dir = Path(eval_args.output_dir)
    summary = RunSummary()
    metrics = parse_list(eval_args.metrics, "metrics")
    if eval_args.report_only:
        if state.is_main_process:
            summary.report = str(write_report(output_dir, metrics))
        return summary
    if not data_args.dataset or not model_args.model:
        raise ValueError("--dataset and --model are required (only --report_only runs without them).")
    if eval_args.target not in ("predicted", "label"):
        raise ValueError(f"--target must be 'predicted' or 'label', got {eval_args.target!r}.")
    if eval_args.batch_size < 1:
        raise ValueError(f"--batch_size must be a positive number of images, got {eval_args.batch_size}.")
    check_precision(eval_args.precision)
    if eval_args.precision_check < 0:
        raise ValueError(f"--precision_check must be a number of images >= 0, got {eval_args.precision_check}.")
    presets, configurations = parse_presets(eval_args.presets), build_grid(eval_args)
    dataset = load_split(data_args)
    check_columns(dataset, data_args)
    labels_from = label_column(data_args)
    selection = select_images(dataset, data_args)
    loaded = load_evaluation_model(
        model_args, data_args, eval_args, configurations, label_names(dataset, labels_from), state
    )

    description = {
        "dataset": data_args.dataset,
        "split": data_args.split,
        "model": model_args.model,
        "sae": model_args.sae,
        "mean_residuals": model_args.mean_residuals or model_args.mean_residuals_split,
        **({"feature_importance": model_args.feature_importance} if model_args.feature_importance else {}),
        "target": eval_args.target,
        "metric_seed": eval_args.metric_seed,
        "metrics": ",".join(metrics),
        "shuffle_seed": eval_args.shuffle_seed,
        "id_column": data_args.id_column,
        "preset_overrides": preset_overrides(eval_args),
        "num_threads": num_threads,
    }
    if eval_args.precision != "float32":  # absent = float32, so that runs stored before the option still resume
        description["precision"] = eval_args.precision
    if state.is_main_process:
        check_run_description(output_dir, description)
    state.wait_for_everyone()

    done = completed_keys(output_dir)
    wanted = {(c.key, p) for c in configurations for p in presets}
    chunks = [selection[s : s + eval_args.batch_size] for s in range(0, len(selection), eval_args.batch_size)]
    mine = [(c, chunk) for c, chunk in enumerate(chunks) if c % state.num_processes == state.process_index]
    todo = []
    for number, chunk in mine:
        missing = {(i, k, p) for _, i in chunk for k, p in wanted if (i, k, p, eval_args.fill) not in done}
        if missing:
            todo.append((number, chunk, [c for c in configurations if any(m[1] == c.key for m in missing)]))
        else:
            summary.chunks_skipped += 1
    summary.images = sum(len(chunk) for _, chunk in mine)
    skipped_images = summary.images - sum(len(chunk) for _, chunk, _ in todo)
    bar = tqdm(
        total=summary.images,
        initial=skipped_images,
        unit="img",
        desc="evaluating",
        disable=not (eval_args.progress and state.is_main_process),
        smoothing=0.1,
    )
    start = time.perf_counter()
    for number, chunk, chunk_configurations in todo:
        rows = dataset.select([index for index, _ in chunk])
        labels = [row for row in rows[labels_from]] if labels_from else [None] * len(chunk)
        results, diagnostics = evaluate_chunk(
            loaded,
            rows[data_args.image_column],
            chunk,
            labels,
            chunk_configurations,
            presets,
            metrics,
            eval_args,
            done,
        )
        # diagnostics first: a crash between the two writes redoes the chunk, and duplicates are dropped on read
        write_part(output_dir / DIAGNOSTICS_FOLDER, diagnostics, state.process_index, number)
        write_part(output_dir / RESULTS_FOLDER, results, state.process_index, number)
        summary.chunks_computed += 1
        summary.rows_written += len(results)
        bar.update(len(chunk))
    bar.close()
    summary.seconds = time.perf_counter() - start
    if eval_args.precision_check and state.is_main_process:
        write_precision_check(
            output_dir,
            loaded,
            dataset,
            selection[: eval_args.precision_check],
            configurations,
            presets,
            metrics,
            eval_args,
            labels_from,
            data_args.image_column,
        )
    state.wait_for_everyone()
    if state.is_main_process and not eval_args.no_report:
        summary.report = str(write_report(output_dir, metrics))
    return summary


def describe(summary: RunSummary) -> str:
    return json.dumps(asdict(summary))


__all__ = ["RunSummary", "build_grid", "describe", "evaluate_chunk", "run_evaluation", "select_images"]
