"""
Feature case studies (method.md §7): which images FGA improved most. The patches it changed most and the SAE feature
behind each of their gates come from `hf_fga.feature_drivers` (the same rule as the pipeline's `top_features` and the
Space); `scripts/feature_case_studies.py` renders both with the features' prototypes (`hf_fga.prototypes`).
"""

from __future__ import annotations

import pandas as pd

TRANSMM_CONFIG = "transmm||||"
# metric -> +1 when higher is better, -1 when lower is better
METRIC_DIRECTIONS = {"saco": 1.0, "faithfulness_correlation": 1.0, "pixel_flipping": -1.0}


def select_improved_images(
    results: pd.DataFrame,
    config: str,
    *,
    preset: str = "papers",
    count: int = 20,
    reference: str = TRANSMM_CONFIG,
    metrics: tuple[str, ...] = tuple(METRIC_DIRECTIONS),
) -> pd.DataFrame:
    """
    The `count` images on which `config` improved over `reference` (TransMM) the most on all metrics together.

    Method.md §7 asks for "images where FGA improved all three metrics most"; it does not say how to combine the
    metrics, so we rank each metric's per-image improvement (oriented so that larger is better) among all images,
    average the three percentile ranks, and list the images that improved **every** metric first (by that average),
    then, only if fewer than `count` improved every metric, the best of the rest (their `all_improved` is False).

    Args:
        results (`pd.DataFrame`): per-image rows of the evaluation tool (`config`, `preset`, `image_id`, metrics).
        config (`str`): the FGA configuration key, e.g. `"fga|combined|1,2|0.5|10"`.
        preset (`str`, defaults to `"papers"`): the metric preset whose numbers are compared.
        count (`int`, defaults to 20): how many images to return.
        reference (`str`, defaults to TransMM's key): the configuration improved upon.
        metrics (`tuple[str, ...]`): the metrics combined.

    Returns:
        `pd.DataFrame` indexed by image id with one `d_<metric>` column per metric (improvement, larger is better),
        `rank_score` (mean percentile rank in (0, 1]), `all_improved`, and `index` (the dataset row).
    """
    unknown = [m for m in metrics if m not in METRIC_DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: expected some of {list(METRIC_DIRECTIONS)}.")
    rows = results[results["preset"] == preset]
    configs = set(rows["config"])
    for needed in (config, reference):
        if needed not in configs:
            raise ValueError(
                f"configuration {needed!r} has no results for preset {preset!r}; the results hold {sorted(configs)}."
            )
    ours = rows[rows["config"] == config].set_index("image_id")
    base = rows[rows["config"] == reference].set_index("image_id")
    common = ours.index.intersection(base.index)
    if not len(common):
        raise ValueError(f"{config!r} and {reference!r} were not evaluated on any common image.")
    out = pd.DataFrame(index=common)
    out["index"] = ours.loc[common, "index"].astype(int)
    ranks = []
    for metric in metrics:
        delta = METRIC_DIRECTIONS[metric] * (ours.loc[common, metric] - base.loc[common, metric])
        out[f"d_{metric}"] = delta
        ranks.append(delta.rank(pct=True))
    out["rank_score"] = pd.concat(ranks, axis=1).mean(axis=1)
    out["all_improved"] = (out[[f"d_{m}" for m in metrics]] > 0).all(axis=1)
    out = out.sort_values(["all_improved", "rank_score"], ascending=[False, False], kind="stable")
    return out.head(count)
