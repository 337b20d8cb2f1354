"""Gradient × Input (method.md §8): A(p) = Σ_{i∈p} x_i ∂y/∂x_i, summed over the patch's pixels and channels."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ...faithfulness.baselines import PatchGrid, patch_grid
from ..objectives import Objective, prepared_objective


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


def gradient_x_input_model(
    model: PreTrainedModel,
    pixel_values: Tensor,
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    linear_backend: str = "auto",
) -> dict[str, Tensor]:
    """
    Gradient × Input of the model-logit target (method.md §1): one forward and one backward pass.

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a `CLIPModel`; prepared and restored by this call.
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        target (`LongTensor` of shape `(B,)`, *optional*): explained class per image; `None` takes the argmax.
        text_embeds (`Tensor` of shape `(C, projection_dim)`, *optional*): CLIP's candidate-label embeddings.
        linear_backend (`str`, defaults to `"auto"`): `"auto"`, `"onednn"` or `"default"` (see [`hf_fga.onednn`]).

    Returns:
        `dict[str, Tensor]`: `"attribution"` `(B, h, w)`, `"logits"` `(B, C)`, `"target"` `(B,)`.
    """
    grid = patch_grid(model, pixel_values)
    with prepared_objective(model, pixel_values, target, text_embeds, linear_backend) as (objective, pixels, record):
        attribution, _ = gradient_x_input(objective, pixels, grid)
    return {"attribution": attribution, "logits": record["logits"], "target": record["target"]}
