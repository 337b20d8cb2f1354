"""`precision="bfloat16"` in the attribution pass and the SAE encoders: maps and gates agree with float32 within
bfloat16 rounding, everything returned is float32, the model is restored exactly, the option is validated."""

from __future__ import annotations

import warnings

import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.evaluation.precision_check import attribution_agreement, top_k_overlap
from tests.attribution.test_restore import assert_same, snapshot, unusual_vit
from tests.helpers import pixel_batch, tiny_sae, tiny_vit


@pytest.fixture(autouse=True)
def _quiet_emulation_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="precision='bfloat16' on this")
        yield


def _setup():
    model = tiny_vit(num_layers=4, seed=1)  # blocks 0, 1 are not degenerate (method.md §3)
    saes = {b: tiny_sae(layer=b, seed=b) for b in (0, 1)}
    return model, saes, pixel_batch(3, seed=1)


# Relative L2 error of bfloat16 against float32 on the tiny random model (measured: TransMM 0.002, rollout 0.0001,
# logits 0.01; FGA's scores g·Df, sums of products of bfloat16 codes and gradients, 0.03–0.05, its gates 0.05–0.09
# after exp(ln c_max · tanh(κ ŝ)), its map 0.06). Bounds: about twice that.
TOLERANCE = {"transmm": 0.01, "rollout": 0.01, "fga": 0.12}


@pytest.mark.parametrize("method", ["transmm", "fga", "rollout"])
def test_bfloat16_maps_agree_with_float32(method):
    model, saes, pixels = _setup()
    out = {p: Attributor(model, saes, precision=p).attribute(pixels, method=method) for p in ("float32", "bfloat16")}
    fp32, bf16 = out["float32"], out["bfloat16"]
    assert torch.equal(bf16.target, fp32.target)
    for name, bound in (("attribution", TOLERANCE[method]), ("logits", 0.02), ("probabilities", 0.02)):
        assert getattr(bf16, name).dtype == torch.float32
        reference = getattr(fp32, name)
        error = (getattr(bf16, name) - reference).norm() / reference.norm()
        assert 0 < error < bound, (name, error)  # bfloat16 really ran, and stayed within its rounding
    for block, gates in fp32.gates.items():
        assert bf16.gates[block].dtype == torch.float32
        assert ((bf16.gates[block] - gates).norm() / gates.norm()) < 0.2
    assert top_k_overlap(bf16.attribution, fp32.attribution, k=4).mean() >= 0.75


def test_agreement_check_on_the_attributor():
    model, saes, pixels = _setup()
    frame = attribution_agreement(lambda p: Attributor(model, saes, precision=p).attribute(pixels), k=4)
    assert set(frame["quantity"]) == {"map", "gates[0]", "gates[1]"} and len(frame) == 9
    assert frame["relative_error"].max() < 0.2


def test_model_restored_after_bfloat16_calls_and_errors():
    model = unusual_vit()
    before = snapshot(model)
    attr = Attributor(model, {1: tiny_sae(layer=1)}, precision="bfloat16")
    attr.attribute(pixel_batch(2), method="fga")
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match="target"):
        attr.attribute(pixel_batch(2), method="fga", target=99)
    assert_same(before, snapshot(model))
    assert next(model.parameters()).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def test_bfloat16_capture_is_float32_and_explains_like_attribute():
    model, saes, pixels = _setup()
    attr = Attributor(model, saes, precision="bfloat16")
    capture = attr.capture(pixels)
    assert not capture.onednn  # the float32 oneDNN packs never serve bfloat16
    tensors = [
        *capture.attentions,
        *capture.attention_grads,
        *capture.residuals.values(),
        *capture.residual_grads.values(),
        capture.logits,
    ]
    assert all(t.dtype == torch.float32 for t in tensors)
    encoder = attr.sae_encoder(0, capture)
    x = capture.residuals[(0, "resid_post")][:, 1:].reshape(-1, 32)
    codes = encoder(x)
    assert codes.dtype == torch.float32
    exact = torch.addmm(saes[0].b_enc, x, saes[0].W_enc)
    assert 0 < ((codes - exact).norm() / exact.norm()) < 0.02
    torch.testing.assert_close(attr.explain(capture).attribution, attr.attribute(pixels).attribution)


@pytest.mark.parametrize("bad", ["bf16", "float16", None])
def test_precision_is_validated(bad):
    with pytest.raises(ValueError, match="expected one of \\('float32', 'bfloat16'\\)"):
        Attributor(tiny_vit(), precision=bad)
