"""
Numeric precision of the heavy passes: the attribution pass (forward and backward), the SAE encoders and the
perturbation forwards of the faithfulness engine.

- `"float32"` (the default): everything in the model's own dtype, as before.
- `"bfloat16"`: the passes run under `torch.autocast(device_type, dtype=torch.bfloat16)` (CPU or CUDA), so matrix
  products take bfloat16 inputs with float32 accumulation. The model is never converted: its parameters, their dtype
  and `requires_grad` are exactly as before every call. Whatever leaves a pass is converted to float32 (scores, maps,
  gates) or float64 (faithfulness responses), so softmax probabilities, the metric arithmetic and the statistics never
  run in bfloat16; Hugging Face's eager attention computes its softmax in float32 under autocast too.

Speed. On CUDA GPUs from Ampere on and on CPUs with native bfloat16 instructions (AVX512-BF16 or AMX, e.g. Intel
Sapphire Rapids, AMD Zen 4 when the hypervisor exposes AVX-512) autocast's bfloat16 matmuls run on oneDNN / cuBLAS
bfloat16 kernels. On CPUs without them (AVX2 only) oneDNN's bfloat16 kernels are an emulation 5–9× *slower* than
float32; there the matrix products of a bfloat16 pass ([`Float32Accumulation`]) run instead as float32 products of
the bfloat16 operands, rounded to bfloat16: the numbers of a bfloat16 kernel with float32 accumulation (what the native
kernels compute), up to the order of the sums, at ~1.4× the float32 time. bfloat16 is still never faster than float32
there: [`bfloat16_is_native`] tells which, and a call that asks for bfloat16 there warns once per process. The
prepacked float32 oneDNN linears ([`hf_fga.onednn`]) serve only `"float32"`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PRECISIONS = ("float32", "bfloat16")
_WARNED: set[str] = set()


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else a ValueError saying what is accepted."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported: expected one of {PRECISIONS} ('float32' is the default; "
            "'bfloat16' runs the model's matrix products in bfloat16 under torch.autocast)."
        )
    return precision


@functools.cache
def bfloat16_is_native(device_type: str) -> bool:
    """
    Whether bfloat16 matmuls run on native kernels on `device_type` (`"cpu"` or `"cuda"`): CUDA devices that support
    bfloat16, CPUs where oneDNN has bfloat16 instructions (AVX512-BF16, AMX, or AVX-512 BW/VL/DQ).
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _warn_if_emulated(device_type: str) -> None:
    if device_type in _WARNED or bfloat16_is_native(device_type):
        return
    _WARNED.add(device_type)
    warnings.warn(
        f"precision='bfloat16' on this {device_type.upper()}: it has no native bfloat16 matrix instructions "
        "(CPU: AVX512-BF16/AMX), so bfloat16 is emulated (float32 products of bfloat16 operands: the same numbers) "
        "and slower than float32 here. Use precision='float32' (the default) for speed on this machine.",
        UserWarning,
        stacklevel=3,
    )


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """
    The context a pass runs in: nothing for `"float32"`, `torch.autocast(device type, torch.bfloat16)` for
    `"bfloat16"` (warning once per process when the device has no native bfloat16 kernels).

    Args:
        device (`torch.device` or `str`): where the pass runs (its type picks the autocast backend).
        precision (`str`): one of `PRECISIONS`.
    """
    check_precision(precision)
    if precision == "float32":
        yield
        return
    device_type = torch.device(device).type
    _warn_if_emulated(device_type)
    emulate = device_type == "cpu" and not bfloat16_is_native("cpu")
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        with Float32Accumulation() if emulate else contextlib.nullcontext():
            yield


class Float32Accumulation(TorchDispatchMode):
    """
    bfloat16 matrix products (`linear`, `matmul`, `conv2d`, `mm`, `addmm`, `bmm`, `baddbmm`, `convolution`) computed as
    float32 products of their bfloat16 operands and rounded back to bfloat16, for CPUs without native bfloat16 kernels
    (entered by [`autocast`] there, inside `torch.autocast`, which still decides what runs in bfloat16).

    A bfloat16 × bfloat16 product is exact in float32, and native bfloat16 GEMMs (oneDNN AVX512-BF16/AMX, cuBLAS)
    accumulate in float32 and round the result to bfloat16: this computes the same numbers up to the order of the
    sums, with the float32 kernels, instead of oneDNN's 5–9× slower bfloat16 emulation. Other operations and other
    dtypes pass through unchanged; autograd's backward products get the same treatment while the mode is active.
    """

    # the composite ops (`linear`, `matmul`, `conv2d`) reach this mode undecomposed under `torch.inference_mode`
    OPERATIONS = frozenset(
        {
            torch.ops.aten.linear.default,
            torch.ops.aten.matmul.default,
            torch.ops.aten.conv2d.default,
            torch.ops.aten.mm.default,
            torch.ops.aten.addmm.default,
            torch.ops.aten.bmm.default,
            torch.ops.aten.baddbmm.default,
            torch.ops.aten.convolution.default,
        }
    )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPERATIONS and any(_is_bfloat16(a) for a in args):
            widened = [a.float() if _is_bfloat16(a) else a for a in args]
            return func(*widened, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


def _is_bfloat16(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16
