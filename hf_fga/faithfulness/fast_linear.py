"""
Faster inference-only forwards for the perturbation engine: every `nn.Linear` of a model run through oneDNN with
prepacked weights, applied only for the duration of a call, so the user's model is never left modified.

Why: PyTorch's CPU wheels compute `nn.Linear` (`aten::addmm`) with MKL's sgemm. On some CPUs (the AMD EPYC with
AVX-512 this project is developed on) MKL runs far below the oneDNN kernels that ship in the same wheel:
`scripts/bench_faithfulness.py` measures both on the machine at hand. The oneDNN op
(`torch.ops.mkldnn._linear_pointwise`, the one TorchInductor emits for CPU linears) is IEEE float32, so outputs agree
with the stock forward to float32 rounding (the accumulation order differs; relative differences ~1e-6), and it has
no autograd: it is only used under `torch.inference_mode`, for the perturbation forwards whose gradients nobody needs.

Every model is checked once against its stock forward on the first batch (relative difference below `TOLERANCE`);
a model that fails the check, is not float32 on CPU, or runs on a build without oneDNN keeps the stock forward.
Either way one backend serves every input of a run, so a run's scores never mix the two.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

TOLERANCE = 1e-4
BACKENDS = ("auto", "onednn", "default")
# model -> whether its oneDNN forward passed the check (weak keys: a deleted model leaves no entry)
_CHECKED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear ops (CPU builds on x86 and ARM normally do)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):
        return False


def supports_onednn(model: nn.Module) -> bool:
    """Whether `model` can use the oneDNN linears: oneDNN available and every linear weight float32 on CPU."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return (
        onednn_available()
        and bool(linears)
        and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in linears)
    )


class OneDNNLinears:
    """
    Prepacked oneDNN weights for every `nn.Linear` of a model; `with packs.applied(): ...` runs them.

    The packs are taken from the weights at construction; build a new instance after changing the weights.
    """

    def __init__(self, model: nn.Module) -> None:
        if not supports_onednn(model):
            raise ValueError(
                "oneDNN linears need a PyTorch build with oneDNN and a model whose linear weights are float32 on "
                "CPU; use linear_backend='default' for this model."
            )
        self.model = model
        self._packs: list[tuple[nn.Module, Callable[[Tensor], Tensor]]] = []
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    self._packs.append((module, self._packed_forward(module)))

    @staticmethod
    def _packed_forward(module: nn.Linear) -> Callable[[Tensor], Tensor]:
        weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), None)
        bias = None if module.bias is None else module.bias.detach()

        def forward(x: Tensor) -> Tensor:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")

        return forward

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the model's linears through oneDNN inside the block (inference only); restored on exit or error."""
        saved = []
        try:
            for module, forward in self._packs:
                saved.append((module, module.__dict__.get("forward")))
                module.forward = forward
            yield
        finally:
            for module, previous in saved:
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous


def fast_forward(
    model: nn.Module, forward: Callable[[Tensor], Tensor], backend: str = "auto"
) -> Callable[[Tensor], Tensor]:
    """
    `forward` (a function of `pixel_values` that calls `model`) run with oneDNN linears when `backend` allows it.

    Args:
        model (`nn.Module`): the model `forward` calls.
        forward (`Callable[[Tensor], Tensor]`): e.g. `lambda x: model(pixel_values=x).logits`.
        backend (`str`, defaults to `"auto"`): `"auto"` uses oneDNN where supported and checked; `"onednn"` requires
            it (an error if unsupported); `"default"` keeps the stock forward.

    Returns:
        A callable for use under `torch.inference_mode` (the oneDNN op has no autograd).
    """
    if backend not in BACKENDS:
        raise ValueError(f"linear_backend={backend!r}; expected one of {BACKENDS}.")
    if backend == "default" or (backend == "auto" and not supports_onednn(model)):
        return forward
    packs = OneDNNLinears(model)

    def run(pixel_values: Tensor) -> Tensor:
        if _CHECKED.get(model) is None:
            with packs.applied():
                fast = forward(pixel_values)
            stock = forward(pixel_values)
            scale = stock.abs().max().clamp_min(1e-12)
            _CHECKED[model] = bool(((fast - stock).abs().max() / scale) <= TOLERANCE)
            if not _CHECKED[model]:
                message = (
                    f"oneDNN linears disagree with the stock forward of {type(model).__name__} beyond {TOLERANCE:g} "
                    "(relative); using the stock forward."
                )
                if backend == "onednn":
                    raise RuntimeError(message)
                warnings.warn(message, stacklevel=2)
                return stock
            return fast
        if not _CHECKED[model]:
            return forward(pixel_values)
        with packs.applied():
            return forward(pixel_values)

    return run
