"""
Batch invariance at its root (method.md §1): the attention `prepared_model` switches to is transformers' eager
attention, bit for bit for one image, and a batch gives every image exactly what the image gives alone, the
gradients included, for ViT, DeiT and CLIP.

transformers' eager attention calls `torch.matmul` on `(B, H, T, d_h)` operands, which folds (B, H) into one batch
dimension: a view of the transposed projections for B = 1, a contiguous copy for B > 1. The backward products of a
batch then run on differently laid out operands and round differently (~1e-7 relative on ∂y/∂A and ∂y/∂x), which
FGA's robust normalisation amplified to ~1e-5 on attributions and gates.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.clip import modeling_clip
from transformers.models.deit import modeling_deit
from transformers.models.vit import modeling_vit

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.introspection import (
    BATCH_INVARIANT_ATTENTION,
    batch_invariant_eager_attention,
    is_clip,
    prepared_model,
    register_attention_hooks,
    vision_tower,
)
from tests.attribution.reference import relative_error
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import pixel_batch, tiny_clip, tiny_vit

MODELS = {"vit": lambda: tiny_vit(num_layers=4), "deit": tiny_deit, "clip": tiny_clip}
HOOKS = {0: "resid_pre", 1: "resid_post", 2: "resid_post"}


def heads(gen: torch.Generator, batch: int = 1, tokens: int = 17, num_heads: int = 4, head_dim: int = 8):
    """Leaf projections `(B, T, H·d_h)` and the `(B, H, T, d_h)` views an attention module passes on."""
    leaf = torch.randn(batch, tokens, num_heads * head_dim, generator=gen, requires_grad=True)
    return leaf, leaf.view(batch, tokens, num_heads, head_dim).transpose(1, 2)


def attention_pass(function, projections, mask, upstream):
    """Output, probabilities and the gradients of Σ u·out + Σ u'·probs with respect to the three projections."""
    _, query = projections[0]
    _, key = projections[1]
    _, value = projections[2]
    out, weights = function(nn.Identity().eval(), query, key, value, mask, scaling=0.35, dropout=0.0)
    loss = (out * upstream[0]).sum() + (weights * upstream[1]).sum()
    grads = torch.autograd.grad(loss, [leaf for leaf, _ in projections])
    return [out, weights, *grads]


