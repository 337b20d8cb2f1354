"""
The aggregate report of an evaluation folder: `report.md`, `summary.csv`, `diagnostics.csv` and `figures/*.png`,
rebuilt from the per-image parquet files alone (so `--report_only` and a finished run give the same report).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .configuration import GATED_METHOD, REFERENCE, EvaluationConfiguration
from .figures import bar_figure, block_curve_figure, heatmap_figure, pixel_flipping_figure
from .precision_check import precision_report_lines
from .statistics import LOWER_IS_BETTER, METRIC_NAMES, METRICS, sem, summarize
from .storage import DIAGNOSTICS_FOLDER, RESULTS_FOLDER, RUN_FILE, read_parts

CURVE_COLUMN = "pixel_flipping_curve"
DIAGNOSTIC_TERMS = ("g_dot_centered", "g_dot_error", "g_dot_x")


def _format(value: float, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _p(value: float) -> str:
    return "—" if math.isnan(value) else ("<1e-300" if value == 0 else f"{value:.2g}")


def _label(row) -> str:
    return EvaluationConfiguration.from_columns(
        row["method"], row["variant"], row["layers"], row["kappa"], row["cmax"]
    ).label


def _slug(*parts: object) -> str:
    text = "_".join(str(p) for p in parts if p not in ("", None))
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def mean_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Per (preset, fill, config): the mean Pixel Flipping curve over images, its label and mean AUC."""
    if CURVE_COLUMN not in results.columns:
        return pd.DataFrame(columns=["preset", "fill", "config", "label", "auc", "curve"])
    rows = []
    for (preset, fill, config), frame in results.groupby(["preset", "fill", "config"], sort=False):
        curves = [np.asarray(c, dtype=float) for c in frame[CURVE_COLUMN] if c is not None and len(c)]
        if not curves or len({len(c) for c in curves}) != 1:
            continue
        rows.append(
            {
                "preset": preset,
                "fill": fill,
                "config": config,
                "label": _label(frame.iloc[0]),
                "auc": float(frame["pixel_flipping"].mean()),
                "curve": np.mean(curves, axis=0),
            }
        )
    return pd.DataFrame(rows)


