"""
One forward and one backward pass that capture what every attribution method reads (method.md §1–3):

- the attention probabilities A_ℓ `(B, H, T, T)` of every block (after softmax; dropout is the identity in eval mode)
  and their gradients ∂y/∂A_ℓ,
- the residual stream x at the requested hook points (`resid_pre` = input of block ℓ, `resid_post` = its output) and
  its gradient g = ∂y/∂x,

with y the target score of each image (§1). The gradients of the whole batch come from one backward pass of Σ_b y_b.
The model is put in eval mode with eager attention and frozen parameters for the call and restored exactly afterwards,
also when an exception is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from ..introspection import (
    model_dtype,
    model_logits,
    register_attention_hooks,
    register_residual_hooks,
    vision_layers,
)

# `backward_context(model)` is entered around the forward and backward pass (e.g. LibraGrad's backward rules)
BackwardContext = Callable[[PreTrainedModel], AbstractContextManager]


@dataclass
class Capture:
    """
    What one forward/backward pass recorded; made by [`Attributor.capture`], read by any number of
    [`Attributor.explain`] calls.

    Args:
        logits (`Tensor` of shape `(B, C)`): the target scores of every class / candidate label (detached).
        target (`Tensor` of shape `(B,)`): the class whose score y was back-propagated.
        attentions (`list[Tensor]`, L tensors of shape `(B, H, T, T)`): attention probabilities per block.
        attention_grads (`list[Tensor]`, same shapes): ∂y/∂A_ℓ.
        residuals (`dict[tuple[int, str], Tensor]`, `(B, T, d)`): x at each requested `(block, hook_point)`.
        residual_grads (`dict[tuple[int, str], Tensor]`, `(B, T, d)`): ∂y/∂x there.
        grid (`tuple[int, int]`, *optional*): the patch grid (h, w) of the images.
        onednn (`bool`, defaults to `False`): whether the pass ran the model's linears through oneDNN (then the SAE
            encoders of the maps derived from it may too).
        cache (`dict`): results derived from this capture that several maps share (the SAE codes of a block, the
            gradient-weighted attention), so deriving many configurations from one capture computes each once.
    """

    logits: Tensor
    target: Tensor
    attentions: list[Tensor]
    attention_grads: list[Tensor]
    residuals: dict[tuple[int, str], Tensor]
    residual_grads: dict[tuple[int, str], Tensor]
    grid: tuple[int, int] | None = None
    onednn: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def hook_points(self) -> dict[int, str]:
        """Where the residual of each recorded block was read, `{block: hook_point}`."""
        return {block: point for block, point in self.residuals}


def install_hooks(
    model: PreTrainedModel,
    handles: list[RemovableHandle],
    hook_points: Mapping[int, str],
    store: dict,
    capture_attentions: bool = True,
) -> None:
    """
    Register the forward hooks that fill `store["attentions"][ℓ]` and `store["residuals"][(ℓ, hook_point)]`.

    The handles are appended to `handles` (removed by [`prepared_model`] on exit).
    """
    attentions = store.setdefault("attentions", {})
    residuals = store.setdefault("residuals", {})
    if capture_attentions:
        handles.extend(register_attention_hooks(model, attentions.__setitem__))

    def record(block: int, point: str, x: Tensor) -> None:
        residuals[(block, point)] = x

    handles.extend(register_residual_hooks(model, hook_points, record))


def run_capture(
    model: PreTrainedModel,
    handles: list[RemovableHandle],
    pixel_values: Tensor,
    target: Tensor | None,
    hook_points: Mapping[int, str],
    text_embeds: Tensor | None = None,
) -> Capture:
    """
    One forward pass and one backward pass of Σ_b y_b (must run inside [`prepared_model`], which owns `handles`).

    `target=None` takes each image's argmax. Only the captured tensors receive gradients (`torch.autograd.grad`), so
    no `.grad` is left anywhere.
    """
    store: dict = {}
    install_hooks(model, handles, hook_points, store)
    pixels = pixel_values.detach().to(model.device, model_dtype(model)).requires_grad_(True)
    with torch.enable_grad():
        logits = model_logits(model, pixels, text_embeds)
        if target is None:
            target = logits.detach().argmax(dim=-1)
        target = target.to(logits.device)
        y = logits.gather(1, target[:, None]).sum()
        num_layers = len(vision_layers(model))
        attentions = [store["attentions"][index] for index in range(num_layers)]
        keys = list(store["residuals"])
        residuals = [store["residuals"][key] for key in keys]
        grads = torch.autograd.grad(y, attentions + residuals, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(attentions + residuals, grads, strict=True)]
    return Capture(
        logits=logits.detach(),
        target=target.detach(),
        attentions=[a.detach() for a in attentions],
        attention_grads=grads[:num_layers],
        residuals={key: x.detach() for key, x in zip(keys, residuals, strict=True)},
        residual_grads=dict(zip(keys, grads[num_layers:], strict=True)),
    )
