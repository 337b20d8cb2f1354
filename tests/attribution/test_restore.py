"""The model is left exactly as it was: after a call, after a rejected call, and after a failure mid-way."""

from __future__ import annotations

import pytest
import torch

import hf_fga.attribution.methods.fga as attribution_module
import hf_fga.attribution.methods.transmm as transmm_module
from hf_fga.attribution import FeatureGradientAttribution, compute_mean_residuals
from tests.attribution.tiny_models import clip_label_inputs
from tests.helpers import pixel_batch, tiny_clip, tiny_sae, tiny_vit


def snapshot(model) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (
                dict(m._forward_hooks),
                dict(m._forward_pre_hooks),
                dict(m._backward_hooks),
                dict(getattr(m, "_backward_pre_hooks", {})),
                dict(m._forward_hooks_with_kwargs),
            )
            for n, m in model.named_modules()
        },
        # modules whose forward is overridden on the instance (the oneDNN linears are, only during a call)
        "forwards": {n for n, m in model.named_modules() if "forward" in m.__dict__},
        "attn": [
            getattr(c, "_attn_implementation", None)
            for c in [model.config, *(getattr(model.config, k) for k in model.config.sub_configs)]
        ],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for key in ("requires_grad", "training", "hooks", "forwards", "attn"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"].values())


def unusual_vit():
    """SDPA attention, train mode, and a mix of frozen and trainable parameters: everything must come back."""
    model = tiny_vit(num_layers=3)
    model.set_attn_implementation("sdpa")
    model.train()
    model.vit.layers[0].requires_grad_(False)
    return model


def test_model_restored_after_calls():
    model = unusual_vit()
    before = snapshot(model)
    assert before["attn"][0] == "sdpa"
    attr = FeatureGradientAttribution(model, {1: tiny_sae(layer=1)}, mean_residuals={1: torch.zeros(32)})
    for method in ("transmm", "rollout", "raw-attention"):
        attr.attribute(pixel_batch(2), method=method)
    attr.attribute(pixel_batch(2), method="fga", return_diagnostics=True, return_contributions=True)
    with pytest.warns(UserWarning, match="block 1"):  # block L-2 of a 3-block model: g·x = 0
        attr.attribute(pixel_batch(2), variant="mean-centered")
    compute_mean_residuals(model, [pixel_batch(2)], layers=[0, 2], progress=False)
    assert_same(before, snapshot(model))


def test_clip_restored_after_call():
    model = tiny_clip()
    model.set_attn_implementation("sdpa")
    before = snapshot(model)
    _, text_embeds = clip_label_inputs(model)
    FeatureGradientAttribution(model, {0: tiny_sae(layer=0)}).attribute(pixel_batch(2), text_embeds=text_embeds)
    assert_same(before, snapshot(model))


def test_rejected_call_leaves_model_unchanged():
    model = unusual_vit()
    before = snapshot(model)
    with pytest.raises(ValueError, match="kappa"):
        FeatureGradientAttribution(model, {1: tiny_sae(layer=1)}).attribute(pixel_batch(2), kappa=-1)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize(
    "module, name",
    [(attribution_module, "gates_from_scores"), (transmm_module, "gradient_weighted_attention")],
)
def test_failure_after_hooks_are_installed_restores_model(monkeypatch, module, name):
    model = unusual_vit()
    before = snapshot(model)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(module, name, fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        FeatureGradientAttribution(model, {1: tiny_sae(layer=1)}).attribute(pixel_batch(2), kappa=0.5)
    assert_same(before, snapshot(model))


def test_failure_inside_forward_restores_model():
    model = unusual_vit()
    before = snapshot(model)

    def fail(module, args, output):
        raise RuntimeError("failure inside the forward pass")

    handle = model.vit.layers[1].register_forward_hook(fail)
    before_with_hook = snapshot(model)
    with pytest.raises(RuntimeError, match="inside the forward"):
        FeatureGradientAttribution(model, {1: tiny_sae(layer=1)}).attribute(pixel_batch(2))
    assert_same(before_with_hook, snapshot(model))
    handle.remove()
    assert_same(before, snapshot(model))
