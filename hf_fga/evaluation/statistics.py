"""
Aggregate statistics of a faithfulness evaluation (method.md §6): mean ± SEM per configuration and metric, % change
against TransMM, the two-sided Welch t-test the thesis reported, and the paired tests (Wilcoxon signed-rank, paired t)
plus the fraction of images where a configuration beats TransMM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .configuration import REFERENCE, EvaluationConfiguration

METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")
LOWER_IS_BETTER = frozenset({"pixel_flipping", "completeness"})
METRIC_NAMES = {
    "saco": "SaCo",
    "faithfulness_correlation": "Faithfulness Correlation",
    "pixel_flipping": "Pixel Flipping",
    "completeness": "Completeness error",
}
GROUP_COLUMNS = ("preset", "fill")
CONFIG_COLUMNS = ("config", "method", "variant", "layers", "kappa", "cmax")


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean, std(ddof=1) / √n; NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def percent_change(value: float, reference: float) -> float:
    """100 · (value − reference) / |reference|; NaN when the reference is 0."""
    return 100.0 * (value - reference) / abs(reference) if reference != 0 else float("nan")


def stars(p_value: float) -> str:
    """`***` p < 0.001, `**` p < 0.01, `*` p < 0.05, else empty (also for NaN)."""
    if not p_value < 0.05:
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*"


def welch_p(values: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided Welch (unequal-variance) t-test p-value; NaN when either side has fewer than two values."""
    if len(values) < 2 or len(reference) < 2:
        return float("nan")
    return float(stats.ttest_ind(values, reference, equal_var=False).pvalue)