@pytest.mark.parametrize("module", [modeling_vit, modeling_deit, modeling_clip], ids=["vit", "deit", "clip"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_attention_is_transformers_eager_for_one_image(module, masked):
    """Forward and backward bit-identical to the model file's own `eager_attention_forward` (B = 1)."""
    gen = torch.Generator().manual_seed(0)
    projections = [heads(gen) for _ in range(3)]
    mask = torch.triu(torch.full((17, 17), -1e4), diagonal=1)[None, None] if masked else None
    upstream = (torch.randn(1, 17, 4, 8, generator=gen), torch.randn(1, 4, 17, 17, generator=gen))
    ours = attention_pass(batch_invariant_eager_attention, projections, mask, upstream)
    theirs = attention_pass(module.eager_attention_forward, projections, mask, upstream)
    for name, a, b in zip(["output", "probabilities", "dq", "dk", "dv"], ours, theirs, strict=True):
        assert a.shape == b.shape and torch.equal(a, b), name


def test_attention_of_a_batch_is_per_image():
    """Each image of a batch of 5 gets, bit for bit, its own single-image output, probabilities and gradients."""
    gen = torch.Generator().manual_seed(1)
    projections = [heads(gen, batch=5) for _ in range(3)]
    upstream = (torch.randn(5, 17, 4, 8, generator=gen), torch.randn(5, 4, 17, 17, generator=gen))
    batch = attention_pass(batch_invariant_eager_attention, projections, None, upstream)
    for i in range(5):
        singles = [(leaf[i : i + 1].detach().requires_grad_(True),) for leaf, _ in projections]
        singles = [(leaf, leaf.view(1, 17, 4, 8).transpose(1, 2)) for (leaf,) in singles]
        single = attention_pass(
            batch_invariant_eager_attention, singles, None, (upstream[0][i : i + 1], upstream[1][i : i + 1])
        )
        for name, a, b in zip(["output", "probabilities", "dq", "dk", "dv"], batch, single, strict=True):
            assert torch.equal(a[i : i + 1], b), name


def tower_pass(model, pixels):
    """Vision-tower output (a classifier's logits, CLIP's last hidden state), every block's attention probabilities
    and ∂(Σ output)/∂pixels."""
    attentions = {}
    handles = register_attention_hooks(model, attentions.__setitem__)
    try:
        pixels = pixels.clone().requires_grad_(True)
        with torch.enable_grad():
            out = vision_tower(model)(pixel_values=pixels)[0]
            (grad,) = torch.autograd.grad(out.sum(), pixels)
    finally:
        for handle in handles:
            handle.remove()
    return [out.detach(), grad, *(attentions[i].detach() for i in sorted(attentions))]


@pytest.mark.parametrize("name", list(MODELS))
def test_prepared_model_forward_is_transformers_eager(name):
    """Inside `prepared_model` one image runs exactly as under `attn_implementation="eager"`, gradients included."""
    model = MODELS[name]()
    pixels = pixel_batch(1, seed=3)
    eager = tower_pass(model, pixels)
    with prepared_model(model):
        assert vision_tower(model).config._attn_implementation == BATCH_INVARIANT_ATTENTION
        ours = tower_pass(model, pixels)
    for i, (a, b) in enumerate(zip(ours, eager, strict=True)):
        assert torch.equal(a, b), i


@pytest.mark.parametrize("backend", ["auto", "default"])
@pytest.mark.parametrize("name", list(MODELS))
def test_capture_of_a_batch_equals_single_captures(name, backend):
    """
    Every tensor a capture records (scores, A_ℓ, ∂y/∂A_ℓ, x, ∂y/∂x) is, for each image of a batch of 5, bit-identical
    to the capture of the image alone. The one exception: a classifier's logits with the default linears, whose
    `(B, d) → (B, C)` head runs one gemm for the batch and a gemv for one image (~1e-7 relative); the gradients do not
    depend on that rounding (the head is linear).
    """
    model = MODELS[name]()
    text_embeds = clip_label_inputs(model)[1] if is_clip(model) else None
    attr = FeatureGradientAttribution(model, linear_backend=backend)
    pixels = pixel_batch(5, seed=11)
    hooks = {block: point for block, point in HOOKS.items() if block < attr.num_layers}
    batch = attr.capture(pixels, text_embeds=text_embeds, hook_points=hooks)
    exact_logits = batch.onednn or is_clip(model)  # "auto" keeps the stock kernels where oneDNN does not pay
    for i in range(5):
        single = attr.capture(pixels[i : i + 1], text_embeds=text_embeds, hook_points=hooks)
        if exact_logits:
            assert torch.equal(batch.logits[i : i + 1], single.logits)
        else:
            assert relative_error(batch.logits[i : i + 1], single.logits) < 1e-6
        assert torch.equal(batch.target[i : i + 1], single.target)
        pairs = [
            *zip(batch.attentions, single.attentions, strict=True),
            *zip(batch.attention_grads, single.attention_grads, strict=True),
        ]
        pairs += [(batch.residuals[key], single.residuals[key]) for key in single.residuals]
        pairs += [(batch.residual_grads[key], single.residual_grads[key]) for key in single.residual_grads]
        for j, (a, b) in enumerate(pairs):
            assert torch.equal(a[i : i + 1], b), j


def test_clip_text_tower_with_causal_mask_is_unchanged():
    """CLIP's text tower (causal mask, built for `hf_fga_eager` as for eager) gives the same embeddings inside."""
    model = tiny_clip()
    input_ids, _ = clip_label_inputs(model)
    with torch.no_grad():
        eager = model.get_text_features(input_ids=input_ids).pooler_output
        with prepared_model(model):
            assert model.text_model.config._attn_implementation == BATCH_INVARIANT_ATTENTION
            ours = model.get_text_features(input_ids=input_ids).pooler_output
    assert torch.equal(ours, eager)
