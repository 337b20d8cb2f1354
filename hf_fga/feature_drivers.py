"""
Which SAE features drove FGA's change of a map (method.md §7): the patches whose attribution FGA changed most
against TransMM, and for each the feature that pushed its gate hardest, with its sign.

The one rule, used by the pipeline's `top_features`, the Space and the case studies:

1. **Changed patches.** Both maps of the image are min–max scaled to [0, 1] (the scale every overlay shows: the gates
   rescale the whole FGA map, and an unscaled difference would mostly measure that overall factor); the change of
   patch t is FGA_t − TransMM_t, and patches are ranked by its absolute value (ties keep row-major order).
2. **The driver of a patch.** At gated block ℓ the gate is w_t = exp(ln c_max · tanh(κ ŝ_t)) with
   ŝ_t = (s_t − m) / (1.4826 (MAD + ε)) and s_t = Σ_k c_{t,k}, c_{t,k} = f_t^k (Dᵀ g_t)_k (method.md §3). Feature k's
   push on the gate is its share of the normalised score, p_{t,k} = c_{t,k} / (1.4826 (MAD_ℓ + ε)); the same
   κ and c_max turn ŝ into a gate in every block, so pushes compare across blocks. The driver is the (block,
   feature) with the largest |p_{t,k}| over all gated blocks; it is an **amplifier** when p > 0 (it raised the
   gate), a **suppressor** when p < 0. A patch whose pushes are all 0 has no driver.
3. **Features.** Patches that share a driver and a sign are grouped under it; its `contribution` is the sum of its
   pushes over those patches. A feature that amplifies some patches and suppresses others is listed once per sign.

Everything here reads only `attribution`, `baseline` `(B, h, w)`, `scores` `{block: (B, h, w)}` and `contributions`
`{block: (values (B, N, m), feature indices (B, N, m))}` of an [`AttributionOutput`] computed with
`return_contributions=True` (any object with those four attributes works).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .viz import normalize_map

AMPLIFIER, SUPPRESSOR = "amplifier", "suppressor"
EPS = 1e-8  # the ε of FGA's robust normalisation (method.md §3)

__all__ = [
    "AMPLIFIER",
    "SUPPRESSOR",
    "FeatureDriver",
    "PatchDriver",
    "changed_patches",
    "feature_drivers",
    "patch_change",
    "patch_driver",
    "patch_drivers",
    "score_scale",
]


def patch_change(attribution: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """FGA − TransMM per patch, each map min–max scaled to [0, 1] first; same shape as the maps."""
    attribution, baseline = np.asarray(attribution), np.asarray(baseline)
    if attribution.shape != baseline.shape:
        raise ValueError(
            f"The FGA and TransMM maps must have the same shape, got maps of different shapes {attribution.shape} "
            f"and {baseline.shape}."
        )
    return normalize_map(attribution) - normalize_map(baseline)


def changed_patches(
    attribution: np.ndarray, baseline: np.ndarray, count: int | None = None
) -> list[tuple[int, float]]:
    """
    The `count` (default: all) patches with the largest |change| (see [`patch_change`]), largest first, as
    `(row-major patch index, signed change)`; ties keep row-major order.
    """
    change = patch_change(attribution, baseline).reshape(-1)
    order = np.argsort(-np.abs(change), kind="stable")
    if count is not None:
        order = order[: max(0, count)]
    return [(int(p), float(change[p])) for p in order]


def score_scale(scores: torch.Tensor) -> float:
    """1.4826 · (MAD + ε) of one image's patch scores s_t (lower medians): the divisor that turns s_t into ŝ_t."""
    flat = torch.as_tensor(scores).flatten().double()
    return float(1.4826 * ((flat - flat.median()).abs().median() + EPS))


@dataclass(frozen=True)
class PatchDriver:
    """
    The feature that pushed one patch's gate hardest.

    Args:
        patch (`int`): row-major patch index.
        change (`float`): the patch's signed change FGA − TransMM (maps min–max scaled).
        block (`int`): the gated block whose SAE holds the feature.
        feature (`int`): the feature's index in that SAE.
        push (`float`): its push c_{t,k} / (1.4826 (MAD_ℓ + ε)) on the normalised score ŝ_t (signed).
        sign (`str`): `"amplifier"` (push > 0) or `"suppressor"` (push < 0).
    """

    patch: int
    change: float
    block: int
    feature: int
    push: float
    sign: str


