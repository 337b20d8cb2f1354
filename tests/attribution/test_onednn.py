"""
The oneDNN linear path of the attribution pass (`linear_backend`, hf_fga.onednn): the same maps as PyTorch's stock
kernels, exact input gradients, packs that follow weight changes, and the stock path wherever it must be used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.onednn import OneDNNLinears, PackedLinear, onednn_available
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import pixel_batch, tiny_clip, tiny_sae, tiny_vit

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear ops")


def _assert_same_outputs(fast, stock, rtol=1e-4):
    for name in ("attribution", "baseline", "logits"):
        torch.testing.assert_close(getattr(fast, name), getattr(stock, name), rtol=rtol, atol=1e-6, msg=name)
    assert fast.gates.keys() == stock.gates.keys()
    for block in stock.gates:
        torch.testing.assert_close(fast.scores[block], stock.scores[block], rtol=rtol, atol=1e-6)
        torch.testing.assert_close(fast.gates[block], stock.gates[block], rtol=rtol, atol=1e-6)


@needs_onednn
def test_packed_linear_gives_the_stock_output_and_input_gradient():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(7, 5, generator=gen), torch.randn(7, generator=gen)
    x = torch.randn(3, 4, 5, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 4, 7, generator=gen)
    pack = PackedLinear(weight, bias, backward=True)
    (grad_fast,) = torch.autograd.grad((pack(x) * upstream).sum(), x)
    (grad_stock,) = torch.autograd.grad((F.linear(x, weight, bias) * upstream).sum(), x)
    torch.testing.assert_close(pack(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_stock, rtol=1e-5, atol=1e-6)
    # an SAE encoder, given as (in, out): x W + b
    encoder = PackedLinear(weight.T.contiguous(), bias, transposed=True)
    torch.testing.assert_close(encoder(x.detach()), x.detach() @ weight.T + bias, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_trainable_weights_keep_stock_autograd():
    weight = torch.randn(4, 3, requires_grad=True)
    pack = PackedLinear(weight, None, backward=True)
    pack(torch.randn(2, 3)).sum().backward()
    assert weight.grad is not None  # the packed kernel has no weight gradient, so the stock one ran


@needs_onednn
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_vit_maps_match_the_stock_kernels(activation):
    model = tiny_vit(num_layers=4, seed=1)  # blocks 0, 1 are not degenerate (method.md §3)
    saes = {b: tiny_sae(layer=b, activation=activation, seed=b) for b in (0, 1)}
    pixels = pixel_batch(3, seed=1)
    stock = FeatureGradientAttribution(model, saes, linear_backend="default")
    fast = FeatureGradientAttribution(model, saes, linear_backend="onednn")
    for variant in ("combined", "activation", "no-sae"):
        _assert_same_outputs(fast.attribute(pixels, variant=variant), stock.attribute(pixels, variant=variant))
    assert fast.onednn_active and not stock.onednn_active


@needs_onednn
def test_deit_and_clip_maps_match_the_stock_kernels():
    deit = tiny_deit(seed=2)
    saes = {1: tiny_sae(layer=1)}
    pixels = pixel_batch(2, seed=2)
    _assert_same_outputs(
        FeatureGradientAttribution(deit, saes, linear_backend="onednn").attribute(pixels),
        FeatureGradientAttribution(deit, saes, linear_backend="default").attribute(pixels),
    )
    clip = tiny_clip(seed=3)
    _, text = clip_label_inputs(clip)
    _assert_same_outputs(
        FeatureGradientAttribution(clip, saes, linear_backend="onednn").attribute(pixels, text_embeds=text),
        FeatureGradientAttribution(clip, saes, linear_backend="default").attribute(pixels, text_embeds=text),
    )


@needs_onednn
def test_packs_follow_weight_changes_between_calls():
    model = tiny_vit(seed=4)
    sae = tiny_sae(layer=1, seed=4)
    pixels = pixel_batch(2, seed=4)
    fast = FeatureGradientAttribution(model, {1: sae}, linear_backend="onednn")
    stock = FeatureGradientAttribution(model, {1: sae}, linear_backend="default")
    fast.attribute(pixels)
    with torch.no_grad():  # an in-place update, as an optimizer step or load_state_dict makes
        next(m for m in model.vit.layers[0].modules() if isinstance(m, torch.nn.Linear)).weight.mul_(3.0)
        sae.W_enc.mul_(-1.0)
    model.classifier.weight = torch.nn.Parameter(model.classifier.weight.detach() * 2.0)  # a replaced parameter
    _assert_same_outputs(fast.attribute(pixels), stock.attribute(pixels))


@needs_onednn
def test_a_model_that_fails_the_check_uses_the_stock_kernels(monkeypatch):
    from hf_fga import onednn

    monkeypatch.setattr(onednn, "TOLERANCE", -1.0)  # nothing passes
    model, sae, pixels = tiny_vit(seed=5), tiny_sae(layer=1), pixel_batch(2)
    with pytest.warns(UserWarning, match="disagree with the stock forward"):
        out = FeatureGradientAttribution(model, {1: sae}).attribute(pixels)
    stock = FeatureGradientAttribution(model, {1: sae}, linear_backend="default").attribute(pixels)
    torch.testing.assert_close(out.attribution, stock.attribution, rtol=0, atol=0)
    other = tiny_vit(seed=6)
    with pytest.raises(RuntimeError, match="disagree"):
        FeatureGradientAttribution(other, {1: sae}, linear_backend="onednn").attribute(pixels)


def test_backend_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="linear_backend='fast'"):
        FeatureGradientAttribution(model, linear_backend="fast")
    with pytest.raises(ValueError, match="float32 on CPU"):
        FeatureGradientAttribution(model.double(), linear_backend="onednn")
    # float64: 'auto' quietly keeps the stock kernels
    attr = FeatureGradientAttribution(model, {1: tiny_sae(layer=1).double()})
    attr.attribute(pixel_batch(1).double())
    assert not attr.onednn_active


@needs_onednn
def test_the_packs_are_only_on_the_model_during_a_call():
    model = tiny_vit(seed=7)
    FeatureGradientAttribution(model, {1: tiny_sae(layer=1)}).attribute(pixel_batch(2))
    assert not any("forward" in m.__dict__ for m in model.modules())
    packs = OneDNNLinears(model, backward=True)
    assert packs.is_current()
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    assert not packs.is_current()
