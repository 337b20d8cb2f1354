"""The registered `cp-lrp` and `attnlrp` methods, and `libragrad=True` on the own-pass gradient methods."""

from __future__ import annotations

import pytest
import torch

from hf_fga import list_methods
from hf_fga.attribution import Attributor
from tests.attribution.lrp_reference import reference_map
from tests.attribution.test_restore import assert_same, snapshot, unusual_vit
from tests.attribution.test_rules import KINDS, build
from tests.helpers import PATCH, pixel_batch

METHOD_RULE = {"cp-lrp": "prune", "attnlrp": "uniform"}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def test_registered():
    methods = list_methods()
    assert "CP-LRP" in methods["cp-lrp"] and "AttnLRP" in methods["attnlrp"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", sorted(METHOD_RULE))
def test_maps_match_float64_reference(kind, method):
    model, text = build(kind)
    pixels, target = pixel_batch(2).double(), torch.tensor([2, 1])
    out = Attributor(model).attribute(pixels, method=method, target=target, text_embeds=text)
    expected = reference_map(model, pixels, target, METHOD_RULE[method], PATCH, text)
    assert out.attribution.shape == (2, 4, 4) and out.baseline is None
    assert relative_error(out.attribution, expected) < 1e-6  # float32 output of float64 maps
    assert torch.equal(out.target, target)


@pytest.mark.parametrize("kind", KINDS)
def test_cp_lrp_is_gradient_x_input_with_libragrad(kind):
    model, text = build(kind)
    pixels = pixel_batch(2).double()
    attr = Attributor(model)
    cp = attr.attribute(pixels, method="cp-lrp", text_embeds=text)
    gxi = attr.attribute(pixels, method="gradient-x-input", text_embeds=text, libragrad=True)
    assert torch.equal(cp.attribution, gxi.attribution)
    expected = reference_map(model, pixels, cp.target, "prune", PATCH, text)
    assert relative_error(gxi.attribution, expected) < 1e-6
    plain = attr.attribute(pixels, method="gradient-x-input", text_embeds=text)
    assert relative_error(plain.attribution, expected) > 1e-3


def test_integrated_gradients_with_libragrad_runs_under_the_rules():
    model, _ = build("vit")
    pixels = pixel_batch(1).double()
    attr = Attributor(model)
    plain = attr.attribute(pixels, method="integrated-gradients")
    ruled = attr.attribute(pixels, method="integrated-gradients", libragrad=True)
    assert relative_error(plain.attribution, ruled.attribution.double()) > 1e-3


@pytest.mark.parametrize("method", sorted(METHOD_RULE))
def test_batch_invariance_clip(method):
    model, text = build("clip", torch.float32)
    pixels, target = pixel_batch(3), torch.tensor([3, 0, 1])
    attr = Attributor(model)
    batch = attr.attribute(pixels, method=method, target=target, text_embeds=text).attribution
    for index in range(3):
        alone = attr.attribute(pixels[index : index + 1], method=method, target=target[index], text_embeds=text)
        assert relative_error(batch[index], alone.attribution[0].double()) < 1e-5


@pytest.mark.parametrize("method", sorted(METHOD_RULE))
def test_libragrad_refused(method):
    model, _ = build("vit", torch.float32)
    with pytest.raises(ValueError, match=rf"'{method}' reads none of the model's gradients"):
        Attributor(model).attribute(pixel_batch(1), method=method, libragrad=True)


@pytest.mark.parametrize("method", sorted(METHOD_RULE))
def test_model_restored_after_call_and_failure(method):
    model = unusual_vit()
    before = snapshot(model)
    attr = Attributor(model)
    attr.attribute(pixel_batch(2), method=method)
    assert_same(before, snapshot(model))

    def fail(module, args, output):
        raise RuntimeError("failure inside the forward pass")

    handle = model.vit.layers[2].mlp.register_forward_hook(fail)
    with_hook = snapshot(model)
    with pytest.raises(RuntimeError, match="inside the forward"):
        attr.attribute(pixel_batch(2), method=method)
    assert_same(with_hook, snapshot(model))
    handle.remove()
    assert_same(before, snapshot(model))
