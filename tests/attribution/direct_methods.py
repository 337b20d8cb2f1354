"""
Direct, unoptimised float64 implementations of the methods of method.md §8, written from the spec without calling
library code: one image, one patch, one forward at a time, explicit loops.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPModel


def logits(model, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None, **kwargs):
    """Class logits; CLIP: exp(logit_scale) · cos(image embedding, label embedding)."""
    if isinstance(model, CLIPModel):
        out = model.vision_model(pixel_values=pixel_values, **kwargs)
        image = model.visual_projection(out.pooler_output)
        image = image / image.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * image @ text_embeds.T, out
    out = model(pixel_values=pixel_values, **kwargs)
    return out.logits, out


def target_score(model, image: torch.Tensor, target: int, text_embeds=None) -> torch.Tensor:
    """y of one image `(C, H, W)`: a scalar."""
    return logits(model, image[None], text_embeds)[0][0, target]


def patch_sums(pixel_map: torch.Tensor, patch: int) -> torch.Tensor:
    """`(C, H, W)` → `(h, w)`: the sum over each patch's pixels and channels, one patch at a time."""
    h, w = pixel_map.shape[1] // patch, pixel_map.shape[2] // patch
    out = torch.zeros(h, w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            out[r, c] = pixel_map[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].sum()
    return out


def mean_fill(image: torch.Tensor) -> torch.Tensor:
    """Every pixel takes its channel's mean over the image."""
    fill = torch.empty_like(image)
    for channel in range(image.shape[0]):
        fill[channel] = image[channel].mean()
    return fill


def gradient_x_input(model, image, target, patch, text_embeds=None) -> torch.Tensor:
    x = image.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target_score(model, x, target, text_embeds), x)
    return patch_sums(x.detach() * grad, patch)


def integrated_gradients(model, image, target, patch, steps, text_embeds=None) -> torch.Tensor:
    """(x − x̄) · Σ_k w_k ∂y/∂x(x̄ + α_k (x − x̄)) with Gauss–Legendre nodes on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    fill = mean_fill(image)
    total = torch.zeros_like(image)
    for node, weight in zip(nodes, weights, strict=True):
        alpha = (node + 1) / 2
        point = (fill + alpha * (image - fill)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(target_score(model, point, target, text_embeds), point)
        total += weight / 2 * grad
    return patch_sums((image - fill) * total, patch)


def grad_cam(model, image, target, grid, text_embeds=None) -> torch.Tensor:
    """Last block: α_h = mean_{i,j} ∂y/∂A_h; ReLU(mean_h α_h A_h)[CLS, patches]."""
    scores, out = logits(model, image[None], text_embeds, output_attentions=True)
    attention = out.attentions[-1]
    (grad,) = torch.autograd.grad(scores[0, target], attention)
    heads = attention.shape[1]
    cam = torch.zeros_like(attention[0, 0])
    for head in range(heads):
        cam += grad[0, head].mean() * attention[0, head] / heads
    patches = grid[0] * grid[1]
    return cam.clamp_min(0)[0, -patches:].reshape(grid)


def caap(model, layers, image, target, grid, block_range, text_embeds=None) -> torch.Tensor:
    """One full forward of x̄ per patch, with forward hooks replacing token p after every block of [a, b]."""
    a, b = block_range
    source = {}
    handles = [
        layers[block].register_forward_hook(lambda m, i, o, block=block: source.__setitem__(block, o.detach()))
        for block in range(a, b + 1)
    ]
    with torch.no_grad():
        logits(model, image[None], text_embeds)
    for handle in handles:
        handle.remove()
    fill = mean_fill(image)
    with torch.no_grad():
        neutral = target_score(model, fill, target, text_embeds)
    patches = grid[0] * grid[1]
    out = torch.zeros(patches, dtype=torch.float64)
    for p in range(patches):

        def replace(module, inputs, output, block, p=p):
            patched = output.clone()
            token = output.shape[1] - patches + p
            patched[0, token] = source[block][0, token]
            return patched

        handles = [
            layers[block].register_forward_hook(lambda m, i, o, block=block, f=replace: f(m, i, o, block))
            for block in range(a, b + 1)
        ]
        with torch.no_grad():
            out[p] = target_score(model, fill, target, text_embeds) - neutral
        for handle in handles:
            handle.remove()
    return out.reshape(grid)


def completeness_terms(model, image, target, parameter_names, text_embeds=None) -> tuple[float, float, float]:
    """(y, Σ x·∂y/∂x, Σ b·∂y/∂b) for the named parameters b, plain autograd."""
    params = dict(model.named_parameters())
    chosen = [params[name] for name in parameter_names]
    flags = [p.requires_grad for p in chosen]
    for p in chosen:
        p.requires_grad_(True)
    x = image.detach().clone().requires_grad_(True)
    y = target_score(model, x, target, text_embeds)
    grads = torch.autograd.grad(y, [x, *chosen], allow_unused=True)
    for p, flag in zip(chosen, flags, strict=True):
        p.requires_grad_(flag)
    bias = sum(float((p.detach() * g).sum()) for p, g in zip(chosen, grads[1:], strict=True) if g is not None)
    return float(y.detach()), float((x.detach() * grads[0]).sum()), bias
