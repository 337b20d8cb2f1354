"""
oneDNN linears with prepacked weights, for the attribution pass (forward and input-gradient backward) and the
perturbation forwards of the faithfulness engine.

Why: PyTorch's CPU wheels compute `nn.Linear` (`aten::addmm`) with MKL's sgemm. On some CPUs (the AMD EPYC with
AVX-512 this project is developed on, where MKL takes its AVX2 path) MKL runs at well under half the speed of the
oneDNN kernels that ship in the same wheel (`scripts/bench_attribution.py` and `scripts/bench_faithfulness.py`
measure both on the machine at hand). The oneDNN op (`torch.ops.mkldnn._linear_pointwise`, the one TorchInductor
emits for CPU linears) is IEEE float32, so results agree with the stock ones to float32 rounding (the accumulation
order differs; relative differences ~1e-6).

The op has no autograd. [`PackedLinear`] adds the one derivative attribution needs: the gradient with respect to the
input, ∂L/∂x = ∂L/∂y · W, computed by the same kernel with a second pack of Wᵀ. Weight and bias gradients are not
computed, so a packed linear whose weight requires a gradient under grad mode runs the stock `F.linear` instead.

Packs are snapshots of the weights: [`PackedLinear.is_current`] tells whether the weight is still the same tensor
at the same version (any in-place update, e.g. an optimizer step or `load_state_dict`, bumps the version), and the
users of this module rebuild stale packs before a call. Every model is checked once against its stock forward
([`check_once`], relative difference below `TOLERANCE`); a model that fails the check, is not float32 on CPU, or
runs on a build without oneDNN keeps the stock path, and one backend serves every input of a run.

Whether the packs pay depends on the CPU: they cost a copy of the linear weights (two with the backward pack) and
the packing time, and gain only where oneDNN's kernels beat MKL's. `linear_backend="auto"` therefore uses oneDNN
only on CPUs where it was measured at least `MIN_SPEEDUP` times faster: AMD CPUs with AVX-512, where MKL takes its
AVX2 path (2x); on an AVX2-only CPU (~1.1x) and on Intel CPUs the stock kernels are kept ([`prefers_onednn`], a fixed
rule of the CPU rather than a timing, so that all processes and resumes of a run use the same kernels;
[`onednn_speedup`] measures the CPU at hand). `"onednn"` forces the packs, `"default"` never uses them.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TOLERANCE = 1e-4
BACKENDS = ("auto", "onednn", "default")
MIN_SPEEDUP = 1.3  # oneDNN must beat the stock kernel by this much for "auto" to pay for the packs' memory
MICRO_BENCHMARK_ROWS = 1024  # rows of the micro-benchmark: a batch of ~5 ViT-B images (the gain shrinks with rows)
MICRO_BENCHMARK_OUTPUTS = 512  # at most this many output features of the largest weight are timed
# model -> whether its oneDNN forward passed the check (weak keys: a deleted model leaves no entry)
_CHECKED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"linear_backend={backend!r}; expected one of {BACKENDS}.")
    return backend


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


def supported_weight(weight: Tensor) -> bool:
    """Whether a weight can be packed: float32 on CPU."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def supports_onednn(model: nn.Module) -> bool:
    """Whether `model` can use the oneDNN linears: oneDNN available and every linear weight float32 on CPU."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return onednn_available() and bool(linears) and all(supported_weight(m.weight) for m in linears)


def onednn_speedup(shape: tuple[int, int], repeats: int = 2) -> float:
    """
    How many times faster oneDNN runs a linear of weight shape `(out, in)` than the stock kernel on this CPU: a
    micro-benchmark of `MICRO_BENCHMARK_ROWS` random rows through (up to `MICRO_BENCHMARK_OUTPUTS` outputs of) such a
    weight, ~0.1 s for ViT-B's MLP. A measurement for benchmarks (`scripts/bench_onednn.py`): timings vary from run
    to run, so "auto" does not decide by it (see [`prefers_onednn`]).
    """
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(min(shape[0], MICRO_BENCHMARK_OUTPUTS), shape[1], generator=gen)
    x = torch.randn(MICRO_BENCHMARK_ROWS, shape[1], generator=gen)
    packed = _pack(weight)
    best = {"stock": float("inf"), "onednn": float("inf")}
    runs = (("stock", lambda: F.linear(x, weight)), ("onednn", lambda: _run(x, packed, None)))
    with torch.inference_mode():
        for _, run in runs:
            run()  # warm-up
        for _ in range(repeats):  # interleaved, so that a busy moment of a shared machine hits both alike
            for name, run in runs:
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    return best["stock"] / best["onednn"]


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def prefers_onednn(weight: Tensor) -> bool:
    """
    Whether "auto" packs the linears on this CPU. The decision is a fixed rule of the CPU, never a timing, so that
    every process of a run, and every resume, uses the same kernels (their float32 sums differ in the last bits): the
    packs pay only where MKL's sgemm takes its AVX2 path although the CPU has AVX-512, i.e. AMD CPUs with AVX-512
    (measured 2x, `onednn_speedup` > `MIN_SPEEDUP`); on AVX2-only CPUs oneDNN gained ~1.1x and on Intel CPUs MKL has
    its own AVX-512 path, so there the stock kernels are kept. `weight` is the model's largest linear weight (kept in
    the signature for rules that depend on the shape).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    return onednn_available() and capability.startswith("AVX512") and _cpu_vendor() == "AuthenticAMD"