def paired_tests(differences: Sequence[float]) -> tuple[float, float]:
    """
    Two-sided (Wilcoxon signed-rank p, paired t p) on per-image differences (method − TransMM).

    All-zero differences give p = 1 for both (the method equals TransMM on every image); fewer than two pairs give NaN.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2:
        return float("nan"), float("nan")
    if not np.any(differences):
        return 1.0, 1.0
    wilcoxon = float(stats.wilcoxon(differences).pvalue)
    paired_t = float(stats.ttest_1samp(differences, 0.0).pvalue) if np.ptp(differences) > 0 else 0.0
    return wilcoxon, paired_t


def beats_fraction(differences: Sequence[float], metric: str) -> float:
    """Fraction of images where the method is strictly better than TransMM (lower is better for Pixel Flipping)."""
    differences = np.asarray(differences, dtype=np.float64)
    if not len(differences):
        return float("nan")
    better = differences < 0 if metric in LOWER_IS_BETTER else differences > 0
    return float(better.mean())


def improvement(change: float, metric: str) -> float:
    """Direction-aware % improvement: the % change, negated for metrics where lower is better."""
    return -change if metric in LOWER_IS_BETTER else change


def summarize(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """
    One row per (preset, fill, configuration, metric) of the per-image `results`, with n, mean, sem,
    pct_change / pct_improvement against TransMM, welch_p, welch_stars, n_paired, mean_difference, wilcoxon_p,
    paired_t_p, paired_stars (of the Wilcoxon p) and beats_fraction. NaN scores are left out (pairwise for the paired
    tests). Configurations are in report order (`EvaluationConfiguration.sort_key`); TransMM rows have NaN
    comparisons.
    """
    metrics = [m for m in (metrics or METRICS) if m in results.columns]
    order = {
        key: EvaluationConfiguration.from_columns(*values).sort_key
        for key, *values in results[list(CONFIG_COLUMNS)].drop_duplicates("config").itertuples(index=False)
    }
    results = results.assign(_order=results["config"].map(order)).sort_values("_order", kind="stable")
    rows = []
    for (preset, fill), group in results.groupby(list(GROUP_COLUMNS), sort=True):
        reference = group[group["config"] == REFERENCE.key].set_index("image_id")
        for config, frame in group.groupby("config", sort=False):
            first = frame.iloc[0]
            frame = frame.set_index("image_id")
            for metric in metrics:
                values = frame[metric].astype(float).dropna()
                ref_values = reference[metric].astype(float).dropna() if len(reference) else pd.Series(dtype=float)
                row = {"preset": preset, "fill": fill, **{c: first[c] for c in CONFIG_COLUMNS}}
                row.update(metric=metric, n=len(values), mean=float(values.mean()), sem=sem(values))
                comparison = config != REFERENCE.key and len(ref_values) > 0
                pairs = pd.concat([values, ref_values], axis=1, join="inner").to_numpy() if comparison else None
                differences = pairs[:, 0] - pairs[:, 1] if comparison else np.array([])
                wilcoxon, paired_t = paired_tests(differences) if comparison else (float("nan"), float("nan"))
                change = percent_change(row["mean"], float(ref_values.mean())) if comparison else float("nan")
                welch = welch_p(values, ref_values) if comparison else float("nan")
                row.update(
                    pct_change=change,
                    pct_improvement=improvement(change, metric),
                    welch_p=welch,
                    welch_stars=stars(welch),
                    n_paired=len(differences),
                    mean_difference=float(differences.mean()) if len(differences) else float("nan"),
                    wilcoxon_p=wilcoxon,
                    paired_t_p=paired_t,
                    paired_stars=stars(wilcoxon),
                    beats_fraction=beats_fraction(differences, metric) if comparison else float("nan"),
                )
                rows.append(row)
    return pd.DataFrame(rows)


def rank_configurations(
    summary: pd.DataFrame,
    *,
    preset: str = "papers",
    fill: str = "mean",
    metrics: Sequence[str] = METRICS,
    variant: str | None = None,
    method: str = "fga",
) -> pd.DataFrame:
    """
    Rank the configurations of one `method` (FGA's by default; e.g. `"caap"` for its block ranges) in a summary
    (`summarize` / `summary.csv`) for choosing one on a validation split.

    The score is the mean over `metrics` of the % improvement of the configuration's mean over TransMM's
    (`pct_improvement`: oriented so that positive is better, Pixel Flipping's sign flipped). The thesis chose its
    blocks, κ and c_max on validation results without stating a single rule; this one weighs the three metrics
    equally and is fixed before looking at the test split.

    Returns:
        `pd.DataFrame` indexed by configuration key, one `<metric>` column of % improvements per metric, `score`,
        `label`-ready columns (`variant`, `layers`, `kappa`, `cmax`), best first. Configurations missing a metric
        are dropped.
    """
    rows = summary[(summary["preset"] == preset) & (summary["fill"] == fill)]
    rows = rows[rows["method"] == method]
    if variant is not None:  # a control's parameter is part of its variant: `transmm-power` matches `transmm-power@2`
        rows = rows[(rows["variant"] == variant) | rows["variant"].astype(str).str.startswith(f"{variant}@")]
    if rows.empty:
        raise ValueError(
            f"no {'FGA' if method == 'fga' else method} configuration"
            f"{'' if variant is None else f' of variant {variant!r}'} in the summary for "
            f"preset {preset!r} and fill {fill!r}."
        )
    table = rows.pivot_table(index="config", columns="metric", values="pct_improvement", aggfunc="first")
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise ValueError(f"the summary has no {missing} rows: evaluate those metrics or pass metrics=.")
    table = table[list(metrics)].dropna()
    table["score"] = table.mean(axis=1)
    described = rows.drop_duplicates("config").set_index("config")[["variant", "layers", "kappa", "cmax"]]
    return table.join(described).sort_values("score", ascending=False, kind="stable")


def paired_comparison(
    results: pd.DataFrame, config: str, reference: str, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """
    Paired statistics of two configurations scored on the same images (e.g. FGA `combined` against its `centered`
    control, method.md §6): per (preset, fill, metric), the number of pairs, both means, the mean per-image
    difference (config − reference), the Wilcoxon signed-rank and paired-t p-values, and the fraction of images where
    `config` is strictly better (lower for Pixel Flipping). Images where either score is NaN are left out.
    """
    metrics = [m for m in (metrics or METRICS) if m in results.columns]
    known = set(results["config"])
    for needed in (config, reference):
        if needed not in known:
            raise ValueError(f"configuration {needed!r} is not in the results; they hold {sorted(known)}.")
    rows = []
    for (preset, fill), group in results.groupby(list(GROUP_COLUMNS), sort=True):
        ours = group[group["config"] == config].set_index("image_id")
        theirs = group[group["config"] == reference].set_index("image_id")
        for metric in metrics:
            pairs = pd.concat([ours[metric], theirs[metric]], axis=1, join="inner").astype(float).dropna().to_numpy()
            differences = pairs[:, 0] - pairs[:, 1]
            wilcoxon, paired_t = paired_tests(differences)
            rows.append(
                {
                    "preset": preset,
                    "fill": fill,
                    "config": config,
                    "reference": reference,
                    "metric": metric,
                    "n_paired": len(differences),
                    "mean": float(pairs[:, 0].mean()) if len(pairs) else float("nan"),
                    "reference_mean": float(pairs[:, 1].mean()) if len(pairs) else float("nan"),
                    "mean_difference": float(differences.mean()) if len(differences) else float("nan"),
                    "sem_difference": sem(differences),
                    "wilcoxon_p": wilcoxon,
                    "paired_t_p": paired_t,
                    "stars": stars(wilcoxon),
                    "better_fraction": beats_fraction(differences, metric),
                }
            )
    return pd.DataFrame(rows)
