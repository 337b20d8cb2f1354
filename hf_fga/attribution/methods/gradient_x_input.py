"""Gradient × Input (method.md §8): A(p) = Σ_{i∈p} x_i ∂y/∂x_i, summed over the patch's pixels and channels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...faithfulness.fills import PatchGrid
from ..objectives import Objective
from .base import ObjectiveMethod, ObjectiveRun, register_method


def input_gradients(objective: Objective, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
    """
    The objective's scores and their input gradients, with one forward and one backward pass of Σ_b y_b (samples are
    independent, so every image gets its own gradient).

    Args:
        objective (`Objective`): `(pixel_values (B, C, H, W), rows (B,)) -> y (B,)` (see
            [`hf_fga.attribution.objectives`]).
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images, in the dtype and on the device the
            objective's model expects.

    Returns:
        `tuple[Tensor, Tensor]`: y `(B,)` and ∂y/∂x `(B, C, H, W)`, both detached.
    """
    pixels = pixel_values.detach().requires_grad_(True)
    rows = torch.arange(pixels.shape[0], device=pixels.device)
    with torch.enable_grad():
        scores = objective(pixels, rows)
        (grads,) = torch.autograd.grad(scores.sum(), pixels)
    return scores.detach(), grads


def gradient_x_input(objective: Objective, pixel_values: Tensor, grid: PatchGrid) -> tuple[Tensor, Tensor]:
    """
    Gradient × Input per patch for any objective.

    Args:
        objective (`Objective`): the explained score per image (the model logit of method.md §1, or e.g. an SAE
            feature's activation for CaFE).
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        grid (`PatchGrid`): the model's patch grid (`hf_fga.faithfulness.patch_grid(model, pixel_values)`).

    Returns:
        `tuple[Tensor, Tensor]`: the attribution `(B, h, w)` and the explained scores y `(B,)`.

    Example:
    ```python
    >>> grid = patch_grid(model, pixel_values)
    >>> attribution, y = gradient_x_input(logit_objective(model, target), pixel_values, grid)

    ```
    """
    scores, grads = input_gradients(objective, pixel_values)
    attribution = grid.patch_sums(pixel_values.detach() * grads)
    return attribution.reshape(-1, grid.height, grid.width), scores


@register_method
class GradientXInput(ObjectiveMethod):
    """
    `attribute(pixel_values, method="gradient-x-input")`: one forward and one backward pass; the clean logits and the
    argmax target come from that same forward pass.
    """

    name = "gradient-x-input"
    description = "Gradient × Input: x · ∂y/∂x summed over each patch's pixels and channels (one forward + backward)"
    gradient_based = True
    clean_forward = False

    def explain_objective(self, run: ObjectiveRun, options: Mapping[str, Any]) -> tuple[Tensor, None]:
        attribution, _ = gradient_x_input(run.objective, run.pixels, run.grid)
        return attribution, None
