"""`precision="bfloat16"` in the perturbation engine: runs, agrees with float32 within bfloat16 rounding, validates its
value, never converts or modifies the model, and keeps responses of the two precisions apart."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from hf_fga.faithfulness import ResponseCache, evaluate_faithfulness, faithfulness_records, make_runner
from hf_fga.precision import PRECISIONS, Float32Accumulation, autocast, bfloat16_is_native, check_precision
from tests.helpers import pixel_batch, tiny_vit

ALL = ("saco", "faithfulness_correlation", "pixel_flipping", "insertion", "deletion")


@pytest.fixture(autouse=True)
def _quiet_emulation_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="precision='bfloat16' on this")
        yield


def _inputs(batch: int = 4):
    model = tiny_vit(seed=3)
    attributions = torch.rand(batch, 4, 4, generator=torch.Generator().manual_seed(0))
    return model, pixel_batch(batch, seed=2), attributions


def _snapshot(model):
    return {name: (p.detach().clone(), p.dtype, p.requires_grad) for name, p in model.named_parameters()}


def _assert_unchanged(model, before):
    for name, p in model.named_parameters():
        value, dtype, requires_grad = before[name]
        assert p.dtype == dtype and p.requires_grad == requires_grad, name
        assert torch.equal(p.detach(), value), name


def test_bfloat16_scores_agree_with_float32_and_leave_the_model_as_it_was():
    model, pixels, attributions = _inputs()
    before = _snapshot(model)
    common = dict(metrics=ALL, progress=False, fc_subset_size=4)
    fp32 = evaluate_faithfulness(model, pixels, attributions, **common)
    bf16 = evaluate_faithfulness(model, pixels, attributions, precision="bfloat16", **common)
    _assert_unchanged(model, before)
    assert next(model.parameters()).dtype == torch.float32
    for name in ALL:
        assert bf16[name].dtype == np.float64 and np.isfinite(bf16[name]).all()
    # bfloat16 keeps 8 significant bits: probabilities move by ~1e-4 here; the curve AUCs follow them
    for name in ("pixel_flipping", "insertion", "deletion"):
        np.testing.assert_allclose(bf16[name], fp32[name], atol=2e-3, err_msg=name)
    np.testing.assert_allclose(bf16["faithfulness_correlation"], fp32["faithfulness_correlation"], atol=0.05)
    # SaCo compares drops that differ by ~1e-3 on a random model, so rounding can swap a few pairs
    np.testing.assert_allclose(bf16["saco"], fp32["saco"], atol=0.2)


def test_bfloat16_curves_are_float64_and_close_to_float32():
    model, pixels, attributions = _inputs(3)
    curves = {
        precision: faithfulness_records(
            model, pixels, attributions, metrics=("pixel_flipping",), progress=False, precision=precision
        )["pixel_flipping"].curves
        for precision in PRECISIONS
    }
    assert curves["bfloat16"].dtype == np.float64
    assert not np.array_equal(curves["bfloat16"], curves["float32"])  # bfloat16 really ran
    np.testing.assert_allclose(curves["bfloat16"], curves["float32"], atol=3e-3)


def test_bfloat16_applies_to_plain_callables():
    seen = []

    def forward(x):
        seen.append(torch.is_autocast_enabled("cpu"))
        return x.mean(dim=(2, 3))

    pixels, attributions = pixel_batch(2), torch.rand(2, 4, 4)
    evaluate_faithfulness(
        forward, pixels, attributions, metrics=("saco",), patch_size=8, progress=False, precision="bfloat16"
    )
    evaluate_faithfulness(forward, pixels, attributions, metrics=("saco",), patch_size=8, progress=False)
    assert seen[0] and not seen[-1]


@pytest.mark.parametrize("bad", ["fp16", "bf16", "float16", None, 16])
def test_precision_is_validated(bad):
    model, pixels, attributions = _inputs(1)
    with pytest.raises(ValueError, match="expected one of \\('float32', 'bfloat16'\\)"):
        evaluate_faithfulness(model, pixels, attributions, progress=False, precision=bad)
    with pytest.raises(ValueError, match="precision="):
        make_runner(model, pixels, precision=bad)
    with pytest.raises(ValueError, match="precision="):
        check_precision(bad)


def test_one_cache_never_mixes_precisions():
    model, pixels, attributions = _inputs(1)
    cache = ResponseCache()
    evaluate_faithfulness(model, pixels, attributions, metrics=("saco",), progress=False, cache=cache)
    with pytest.raises(ValueError, match="another model"):
        evaluate_faithfulness(
            model, pixels, attributions, metrics=("saco",), progress=False, cache=cache, precision="bfloat16"
        )


def test_model_is_restored_after_an_error_under_bfloat16():
    model, pixels, _ = _inputs(2)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="attributions have shape"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 3, 3), progress=False, precision="bfloat16")
    _assert_unchanged(model, before)
    assert not torch.is_autocast_enabled("cpu")


def test_autocast_context():
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_float32_accumulation_gives_the_numbers_of_a_bfloat16_kernel():
    """The emulation on CPUs without bfloat16 kernels: float32 products of bfloat16 operands, rounded to bfloat16."""
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(5, 64, generator=generator), torch.randn(32, 64, generator=generator)
    bias = torch.randn(32, generator=generator)
    q, k = torch.randn(2, 7, 16, generator=generator), torch.randn(2, 16, 9, generator=generator)
    rounded = [t.bfloat16().double() for t in (x, weight, bias, q, k)]
    # float64 reference of a bfloat16 kernel: exact products of the bfloat16 operands, one rounding at the end
    expected_linear = (rounded[0] @ rounded[1].T + rounded[2]).bfloat16()
    expected_bmm = torch.bmm(rounded[3], rounded[4]).bfloat16()
    for grad_mode in (torch.no_grad, torch.inference_mode):  # composite ops arrive undecomposed in inference mode
        with grad_mode(), torch.autocast("cpu", dtype=torch.bfloat16), Float32Accumulation():
            linear, product = F.linear(x, weight, bias), torch.matmul(q, k)
            untouched = torch.mm(x.double(), weight.double().T)  # other dtypes pass through
        assert linear.dtype == product.dtype == torch.bfloat16 and untouched.dtype == torch.float64
        for got, want in ((linear, expected_linear), (product, expected_bmm)):
            # equal up to the order of the float32 sums: at most one bfloat16 rounding step apart
            step = want.double().abs().clamp_min(1e-3) * 2.0**-7
            assert ((got.double() - want.double()).abs() <= step).all()
    assert _get_current_dispatch_mode() is None
    # autocast("bfloat16") on a CPU without native kernels enters the mode, and leaves it
    model, pixel_values, _ = _inputs(2)
    with torch.no_grad(), autocast("cpu", "bfloat16"):
        mode = _get_current_dispatch_mode()
        logits = model(pixel_values=pixel_values).logits
    assert isinstance(mode, Float32Accumulation) != bfloat16_is_native("cpu")
    assert _get_current_dispatch_mode() is None and torch.isfinite(logits).all()
