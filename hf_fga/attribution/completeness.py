"""
FullGrad completeness (method.md §8): how far a gradient is from decomposing the target exactly,

    error = |y − Σ_i x_i g_i − Σ_b b · ∂y/∂b| / |y|,

with g = ∂y/∂x the input gradient the method uses and b over every bias-like parameter: biases (linear, convolution,
LayerNorm β), position embeddings, the CLS token, the distillation token (and register tokens). A ViT is not positively
homogeneous in (x, b) under plain autograd (LayerNorm's σ, GELU, softmax), so the error is large; under LibraGrad's
backward rules it is ≈ 0 (float64: < 1e-8). Pass such rules as `backward_context`.

Parameter gradients are summed over a batch, so the terms are computed image by image (one forward and one backward
each). The scoring of the terms is the `completeness` `evaluate` module (`hf_fga.metrics.metric_path("completeness")`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..introspection import prepared_model
from .objectives import Objective, logit_objective

# Parameters that enter the model additively, besides every `*.bias`: matched against any component of the name.
BIAS_LIKE_NAMES = (
    "position_embedding",
    "position_embeddings",
    "cls_token",
    "distillation_token",
    "class_embedding",
    "register_tokens",
)


def bias_like_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The bias-like parameters of `model` by name: every `*.bias`, and the position embeddings and extra tokens."""
    found = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if parts[-1] == "bias" or any(part in BIAS_LIKE_NAMES for part in parts):
            found[name] = param
    return found


def completeness_terms(
    objective: Objective, pixel_values: Tensor, parameters: dict[str, nn.Parameter]
) -> dict[str, Tensor]:
    """
    The three terms of the completeness error for any objective, image by image.

    Args:
        objective (`Objective`): `(pixel_values (R, C, H, W), rows (R,)) -> y (R,)`.
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        parameters (`dict[str, nn.Parameter]`): the bias-like parameters b; they must require gradients (the
            model-level [`model_completeness_terms`] arranges it).

    Returns:
        `dict[str, Tensor]` of `(B,)` float64 tensors: `"scores"` y, `"input_terms"` Σ_i x_i g_i, `"bias_terms"`
        Σ_b b·∂y/∂b, and `"errors"` the relative error.
    """
    params = list(parameters.values())
    scores, input_terms, bias_terms = [], [], []
    for index in range(pixel_values.shape[0]):
        pixels = pixel_values[index : index + 1].detach().requires_grad_(True)
        with torch.enable_grad():
            y = objective(pixels, torch.tensor([index], device=pixels.device))[0]
            grads = torch.autograd.grad(y, [pixels, *params], allow_unused=True)
        scores.append(y.detach().double())
        input_terms.append((pixels.detach().double() * grads[0].double()).sum())
        pairs = zip(params, grads[1:], strict=True)
        bias = [(p.detach().double() * g.double()).sum() for p, g in pairs if g is not None]
        bias_terms.append(torch.stack(bias).sum() if bias else y.new_zeros((), dtype=torch.float64))
    result = {
        "scores": torch.stack(scores),
        "input_terms": torch.stack(input_terms),
        "bias_terms": torch.stack(bias_terms),
    }
    result["errors"] = completeness_error(**result)
    return result


def completeness_error(scores: Tensor, input_terms: Tensor, bias_terms: Tensor) -> Tensor:
    """|y − Σ x g − Σ b ∂y/∂b| / |y| per image `(B,)`; an error names the image if y = 0 (undefined)."""
    if (scores == 0).any():
        index = int((scores == 0).nonzero()[0, 0])
        raise ValueError(
            f"The target score of image {index} is exactly 0, so its relative completeness error is undefined."
        )
    return (scores - input_terms - bias_terms).abs() / scores.abs()


def model_completeness_terms(
    model: PreTrainedModel,
    pixel_values: Tensor,
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    backward_context: Callable[[PreTrainedModel], AbstractContextManager] | None = None,
) -> dict[str, Tensor]:
    """
    The completeness terms of the model-logit target (method.md §1) of a ViT-family classifier or a CLIPModel, with
    plain gradients or, through `backward_context`, the backward rules a method uses (e.g. LibraGrad's).

    Args:
        model ([`PreTrainedModel`]): prepared (eval, eager attention) and restored exactly by this call.
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        target (`LongTensor` of shape `(B,)`, *optional*): explained class per image; `None` takes the argmax.
        text_embeds (`Tensor` of shape `(C, projection_dim)`, *optional*): CLIP's candidate-label embeddings.
        backward_context (`Callable`, *optional*): `model -> ContextManager` entered around every forward and backward
            pass (the backward rules of the gradients being measured).

    Returns:
        `dict[str, Tensor]` of `(B,)` float64 tensors: `"scores"`, `"input_terms"`, `"bias_terms"`, `"errors"`.

    Example:
    ```python
    >>> terms = model_completeness_terms(model.double(), pixel_values.double())
    >>> terms["errors"]  # large for plain gradients, < 1e-8 under LibraGrad in float64

    ```
    """
    with prepared_model(model):
        parameters = bias_like_parameters(model)
        for param in parameters.values():
            param.requires_grad_(True)  # restored by prepared_model
        pixels = pixel_values.detach().to(model.device, next(model.parameters()).dtype)
        objective = logit_objective(model, target, text_embeds)
        with backward_context(model) if backward_context is not None else contextlib.nullcontext():
            return completeness_terms(objective, pixels, parameters)
