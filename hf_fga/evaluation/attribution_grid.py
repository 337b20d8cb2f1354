"""
Every attribution map of a configuration grid from ONE forward and ONE backward pass per image batch.

The gates of FGA do not change the forward or the backward pass: every configuration (variant, gated blocks, κ,
c_max), TransMM, rollout and raw attention read the same captured attention maps, residuals and gradients. So the
batch is captured once (with the residuals of every block any configuration gates) and each configuration's map is
derived from that capture, through the attributor's public `capture` / `explain`, exactly as `attribute` derives
it from its own capture; the tests check the two agree.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..attribution import Attributor, get_method
from ..attribution.methods.fga import VARIANT_OPTIONS, parse_variant
from ..attribution.rules import backward_rules
from .configuration import EvaluationConfiguration, split_modifier

DIAGNOSTIC_KEYS = ("g_dot_centered", "g_dot_error", "g_dot_x")


@dataclass
class GridAttributions:
    """
    What [`attribute_configurations`] returns for one batch of B images.

    Args:
        maps (`dict[str, Tensor]`): per configuration key, the attribution map `(B, h, w)`.
        seconds (`dict[str, float]`): per configuration key, the wall seconds its map took for the batch as if run
            alone: its capture (forward + backward, shared with the other configurations of the same backward rules)
            plus its own `explain`, or its own passes.
        logits (`Tensor` of shape `(B, C)`), probabilities (`Tensor` of shape `(B, C)`), target (`Tensor (B,)`):
            from the shared pass.
        diagnostics (`dict[int, dict[str, Tensor]]`): per gated block (over every configuration), the `(B,)` means
            over patches of |g·(x − b_dec)|, |g·e| and |g·x| (NaN without an SAE).
        hook_points (`dict[int, str]`): where each gated block's residual was read.
        grid (`tuple[int, int]`): the patch grid.
    """

    maps: dict[str, Tensor]
    seconds: dict[str, float]
    logits: Tensor
    probabilities: Tensor
    target: Tensor
    diagnostics: dict[int, dict[str, Tensor]]
    hook_points: dict[int, str]
    grid: tuple[int, int]


def method_options(
    configuration: EvaluationConfiguration, shuffle_seed: int = 12345, variant_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """
    The `attribute` / `explain` options of a configuration (the gate settings for FGA, none otherwise). A control
    variant's parameter comes from its key (`error-scaled@0.5`, [`parse_variant`]); its other options (e.g. the
    `feature_importance` of `selective`) from `variant_options`, passed only to the variant that reads them.
    """
    if not configuration.is_gated:
        return configuration.options
    variant, parameter = parse_variant(split_modifier(configuration.variant)[0] or "combined")
    own = VARIANT_OPTIONS.get(variant, {})
    return dict(
        variant=variant,
        layers=list(configuration.layers) or None,
        kappa=configuration.kappa or 0.5,
        cmax=configuration.cmax or 10.0,
        shuffle_seed=shuffle_seed,
        **{name: value for name, value in (variant_options or {}).items() if name in own},
        **parameter,
    )


def hook_points(
    attr: Attributor, configuration: EvaluationConfiguration, variant_options: Mapping[str, Any] | None = None
) -> dict[int, str]:
    """The residuals a configuration reads, `{block: hook_point}`; validates blocks, SAEs, mean residuals, κ, c_max."""
    method = get_method(configuration.method)
    options = method_options(configuration, variant_options=variant_options)
    return method.hook_points(attr, method.check_options(attr, **options))


def gated_blocks(
    attr: Attributor, configuration: EvaluationConfiguration, variant_options: Mapping[str, Any] | None = None
) -> list[int]:
    """The blocks a configuration gates (its `layers`, or the attribution's default when empty), validated."""
    return sorted(hook_points(attr, configuration, variant_options))


def attribute_configurations(
    attr: Attributor,
    pixel_values: Tensor,
    configurations: Sequence[EvaluationConfiguration],
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    shuffle_seed: int = 12345,
    variant_options: Mapping[str, Any] | None = None,
) -> GridAttributions:
    """
    The maps of every configuration for `pixel_values (B, 3, H, W)` from one forward and one backward pass (methods
    that run their own passes, such as Integrated Gradients or CAAP, run them on top, for the capture's target).

    `target=None` explains each image's predicted class. Configurations are validated (blocks, SAEs, mean residuals,
    κ, c_max) before the pass, with the same errors as `attribute`. `variant_options` as in [`method_options`].
    """
    union: dict[int, str] = {}
    for configuration in configurations:
        union.update(hook_points(attr, configuration, variant_options))
    union = dict(sorted(union.items()))
    captures, capture_seconds = {}, {}
    for libragrad in sorted({c.libragrad for c in configurations if get_method(c.method).uses_capture} | {False}):
        start = time.perf_counter()
        captures[libragrad] = attr.capture(
            pixel_values,
            target=target if not libragrad else captures[False].target,
            text_embeds=text_embeds,
            hook_points=union,
            backward_context=backward_rules("libragrad") if libragrad else None,
        )
        capture_seconds[libragrad] = time.perf_counter() - start
    capture = captures[False]
    maps, seconds = {}, {}
    for c in configurations:
        options = method_options(c, shuffle_seed, variant_options)
        start = time.perf_counter()
        if get_method(c.method).uses_capture:
            maps[c.key] = attr.explain(captures[c.libragrad], method=c.method, **options).attribution
            seconds[c.key] = capture_seconds[c.libragrad] + time.perf_counter() - start
        else:  # a method with its own passes (integrated gradients, CAAP, …), explaining the capture's target
            maps[c.key] = attr.attribute(
                pixel_values,
                method=c.method,
                target=capture.target,
                text_embeds=text_embeds,
                libragrad=c.libragrad,
                **options,
            ).attribution
            seconds[c.key] = time.perf_counter() - start
    shared = attr.explain(capture, method="transmm")
    diagnostics: dict[int, dict[str, Tensor]] = {}
    if union:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # `no-sae` degeneracy warnings: only the terms are read
            out = attr.explain(capture, method="fga", variant="no-sae", layers=list(union), return_diagnostics=True)
        diagnostics = out.diagnostics or {}
    return GridAttributions(
        maps=maps,
        seconds=seconds,
        logits=shared.logits,
        probabilities=shared.probabilities,
        target=shared.target,
        diagnostics=diagnostics,
        hook_points=union,
        grid=capture.grid,
    )
