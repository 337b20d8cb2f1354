"""
Figures of an evaluation (matplotlib, Agg): bars with SEM per metric, κ × c_max heatmaps of % improvement (thesis
Figure 7.10), metric-by-block curves of single-block sweeps (Figure 7.1), mean Pixel Flipping curves per method,
% change bars per domain, and paired differences with their confidence intervals along a dose or a list of controls.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .configuration import REFERENCE, EvaluationConfiguration  # noqa: E402
from .statistics import LOWER_IS_BETTER, METRIC_NAMES  # noqa: E402

MAX_CURVES = 12


def _label(row) -> str:
    return EvaluationConfiguration.from_columns(row.method, row.variant, row.layers, row.kappa, row.cmax).label


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def metric_title(metric: str) -> str:
    """The metric's name with its better direction, e.g. `Pixel Flipping ↓`."""
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    return f"{METRIC_NAMES.get(metric, metric)} {arrow}"


def bar_figure(summary: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """One panel per metric: mean ± SEM of every configuration of `summary` (one preset and fill)."""
    metrics = list(dict.fromkeys(summary["metric"]))
    configs = list(dict.fromkeys(summary["config"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.45 * len(configs) + 2) * len(metrics), 4.2))
    axes = np.atleast_1d(axes)
    for axis, metric in zip(axes, metrics, strict=True):
        rows = summary[summary["metric"] == metric].set_index("config").loc[configs]
        colors = ["tab:red" if c == REFERENCE.key else "tab:blue" for c in configs]
        axis.bar(range(len(configs)), rows["mean"], yerr=rows["sem"].fillna(0), color=colors, capsize=3)
        labels = [_label(r) for r in rows.itertuples()]
        axis.set_xticks(range(len(configs)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_title(metric_title(metric))
    figure.suptitle(title)
    return _save(figure, Path(path))


def heatmap_figure(summary: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """
    κ (rows) × c_max (columns) heatmaps of % improvement over TransMM, one panel per metric, for the FGA
    configurations of `summary` that share a variant and a block set. Improvement is direction-aware (positive =
    better; Pixel Flipping's % change is negated), as in thesis Figure 7.10.
    """
    metrics = list(dict.fromkeys(summary["metric"]))
    kappas, cmaxes = sorted(set(summary["kappa"])), sorted(set(summary["cmax"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4))
    axes = np.atleast_1d(axes)
    for axis, metric in zip(axes, metrics, strict=True):
        rows = summary[summary["metric"] == metric]
        table = rows.pivot_table(index="kappa", columns="cmax", values="pct_improvement").reindex(
            index=kappas, columns=cmaxes
        )
        values = table.to_numpy(dtype=float)
        bound = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
        image = axis.imshow(values, cmap="RdYlGn", vmin=-bound or -1, vmax=bound or 1, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            axis.text(j, i, "—" if np.isnan(value) else f"{value:+.1f}%", ha="center", va="center", fontsize=8)
        axis.set_xticks(range(len(cmaxes)), [f"{c:g}" for c in cmaxes])
        axis.set_yticks(range(len(kappas)), [f"{k:g}" for k in kappas])
        axis.set_xlabel("c_max")
        axis.set_ylabel("κ")
        axis.set_title(f"{METRIC_NAMES.get(metric, metric)}: % improvement")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle(title)
    return _save(figure, Path(path))


def block_curve_figure(summary: pd.DataFrame, reference: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """
    Metric (mean ± SEM) against the gated block for single-block FGA configurations, one line per variant, with
    TransMM as a dashed red line (thesis Figure 7.1). `reference` holds TransMM's summary rows.
    """
    metrics = list(dict.fromkeys(summary["metric"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    for axis, metric in zip(axes, metrics, strict=True):
        rows = summary[summary["metric"] == metric]
        for variant, frame in rows.groupby("variant", sort=False):
            frame = frame.assign(block=frame["layers"].astype(int)).sort_values("block")
            axis.errorbar(
                frame["block"], frame["mean"], yerr=frame["sem"].fillna(0), marker="o", capsize=3, label=variant
            )
        ref = reference[reference["metric"] == metric]
        if len(ref):
            axis.axhline(float(ref["mean"].iloc[0]), color="tab:red", linestyle="--", label="TransMM")
        axis.set_xticks(sorted({int(block) for block in rows["layers"]}))
        axis.set_xlabel("gated block")
        axis.set_title(metric_title(metric))
        axis.legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, Path(path))


def pixel_flipping_figure(curves: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """
    Mean Pixel Flipping curve (probability of the clean prediction against the fraction of patches perturbed) per
    configuration. `curves` has columns `config`, `label`, `auc` and `curve` (the mean curve, N+1 points); at most
    `MAX_CURVES` are drawn: TransMM and the configurations with the lowest (best) AUC.
    """
    reference = curves[curves["config"] == REFERENCE.key]
    others = curves[curves["config"] != REFERENCE.key].sort_values("auc").head(MAX_CURVES - len(reference))
    figure, axis = plt.subplots(figsize=(6.0, 4.2))
    for row in pd.concat([reference, others]).itertuples():
        curve = np.asarray(row.curve, dtype=float)
        style = {"color": "tab:red", "linestyle": "--"} if row.config == REFERENCE.key else {}
        axis.plot(np.linspace(0, 1, len(curve)), curve, label=f"{row.label} (AUC {row.auc:.3f})", **style)
    axis.set_xlabel("fraction of patches perturbed (most relevant first)")
    axis.set_ylabel("p(clean prediction)")
    axis.legend(fontsize=6)
    axis.set_title(title)
    return _save(figure, Path(path))


def change_bars_figure(changes: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """
    Bars of the % change against TransMM: one row of panels per preset, one panel per metric, one group of bars per
    `group` (e.g. a domain) and one bar colour per `series` (e.g. a method) of `changes` (columns preset, metric,
    group, series, pct_change). A group without a series' value leaves its slot empty.
    """
    presets = list(dict.fromkeys(changes["preset"]))
    metrics = list(dict.fromkeys(changes["metric"]))
    series = list(dict.fromkeys(changes["series"]))
    figure, axes = plt.subplots(len(presets), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(presets)))
    axes = np.atleast_2d(axes)
    width = 0.8 / len(series)
    for row, preset in enumerate(presets):
        rows = changes[changes["preset"] == preset]
        groups = list(dict.fromkeys(rows["group"]))
        for axis, metric in zip(axes[row], metrics, strict=True):
            values = rows[rows["metric"] == metric].pivot_table(
                index="group", columns="series", values="pct_change", aggfunc="first"
            )
            values = values.reindex(index=groups, columns=series)
            for i, name in enumerate(series):
                offsets = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
                axis.bar(offsets, values[name].to_numpy(dtype=float), width, label=name)
            axis.axhline(0.0, color="black", linewidth=0.8)
            axis.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
            axis.set_title(f"{metric_title(metric)}, preset {preset}", fontsize=9)
            axis.set_ylabel("% change vs TransMM")
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, Path(path))


def difference_figure(
    differences: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    *,
    x_label: str = "",
    y_label: str = "",
    connect: bool = True,
) -> Path:
    """
    Paired mean differences with their 95 % confidence intervals: one row of panels per preset, one panel per metric,
    the `x` values (categories, in the order of their first row) along the horizontal axis, one line per `series`
    (optional column; one line when absent). Columns: preset, metric, x, mean, ci_low, ci_high[, series]. The zero
    line is drawn; each panel's title says which way is better for its metric. `connect`: join a series' points
    with a line (for an ordered `x`, e.g. a dose), or draw them apart (for categories).
    """
    if differences.empty:
        raise ValueError("difference_figure: there are no differences to draw.")
    frame = differences if "series" in differences.columns else differences.assign(series="")
    presets = list(dict.fromkeys(frame["preset"]))
    metrics = list(dict.fromkeys(frame["metric"]))
    positions = {x: i for i, x in enumerate(dict.fromkeys(frame["x"]))}
    figure, axes = plt.subplots(
        len(presets), len(metrics), figsize=(max(3.6, 0.55 * len(positions) + 1.6) * len(metrics), 3.3 * len(presets))
    )
    axes = np.atleast_2d(axes)
    for row, preset in enumerate(presets):
        for axis, metric in zip(axes[row], metrics, strict=True):
            panel = frame[(frame["preset"] == preset) & (frame["metric"] == metric)]
            for name, line in panel.groupby("series", sort=False):
                xs = line["x"].map(positions).to_numpy(dtype=float)
                ys = line["mean"].to_numpy(dtype=float)
                errors = np.abs(np.vstack([ys - line["ci_low"].to_numpy(float), line["ci_high"].to_numpy(float) - ys]))
                style = "-" if connect else "none"
                axis.errorbar(xs, ys, yerr=errors, marker="o", linestyle=style, capsize=3, label=name or None)
            axis.axhline(0.0, color="black", linewidth=0.8)
            axis.set_xticks(range(len(positions)), list(positions), rotation=30, ha="right", fontsize=7)
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            axis.set_title(f"{metric_title(metric)}, preset {preset} ({better} is better)", fontsize=8)
            axis.set_xlabel(x_label, fontsize=8)
            axis.set_ylabel(y_label, fontsize=8)
            if panel["series"].astype(str).str.len().gt(0).any():
                axis.legend(fontsize=6)
    figure.suptitle(title, fontsize=10)
    return _save(figure, Path(path))
