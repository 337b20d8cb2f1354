"""`libragrad=True` on gradient-based methods: the capture's gradients against a float64 reference, errors, restore."""

from __future__ import annotations

import pytest
import torch

from hf_fga.attribution import Attributor, backward_rules
from hf_fga.attribution.completeness import model_completeness_terms
from hf_fga.attribution.rules import libragrad
from tests.attribution.lrp_reference import reference_capture
from tests.attribution.reference import ReferenceCapture, reference_transmm
from tests.attribution.test_restore import assert_same, snapshot, unusual_vit
from tests.attribution.test_rules import KINDS, build
from tests.helpers import pixel_batch, tiny_sae

POINTS = {1: "resid_pre", 2: "resid_post"}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_capture_gradients_match_reference(kind):
    model, text = build(kind)
    pixels, target = pixel_batch(2).double(), torch.tensor([0, 2])
    capture = Attributor(model).capture(pixels, target, text, hook_points=POINTS, backward_context=libragrad)
    expected = reference_capture(model, pixels, target, "prune", text)
    for block, grad in enumerate(capture.attention_grads):
        assert relative_error(grad, expected["attention_grads"][block]) < 1e-10
    assert relative_error(capture.residual_grads[(1, "resid_pre")], expected["hidden_grads"][1]) < 1e-10
    assert relative_error(capture.residual_grads[(2, "resid_post")], expected["hidden_grads"][3]) < 1e-10
    plain = reference_capture(model, pixels, target, "plain", text)
    assert relative_error(plain["hidden_grads"][1], expected["hidden_grads"][1]) > 1e-3  # the rules matter


@pytest.mark.parametrize("kind", KINDS)
def test_transmm_with_libragrad_matches_reference(kind):
    model, text = build(kind)
    pixels, target = pixel_batch(2).double(), torch.tensor([1, 0])
    out = Attributor(model).attribute(pixels, method="transmm", target=target, text_embeds=text, libragrad=True)
    ref = reference_capture(model, pixels, target, "prune", text)
    logits = torch.zeros(2, 1)  # only its batch size is read
    fields = ("attentions", "attention_grads", "hidden", "hidden_grads")
    cap = ReferenceCapture(logits, target, *(ref[key] for key in fields))
    expected = reference_transmm(cap, num_patches=16).reshape(2, 4, 4)
    assert relative_error(out.attribution, expected) < 1e-5
    assert torch.equal(out.attribution, out.baseline)  # the baseline is TransMM of the same (LibraGrad) capture
    plain = Attributor(model).attribute(pixels, method="transmm", target=target, text_embeds=text)
    assert relative_error(plain.attribution, expected) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_completeness_metric_under_libragrad(kind):
    """The library's completeness terms (the metric's inputs) with LibraGrad's rules: < 1e-8 in float64."""
    model, text = build(kind)
    pixels = pixel_batch(2).double()
    ruled = model_completeness_terms(model, pixels, text_embeds=text, backward_context=libragrad)["errors"]
    plain = model_completeness_terms(model, pixels, text_embeds=text)["errors"]
    assert ruled.max() < 1e-8 and plain.min() >= 1e-2, (ruled, plain)


def test_fga_with_libragrad_is_fga_of_the_libragrad_capture():
    model, _ = build("vit", torch.float32)
    attr = Attributor(model, saes={1: tiny_sae(layer=1)})
    pixels = pixel_batch(2)
    out = attr.attribute(pixels, method="fga", libragrad=True)
    capture = attr.capture(pixels, backward_context=backward_rules("libragrad"))
    assert torch.equal(out.attribution, attr.explain(capture, method="fga").attribution)
    assert not torch.equal(out.attribution, attr.attribute(pixels, method="fga").attribution)


def test_grad_cam_with_libragrad_reads_the_libragrad_capture():
    model, _ = build("vit", torch.float32)
    attr = Attributor(model)
    pixels = pixel_batch(2)
    out = attr.attribute(pixels, method="grad-cam", libragrad=True)
    capture = attr.capture(pixels, backward_context=libragrad)
    assert torch.equal(out.attribution, attr.explain(capture, method="grad-cam").attribution)
    assert not torch.equal(out.attribution, attr.attribute(pixels, method="grad-cam").attribution)


@pytest.mark.parametrize("method", ["rollout", "raw-attention", "caap"])
def test_libragrad_refused_without_gradients(method):
    model, _ = build("vit", torch.float32)
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"'{method}' reads none of the model's gradients.*transmm"):
        Attributor(model).attribute(pixel_batch(1), method=method, libragrad=True)
    assert_same(before, snapshot(model))


def test_libragrad_is_chosen_at_capture_time():
    model, _ = build("vit", torch.float32)
    attr = Attributor(model)
    capture = attr.capture(pixel_batch(1))
    with pytest.raises(ValueError, match="backward_context=.*backward_rules\\('libragrad'\\)"):
        attr.explain(capture, method="transmm", libragrad=True)


def test_model_restored_after_libragrad_call_and_failure():
    model = unusual_vit()
    before = snapshot(model)
    attr = Attributor(model, saes={1: tiny_sae(layer=1)})
    attr.attribute(pixel_batch(2), method="transmm", libragrad=True)
    attr.attribute(pixel_batch(2), method="fga", libragrad=True)
    assert_same(before, snapshot(model))

    def fail(module, args, output):
        raise RuntimeError("failure inside the forward pass")

    handle = model.vit.layers[2].register_forward_hook(fail)
    with_hook = snapshot(model)
    with pytest.raises(RuntimeError, match="inside the forward"):
        attr.attribute(pixel_batch(2), method="fga", libragrad=True)
    assert_same(with_hook, snapshot(model))
    handle.remove()
    assert_same(before, snapshot(model))