def use_onednn(model: nn.Module, backend: str) -> bool:
    """
    Whether a call with `linear_backend=backend` should pack `model`'s linears: never for `"default"` or a model
    oneDNN cannot run; always for `"onednn"`; for `"auto"` when [`prefers_onednn`] holds for its largest linear.
    """
    check_backend(backend)
    if backend == "default" or not supports_onednn(model):
        return False
    if backend == "onednn":
        return True
    largest = max((m.weight for m in model.modules() if isinstance(m, nn.Linear)), key=lambda w: w.numel())
    return prefers_onednn(largest)


def _version(tensor: Tensor | None) -> int | None:
    """The in-place version counter of `tensor` (None for no tensor, or an inference tensor, which has none)."""
    if tensor is None:
        return None
    try:
        return tensor._version
    except RuntimeError:
        return None


def _pack(matrix: Tensor) -> Tensor:
    """`matrix (out, in)` reordered into oneDNN's blocked layout."""
    return torch.ops.mkldnn._reorder_linear_weight(matrix.detach().contiguous(), None)


def _run(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class _InputGradientLinear(torch.autograd.Function):
    """y = x Wᵀ + b through oneDNN; backward gives ∂L/∂x = ∂L/∂y · W (through the pack of Wᵀ) and nothing else."""

    @staticmethod
    def forward(ctx, x: Tensor, packed: Tensor, packed_t: Tensor, bias: Tensor | None) -> Tensor:
        ctx.packed_t = packed_t
        return _run(x, packed, bias)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return _run(grad_output, ctx.packed_t, None), None, None, None


class PackedLinear:
    """
    y = x Wᵀ + b with a prepacked `weight (out, in)`; with `backward=True`, also differentiable with respect to x.

    With `transposed=True`, `weight` is given as `(in, out)` and y = x W + b (an SAE's `W_enc`). `weight` and `bias`
    are read, never modified; `is_current()` says whether the pack still matches them.
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, backward: bool = False, transposed: bool = False
    ) -> None:
        if not onednn_available() or not supported_weight(weight):
            raise ValueError(
                "oneDNN linears need a PyTorch build with oneDNN and float32 weights on CPU; use "
                "linear_backend='default'."
            )
        self.weight, self.bias, self.transposed = weight, bias, transposed
        self._versions = self._current_versions()
        matrix = weight.detach().T if transposed else weight.detach()
        with torch.no_grad():
            self.packed = _pack(matrix)
            self.packed_t = _pack(matrix.T) if backward else None
        self._bias = None if bias is None else bias.detach()

    def _current_versions(self) -> tuple[int | None, int | None]:
        return _version(self.weight), _version(self.bias)

    def is_current(self, weight: Tensor, bias: Tensor | None) -> bool:
        """Whether the pack was taken from these tensors and neither changed since."""
        return weight is self.weight and bias is self.bias and self._versions == self._current_versions()

    def __call__(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
                # parameter gradients are wanted: stock autograd
                return F.linear(x, self.weight.T if self.transposed else self.weight, self.bias)
            if self.packed_t is not None and x.requires_grad:
                return _InputGradientLinear.apply(x, self.packed, self.packed_t, self._bias)
        return _run(x, self.packed, self._bias)


class OneDNNLinears:
    """
    Prepacked oneDNN weights for every `nn.Linear` of a model; `with packs.applied(): ...` runs them.

    Args:
        model (`nn.Module`): float32 on CPU.
        backward (`bool`, defaults to `False`): also pack Wᵀ so that input gradients flow (twice the memory of the
            linear weights); without it the packs serve inference only.

    `is_current()` tells whether every pack still matches its module's weights; build a new instance if not.
    """

    def __init__(self, model: nn.Module, backward: bool = False) -> None:
        if not supports_onednn(model):
            raise ValueError(
                "oneDNN linears need a PyTorch build with oneDNN and a model whose linear weights are float32 on "
                "CPU; use linear_backend='default' for this model."
            )
        # a weak reference: the process-wide cache (`cached_linears`) keys packs weakly by model, and a strong one
        # here would keep every model ever packed alive
        self._model = weakref.ref(model)
        self.backward = backward
        self._packs = [
            (module, PackedLinear(module.weight, module.bias, backward))
            for module in model.modules()
            if isinstance(module, nn.Linear)
        ]

    def is_current(self) -> bool:
        model = self._model()
        if model is None:
            return False
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return len(linears) == len(self._packs) and all(
            module is linear and pack.is_current(module.weight, module.bias)
            for (module, pack), linear in zip(self._packs, linears, strict=True)
        )

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the model's linears through oneDNN inside the block; the modules are restored on exit or error."""
        saved = []
        try:
            for module, pack in self._packs:
                saved.append((module, module.__dict__.get("forward")))
                module.forward = pack
            yield
        finally:
            for module, previous in saved:
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous


def check_once(model: nn.Module, packs: OneDNNLinears, stock: Callable[[], Tensor], backend: str) -> bool:
    """
    Whether `model` may use `packs`: on the first call per model, `stock()` (a forward returning a tensor, e.g. the
    logits of the first batch) is computed with and without the packs, and they must agree within `TOLERANCE`
    (relative to the largest stock value). A failed check warns (or raises for `backend="onednn"`) once.
    """
    if _CHECKED.get(model) is None:
        with torch.inference_mode():
            with packs.applied():
                fast = stock()
            reference = stock()
        scale = reference.abs().max().clamp_min(1e-12)
        _CHECKED[model] = bool(((fast - reference).abs().max() / scale) <= TOLERANCE)
        if not _CHECKED[model]:
            message = (
                f"oneDNN linears disagree with the stock forward of {type(model).__name__} beyond {TOLERANCE:g} "
                "(relative); using the stock forward."
            )
            if backend == "onednn":
                raise RuntimeError(message)
            warnings.warn(message, stacklevel=3)
    return _CHECKED[model]


# model -> its packs, reused across calls while current (weak keys: a deleted model leaves no entry)
_PACKS: weakref.WeakKeyDictionary[nn.Module, OneDNNLinears] = weakref.WeakKeyDictionary()


def cached_linears(model: nn.Module, backward: bool = False) -> OneDNNLinears:
    """
    The packs of `model`, shared by every caller in the process: taken on first use, retaken when the weights change
    or when input gradients are needed and the cached packs serve forwards only (packs with `backward=True` serve
    both, so a model holds at most one set).
    """
    packs = _PACKS.get(model)
    if packs is None or not packs.is_current() or (backward and not packs.backward):
        packs = _PACKS[model] = OneDNNLinears(model, backward=backward)
    return packs


def model_linears(model: nn.Module, backend: str, stock: Callable[[], Tensor], backward: bool = False):
    """
    A context manager that runs `model`'s linears through oneDNN if `backend` allows it for this model, else a
    `contextlib.nullcontext()`.

    The packs are [`cached_linears`]. On the first call per model `stock()` (a forward returning a tensor) is checked
    against the stock kernels ([`check_once`]).

    Args:
        model (`nn.Module`): the model whose `nn.Linear` layers are run.
        backend (`str`): `"auto"`, `"onednn"` (an error if unsupported) or `"default"` (always the stock kernels).
        stock (`Callable[[], Tensor]`): a forward of `model` for the one-time check.
        backward (`bool`, defaults to `False`): input gradients must flow through the linears.

    Example:
    ```python
    >>> stock = lambda: model(pixel_values=pixels[:1]).logits  # doctest: +SKIP
    >>> with model_linears(model, "auto", stock, backward=True):  # doctest: +SKIP
    ...     logits = model(pixel_values=pixels).logits

    ```
    """
    check_backend(backend)
    if backend == "default" or not supports_onednn(model):
        if backend == "onednn":
            raise ValueError(
                "linear_backend='onednn' needs a PyTorch build with oneDNN and a model whose linear weights are "
                "float32 on CPU; use linear_backend='auto' or 'default' for this model."
            )
        return contextlib.nullcontext()
    packs = cached_linears(model, backward)
    if not check_once(model, packs, stock, backend):
        return contextlib.nullcontext()
    return packs.applied()
