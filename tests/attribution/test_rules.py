"""The backward rules (LN, gate, softmax pruning, uniform): forward unchanged, completeness, reference maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.activations import ACT2FN

from hf_fga.attribution.rules import RULE_SETS, attnlrp, backward_rules, cp_lrp, libragrad
from hf_fga.introspection import model_logits
from tests.attribution.lrp_reference import reference_map
from tests.attribution.test_restore import assert_same, snapshot
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import PATCH, pixel_batch, tiny_clip, tiny_vit

KINDS = ("vit", "deit", "clip")
REFERENCE_RULE = {"libragrad": "prune", "cp-lrp": "prune", "attnlrp": "uniform"}


def build(kind: str, dtype: torch.dtype = torch.float64):
    """A tiny model of `kind` in `dtype` and its CLIP label embeddings (None for classifiers)."""
    model = {"vit": tiny_vit, "deit": tiny_deit, "clip": tiny_clip}[kind]().to(dtype)
    text = clip_label_inputs(model)[1].to(dtype) if kind == "clip" else None
    return model, text


def gradient_x_input(model, pixels, target, rules=None, text=None) -> torch.Tensor:
    """Σ over each patch's pixels and channels of x ⊙ ∂y/∂x, with the rule set `rules` (or plain gradients)."""
    x = pixels.detach().clone().requires_grad_(True)
    context = rules(model) if rules is not None else torch.enable_grad()
    with context:
        y = model_logits(model, x, text).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(y, x)
    batch, channels, height, width = x.shape
    return (x * grad).detach().reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH).sum((1, 3, 5))


