"""
KernelSHAP over patches (Lundberg & Lee 2017; captum's `KernelShap`), method.md §8–9: the N patches are the players,
a coalition keeps its patches and replaces the others by the `mean` fill x̄ of method.md §5, and the weighted linear
regression of the Shapley kernel gives one value per patch. Seeded: captum samples coalitions with torch's global
generator, which is forked and reseeded with `seed` before every input, so every input gets the same coalitions and
an input's values do not depend on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...faithfulness.fills import PatchGrid, derived_seed, patch_grid
from ..objectives import Objective, prepared_objective
from .base import AttributionMethod, MethodResult, register_method
from .integrated_gradients import mean_fill

if TYPE_CHECKING:
    from ..engine import Attributor

DEFAULT_SAMPLES = 512
DEFAULT_PERTURBATIONS_PER_EVAL = 64


def _check_positive(name: str, value, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected an integer >= 1 ({default} by default).")
    return value


def kernel_shap(
    objective: Objective,
    pixel_values: Tensor,
    fill: Tensor,
    grid: PatchGrid,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    perturbations_per_eval: int = DEFAULT_PERTURBATIONS_PER_EVAL,
) -> Tensor:
    """
    KernelSHAP values of the N patches for any objective, one input at a time (captum explains one example per call).

    Args:
        objective (`Objective`): `(pixel_values (R, C, H, W), rows (R,)) -> scores (R,)`; `rows` is the index of the
            explained input in `pixel_values` (see [`hf_fga.attribution.objectives`]).
        pixel_values (`Tensor` of shape `(B, C, H, W)`): the inputs explained.
        fill (`Tensor` broadcastable to `(B, C, H, W)`): what an absent patch shows (the `mean` fill, [`mean_fill`]).
        grid (`PatchGrid`): the model's patch grid.
        n_samples (`int`, defaults to 512): coalitions sampled per input.
        seed (`int`, defaults to 0): seeds the coalitions (the same for every input).
        perturbations_per_eval (`int`, defaults to 64): coalitions per forward pass.

    Returns:
        `Tensor` of shape `(B, h, w)`: one Shapley value per patch.
    """
    from captum.attr import KernelShap  # imported on use: captum.attr takes ~1.5 s to import

    n_samples = _check_positive("n_samples", n_samples, DEFAULT_SAMPLES)
    perturbations_per_eval = _check_positive(
        "perturbations_per_eval", perturbations_per_eval, DEFAULT_PERTURBATIONS_PER_EVAL
    )
    batch = pixel_values.shape[0]
    fill = fill.to(pixel_values.dtype).expand_as(pixel_values)
    patches = torch.arange(grid.num_patches, device=pixel_values.device).reshape(1, 1, grid.height, grid.width)
    patch_mask = grid.pixel_mask(patches.reshape(1, -1))  # (1, 1, H, W): the patch index of every pixel
    explainer = KernelShap(objective)
    values = []
    for b in range(batch):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, 0, 0))
            pixel_attribution = explainer.attribute(
                pixel_values[b : b + 1].detach(),
                baselines=fill[b : b + 1],
                additional_forward_args=(torch.tensor([b], device=pixel_values.device),),
                feature_mask=patch_mask.expand(1, pixel_values.shape[1], -1, -1),
                n_samples=n_samples,
                perturbations_per_eval=perturbations_per_eval,
            )
        # captum gives every pixel of a patch the patch's value: read one pixel per patch
        p = grid.patch_size
        values.append(pixel_attribution.detach()[0, 0, ::p, ::p])
    return torch.stack(values)


@register_method
class KernelShapMethod(AttributionMethod):
    """
    `attribute(pixel_values, method="kernel-shap", n_samples=512, seed=0, perturbations_per_eval=64)`: one clean
    forward (logits and target), then `n_samples` coalitions per image, `perturbations_per_eval` per forward pass.
    """

    name = "kernel-shap"
    description = "KernelSHAP over patches (captum), absent patches shown as the per-image mean fill; seeded"
    uses_capture = False
    gradient_based = False
    resolves_target = True
    options = {"n_samples": DEFAULT_SAMPLES, "seed": 0, "perturbations_per_eval": DEFAULT_PERTURBATIONS_PER_EVAL}

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        options = super().check_options(attributor, **options)
        _check_positive("n_samples", options["n_samples"], DEFAULT_SAMPLES)
        _check_positive("perturbations_per_eval", options["perturbations_per_eval"], DEFAULT_PERTURBATIONS_PER_EVAL)
        if isinstance(options["seed"], bool) or not isinstance(options["seed"], int) or options["seed"] < 0:
            raise ValueError(f"seed={options['seed']!r}: expected a non-negative integer.")
        return options

    def attribute(
        self,
        attributor: Attributor,
        pixel_values: Tensor,
        target: Tensor | None,
        text_embeds: Tensor | None,
        options: Mapping[str, Any],
    ) -> MethodResult:
        model = attributor.model
        grid = patch_grid(model, pixel_values)
        with (
            prepared_objective(
                model, pixel_values, target, text_embeds, attributor.linear_backend, clean_forward=True
            ) as (objective, pixels, record),
            torch.no_grad(),
        ):
            attribution = kernel_shap(
                objective,
                pixels,
                mean_fill(model, pixels),
                grid,
                options["n_samples"],
                options["seed"],
                options["perturbations_per_eval"],
            )
        return MethodResult(attribution=attribution, logits=record["logits"], target=record["target"])
