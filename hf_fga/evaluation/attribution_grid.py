"""
Every attribution map of a configuration grid from ONE forward and ONE backward pass per image batch.

The gates of FGA do not change the forward or the backward pass: every configuration (variant, gated blocks, κ,
c_max), TransMM, rollout and raw attention read the same captured attention maps, residuals and gradients. So the
batch is captured once (with the residuals of every block any configuration gates) and each configuration's map is
derived from that capture, exactly as [`FeatureGradientAttribution.attribute`] derives it from its own capture; the
tests check the two agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..attribution import AttributionOutput, FeatureGradientAttribution
from ..attribution.feature_gradient_attribution import _Options
from .configuration import EvaluationConfiguration

DIAGNOSTIC_KEYS = ("g_dot_centered", "g_dot_error", "g_dot_x")


@dataclass
class GridAttributions:
    """
    What [`attribute_configurations`] returns for one batch of B images.

    Args:
        maps (`dict[str, Tensor]`): per configuration key, the attribution map `(B, h, w)`.
        logits (`Tensor` of shape `(B, C)`), probabilities (`Tensor` of shape `(B, C)`), target (`Tensor (B,)`):
            from the shared pass.
        diagnostics (`dict[int, dict[str, Tensor]]`): per gated block (over every configuration), the `(B,)` means
            over patches of |g·(x − b_dec)|, |g·e| and |g·x| (NaN without an SAE).
        hook_points (`dict[int, str]`): where each gated block's residual was read.
        grid (`tuple[int, int]`): the patch grid.
    """

    maps: dict[str, Tensor]
    logits: Tensor
    probabilities: Tensor
    target: Tensor
    diagnostics: dict[int, dict[str, Tensor]]
    hook_points: dict[int, str]
    grid: tuple[int, int]


def gated_blocks(attr: FeatureGradientAttribution, configuration: EvaluationConfiguration) -> list[int]:
    """The blocks a configuration gates (its `layers`, or the attribution's default when empty), validated."""
    if not configuration.is_gated:
        return []
    return attr._gated_blocks(configuration.variant, list(configuration.layers) or None)


def attribute_configurations(
    attr: FeatureGradientAttribution,
    pixel_values: Tensor,
    configurations: Sequence[EvaluationConfiguration],
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    shuffle_seed: int = 12345,
) -> GridAttributions:
    """
    The maps of every configuration for `pixel_values (B, 3, H, W)` from one forward and one backward pass.

    `target=None` explains each image's predicted class. Configurations are validated (blocks, SAEs, mean residuals,
    κ, c_max) before the pass, with the same errors as `attribute`.
    """
    grid = attr._check_pixels(pixel_values)
    batch = pixel_values.shape[0]
    target = attr._check_target(target, batch, attr._num_classes(text_embeds))
    blocks = {c.key: gated_blocks(attr, c) for c in configurations}
    union = sorted({block for chosen in blocks.values() for block in chosen})
    hook_points = {block: attr.hook_point_of(block) for block in union}

    def options(method: str, variant: str = "combined", kappa: float = 0.5, cmax: float = 10.0, diagnose=False):
        return _Options(method, variant, float(kappa), float(cmax), diagnose, False, 1, shuffle_seed)

    maps: dict[str, Tensor] = {}
    capture = attr._capture(pixel_values, target, hook_points, text_embeds)
    first: AttributionOutput | None = None
    for configuration in configurations:
        if configuration.method == "transmm" and first is not None:
            maps[configuration.key] = first.baseline
            continue
        chosen = {block: hook_points[block] for block in blocks[configuration.key]}
        out = attr._explain(
            capture,
            chosen,
            grid,
            options(configuration.method, configuration.variant or "combined", configuration.kappa or 0.5,
                    configuration.cmax or 10.0),
        )
        first = first or out
        maps[configuration.key] = out.attribution
    diagnostics: dict[int, dict[str, Tensor]] = {}
    if union:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # `no-sae` degeneracy warnings: only the terms are read
            out = attr._explain(capture, hook_points, grid, options("fga", "no-sae", diagnose=True))
        diagnostics = out.diagnostics or {}
    return GridAttributions(
        maps=maps,
        logits=first.logits,
        probabilities=first.probabilities,
        target=first.target,
        diagnostics=diagnostics,
        hook_points=hook_points,
        grid=grid,
    )
