"""
How far bfloat16 moves the results (`precision="bfloat16"`, [`hf_fga.precision`]) on the user's own model and images:

- [`faithfulness_agreement`]: the same maps scored by the perturbation engine in float32 and in bfloat16, per image
  and metric |score(bfloat16) − score(float32)|;
- [`attribution_agreement`]: the maps (and FGA's gates) of one attributor configuration in both precisions, per image
  the relative error ‖a_bf16 − a_fp32‖ / ‖a_fp32‖ and the overlap of the top-k patches;
- [`summarize_agreement`]: medians, maxima and whether the ranking of configurations by mean score is the same.

`scripts/check_precision.py` runs them on a dataset; the evaluation tool records them with `--precision_check N`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..faithfulness import evaluate_faithfulness
from ..precision import PRECISIONS

HIGHER_IS_BETTER = {
    "saco": True,
    "faithfulness_correlation": True,
    "pixel_flipping": False,
    "insertion": True,
    "deletion": False,
}


def faithfulness_agreement(
    model, pixel_values: Tensor, attributions: Tensor | np.ndarray, metrics: Sequence[str] | None = None, **options
) -> pd.DataFrame:
    """
    Score `attributions (B, h, w)` with the perturbation engine in float32 and in bfloat16.

    Args:
        model, pixel_values, attributions: as in [`hf_fga.faithfulness.evaluate_faithfulness`].
        metrics (`Sequence[str]`, *optional*): defaults to `evaluate_faithfulness`'s.
        options: any other `evaluate_faithfulness` argument (preset, fill, seed, batch_size, image_ids, ...).

    Returns:
        `pd.DataFrame` with one row per image and metric: `image` (0..B-1), `metric`, `float32`, `bfloat16`,
        `abs_diff`.
    """
    if "precision" in options:
        raise ValueError("faithfulness_agreement runs both precisions itself: do not pass precision=.")
    if metrics is not None:
        options["metrics"] = tuple(metrics)
    options.setdefault("progress", False)
    scores = {p: evaluate_faithfulness(model, pixel_values, attributions, precision=p, **options) for p in PRECISIONS}
    rows = [
        {
            "image": b,
            "metric": metric,
            "float32": float(values[b]),
            "bfloat16": float(scores["bfloat16"][metric][b]),
            "abs_diff": float(abs(scores["bfloat16"][metric][b] - values[b])),
        }
        for metric, values in scores["float32"].items()
        for b in range(len(values))
    ]
    return pd.DataFrame(rows)


def _relative_error(test: Tensor, reference: Tensor) -> np.ndarray:
    flat_test, flat_ref = test.double().flatten(1), reference.double().flatten(1)
    return ((flat_test - flat_ref).norm(dim=1) / flat_ref.norm(dim=1).clamp_min(1e-30)).numpy()


def top_k_overlap(test: Tensor, reference: Tensor, k: int = 10) -> np.ndarray:
    """Per image `|top-k(test) ∩ top-k(reference)| / k` over the patches of `(B, h, w)` maps."""
    k = min(k, test[0].numel())
    top_test = test.flatten(1).topk(k, dim=1).indices
    top_ref = reference.flatten(1).topk(k, dim=1).indices
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_test, top_ref, strict=True)])


def attribution_agreement(attribute: Callable[[str], object], k: int = 10) -> pd.DataFrame:
    """
    Compare one attribution configuration in float32 and bfloat16.

    Args:
        attribute (`Callable[[str], AttributionOutput]`): `precision -> output`, e.g.
            `lambda p: Attributor(model, saes, precision=p).attribute(pixel_values, method="fga")`.
        k (`int`, defaults to 10): the top-k patches compared.

    Returns:
        `pd.DataFrame` with one row per image and compared quantity (`"map"`, or `"gates[ℓ]"` for each gated block):
        `image`, `quantity`, `relative_error` (‖bf16 − fp32‖ / ‖fp32‖), `top_k_overlap`.
    """
    outputs = {p: attribute(p) for p in PRECISIONS}
    reference, test = outputs["float32"], outputs["bfloat16"]
    pairs = {"map": (test.attribution, reference.attribution)}
    pairs.update({f"gates[{block}]": (test.gates[block], gates) for block, gates in reference.gates.items()})
    rows = []
    for quantity, (value, ref) in pairs.items():
        errors, overlaps = _relative_error(value, ref), top_k_overlap(value, ref, k)
        rows += [
            {"image": b, "quantity": quantity, "relative_error": float(errors[b]), "top_k_overlap": float(overlaps[b])}
            for b in range(len(errors))
        ]
    return pd.DataFrame(rows)


def summarize_agreement(
    faithfulness: pd.DataFrame | None = None,
    attribution: pd.DataFrame | None = None,
    by: Sequence[str] = ("configuration",),
) -> dict[str, pd.DataFrame]:
    """
    Summaries of [`faithfulness_agreement`] / [`attribution_agreement`] rows (optionally with extra columns such as
    `configuration` and `preset`, listed in `by`):

    - `"faithfulness"`: per metric (and preset), n, median and max |Δ|, and whether the configurations rank the same
      by mean score in both precisions (`ranking_identical`; requires a `configuration` column);
    - `"attribution"`: per quantity (map / gates, and configuration), n, median and max relative error, mean top-k
      overlap.
    """
    out: dict[str, pd.DataFrame] = {}
    if faithfulness is not None and len(faithfulness):
        keys = [c for c in ("preset", "metric") if c in faithfulness.columns]
        rows = []
        for key, group in faithfulness.groupby(keys, sort=True):
            key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            row = {
                **key,
                "n": len(group),
                "median_abs_diff": group["abs_diff"].median(),
                "max_abs_diff": group["abs_diff"].max(),
            }
            if "configuration" in group.columns and group["configuration"].nunique() > 1:
                means = group.groupby("configuration")[["float32", "bfloat16"]].mean()
                descending = HIGHER_IS_BETTER.get(key["metric"], True)
                order = {p: list(means[p].sort_values(ascending=not descending).index) for p in PRECISIONS}
                row["ranking_float32"] = " > ".join(order["float32"])
                row["ranking_identical"] = order["float32"] == order["bfloat16"]
            rows.append(row)
        out["faithfulness"] = pd.DataFrame(rows)
    if attribution is not None and len(attribution):
        keys = [c for c in (*by, "quantity") if c in attribution.columns]
        out["attribution"] = (
            attribution.groupby(keys, sort=True)
            .agg(
                n=("relative_error", "size"),
                median_relative_error=("relative_error", "median"),
                max_relative_error=("relative_error", "max"),
                mean_top_k_overlap=("top_k_overlap", "mean"),
                min_top_k_overlap=("top_k_overlap", "min"),
            )
            .reset_index()
        )
    return out


def agreement_table(summary: Mapping[str, pd.DataFrame]) -> list[str]:
    """Markdown lines of [`summarize_agreement`]'s tables."""
    lines = []
    for name, table in summary.items():
        lines += [
            f"**{name}**",
            "",
            "| " + " | ".join(table.columns) + " |",
            "| " + " | ".join("---" for _ in table.columns) + " |",
        ]
        for record in table.to_dict("records"):
            cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in record.values()]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


