"""
The quantity an own-pass attribution method explains: a generic objective, and the model-logit target of method.md §1.

The methods that run their own forward and backward passes (gradient × input, Integrated Gradients, CAAP) explain
any differentiable per-image score, not only a class logit. The CaFE feature explainer (method.md §9), whose target
is an SAE feature's activation at one token, passes its own objective instead of [`logit_objective`].

An objective is a callable `objective(pixel_values, rows) -> scores`:

- `pixel_values` (`Tensor` of shape `(R, C, H, W)`): R model inputs (images, or points on an integration path);
- `rows` (`LongTensor` of shape `(R,)`): the index, in the caller's batch of B images, of the image each input
  belongs to. Integrated Gradients evaluates several interpolation points of every image in one forward pass, so an
  objective with a per-image target (a class, a feature and token) reads it as `target[rows]`;
- returns `scores` (`Tensor` of shape `(R,)`): one differentiable score per input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..introspection import model_dtype, model_logits, prepared_model
from ..onednn import model_linears

Objective = Callable[[Tensor, Tensor], Tensor]


def logit_objective(
    model: PreTrainedModel,
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    record: dict | None = None,
) -> Objective:
    """
    The target score y of method.md §1 as an objective: the pre-softmax logit of class `target[rows]` (CLIP: the
    image–text logit of candidate label `target[rows]`).

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a `CLIPModel`.
        target (`LongTensor` of shape `(B,)`, *optional*): the class explained per image of the caller's batch; `None`
            takes the argmax of each input's own logits (right for a call on the clean images, not for points on an
            integration path: resolve the target on the clean images first).
        text_embeds (`Tensor` of shape `(C, projection_dim)`, *optional*): L2-normalised candidate-label embeddings
            (CLIP only).
        record (`dict`, *optional*): receives `"logits"` `(R, C)` (detached) and `"target"` `(R,)` of the last call.

    Returns:
        `Objective`: `(pixel_values (R, C, H, W), rows (R,)) -> y (R,)`.

    Example:
    ```python
    >>> objective = logit_objective(model, target=torch.tensor([3, 1]))
    >>> y = objective(pixel_values, torch.arange(2))  # (2,)

    ```
    """

    def objective(pixel_values: Tensor, rows: Tensor) -> Tensor:
        logits = model_logits(model, pixel_values, text_embeds)
        chosen = logits.detach().argmax(dim=-1) if target is None else target.to(logits.device)[rows.to(logits.device)]
        if record is not None:
            record["logits"], record["target"] = logits.detach(), chosen
        return logits.gather(1, chosen[:, None])[:, 0]

    return objective


@contextlib.contextmanager
def prepared_objective(
    model: PreTrainedModel,
    pixel_values: Tensor,
    target: Tensor | None = None,
    text_embeds: Tensor | None = None,
    linear_backend: str = "auto",
    clean_forward: bool = False,
    backward_context: Callable[[PreTrainedModel], AbstractContextManager] | None = None,
) -> Iterator[tuple[Objective, Tensor, dict]]:
    """
    The model prepared for own passes (eval, eager attention, frozen parameters, oneDNN linears with input gradients
    where `linear_backend` allows; all restored on exit, also after an exception) and its logit objective.

    Yields `(objective, pixels, record)`: the [`logit_objective`], `pixel_values` on the model's device and dtype,
    and a record of the clean images' `"logits"` `(B, C)` and `"target"` `(B,)`. With `clean_forward=False` the
    objective fills the record on its next call (right when that call is on the clean images, as for gradient ×
    input); with `clean_forward=True` one forward without gradient fills it first (and resolves `target=None` to
    each image's argmax), as methods that evaluate other inputs need (Integrated Gradients). `backward_context`
    (`model -> ContextManager`, e.g. LibraGrad's backward rules) is entered around every pass run inside the block.
    """
    with prepared_model(model):
        pixels = pixel_values.detach().to(model.device, model_dtype(model))

        def stock() -> Tensor:
            return model_logits(model, pixels[:1], text_embeds)

        with contextlib.ExitStack() as stack:
            stack.enter_context(model_linears(model, linear_backend, stock, backward=True))
            if backward_context is not None:
                stack.enter_context(backward_context(model))
            record: dict = {}
            if clean_forward:
                with torch.no_grad():
                    logit_objective(model, target, text_embeds, record)(pixels, torch.arange(len(pixels)))
                yield logit_objective(model, record["target"], text_embeds), pixels, record
            else:
                yield logit_objective(model, target, text_embeds, record), pixels, record
