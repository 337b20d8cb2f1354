"""Scoring one chunk of images: attribute every configuration, run the faithfulness metrics, build the result rows."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from ..attribution import get_method
from ..faithfulness import (
    ResponseCache,
    completeness_scores,
    faithfulness_records_for_presets,
    resolve_preset,
    score_records,
)
from ..faithfulness.evaluation import COMPLETENESS
from .arguments import EvaluationArguments
from .attribution_grid import attribute_configurations, gated_blocks
from .configuration import EvaluationConfiguration
from .report import CURVE_COLUMN
from .run_setup import EvaluationModel, preset_overrides

SECONDS_COLUMN = "attribution_seconds"  # wall seconds per image of the configuration's map (its share of the batch)
MAX_ROWS_PER_CALL = 128  # images × configurations per perturbation call: bounds the memory of the perturbed fills


def score_chunk(
    loaded: EvaluationModel,
    pixel_values: torch.Tensor,
    maps: dict[str, torch.Tensor],
    configurations: list[EvaluationConfiguration],
    row_indices: list[int],
    targets: torch.Tensor,
    presets: list[str],
    metrics: list[str],
    eval_args: EvaluationArguments,
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """
    `{(config key, preset): {metric: (B,) scores, CURVE_COLUMN: (B, N+1)}}` for one chunk.

    Configurations are stacked along the batch (the images repeated, with their own ids so every configuration
    of an image sees the same random subsets) and all presets come from one runner per call, sharing one
    `ResponseCache`: the clean forward runs once per image for everything, and identical perturbed inputs once.
    """
    batch = pixel_values.shape[0]
    out: dict[tuple[str, str], dict[str, np.ndarray]] = {(c.key, p): {} for c in configurations for p in presets}
    metrics = [metric for metric in metrics if metric != COMPLETENESS]
    if not metrics:
        return out
    per_call = max(1, MAX_ROWS_PER_CALL // batch)
    overrides = preset_overrides(eval_args)
    cache = ResponseCache()
    mean, std = getattr(loaded.processor, "image_mean", None), getattr(loaded.processor, "image_std", None)
    for start in range(0, len(configurations), per_call):
        group = configurations[start : start + per_call]
        stacked = torch.cat([maps[c.key] for c in group])
        records = faithfulness_records_for_presets(
            loaded.model,
            pixel_values.repeat(len(group), 1, 1, 1),
            stacked,
            metrics,
            presets,
            eval_args.fill,
            eval_args.metric_seed,
            eval_args.perturbation_batch_size,
            image_ids=row_indices * len(group),
            targets=targets.repeat(len(group)).tolist(),
            cache=cache,
            text_embeds=loaded.text_embeds,
            image_mean=mean,
            image_std=std,
            progress=False,
            linear_backend=eval_args.linear_backend,
            precision=eval_args.precision,
            **overrides,
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


def completeness_by_configuration(
    loaded: EvaluationModel,
    pixel_values: torch.Tensor,
    configurations: list[EvaluationConfiguration],
    targets: torch.Tensor,
) -> dict[str, np.ndarray]:
    """
    `{config key: (B,) completeness errors}` (method.md §8): the error of the gradients each configuration reads,
    plain or LibraGrad's (computed once per rule set); NaN for methods that read no gradients.
    """
    errors: dict[bool, np.ndarray] = {}
    out = {}
    for configuration in configurations:
        if not get_method(configuration.method).gradient_based:
            out[configuration.key] = np.full(pixel_values.shape[0], np.nan)
            continue
        if configuration.libragrad not in errors:
            errors[configuration.libragrad] = completeness_scores(
                loaded.model, pixel_values, targets, loaded.text_embeds, libragrad=configuration.libragrad
            )
        out[configuration.key] = errors[configuration.libragrad]
    return out


def evaluate_chunk(
    loaded: EvaluationModel,
    images: Sequence,
    items: list[tuple[int, str]],
    labels: list[int | None],
    configurations: list[EvaluationConfiguration],
    presets: list[str],
    metrics: list[str],
    eval_args: EvaluationArguments,
    done: set,
) -> tuple[list[dict], list[dict]]:
    """Result rows (those not in `done`) and diagnostics rows of one chunk of images."""
    pixel_values = loaded.pixel_values(images)
    target = None
    if eval_args.target == "label":
        if any(label is None for label in labels):
            raise ValueError("--target label needs a label for every image: set --label_column.")
        target = torch.tensor(labels, dtype=torch.long)
    grid = attribute_configurations(
        loaded.attribution,
        pixel_values,
        configurations,
        target,
        loaded.text_embeds,
        eval_args.shuffle_seed,
        loaded.variant_options,
    )
    row_indices = [index for index, _ in items]
    scores = score_chunk(
        loaded, pixel_values, grid.maps, configurations, row_indices, grid.target, presets, metrics, eval_args
    )
    if COMPLETENESS in metrics:
        completeness = completeness_by_configuration(loaded, pixel_values, configurations, grid.target)
        for (key, _), entry in scores.items():
            entry[COMPLETENESS] = completeness[key]
    prediction = grid.logits.argmax(dim=-1)
    blocks = {c.key: gated_blocks(loaded.attribution, c, loaded.variant_options) for c in configurations}
    rows = []
    for b, (index, image_id) in enumerate(items):
        label = labels[b]
        shared = {
            "image_id": image_id,
            "index": index,
            "fill": eval_args.fill,
            "target": int(grid.target[b]),
            "prediction": int(prediction[b]),
            "probability": float(grid.probabilities[b, prediction[b]]),
            "label": None if label is None else int(label),
            "correct": None if label is None else bool(int(prediction[b]) == int(label)),
        }
        for configuration in configurations:
            for preset in presets:
                if (image_id, configuration.key, preset, eval_args.fill) in done:
                    continue
                entry = scores[(configuration.key, preset)]
                row = {**shared, **configuration.columns(), "preset": preset}
                row[SECONDS_COLUMN] = grid.seconds[configuration.key] / len(items)
                row.update({metric: float(entry[metric][b]) for metric in metrics})
                row["diagnostics"] = (
                    json.dumps(
                        {
                            str(block): {key: float(value[b]) for key, value in grid.diagnostics[block].items()}
                            for block in blocks[configuration.key]
                        }
                    )
                    if blocks[configuration.key]
                    else ""
                )
                if CURVE_COLUMN in entry:
                    row[CURVE_COLUMN] = entry[CURVE_COLUMN][b].astype(np.float64).tolist()
                rows.append(row)
    diagnostics = [
        {
            "image_id": image_id,
            "index": index,
            "block": block,
            "hook_point": grid.hook_points[block],
            **{key: float(values[key][b]) for key in values},
        }
        for block, values in grid.diagnostics.items()
        for b, (index, image_id) in enumerate(items)
    ]
    return rows, diagnostics