def summarize_diagnostics(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """
    Per gated block: n images and the mean ± SEM over images of |g·(x − b_dec)|, |g·e| and |g·x| (each already a
    mean over the image's patches), plus the ratio mean|g·e| / mean|g·(x − b_dec)|: how much of the `combined` score's
    scale the reconstruction-error term carries (`combined` = `centered` − g·e, method.md §3).
    """
    rows = []
    for (block, hook_point), frame in diagnostics.groupby(["block", "hook_point"], sort=True):
        row = {"block": int(block), "hook_point": hook_point, "n": len(frame)}
        for term in DIAGNOSTIC_TERMS:
            values = frame[term].astype(float).dropna()
            row[f"{term}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{term}_sem"] = sem(values)
        centered = row["g_dot_centered_mean"]
        row["error_to_centered"] = row["g_dot_error_mean"] / centered if centered else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_lines(results: pd.DataFrame) -> list[str]:
    reference = results[results["config"] == REFERENCE.key].drop_duplicates("image_id")
    if "correct" not in reference.columns or reference["correct"].isna().all():
        return []
    known = reference.dropna(subset=["correct"])
    accuracy = float(known["correct"].astype(bool).mean())
    recalls = [float(group["correct"].astype(bool).mean()) for _, group in known.groupby("label")]
    return [
        f"Model on these {len(known)} images: accuracy {accuracy:.3f}, balanced accuracy {np.mean(recalls):.3f} "
        f"(mean recall over {len(recalls)} classes).",
        "",
    ]


def _main_table(summary: pd.DataFrame, metrics: list[str]) -> list[str]:
    header = (
        "| configuration | n | "
        + " | ".join(f"{METRIC_NAMES.get(m, m)} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics)
        + " |"
    )
    lines = [header, "|" + " --- |" * (len(metrics) + 2)]
    for _, frame in summary.groupby("config", sort=False):
        first = frame.iloc[0]
        cells = []
        for metric in metrics:
            row = frame[frame["metric"] == metric].iloc[0]
            cell = f"{_format(row['mean'])} ± {_format(row['sem'], 2)}"
            if first["config"] != REFERENCE.key and not math.isnan(row["pct_change"]):
                cell += f" ({row['pct_change']:+.1f}%{row['welch_stars']})"
            cells.append(cell)
        lines.append(f"| {_label(first)} | {int(frame['n'].max())} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(summary: pd.DataFrame) -> list[str]:
    lines = [
        "| configuration | metric | pairs | mean difference | Welch p | Wilcoxon p | paired t p | beats TransMM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary[summary["config"] != REFERENCE.key].to_dict("records"):
        lines.append(
            f"| {_label(row)} | {METRIC_NAMES.get(row['metric'], row['metric'])} | {row['n_paired']} | "
            f"{_format(row['mean_difference'])} | {_p(row['welch_p'])}{row['welch_stars']} | "
            f"{_p(row['wilcoxon_p'])}{row['paired_stars']} | {_p(row['paired_t_p'])} | "
            f"{_format(100 * row['beats_fraction'], 3)}% |"
        )
    return lines


def _figures(summary: pd.DataFrame, curves: pd.DataFrame, figures: Path, preset: str, fill: str) -> list[Path]:
    """Every figure of one (preset, fill) group; returns their paths."""
    written = [
        bar_figure(summary, figures / f"bars_{_slug(preset, fill)}.png", f"mean ± SEM ({preset} preset, {fill} fill)")
    ]
    gated = summary[summary["method"] == GATED_METHOD]
    reference = summary[summary["config"] == REFERENCE.key]
    for (variant, layers), frame in gated.groupby(["variant", "layers"], sort=False):
        if frame["kappa"].nunique() * frame["cmax"].nunique() > 1:
            path = figures / f"heatmap_{_slug(preset, fill, variant, 'blocks', layers.replace(',', '-'))}.png"
            title = f"FGA {variant} [{layers}]: % improvement over TransMM ({preset})"
            written.append(heatmap_figure(pd.concat([frame]), path, title))
    single = gated[gated["layers"].astype(str).str.fullmatch(r"\d+")]
    for (kappa, cmax), frame in single.groupby(["kappa", "cmax"], sort=False):
        if frame["layers"].nunique() > 1:
            path = figures / f"blocks_{_slug(preset, fill, f'k{kappa:g}', f'c{cmax:g}')}.png"
            title = f"single-block sweep, κ={kappa:g}, c_max={cmax:g} ({preset})"
            written.append(block_curve_figure(frame, reference, path, title))
    group_curves = curves[(curves["preset"] == preset) & (curves["fill"] == fill)] if len(curves) else curves
    if len(group_curves):
        path = figures / f"pixel_flipping_{_slug(preset, fill)}.png"
        written.append(pixel_flipping_figure(group_curves, path, f"mean Pixel Flipping curves ({preset})"))
    return written


def write_report(output_dir: str | os.PathLike, metrics: list[str] | None = None) -> Path:
    """
    Rebuild `report.md`, `summary.csv`, `diagnostics.csv` and the figures of `output_dir` from its parquet files.

    Returns the path of `report.md`. Raises `FileNotFoundError` when the folder holds no results yet.
    """
    output_dir = Path(output_dir)
    results = read_parts(output_dir / RESULTS_FOLDER)
    if not len(results):
        raise FileNotFoundError(
            f"No results under {output_dir / RESULTS_FOLDER}: run the evaluation first (without --report_only)."
        )
    metrics = [m for m in (metrics or METRICS) if m in results.columns]
    summary = summarize(results, metrics)
    summary.to_csv(output_dir / "summary.csv", index=False)
    curves = mean_curves(results)
    figures = output_dir / "figures"

    lines = ["# Faithfulness evaluation", ""]
    if (output_dir / RUN_FILE).is_file():
        run = json.loads((output_dir / RUN_FILE).read_text())
        lines += ["Inputs:", ""] + [f"- {key}: `{value}`" for key, value in sorted(run.items())] + [""]
        lines += [
            f"Precision of the attribution pass, SAE encoders and perturbation forwards: "
            f"`{run.get('precision', 'float32')}`.",
            "",
        ]
    lines += _accuracy_lines(results)
    lines += [
        "Mean ± SEM over images; in brackets the % change of the mean against TransMM and the two-sided Welch "
        "t-test stars (*** p < 0.001, ** p < 0.01, * p < 0.05). SaCo and Faithfulness Correlation: higher is better; "
        "Pixel Flipping (AUC): lower is better. Every configuration is scored on the same images, so the paired "
        "tests below (Wilcoxon signed-rank with its stars, paired t, on the per-image differences against TransMM) "
        "are the sharper comparison; 'beats TransMM' counts images where the configuration is strictly better.",
        "",
    ]
    for (preset, fill), group in summary.groupby(["preset", "fill"], sort=True):
        lines += [f"## Preset `{preset}`, perturbation fill `{fill}`", ""]
        lines += _main_table(group, metrics) + [""]
        lines += ["### Paired comparison with TransMM", ""] + _paired_table(group) + [""]
        for path in _figures(group, curves, figures, preset, fill):
            lines += [f"![{path.stem}](figures/{path.name})", ""]

    diagnostics = read_parts(output_dir / DIAGNOSTICS_FOLDER)
    if len(diagnostics) and "block" in diagnostics.columns:
        table = summarize_diagnostics(diagnostics)
        table.to_csv(output_dir / "diagnostics.csv", index=False)
        lines += [
            "## Score decomposition per gated block",
            "",
            "Means over images of the per-patch means of |g·(x − b_dec)| (`centered`), |g·e| (e = x − x̂, the SAE's "
            "reconstruction error) and |g·x| (`no-sae`). Since `combined` = `centered` − g·e exactly, a small "
            "error-to-centered ratio means the gates are driven by the centred residual, not by what the features "
            "add (method.md §3). NaN: the block was gated without an SAE.",
            "",
            "| block | hook point | n | mean \\|g·(x−b_dec)\\| | mean \\|g·e\\| | mean \\|g·x\\| "
            "| ratio \\|g·e\\| / \\|g·(x−b_dec)\\| |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in table.to_dict("records"):
            terms = " | ".join(
                f"{_format(row[f'{t}_mean'])} ± {_format(row[f'{t}_sem'], 2)}" for t in DIAGNOSTIC_TERMS
            )
            lines.append(
                f"| {row['block']} | {row['hook_point']} | {row['n']} | {terms} | "
                f"{_format(row['error_to_centered'], 3)} |"
            )
        lines.append("")
    lines += precision_report_lines(output_dir)
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