__all__ = [
    "PRECISION_CHECK_FILE",
    "agreement_table",
    "attribution_agreement",
    "faithfulness_agreement",
    "precision_report_lines",
    "summarize_agreement",
    "top_k_overlap",
    "write_precision_check",
]


# ------------------------------------------------------------------------------------------- evaluation tool
PRECISION_CHECK_FILE = "precision_check.csv"
PRECISION_MAPS_FILE = "precision_check_maps.csv"


def write_precision_check(
    output_dir,
    loaded,
    dataset,
    items: list[tuple[int, str]],
    configurations,
    presets: list[str],
    metrics: list[str],
    eval_args,
    label_column: str | None,
    image_column: str,
) -> None:
    """
    `--precision_check N` of the evaluation tool: the first N selected images attributed and scored end to end in
    both precisions (each precision's own maps, targets and perturbation forwards), written to
    `precision_check.csv` (image, configuration, preset, metric, float32, bfloat16, abs_diff) and
    `precision_check_maps.csv` (relative error and top-10 overlap of the maps); the report summarises both.
    """
    from pathlib import Path

    from .attribution_grid import attribute_configurations
    from .run_setup import preset_overrides

    overrides = preset_overrides(eval_args)
    mean, std = getattr(loaded.processor, "image_mean", None), getattr(loaded.processor, "image_std", None)
    attr = loaded.attribution
    saved = attr.precision
    score_rows, map_rows = [], []
    try:
        for start in range(0, len(items), eval_args.batch_size):
            chunk = items[start : start + eval_args.batch_size]
            rows = dataset.select([index for index, _ in chunk])
            pixels = loaded.pixel_values(rows[image_column])
            target = None
            if eval_args.target == "label":
                target = torch.tensor(rows[label_column], dtype=torch.long)
            grids, scores = {}, {}
            for precision in PRECISIONS:
                attr.precision = precision
                grid = grids[precision] = attribute_configurations(
                    attr, pixels, configurations, target, loaded.text_embeds, eval_args.shuffle_seed
                )
                stacked = torch.cat([grid.maps[c.key] for c in configurations])
                scores[precision] = {
                    preset: evaluate_faithfulness(
                        loaded.model,
                        pixels.repeat(len(configurations), 1, 1, 1),
                        stacked,
                        tuple(metrics),
                        preset,
                        eval_args.fill,
                        eval_args.metric_seed,
                        eval_args.perturbation_batch_size,
                        image_ids=[index for index, _ in chunk] * len(configurations),
                        targets=grid.target.repeat(len(configurations)).tolist(),
                        text_embeds=loaded.text_embeds,
                        image_mean=mean,
                        image_std=std,
                        progress=False,
                        linear_backend=eval_args.linear_backend,
                        precision=precision,
                        **overrides,
                    )
                    for preset in presets
                }
            batch = len(chunk)
            for position, configuration in enumerate(configurations):
                reference = grids["float32"].maps[configuration.key]
                test = grids["bfloat16"].maps[configuration.key]
                errors, overlaps = _relative_error(test, reference), top_k_overlap(test, reference)
                for b, (_, image_id) in enumerate(chunk):
                    map_rows.append(
                        {
                            "image_id": image_id,
                            "configuration": configuration.key,
                            "quantity": "map",
                            "relative_error": float(errors[b]),
                            "top_k_overlap": float(overlaps[b]),
                        }
                    )
                    for preset in presets:
                        for metric in metrics:
                            fp32 = float(scores["float32"][preset][metric][position * batch + b])
                            bf16 = float(scores["bfloat16"][preset][metric][position * batch + b])
                            score_rows.append(
                                {
                                    "image_id": image_id,
                                    "configuration": configuration.key,
                                    "preset": preset,
                                    "metric": metric,
                                    "float32": fp32,
                                    "bfloat16": bf16,
                                    "abs_diff": abs(bf16 - fp32),
                                }
                            )
    finally:
        attr.precision = saved
    pd.DataFrame(score_rows).to_csv(Path(output_dir) / PRECISION_CHECK_FILE, index=False)
    pd.DataFrame(map_rows).to_csv(Path(output_dir) / PRECISION_MAPS_FILE, index=False)


def precision_report_lines(output_dir) -> list[str]:
    """The report section of a run with `--precision_check` (empty without it)."""
    from pathlib import Path

    scores, maps = Path(output_dir) / PRECISION_CHECK_FILE, Path(output_dir) / PRECISION_MAPS_FILE
    if not scores.is_file():
        return []
    summary = summarize_agreement(pd.read_csv(scores), pd.read_csv(maps) if maps.is_file() else None)
    return [
        "## Precision check: bfloat16 against float32",
        "",
        "The first images of the selection attributed and scored end to end in both precisions (`--precision_check`, "
        "per-image rows in `precision_check.csv` and `precision_check_maps.csv`): median and max |score(bfloat16) − "
        "score(float32)| per metric, whether the configurations rank the same by mean score, and the relative error "
        "and top-10 patch overlap of the maps.",
        "",
        *agreement_table(summary),
    ]
