"""
The feature case study of method.md §7 for one image: the patches whose attribution FGA changed most against
TransMM, and for each the SAE feature that pushed its gate hardest, with its sign (amplifier or suppressor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hf_fga.viz import normalize_map

AMPLIFIER, SUPPRESSOR = "amplifier", "suppressor"
EPS = 1e-8  # the ε of FGA's robust normalisation (method.md §3)


@dataclass(frozen=True)
class FeatureFinding:
    """
    One SAE feature that drove the change of the attribution on some patches.

    Args:
        block (`int`): the gated block (0-indexed) whose SAE holds the feature.
        index (`int`): the feature's index in that SAE.
        sign (`str`): `"amplifier"` (it raised the gates of its patches) or `"suppressor"` (it lowered them).
        contribution (`float`): its summed push on the normalised scores ŝ_t of those patches (signed).
        patches (`tuple[int, ...]`): the row-major patch indices where it was the strongest contributor.
    """

    block: int
    index: int
    sign: str
    contribution: float
    patches: tuple[int, ...]


def changed_patches(attribution: np.ndarray, baseline: np.ndarray, count: int) -> list[int]:
    """
    The `count` row-major patch indices with the largest |FGA − TransMM|, both maps min–max scaled to [0, 1] first
    (the scale the overlays show; the gated and the plain maps have different magnitudes). Largest change first.
    """
    change = np.abs(normalize_map(attribution) - normalize_map(baseline)).ravel()
    count = max(0, min(count, change.size))
    return [int(i) for i in np.argsort(-change, kind="stable")[:count]]


def score_scale(scores: torch.Tensor) -> float:
    """1.4826 · (MAD + ε) of one image's patch scores s_t (lower medians): the divisor that turns s_t into ŝ_t."""
    flat = scores.flatten().double()
    return float(1.4826 * ((flat - flat.median()).abs().median() + EPS))


def feature_findings(output, index: int = 0, num_patches: int = 8) -> list[FeatureFinding]:
    """
    The features behind the largest changes of one image's map (method.md §7), strongest first.

    For each of the `num_patches` most changed patches, take over all gated blocks the feature contribution
    c_{t,k} = f_t^k (Dᵀg_t)_k with the largest |c_{t,k}| / (1.4826 (MAD_ℓ + ε)), i.e. the largest push on that patch's
    normalised score ŝ_t and hence on its gate. Patches that share a feature and a sign are grouped under it (a feature
    can amplify some patches and suppress others: it is then listed once per sign).

    Args:
        output (`AttributionOutput`): from `FeatureGradientAttribution.attribute(..., return_contributions=True)`.
        index (`int`, defaults to 0): the image of the batch.
        num_patches (`int`, defaults to 8): how many of the most changed patches to explain.

    Returns:
        `list[FeatureFinding]`, sorted by |contribution|; empty when the output has no contributions (variants that
        do not read SAE features, or no SAE).
    """
    if not output.contributions:
        return []
    patches = changed_patches(output.attribution[index].numpy(), output.baseline[index].numpy(), num_patches)
    scales = {block: score_scale(output.scores[block][index]) for block in output.contributions}
    found: dict[tuple[int, int, str], list] = {}
    for patch in patches:
        best = None
        for block, (values, indices) in output.contributions.items():
            pushes = values[index, patch].double() / scales[block]
            if pushes.numel() == 0:
                continue
            k = int(pushes.abs().argmax())
            if best is None or abs(float(pushes[k])) > abs(best[2]):
                best = (block, int(indices[index, patch, k]), float(pushes[k]))
        if best is None or best[2] == 0.0:
            continue
        block, feature, push = best
        entry = found.setdefault((block, feature, AMPLIFIER if push > 0 else SUPPRESSOR), [0.0, []])
        entry[0] += push
        entry[1].append(patch)
    findings = [
        FeatureFinding(block, feature, sign, total, tuple(where))
        for (block, feature, sign), (total, where) in found.items()
    ]
    return sorted(findings, key=lambda f: abs(f.contribution), reverse=True)
