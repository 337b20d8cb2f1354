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

from ...faithfulness.fills import PatchGrid, derived_seed
from ..objectives import Objective
from .base import ObjectiveMethod, ObjectiveRun, check_integer, register_method
from .integrated_gradients import mean_fill

if TYPE_CHECKING:
    from ..engine import Attributor

DEFAULT_SAMPLES = 512
DEFAULT_PERTURBATIONS_PER_EVAL = 64


def check_counts(n_samples, perturbations_per_eval) -> tuple[int, int]:
    """`n_samples` and `perturbations_per_eval`, each checked to be an integer >= 1."""
    return (
        check_integer("n_samples", n_samples, meaning=f"{DEFAULT_SAMPLES} by default"),
        check_integer(
            "perturbations_per_eval", perturbations_per_eval, meaning=f"{DEFAULT_PERTURBATIONS_PER_EVAL} by default"
        ),
    )


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

    n_samples, perturbations_per_eval = check_counts(n_samples, perturbations_per_eval)
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
class KernelShapMethod(ObjectiveMethod):
    """
    `attribute(pixel_values, method="kernel-shap", n_samples=512, seed=0, perturbations_per_eval=64)`: one clean
    forward (logits and target), then `n_samples` coalitions per image, `perturbations_per_eval` per forward pass.
    """

    name = "kernel-shap"
    description = "KernelSHAP over patches (captum), absent patches shown as the per-image mean fill; seeded"
    gradient_based = False
    options = {"n_samples": DEFAULT_SAMPLES, "seed": 0, "perturbations_per_eval": DEFAULT_PERTURBATIONS_PER_EVAL}

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        options = super().check_options(attributor, **options)
        check_counts(options["n_samples"], options["perturbations_per_eval"])
        check_integer("seed", options["seed"], minimum=0)
        return options

    def explain_objective(self, run: ObjectiveRun, options: Mapping[str, Any]) -> tuple[Tensor, None]:
        with torch.no_grad():
            attribution = kernel_shap(
                run.objective,
                run.pixels,
                mean_fill(run.model, run.pixels),
                run.grid,
                options["n_samples"],
                options["seed"],
                options["perturbations_per_eval"],
            )
        return attribution, None
