"""
Faster inference-only forwards for the perturbation engine: every `nn.Linear` of a model run through oneDNN with
prepacked weights ([`hf_fga.onednn`]), applied only for the duration of a call, so the user's model is never left
modified. The packs are rebuilt when the model's weights change between calls.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..onednn import OneDNNLinears, check_once, onednn_available, supports_onednn, use_onednn

__all__ = ["OneDNNLinears", "fast_forward", "onednn_available", "supports_onednn"]


def fast_forward(
    model: nn.Module, forward: Callable[[Tensor], Tensor], backend: str = "auto"
) -> Callable[[Tensor], Tensor]:
    """
    `forward` (a function of `pixel_values` that calls `model`) run with oneDNN linears when `backend` allows it.

    Args:
        model (`nn.Module`): the model `forward` calls.
        forward (`Callable[[Tensor], Tensor]`): e.g. `lambda x: model(pixel_values=x).logits`.
        backend (`str`, defaults to `"auto"`): `"auto"` uses oneDNN where supported, checked, and faster than the
            stock kernels on this CPU ([`hf_fga.onednn.use_onednn`]); `"onednn"` requires it (an error if
            unsupported); `"default"` keeps the stock forward.

    Returns:
        A callable for inference (the packs carry no gradients).
    """
    if not use_onednn(model, backend) and backend != "onednn":
        return forward
    packs = [OneDNNLinears(model)]

    def run(pixel_values: Tensor) -> Tensor:
        if not packs[0].is_current():
            packs[0] = OneDNNLinears(model)
        if not check_once(model, packs[0], lambda: forward(pixel_values), backend):
            return forward(pixel_values)
        with packs[0].applied():
            return forward(pixel_values)

    return run
