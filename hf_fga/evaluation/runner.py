"""
The evaluation loop behind `scripts/evaluate_faithfulness.py`: select images, attribute every configuration of the
grid, score each under every preset, and write per-image rows to parquet chunk by chunk, resumably.

Sharding. The selected images are cut into chunks of `batch_size` in dataset order; chunk c goes to process
c mod world_size. A chunk's composition never depends on the number of processes, and all randomness is seeded per
image (by its dataset row index), so merged results are identical for any number of processes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..attribution import FeatureGradientAttribution, compute_mean_residuals, load_mean_residuals, save_mean_residuals
from ..faithfulness import ResponseCache, faithfulness_records_for_presets, resolve_preset, score_records
from ..images import load_image
from ..introspection import clip_text_embeddings, is_clip, load_vision_model
from ..precision import check_precision
from .arguments import DataArguments, EvaluationArguments, ModelArguments
from .attribution_grid import attribute_configurations, gated_blocks
from .configuration import (
    EvaluationConfiguration,
    expand_grid,
    parse_floats,
    parse_layer_sets,
    parse_list,
)
from .precision_check import write_precision_check
from .report import CURVE_COLUMN, write_report
from .storage import DIAGNOSTICS_FOLDER, RESULTS_FOLDER, check_run_description, completed_keys, write_part

PRESET_NAMES = ("papers", "thesis")
MEAN_RESIDUALS_FILE = "mean_residuals.safetensors"
MAX_ROWS_PER_CALL = 128  # images × configurations per perturbation call: bounds the memory of the perturbed fills


@dataclass
class RunSummary:
    """What one call of [`run_evaluation`] did in this process."""

    images: int = 0
    chunks_computed: int = 0
    chunks_skipped: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    report: str | None = None


# ----------------------------------------------------------------------------------------------------------- data
def _read_ids(path: str, key: str | None) -> set[str]:
    content = json.loads(Path(path).read_text())
    if isinstance(content, dict):
        if key is None or key not in content:
            lists = [k for k, v in content.items() if isinstance(v, list)]
            raise ValueError(f"{path} holds a JSON object: name its id list with --ids_key (one of {lists}).")
        content = content[key]
    if not isinstance(content, list):
        raise ValueError(f"{path} must hold a JSON list of ids (or an object of lists); got {type(content).__name__}.")
    return {str(item) for item in content}


def _column(dataset, name: str | None) -> list[str]:
    if name is None:
        return [str(i) for i in range(len(dataset))]
    if name not in dataset.column_names:
        raise ValueError(f"Column {name!r} is not in the dataset: its columns are {dataset.column_names}.")
    return [str(value) for value in dataset[name]]


def select_images(dataset, data_args: DataArguments) -> list[tuple[int, str]]:
    """
    The `(row index, image id)` pairs to evaluate: filtered by the include/exclude id files, in dataset order; with
    `limit`, the first `limit` of a permutation seeded by `seed`, in that (random) order, so that subsets of one seed
    are nested and a run stopped early has scored a random subset. Raises when ids are not unique.
    """
    ids = _column(dataset, data_args.id_column)
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"Image ids from {data_args.id_column or 'the row index'} are not unique: choose a unique --id_column."
        )
    keep = np.ones(len(ids), dtype=bool)
    if data_args.include_ids or data_args.exclude_ids:
        matched = _column(dataset, data_args.ids_column or data_args.id_column)
        if data_args.include_ids:
            wanted = _read_ids(data_args.include_ids, data_args.ids_key)
            keep &= np.array([value in wanted for value in matched], dtype=bool)
        if data_args.exclude_ids:
            unwanted = _read_ids(data_args.exclude_ids, data_args.ids_key)
            keep &= np.array([value not in unwanted for value in matched], dtype=bool)
    indices = np.flatnonzero(keep)
    if data_args.limit is not None:
        if data_args.limit < 1:
            raise ValueError(f"--limit must be a positive number of images, got {data_args.limit}.")
        # a seeded permutation, cut: subsets of one seed are nested (a larger --limit keeps the images already done),
        # and they are processed in that random order, so a run stopped early has scored a random subset
        indices = np.random.default_rng(data_args.seed).permutation(indices)[: data_args.limit]
    if not len(indices):
        raise ValueError("No image is left to evaluate after the id filters: check --include_ids/--ids_column.")
    return [(int(i), ids[i]) for i in indices]


def load_split(data_args: DataArguments, split: str | None = None):
    import datasets

    return datasets.load_dataset(data_args.dataset, data_args.dataset_config, split=split or data_args.split)


def _label_names(dataset, column: str | None) -> list[str] | None:
    feature = dataset.features.get(column) if column else None
    return list(feature.names) if hasattr(feature, "names") else None


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class EvaluationModel:
    """The loaded model and everything that scores it."""

    model: torch.nn.Module
    processor: object
    attribution: FeatureGradientAttribution
    text_embeds: torch.Tensor | None

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        return self.processor(images=[load_image(image) for image in images], return_tensors="pt")["pixel_values"]


def load_model(model_args: ModelArguments, device, candidate_labels: list[str] | None):
    from transformers import AutoImageProcessor

    model = load_vision_model(model_args.model).to(device)
    try:
        processor = AutoImageProcessor.from_pretrained(model_args.model)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{model_args.model} has no image processor (preprocessor_config.json): save the processor the model "
            "was trained with beside it (processor.save_pretrained(folder))."
        ) from error
    text_embeds = None
    if is_clip(model):
        from transformers import AutoTokenizer

        labels = parse_list(model_args.candidate_labels, "candidate_labels") if model_args.candidate_labels else None
        labels = labels or candidate_labels
        if not labels:
            raise ValueError("A CLIP model needs --candidate_labels (or a label column with class names).")
        text_embeds = clip_text_embeddings(model, AutoTokenizer.from_pretrained(model_args.model), labels)
    return model, processor, text_embeds


def _mean_residuals(
    model_args: ModelArguments, data_args: DataArguments, output_dir: Path, attr: FeatureGradientAttribution,
    blocks: list[int], processor, state: PartialState, batch_size: int,
) -> dict[int, torch.Tensor]:
    """μ_ℓ for the mean-centered variant: from --mean_residuals, or computed once (main process) and stored."""
    stored = output_dir / MEAN_RESIDUALS_FILE
    if model_args.mean_residuals:
        if state.is_main_process and not stored.is_file():  # kept with the results they produced
            output_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_args.mean_residuals, stored)
        return load_mean_residuals(model_args.mean_residuals)
    if not stored.is_file():
        if not model_args.mean_residuals_split:
            raise ValueError(
                "The mean-centered variant needs the mean residuals μ_ℓ: pass --mean_residuals FILE, or "
                "--mean_residuals_split SPLIT to compute them from that split of the dataset."
            )
        if state.is_main_process:
            reference = load_split(data_args, model_args.mean_residuals_split)
            count = min(model_args.mean_residuals_limit, len(reference))
            images = reference.select(range(count))[data_args.image_column]
            batches = [
                processor(images=[load_image(i) for i in images[s : s + batch_size]], return_tensors="pt")[
                    "pixel_values"]
                for s in range(0, count, batch_size)
            ]
            by_point: dict[str, list[int]] = {}
            for block in blocks:
                by_point.setdefault(attr.hook_point_of(block), []).append(block)
            means = {}
            for hook_point, chosen in by_point.items():
                means.update(compute_mean_residuals(attr.model, batches, chosen, hook_point, progress=False))
            output_dir.mkdir(parents=True, exist_ok=True)
            save_mean_residuals(means, stored, hook_point=",".join(by_point), model_name=model_args.model)
        state.wait_for_everyone()
    return load_mean_residuals(stored)


# ------------------------------------------------------------------------------------------------------- scoring
def _score_chunk(
    loaded: EvaluationModel, pixel_values: torch.Tensor, maps: dict[str, torch.Tensor],
    configurations: list[EvaluationConfiguration], row_indices: list[int], targets: torch.Tensor,
    presets: list[str], metrics: list[str], eval_args: EvaluationArguments,
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """
    `{(config key, preset): {metric: (B,) scores, CURVE_COLUMN: (B, N+1)}}` for one chunk.

    Configurations are stacked along the batch (the images repeated, with their own ids so every configuration
    of an image sees the same random subsets) and all presets come from one runner per call, sharing one
    `ResponseCache`: the clean forward runs once per image for everything, and identical perturbed inputs once.
    """
    batch = pixel_values.shape[0]
    per_call = max(1, MAX_ROWS_PER_CALL // batch)
    overrides = preset_overrides(eval_args)
    cache = ResponseCache()
    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    mean, std = getattr(loaded.processor, "image_mean", None), getattr(loaded.processor, "image_std", None)
    for start in range(0, len(configurations), per_call):
        group = configurations[start : start + per_call]
        stacked = torch.cat([maps[c.key] for c in group])
        records = faithfulness_records_for_presets(
            loaded.model, pixel_values.repeat(len(group), 1, 1, 1), stacked, metrics, presets, eval_args.baseline,
            eval_args.metric_seed, eval_args.perturbation_batch_size,
            image_ids=row_indices * len(group), targets=targets.repeat(len(group)).tolist(), cache=cache,
            text_embeds=loaded.text_embeds, image_mean=mean, image_std=std, progress=False,
            linear_backend=eval_args.linear_backend, precision=eval_args.precision, **overrides,
        )
        for preset, record in zip(presets, records, strict=True):
            scores = score_records(record, resolve_preset(preset, **overrides))
            for position, configuration in enumerate(group):
                rows = slice(position * batch, (position + 1) * batch)
                entry = {metric: scores[metric][rows] for metric in metrics}
                if "pixel_flipping" in record:
                    entry[CURVE_COLUMN] = record["pixel_flipping"].curves[rows]
                out[(configuration.key, preset)] = entry
    return out


def evaluate_chunk(
    loaded: EvaluationModel, images: Sequence, items: list[tuple[int, str]], labels: list[int | None],
    configurations: list[EvaluationConfiguration], presets: list[str], metrics: list[str],
    eval_args: EvaluationArguments, done: set,
) -> tuple[list[dict], list[dict]]:
    """Result rows (those not in `done`) and diagnostics rows of one chunk of images."""
    pixel_values = loaded.pixel_values(images)
    target = None
    if eval_args.target == "label":
        if any(label is None for label in labels):
            raise ValueError("--target label needs a label for every image: set --label_column.")
        target = torch.tensor(labels, dtype=torch.long)
    grid = attribute_configurations(
        loaded.attribution, pixel_values, configurations, target, loaded.text_embeds, eval_args.shuffle_seed
    )
    row_indices = [index for index, _ in items]
    scores = _score_chunk(loaded, pixel_values, grid.maps, configurations, row_indices, grid.target, presets, metrics,
                          eval_args)
    prediction = grid.logits.argmax(dim=-1)
    blocks = {c.key: gated_blocks(loaded.attribution, c) for c in configurations}
    rows = []
    for b, (index, image_id) in enumerate(items):
        label = labels[b]
        shared = {
            "image_id": image_id, "index": index, "baseline": eval_args.baseline, "target": int(grid.target[b]),
            "prediction": int(prediction[b]), "probability": float(grid.probabilities[b, prediction[b]]),
            "label": None if label is None else int(label),
            "correct": None if label is None else bool(int(prediction[b]) == int(label)),
        }
        for configuration in configurations:
            for preset in presets:
                if (image_id, configuration.key, preset, eval_args.baseline) in done:
                    continue
                entry = scores[(configuration.key, preset)]
                row = {**shared, **configuration.columns(), "preset": preset}
                row.update({metric: float(entry[metric][b]) for metric in metrics})
                row["diagnostics"] = json.dumps({
                    str(block): {key: float(value[b]) for key, value in grid.diagnostics[block].items()}
                    for block in blocks[configuration.key]
                }) if blocks[configuration.key] else ""
                if CURVE_COLUMN in entry:
                    row[CURVE_COLUMN] = entry[CURVE_COLUMN][b].astype(np.float64).tolist()
                rows.append(row)
    diagnostics = [
        {"image_id": image_id, "index": index, "block": block, "hook_point": grid.hook_points[block],
         **{key: float(values[key][b]) for key in values}}
        for block, values in grid.diagnostics.items()
        for b, (index, image_id) in enumerate(items)
    ]
    return rows, diagnostics


# ------------------------------------------------------------------------------------------------------------ run
def process_state() -> PartialState:
    """
    accelerate's view of this process. Without a GPU (or under `accelerate launch --cpu`) it is a CPU state, so a
    multi-process launch on a CPU-only machine shards over gloo: `PartialState()` alone would treat every process as
    a lone rank 0. (accelerate 1.15 starts several CPU processes only with `--multi_gpu` on a machine without GPUs,
    or with `--cpu --mpirun_hostfile`; `--cpu --num_processes N` alone starts one.)
    """
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def preset_overrides(eval_args: EvaluationArguments) -> dict:
    """The `--preset_overrides` JSON object (validated against the preset fields)."""
    if not eval_args.preset_overrides:
        return {}
    try:
        overrides = json.loads(eval_args.preset_overrides)
    except json.JSONDecodeError as error:
        raise ValueError(f"--preset_overrides must be a JSON object, e.g. '{{\"fc_runs\": 50}}': {error}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--preset_overrides must be a JSON object, got {eval_args.preset_overrides!r}.")
    resolve_preset("papers", **overrides)
    return overrides


def _presets(text: str) -> list[str]:
    names = parse_list(text, "presets")
    names = list(PRESET_NAMES) if names == ["both"] else names
    unknown = [n for n in names if n not in PRESET_NAMES]
    if unknown:
        raise ValueError(f"--presets {text!r}: expected 'papers', 'thesis' or 'both'; got {unknown}.")
    return names


def build_grid(eval_args: EvaluationArguments) -> list[EvaluationConfiguration]:
    return expand_grid(
        parse_list(eval_args.methods, "methods"),
        parse_list(eval_args.variants, "variants"),
        parse_layer_sets(eval_args.layer_sets),
        parse_floats(eval_args.kappas, "kappas"),
        parse_floats(eval_args.cmaxes, "cmaxes"),
    )


def run_evaluation(
    data_args: DataArguments, model_args: ModelArguments, eval_args: EvaluationArguments,
    state: PartialState | None = None,
) -> RunSummary:
    """
    Evaluate this process's shard (see the module docstring), skipping every row already stored in
    `eval_args.output_dir`, then (main process, after all processes finish) write the report.
    """
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
    presets, configurations = _presets(eval_args.presets), build_grid(eval_args)
    label_column = None if (data_args.label_column or "").lower() in ("", "none") else data_args.label_column

    dataset = load_split(data_args)
    for column in (data_args.image_column, label_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {dataset.column_names}): set --image_column / "
                "--label_column (or --label_column none)."
            )
    selection = select_images(dataset, data_args)
    device = torch.device(model_args.device) if model_args.device else state.device
    model, processor, text_embeds = load_model(model_args, device, _label_names(dataset, label_column))
    saes = {}
    if model_args.sae and model_args.sae.lower() != "none":
        from ..sae import load_saes

        saes = {block: sae.to(device) for block, sae in load_saes(parse_list(model_args.sae, "sae")).items()}
    attr = FeatureGradientAttribution(model, saes, linear_backend=eval_args.linear_backend,
                                      precision=eval_args.precision)
    if any(c.variant == "mean-centered" for c in configurations):
        chosen = sorted({b for c in configurations if c.variant == "mean-centered" for b in c.layers}) or sorted(saes)
        if not chosen:
            raise ValueError("mean-centered without --layer_sets or SAEs has no block to gate: pass --layer_sets.")
        means = _mean_residuals(model_args, data_args, output_dir, attr, chosen, processor, state,
                                eval_args.batch_size)
        attr = FeatureGradientAttribution(
            model, saes, mean_residuals={b: m.to(device) for b, m in means.items()},
            linear_backend=eval_args.linear_backend, precision=eval_args.precision,
        )
    for configuration in configurations:  # fail before any work on a configuration that cannot run
        gated_blocks(attr, configuration)
    loaded = EvaluationModel(model, processor, attr, text_embeds)

    description = {
        "dataset": data_args.dataset, "split": data_args.split, "model": model_args.model, "sae": model_args.sae,
        "mean_residuals": model_args.mean_residuals or model_args.mean_residuals_split,
        "target": eval_args.target, "metric_seed": eval_args.metric_seed, "metrics": ",".join(metrics),
        "shuffle_seed": eval_args.shuffle_seed, "id_column": data_args.id_column,
        "preset_overrides": preset_overrides(eval_args),
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
        missing = {(i, k, p) for _, i in chunk for k, p in wanted if (i, k, p, eval_args.baseline) not in done}
        if missing:
            todo.append((number, chunk, [c for c in configurations if any(m[1] == c.key for m in missing)]))
        else:
            summary.chunks_skipped += 1
    summary.images = sum(len(chunk) for _, chunk in mine)
    skipped_images = summary.images - sum(len(chunk) for _, chunk, _ in todo)
    bar = tqdm(total=summary.images, initial=skipped_images, unit="img", desc="evaluating",
               disable=not (eval_args.progress and state.is_main_process), smoothing=0.1)
    start = time.perf_counter()
    for number, chunk, chunk_configurations in todo:
        rows = dataset.select([index for index, _ in chunk])
        labels = [row for row in rows[label_column]] if label_column else [None] * len(chunk)
        results, diagnostics = evaluate_chunk(
            loaded, rows[data_args.image_column], chunk, labels, chunk_configurations, presets, metrics, eval_args,
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
        write_precision_check(output_dir, loaded, dataset, selection[: eval_args.precision_check], configurations,
                              presets, metrics, eval_args, label_column, data_args.image_column)
    state.wait_for_everyone()
    if state.is_main_process and not eval_args.no_report:
        summary.report = str(write_report(output_dir, metrics))
    return summary


def describe(summary: RunSummary) -> str:
    return json.dumps(asdict(summary))


__all__ = ["RunSummary", "build_grid", "describe", "evaluate_chunk", "run_evaluation", "select_images"]
