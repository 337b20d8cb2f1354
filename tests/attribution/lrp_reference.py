"""
A naive float64 forward pass of the tiny ViT, DeiT and CLIP written from the weights, with the backward rules of
method.md §8 written literally as detached factors, independent of `hf_fga.attribution.rules`:

- LN rule: (x − μ) / σ.detach();
- gate rule: x · φ(x).detach();
- softmax pruning: A = softmax(q kᵀ / √d).detach();
- uniform rule: the product a·b computed from s·a + (1 − s)·a.detach() with s = ½ on each operand, at q·kᵀ and A·V;
- CLIP's image-embedding norm: .detach().

Gradient × input of this forward is the reference CP-LRP / AttnLRP / LibraGrad map.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor
from transformers import CLIPModel, DeiTForImageClassificationWithTeacher

RULES = ("plain", "prune", "uniform")


def half_gradient(t: Tensor) -> Tensor:
    return 0.5 * t + 0.5 * t.detach()


def layer_norm(x: Tensor, module, rule: str) -> Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    sigma = ((x - mu) ** 2).mean(dim=-1, keepdim=True).add(module.eps).sqrt()
    if rule != "plain":
        sigma = sigma.detach()
    return (x - mu) / sigma * module.weight + module.bias


def activation(x: Tensor, quick: bool, rule: str) -> Tensor:
    phi = torch.sigmoid(1.702 * x) if quick else 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return x * (phi if rule == "plain" else phi.detach())


def attention(x: Tensor, module, heads: int, rule: str, record: dict | None = None) -> Tensor:
    batch, tokens, width = x.shape
    size = width // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(batch, tokens, heads, size).transpose(1, 2)

    q, k, v = (split(p(x)) for p in (module.q_proj, module.k_proj, module.v_proj))
    if rule == "uniform":
        q, k = half_gradient(q), half_gradient(k)
    # as transformers' eager attention: the softmax is taken in float32, also in a float64 model
    scores = q @ k.transpose(-1, -2) / math.sqrt(size)
    probabilities = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    if rule == "prune":
        probabilities = probabilities.detach().requires_grad_(True)
    if record is not None:
        record["attentions"].append(probabilities)
    if rule == "uniform":
        probabilities, v = half_gradient(probabilities), half_gradient(v)
    out = (probabilities @ v).transpose(1, 2).reshape(batch, tokens, width)
    return (module.o_proj if hasattr(module, "o_proj") else module.out_proj)(out)


def encoder(
    h: Tensor, layers, norms: tuple[str, str], attn: str, heads: int, quick: bool, rule: str, record: dict | None
) -> Tensor:
    for layer in layers:
        if record is not None:
            record["hidden"].append(h)
        h = h + attention(layer_norm(h, getattr(layer, norms[0]), rule), getattr(layer, attn), heads, rule, record)
        mlp = layer.mlp
        h = h + mlp.fc2(activation(mlp.fc1(layer_norm(h, getattr(layer, norms[1]), rule)), quick, rule))
    if record is not None:
        record["hidden"].append(h)
    return h


def patch_tokens(pixels: Tensor, conv) -> Tensor:
    return conv(pixels).flatten(2).transpose(1, 2)


def reference_logits(
    model, pixels: Tensor, rule: str, text_embeds: Tensor | None = None, record: dict | None = None
) -> Tensor:
    """
    The logits `(B, C)` of a float64 `model` under `rule` ("plain", "prune": LibraGrad / CP-LRP, "uniform");
    `record["attentions"]` receives the attention probabilities `(B, H, T, T)` of every block, `record["hidden"]` the
    residual stream `(B, T, d)` at the input of every block and at the output of the last.
    """
    if isinstance(model, CLIPModel):
        vision = model.vision_model
        patches = patch_tokens(pixels, vision.embeddings.patch_embedding)
        cls = vision.embeddings.class_embedding.expand(pixels.shape[0], 1, -1)
        h = torch.cat([cls, patches], dim=1) + vision.embeddings.position_embedding.weight
        h = layer_norm(h, vision.pre_layrnorm, rule)
        config = model.config.vision_config
        h = encoder(
            h,
            vision.encoder.layers,
            ("layer_norm1", "layer_norm2"),
            "self_attn",
            config.num_attention_heads,
            True,
            rule,
            record,
        )
        image = model.visual_projection(layer_norm(h[:, 0], vision.post_layernorm, rule))
        norm = image.norm(dim=-1, keepdim=True)
        image = image / (norm if rule == "plain" else norm.detach())
        return model.logit_scale.exp() * image @ text_embeds.T
    backbone = getattr(model, model.base_model_prefix)
    embeddings = backbone.embeddings
    tokens = [embeddings.cls_token, getattr(embeddings, "distillation_token", None)]
    tokens = [t.expand(pixels.shape[0], 1, -1) for t in tokens if t is not None]
    h = torch.cat([*tokens, patch_tokens(pixels, embeddings.patch_embeddings.projection)], dim=1)
    h = h + embeddings.position_embeddings
    h = encoder(
        h,
        backbone.layers,
        ("layernorm_before", "layernorm_after"),
        "attention",
        model.config.num_attention_heads,
        False,
        rule,
        record,
    )
    h = layer_norm(h, backbone.layernorm, rule)
    if isinstance(model, DeiTForImageClassificationWithTeacher):
        return (model.cls_classifier(h[:, 0]) + model.distillation_classifier(h[:, 1])) / 2
    return model.classifier(h[:, 0])


def reference_map(
    model, pixel_values: Tensor, target: Tensor, rule: str, patch: int, text_embeds: Tensor | None = None
) -> Tensor:
    """Gradient × input under `rule`, summed over each patch's pixels and channels: `(B, h, w)` float64."""
    model = copy.deepcopy(model).double().eval()
    pixels = pixel_values.double().requires_grad_(True)
    text = None if text_embeds is None else text_embeds.double()
    logits = reference_logits(model, pixels, rule, text)
    y = sum(logits[b, int(target[b])] for b in range(logits.shape[0]))
    (grad,) = torch.autograd.grad(y, pixels)
    relevance = (pixels * grad).detach()
    batch, channels, height, width = relevance.shape
    grid = relevance.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return grid.sum(dim=(1, 3, 5))


def reference_capture(
    model, pixel_values: Tensor, target: Tensor, rule: str, text_embeds: Tensor | None = None
) -> dict[str, list[Tensor]]:
    """
    Under `rule`, float64: `"attentions"`, `"hidden"` (as in [`reference_logits`]) and their gradients
    `"attention_grads"`, `"hidden_grads"` of Σ_b y_b.
    """
    model = copy.deepcopy(model).double().eval()
    text = None if text_embeds is None else text_embeds.double()
    record: dict[str, list[Tensor]] = {"attentions": [], "hidden": []}
    logits = reference_logits(model, pixel_values.double(), rule, text, record)
    y = sum(logits[b, int(target[b])] for b in range(logits.shape[0]))
    tensors = record["attentions"] + record["hidden"]
    grads = torch.autograd.grad(y, tensors, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads, strict=True)]
    count = len(record["attentions"])
    return {
        "attentions": [a.detach() for a in record["attentions"]],
        "attention_grads": grads[:count],
        "hidden": [h.detach() for h in record["hidden"]],
        "hidden_grads": grads[count:],
    }