def completeness_errors(model, pixels, text=None, rules=None) -> list[float]:
    """|y − Σ x g − Σ b ∂y/∂b| / |y| image by image, b over every bias-like parameter (written out here)."""
    bias_like = ("bias", "position_embeddings", "cls_token", "distillation_token", "class_embedding")
    params = [
        p
        for n, p in model.named_parameters()
        if n.split(".")[-1] in bias_like or n.endswith("position_embedding.weight")
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    errors = []
    for index in range(pixels.shape[0]):
        x = pixels[index : index + 1].clone().requires_grad_(True)
        with rules(model) if rules is not None else torch.enable_grad():
            y = model_logits(model, x, text)[0, 0]
            grads = torch.autograd.grad(y, [x, *params], allow_unused=True)
        total = (x * grads[0]).sum()
        total = total + sum((p * g).sum() for p, g in zip(params, grads[1:], strict=True) if g is not None)
        errors.append(float((y - total).abs().detach() / y.abs().detach()))
    return errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_forward_output_bit_identical(kind, name):
    model, text = build(kind, torch.float32)
    pixels = pixel_batch(2).requires_grad_(True)
    plain = model_logits(model, pixels, text)
    with backward_rules(name)(model):
        ruled = model_logits(model, pixels, text)
    assert torch.equal(plain, ruled)


@pytest.mark.parametrize("kind", KINDS)
def test_libragrad_is_fullgrad_complete(kind):
    model, text = build(kind)
    pixels = pixel_batch(3).double()
    with_rules = completeness_errors(model, pixels, text, libragrad)
    plain = completeness_errors(model, pixels, text)
    assert max(with_rules) < 1e-8, with_rules
    assert min(plain) >= 1e-2, plain


@pytest.mark.parametrize(
    "activation",
    [
        "gelu",
        "gelu_python",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "quick_gelu",
        "silu",
        "swish",
        "relu",
        "linear",
    ],
)
def test_gate_rule_covers_activations(activation):
    """Completeness holds only if the gate rule's φ is the activation's own: x·φ(x) = act(x) to rounding."""
    model, _ = build("vit")
    for layer in model.vit.layers:
        layer.mlp.activation_fn = ACT2FN[activation].double()
    assert max(completeness_errors(model, pixel_batch(2).double(), rules=libragrad)) < 1e-8


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_maps_match_float64_reference(kind, name):
    model, text = build(kind)
    pixels = pixel_batch(2).double()
    target = torch.tensor([0, 2])
    expected = reference_map(model, pixels, target, REFERENCE_RULE[name], PATCH, text)
    actual = gradient_x_input(model, pixels, target, RULE_SETS[name], text)
    assert (actual - expected).abs().max() <= 1e-10 * expected.abs().max()
    plain = gradient_x_input(model, pixels, target, None, text)
    assert (plain - expected).abs().max() > 1e-3 * expected.abs().max()  # the rules change the map


@pytest.mark.parametrize("kind", KINDS)
def test_cp_lrp_coincides_with_libragrad_gradient_x_input(kind):
    model, text = build(kind)
    pixels, target = pixel_batch(2).double(), torch.tensor([1, 0])
    cp = gradient_x_input(model, pixels, target, cp_lrp, text)
    assert torch.equal(cp, gradient_x_input(model, pixels, target, libragrad, text))
    assert not torch.allclose(cp, gradient_x_input(model, pixels, target, attnlrp, text))


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_batch_invariance(name):
    model, text = build("clip", torch.float32)
    pixels, target = pixel_batch(3), torch.tensor([2, 0, 1])
    batch = gradient_x_input(model, pixels, target, RULE_SETS[name], text)
    for index in range(3):
        alone = gradient_x_input(model, pixels[index : index + 1], target[index : index + 1], RULE_SETS[name], text)
        assert (batch[index] - alone[0]).abs().max() <= 1e-5 * alone.abs().max()


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_any_attention_implementation(name):
    eager, _ = build("vit")
    sdpa, _ = build("vit")
    sdpa.set_attn_implementation("sdpa")
    pixels, target = pixel_batch(2).double(), torch.tensor([0, 1])
    expected = gradient_x_input(eager, pixels, target, RULE_SETS[name])
    actual = gradient_x_input(sdpa, pixels, target, RULE_SETS[name])
    # eager attention takes the softmax in float32 even in a float64 model, SDPA in float64
    assert (actual - expected).abs().max() <= 1e-6 * expected.abs().max()


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_model_restored_after_success_and_exception(name):
    model, text = build("clip", torch.float32)
    model.set_attn_implementation("sdpa")
    model.vision_model.encoder.layers[0].requires_grad_(False)
    pixels, target = pixel_batch(1), torch.tensor([0])
    before, plain = snapshot(model), gradient_x_input(model, pixels, target, None, text)
    gradient_x_input(model, pixels, target, RULE_SETS[name], text)
    assert_same(before, snapshot(model))
    with pytest.raises(RuntimeError, match="boom"):
        with backward_rules(name)(model):
            model_logits(model, pixels, text)
            raise RuntimeError("boom")
    assert_same(before, snapshot(model))
    assert torch.equal(plain, gradient_x_input(model, pixels, target, None, text))


def test_nested_rule_sets_refused():
    model, _ = build("vit", torch.float32)
    before = snapshot(model)
    with libragrad(model):
        with pytest.raises(RuntimeError, match="already applied"):
            with attnlrp(model):
                pass
    assert_same(before, snapshot(model))


def test_unsupported_activation_refused_before_patching():
    model, _ = build("vit", torch.float32)
    model.vit.layers[1].mlp.activation_fn = nn.Tanh()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"vit\.layers\.1\.mlp\.activation_fn is a Tanh activation"):
        with libragrad(model):
            pass
    assert_same(before, snapshot(model))


def test_attention_without_projections_refused():
    model, _ = build("vit", torch.float32)
    attention = model.vit.layers[0].attention
    attention.query = attention.q_proj
    del attention.q_proj
    with pytest.raises(TypeError, match="no separate q_proj, k_proj and v_proj"):
        with cp_lrp(model):
            pass


def test_unknown_rule_set():
    with pytest.raises(ValueError, match="registered: attnlrp, cp-lrp, libragrad"):
        backward_rules("lrp")


def test_rules_touch_only_their_model():
    """Another model used inside the block (CLIP's embedding norm included) keeps its plain gradients."""
    model, text = build("clip")
    other, _ = build("clip")
    pixels, target = pixel_batch(1).double(), torch.tensor([0])
    plain = gradient_x_input(other, pixels, target, None, text)
    with libragrad(model):
        assert torch.equal(plain, gradient_x_input(other, pixels, target, None, text))
