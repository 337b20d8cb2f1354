"""
Integrated Gradients (Sundararajan et al. 2017; method.md §8) from the `mean` fill x̄ of method.md §5, with captum's
Gauss–Legendre quadrature: A(p) = Σ_{i∈p} (x_i − x̄_i) ∫₀¹ ∂y/∂x_i(x̄ + α(x − x̄)) dα, summed over the patch's pixels
and channels. Completeness: Σ_p A(p) ≈ y(x) − y(x̄), the quadrature error shrinking as `steps` grows.

Precision: captum (0.9) multiplies the gradients by its quadrature weights cast to float32, so even a float64 model
gets Integrated Gradients accurate to ~1e-8 relative (the completeness gap stops shrinking there), not to float64
rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...faithfulness.fills import PatchGrid, default_normalization, fill_source
from ..objectives import Objective
from .base import ObjectiveMethod, ObjectiveRun, check_integer, register_method

if TYPE_CHECKING:
    from ..engine import Attributor

DEFAULT_STEPS = 32
# inputs per forward/backward pass: one image's 32 steps (ViT-B/16: ~2 GB of activations); None runs all at once
DEFAULT_INTERNAL_BATCH_SIZE = 32


def check_steps(steps) -> int:
    meaning = f"the number of Gauss–Legendre nodes of Integrated Gradients; {DEFAULT_STEPS} by default"
    return check_integer("steps", steps, meaning=meaning)


def check_internal_batch_size(internal_batch_size) -> int | None:
    return check_integer(
        "internal_batch_size",
        internal_batch_size,
        meaning="inputs per forward pass; at least one step of every image is always run together",
        none_means="every step of every image in one pass",
    )


def mean_fill(model, pixel_values: Tensor) -> Tensor:
    """The `mean` fill x̄ of method.md §5 `(B, C, H, W)`: every pixel takes its image's per-channel mean."""
    image_mean, image_std = default_normalization(model)
    return fill_source(pixel_values, "mean", image_mean=image_mean, image_std=image_std).expand_as(pixel_values)


def integrated_gradients(
    objective: Objective,
    pixel_values: Tensor,
    baseline: Tensor,
    grid: PatchGrid,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """
    Integrated Gradients per patch for any objective.

    Args:
        objective (`Objective`): the explained score per image (see [`hf_fga.attribution.objectives`]); it is
            evaluated on batches that mix interpolation points of every image, and reads its per-image target
            through `rows`.
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        baseline (`Tensor` broadcastable to `(B, C, H, W)`): the integration's start x̄ (method.md §8: the `mean`
            fill, [`mean_fill`]).
        grid (`PatchGrid`): the model's patch grid.
        steps (`int`, defaults to 32): Gauss–Legendre nodes, ≥ 1.
        internal_batch_size (`int`, *optional*, defaults to 32): inputs per forward/backward pass (captum's option);
            `None` runs all `steps × B` at once. Values below B run one step of every image per pass.

    Returns:
        `tuple[Tensor, Tensor]`: the attribution `(B, h, w)` and captum's convergence delta `(B,)`,
        Σ_i IG_i − (y(x) − y(x̄)) (the completeness error of the quadrature).
    """
    from captum.attr import IntegratedGradients  # imported on use: captum.attr takes ~1.5 s to import

    steps = check_steps(steps)
    internal_batch_size = check_internal_batch_size(internal_batch_size)
    batch = pixel_values.shape[0]
    if internal_batch_size is not None:
        internal_batch_size = max(internal_batch_size, batch)
    rows = torch.arange(batch, device=pixel_values.device)
    baseline = baseline.to(pixel_values.dtype).expand_as(pixel_values).contiguous()
    explainer = IntegratedGradients(objective)
    pixel_attribution, delta = explainer.attribute(
        pixel_values.detach(),
        baselines=baseline,
        additional_forward_args=(rows,),
        n_steps=steps,
        method="gausslegendre",
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    attribution = grid.patch_sums(pixel_attribution.detach()).reshape(batch, grid.height, grid.width)
    return attribution, delta.detach()


@register_method
class IntegratedGradientsMethod(ObjectiveMethod):
    """
    `attribute(pixel_values, method="integrated-gradients", steps=32, internal_batch_size=32)`: one clean forward
    (logits and target), then `steps` forward and backward passes per image in batches of `internal_batch_size`
    inputs, and captum's two forwards for the convergence delta.
    """

    name = "integrated-gradients"
    description = "Integrated Gradients from the per-image mean fill, Gauss–Legendre quadrature (captum)"
    gradient_based = True
    options = {"steps": DEFAULT_STEPS, "internal_batch_size": DEFAULT_INTERNAL_BATCH_SIZE}

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        options = super().check_options(attributor, **options)
        check_steps(options["steps"])
        check_internal_batch_size(options["internal_batch_size"])
        return options

    def explain_objective(self, run: ObjectiveRun, options: Mapping[str, Any]) -> tuple[Tensor, dict]:
        fill = mean_fill(run.model, run.pixels)
        attribution, delta = integrated_gradients(
            run.objective, run.pixels, fill, run.grid, options["steps"], options["internal_batch_size"]
        )
        return attribution, {"convergence_delta": delta}
