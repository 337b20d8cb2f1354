"""
Per-image faithfulness records (method.md §5): what each metric needs from the model, before any scoring.

Each metric is a *plan*: the perturbed inputs it needs (requests to a `PerturbationRunner`) and how their model
scores become a record. Plans of several metrics can be prefetched together so batches stay full and shared inputs
(the clean image above all) run once. The `evaluate` modules in `hf_fga.metrics` turn records into scores.
Patches are ranked by attribution, descending, with ties broken by patch index (a stable sort).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .runner import PerturbationRunner, Request

QUANTITIES = ("probability", "score")


@dataclass
class SaCoRecord:
    """
    SaCo inputs per image.

    Attributes:
        saliences (`np.ndarray` of shape `(B, K)`): salience sum of each group, groups in descending salience order.
        drops (`np.ndarray` of shape `(B, K)`): Δ of each group perturbed alone.
        groups (`np.ndarray` of shape `(B, N)`): the group index of every patch.
        targets (`np.ndarray` of shape `(B,)`): Ŷ, the class predicted on the clean image.
    """

    saliences: np.ndarray
    drops: np.ndarray
    groups: np.ndarray
    targets: np.ndarray


@dataclass
class FaithfulnessCorrelationRecord:
    """
    Faithfulness Correlation inputs per image.

    Attributes:
        attribution_sums (`np.ndarray` of shape `(B, trials, runs)`): Σ attribution over each random subset.
        drops (`np.ndarray` of shape `(B, trials, runs)`): y(x) − y(x with the subset perturbed), y the target logit.
        subsets (`np.ndarray` of shape `(B, trials, runs, subset_size)`): the patch indices of each subset.
        targets (`np.ndarray` of shape `(B,)`): the target class.
    """

    attribution_sums: np.ndarray
    drops: np.ndarray
    subsets: np.ndarray
    targets: np.ndarray


@dataclass
class CurveRecord:
    """
    Pixel Flipping, deletion or insertion curves per image.

    Attributes:
        curves (`np.ndarray` of shape `(B, N + 1)`): the tracked score after k = 0..N steps.
        order (`np.ndarray` of shape `(B, N)`): the patches in flipping (or insertion) order.
        targets (`np.ndarray` of shape `(B,)`): the tracked class (or output).
    """

    curves: np.ndarray
    order: np.ndarray
    targets: np.ndarray


@dataclass
class Plan:
    """The perturbed inputs a metric needs and how their scores `(R, num_outputs)` become its record."""

    requests: list[Request]
    build: Callable[[np.ndarray], object]


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def ranking(attributions: np.ndarray) -> np.ndarray:
    """Patch indices `(B, N)` by attribution, descending; ties keep patch order."""
    return np.argsort(-attributions, axis=1, kind="stable")


def _mask(num_patches: int, patches: np.ndarray) -> np.ndarray:
    mask = np.zeros(num_patches, dtype=bool)
    mask[patches] = True
    return mask


def plan_saco(
    runner: PerturbationRunner,
    attributions: np.ndarray,
    *,
    num_groups: int | None = 10,
    group_size: int | None = None,
    target: str = "clean",
    fill_key: str,
) -> Plan:
    """
    SaCo (Wu et al. 2024; method.md §5): K groups of (near) equal size from `numpy.array_split` of the ranking,
    K = `num_groups` or ceil(N / `group_size`); one forward per group, the clean forward shared.
    `target="clean"`: Δ = p(Ŷ|x) − p(Ŷ|x_G); `"perturbed_argmax"` (thesis code): Δ = p(Ŷ|x) − max_c p(c|x_G).

    A constant map ranks no patch above another: its group sums would differ only where `array_split` makes groups
    of unequal size (N not divisible by K), and which patches land in the larger groups depends on the patch order,
    so SaCo would take an arbitrary value. Such a map's groups get equal saliences (the mean group sum), so that
    Σ|w| = 0 and its SaCo is 0.0 for any patch order (the `saco` module's definition).
    """
    num_images, num_patches = attributions.shape
    k = num_groups if num_groups is not None else -(-num_patches // group_size)
    if not 2 <= k <= num_patches:
        raise ValueError(f"SaCo needs between 2 and N={num_patches} groups; the settings give K={k}.")
    order = ranking(attributions)
    groups = np.empty_like(order)
    requests, saliences = [], np.empty((num_images, k))
    for image in range(num_images):
        for g, members in enumerate(np.array_split(order[image], k)):
            groups[image, members] = g
            saliences[image, g] = attributions[image, members].sum()
            requests.append(runner.request(image, fill_key, _mask(num_patches, members)))
        if (attributions[image] == attributions[image, 0]).all():
            saliences[image] = saliences[image].mean()

    def build(scores: np.ndarray) -> SaCoRecord:
        targets = runner.targets()
        clean = softmax(runner.clean_scores())[np.arange(num_images), targets]
        perturbed = softmax(scores).reshape(num_images, k, -1)
        if target == "clean":
            after = np.take_along_axis(perturbed, targets[:, None, None], axis=2)[..., 0]
        else:
            after = perturbed.max(axis=2)
        return SaCoRecord(saliences, clean[:, None] - after, groups, targets)

    return Plan(requests, build)


def plan_faithfulness_correlation(
    runner: PerturbationRunner,
    attributions: np.ndarray,
    *,
    runs: int = 100,
    subset_size: int = 20,
    trials: int = 1,
    seed: int = 0,
    fill_key: str,
) -> Plan:
    """
    Faithfulness Correlation (Bhatt et al. 2020; method.md §5): per image and trial t, `runs` subsets of
    `subset_size` distinct patches drawn from `numpy.random.default_rng([seed, image id, t])`, one forward each.
    The draws are sequential, so the first r subsets of a trial do not depend on how many runs follow.
    """
    num_images, num_patches = attributions.shape
    if subset_size > num_patches:
        raise ValueError(
            f"Faithfulness Correlation subsets of {subset_size} patches do not fit in N={num_patches} patches: "
            "override fc_subset_size with a smaller value."
        )
    subsets = np.empty((num_images, trials, runs, subset_size), dtype=np.int64)
    requests = []
    for image in range(num_images):
        for trial in range(trials):
            rng = np.random.default_rng([seed, runner.image_ids[image], trial])
            for run in range(runs):
                subsets[image, trial, run] = rng.choice(num_patches, size=subset_size, replace=False)
                requests.append(runner.request(image, fill_key, _mask(num_patches, subsets[image, trial, run])))
    sums = np.take_along_axis(attributions[:, None, None, :], subsets, axis=3).sum(axis=3)

    def build(scores: np.ndarray) -> FaithfulnessCorrelationRecord:
        targets = runner.targets()
        clean = runner.clean_scores()[np.arange(num_images), targets]
        after = scores.reshape(num_images, trials, runs, -1)[np.arange(num_images), :, :, targets]
        return FaithfulnessCorrelationRecord(sums, clean[:, None, None] - after, subsets, targets)

    return Plan(requests, build)


def _tracked(scores: np.ndarray, targets: np.ndarray, quantity: str) -> np.ndarray:
    """The tracked quantity of `scores (B, S, C)` for each image's target: probability or raw score, `(B, S)`."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity={quantity!r}; expected one of {QUANTITIES}.")
    values = softmax(scores) if quantity == "probability" else scores
    return np.take_along_axis(values, targets[:, None, None], axis=2)[..., 0]


def plan_curve(
    runner: PerturbationRunner,
    attributions: np.ndarray,
    *,
    insert: bool = False,
    fill_key: str | None,
    recompute_mean: bool = False,
    quantity: str = "probability",
) -> Plan:
    """
    Pixel Flipping / deletion (`insert=False`): s_k = score with the top-k patches perturbed, k = 0..N (s_0 is the
    shared clean forward: N new forwards). Insertion (`insert=True`): s_k = score with all but the top-k patches
    perturbed (s_N is the clean forward). `recompute_mean=True` is the thesis code's Pixel Flipping fill (a scalar
    mean recomputed on the partly perturbed image before each step; see `recomputed_scalar_fill`).
    """
    num_images, num_patches = attributions.shape
    order = ranking(attributions)
    requests = []
    for image in range(num_images):
        key = runner.recomputed_mean_key(image, order[image]) if recompute_mean else fill_key
        removed = np.zeros(num_patches, dtype=bool)
        steps = [removed.copy()]
        for patch in order[image]:
            removed[patch] = True
            steps.append(removed.copy())
        requests.extend(runner.request(image, key, ~mask if insert else mask) for mask in steps)

    def build(scores: np.ndarray) -> CurveRecord:
        targets = runner.targets()
        curves = _tracked(scores.reshape(num_images, num_patches + 1, -1), targets, quantity)
        return CurveRecord(curves, order, targets)

    return Plan(requests, build)


def run_plan(runner: PerturbationRunner, plan: Plan):
    """Run a plan's requests (cached ones are not re-run) and build its record."""
    return plan.build(runner.responses(plan.requests))
