"""
Feature case studies (method.md §7): the images FGA improved most, the patches whose attribution it changed most,
and the SAE feature behind each of those patches' gates.

The selection and the feature attribution are plain functions of the evaluation results and of an
[`AttributionOutput`] with contributions, so they can be tested on tiny models; `scripts/feature_case_studies.py`
renders them with the features' prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hf_fga.viz import normalize_map

from ..attribution import AttributionOutput

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


def patch_change(attribution: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """FGA − TransMM per patch, each map min–max scaled to [0, 1] first (the scale every figure shows)."""
    if attribution.shape != baseline.shape:
        raise ValueError(f"maps of different shapes {attribution.shape} and {baseline.shape}.")
    return normalize_map(attribution) - normalize_map(baseline)


def changed_patches(attribution: np.ndarray, baseline: np.ndarray, top: int = 3) -> list[tuple[int, float]]:
    """
    The `top` patches with the largest |attribution(FGA) − attribution(TransMM)| (method.md §7), as
    `(row-major patch index, signed change)`, largest first.

    The two maps are compared after min–max scaling each to [0, 1] (the scale every figure shows): the gates
    rescale the whole FGA map, and an unscaled difference would mostly measure that overall factor.
    """
    delta = patch_change(attribution, baseline).reshape(-1)
    order = np.argsort(-np.abs(delta), kind="stable")[:top]
    return [(int(p), float(delta[p])) for p in order]


@dataclass(frozen=True)
class PatchFeature:
    """The SAE feature behind one patch's gate: `role` is `"amplifier"` (c > 0) or `"suppressor"` (c < 0)."""

    block: int
    feature: int
    contribution: float
    gate: float
    role: str


def patch_feature(output: AttributionOutput, image: int, patch: int) -> PatchFeature | None:
    """
    The feature contributing most to the gate of `patch` in image `image` of an FGA output computed with
    `return_contributions=True`.

    The gate w_t = exp(ln c_max · tanh(κ ŝ_t)) rises with the patch's score s_t = Σ_k c_{t,k}. We take the gated
    block where the patch's gate is furthest from 1 (|ln w_t| largest), and there the feature that pushed the gate
    hardest in the direction it went: the largest c_{t,k} where w_t > 1 (an amplifier), the most negative where
    w_t < 1 (a suppressor); with w_t = 1, the largest |c_{t,k}|. If no kept contribution points the gate's way,
    the largest |c_{t,k}| is returned with its own sign. None when no gated block has contributions.
    """
    if not output.contributions:
        return None
    best_block, best_log = None, -1.0
    for block in output.contributions:
        log_gate = float(np.log(output.gates[block][image].reshape(-1)[patch]))
        if abs(log_gate) > best_log:
            best_block, best_log = block, abs(log_gate)
    values, indices = output.contributions[best_block]
    c = values[image, patch].double().numpy()
    k = indices[image, patch].numpy()
    gate = float(output.gates[best_block][image].reshape(-1)[patch])
    direction = np.sign(np.log(gate))
    pushed = c * direction
    j = int(np.argmax(pushed)) if direction != 0 and pushed.max() > 0 else int(np.argmax(np.abs(c)))
    return PatchFeature(
        block=int(best_block),
        feature=int(k[j]),
        contribution=float(c[j]),
        gate=gate,
        role="amplifier" if c[j] > 0 else "suppressor",
    )
