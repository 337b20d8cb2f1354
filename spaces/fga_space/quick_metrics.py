"""
This image's faithfulness scores for several maps, with settings quick enough for a click on a CPU.

SaCo and Faithfulness Correlation use the library's plans and `evaluate` modules with the `papers` preset (mean
fill, K = 10 SaCo groups, Pearson); only the number of Faithfulness Correlation runs is lowered. Pixel Flipping
follows method.md §5 but samples the deletion curve every `PF_POINTS`-th of the patches instead of after every patch,
integrating the sampled curve with the trapezoid rule over k / N (with one patch per step this is exactly the papers'
normalised AUC). All maps are scored on the same image in one batched run, so the clean forward and the random
Faithfulness Correlation subsets are shared.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from hf_fga.faithfulness import make_runner, resolve_preset, score_records
from hf_fga.faithfulness.records import plan_faithfulness_correlation, plan_saco, ranking, softmax

FC_RUNS = 32
PF_POINTS = 15  # k = 0, N/14, …, N: 15 points on a 14 × 14 grid
PRESET = resolve_preset("papers", fc_runs=FC_RUNS)
QUICK_SETTINGS = (
    f"papers preset (mean fill), SaCo with K = {PRESET.saco_num_groups}, Faithfulness Correlation with "
    f"{FC_RUNS} runs of {PRESET.fc_subset_size} patches (papers: 100), Pixel Flipping sampled at {PF_POINTS} points"
)


def curve_steps(num_patches: int, points: int = PF_POINTS) -> np.ndarray:
    """The numbers of deleted patches at which the Pixel Flipping curve is sampled: 0 … N, evenly spaced."""
    return np.unique(np.linspace(0, num_patches, min(points, num_patches + 1)).round().astype(int))


def sampled_auc(curve: np.ndarray, steps: np.ndarray, num_patches: int) -> float:
    """Trapezoid area under the curve sampled at `steps` deleted patches, over k / N ∈ [0, 1]."""
    x = steps / num_patches
    return float(np.sum((x[1:] - x[:-1]) * (curve[1:] + curve[:-1]) / 2))


@torch.no_grad()
def quick_faithfulness(
    model,
    pixel_values: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    seed: int = 0,
    batch_size: int = 64,
    fc_runs: int = FC_RUNS,
    pf_points: int = PF_POINTS,
    precision: str = "float32",
) -> dict[str, dict[str, float]]:
    """
    SaCo ↑, Faithfulness Correlation ↑ and (sampled) Pixel Flipping AUC ↓ of each map of one image.

    Args:
        model: the classifier that was explained.
        pixel_values (`Tensor` of shape `(1, 3, H, W)`): the preprocessed image.
        maps (`Mapping[str, Tensor]`): patch maps `(h, w)` by name (e.g. `"TransMM"`, `"FGA"`).
        seed (`int`, defaults to 0): seeds the Faithfulness Correlation subsets (the same for every map).
        batch_size (`int`, defaults to 64): perturbed inputs per forward pass.
        fc_runs (`int`, defaults to `FC_RUNS`): Faithfulness Correlation subsets.
        pf_points (`int`, defaults to `PF_POINTS`): points of the Pixel Flipping curve (N + 1: the exact curve).
        precision (`str`, defaults to `"float32"`): of the perturbation forwards (`hf_fga.precision`).

    Returns:
        `{name: {"saco", "faithfulness_correlation", "pixel_flipping": float}}`.
    """
    names = list(maps)
    attributions = np.stack([np.asarray(maps[name], dtype=np.float64).ravel() for name in names])
    runner = make_runner(
        model,
        pixel_values.expand(len(names), -1, -1, -1),
        batch_size=batch_size,
        seed=seed,
        image_ids=[0] * len(names),
        progress=False,
        precision=precision,
    )
    fill = runner.fill_key("mean", PRESET.mean_fill)
    num_patches = attributions.shape[1]
    plans = {
        "saco": plan_saco(runner, attributions, num_groups=PRESET.saco_num_groups, fill_key=fill),
        "faithfulness_correlation": plan_faithfulness_correlation(
            runner,
            attributions,
            runs=fc_runs,
            subset_size=PRESET.subset_size(runner.grid.patch_size),
            trials=1,
            seed=seed,
            fill_key=fill,
        ),
    }
    steps = curve_steps(num_patches, pf_points)
    order = ranking(attributions)
    flips = []
    for image in range(len(names)):
        for k in steps:
            mask = np.zeros(num_patches, dtype=bool)
            mask[order[image, :k]] = True
            flips.append(runner.request(image, fill, mask))
    runner.prefetch(runner.clean_requests() + [r for plan in plans.values() for r in plan.requests] + flips)
    records = {name: plan.build(runner.responses(plan.requests)) for name, plan in plans.items()}
    scores = score_records(records, resolve_preset("papers", fc_runs=fc_runs))
    targets = runner.targets()
    probabilities = softmax(runner.responses(flips).reshape(len(names), len(steps), -1))
    results = {}
    for image, name in enumerate(names):
        curve = probabilities[image, :, targets[image]]
        results[name] = {
            "saco": float(scores["saco"][image]),
            "faithfulness_correlation": float(scores["faithfulness_correlation"][image]),
            "pixel_flipping": sampled_auc(curve, steps, num_patches),
        }
    return results