@dataclass(frozen=True)
class FeatureDriver:
    """
    One SAE feature that drove the change of the map on some patches.

    Args:
        block (`int`): the gated block (0-indexed) whose SAE holds the feature.
        index (`int`): the feature's index in that SAE.
        sign (`str`): `"amplifier"` (it raised the gates of its patches) or `"suppressor"` (it lowered them).
        contribution (`float`): the sum of its pushes on the normalised scores ŝ_t of those patches (signed).
        patches (`tuple[int, ...]`): the row-major patch indices it drives, most changed first.
    """

    block: int
    index: int
    sign: str
    contribution: float
    patches: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain Python: `{"index", "sign", "contribution", "patches"}` (the pipeline's `top_features` entries)."""
        return {
            "index": self.index,
            "sign": self.sign,
            "contribution": self.contribution,
            "patches": list(self.patches),
        }


def _scales(output, image: int) -> dict[int, float]:
    return {block: score_scale(output.scores[block][image]) for block in output.contributions}


def _driver(output, image: int, patch: int, change: float, scales: dict[int, float]) -> PatchDriver | None:
    best = None
    for block, (values, indices) in output.contributions.items():
        pushes = values[image, patch].double() / scales[block]
        if pushes.numel() == 0:
            continue
        k = int(pushes.abs().argmax())
        if best is None or abs(float(pushes[k])) > abs(best[2]):
            best = (int(block), int(indices[image, patch, k]), float(pushes[k]))
    if best is None or best[2] == 0.0:
        return None
    block, feature, push = best
    return PatchDriver(patch, change, block, feature, push, AMPLIFIER if push > 0 else SUPPRESSOR)


def patch_driver(output, image: int, patch: int) -> PatchDriver | None:
    """
    The driver of one patch (rule 2 of the module docstring); `None` when the output has no contributions (methods
    and variants that do not read SAE features) or every push on the patch is 0.

    Args:
        output (`AttributionOutput`): computed with `return_contributions=True`.
        image (`int`): the image of the batch.
        patch (`int`): row-major patch index.
    """
    if not output.contributions:
        return None
    change = float(patch_change(output.attribution[image].numpy(), output.baseline[image].numpy()).reshape(-1)[patch])
    return _driver(output, image, patch, change, _scales(output, image))


def _iter_drivers(output, image: int, count: int | None) -> Iterator[PatchDriver]:
    if not output.contributions:
        return
    scales = _scales(output, image)
    for patch, change in changed_patches(output.attribution[image].numpy(), output.baseline[image].numpy(), count):
        driver = _driver(output, image, patch, change, scales)
        if driver is not None:
            yield driver


def patch_drivers(output, image: int = 0, count: int | None = None) -> list[PatchDriver]:
    """
    The drivers (rule 2) of the `count` (default: all) most changed patches of one image, most changed first;
    patches without a driver are left out.
    """
    return list(_iter_drivers(output, image, count))


def feature_drivers(
    output, image: int = 0, *, num_patches: int | None = None, max_features: int | None = None
) -> list[FeatureDriver]:
    """
    The features behind the largest changes of one image's map (rule 3 of the module docstring), strongest
    |contribution| first.

    Patches are visited from the most changed on; the walk stops after `num_patches` patches, or before a patch
    whose driver would be the `max_features + 1`-th distinct (block, feature, sign).

    Args:
        output (`AttributionOutput`): computed with `return_contributions=True`.
        image (`int`, defaults to 0): the image of the batch.
        num_patches (`int`, *optional*): how many of the most changed patches to explain (default: all).
        max_features (`int`, *optional*): stop once this many features were found (default: no limit).

    Returns:
        `list[FeatureDriver]`; empty when the output has no contributions.

    Example:
    ```python
    >>> out = attributor.attribute(pixel_values, return_contributions=True)  # doctest: +SKIP
    >>> [(f.block, f.index, f.sign) for f in feature_drivers(out, 0, max_features=3)]  # doctest: +SKIP
    [(4, 1021, 'amplifier'), (5, 77, 'suppressor'), (4, 9, 'amplifier')]

    ```
    """
    found: dict[tuple[int, int, str], list] = {}
    for driver in _iter_drivers(output, image, num_patches):
        key = (driver.block, driver.feature, driver.sign)
        if key not in found and max_features is not None and len(found) >= max_features:
            break
        entry = found.setdefault(key, [0.0, []])
        entry[0] += driver.push
        entry[1].append(driver.patch)
    drivers = [
        FeatureDriver(block, index, sign, total, tuple(patches))
        for (block, index, sign), (total, patches) in found.items()
    ]
    return sorted(drivers, key=lambda d: abs(d.contribution), reverse=True)
