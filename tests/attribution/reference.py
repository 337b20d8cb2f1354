"""
A deliberately naive float64 implementation of method.md §1–3, independent of `hf_fga.attribution`: the model runs in
float64 with transformers' own `output_attentions` / `output_hidden_states`, gradients come from
`torch.autograd.grad`, and every formula is a loop over images, blocks, heads and tokens.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import CLIPModel


@dataclass
class ReferenceCapture:
    logits: Tensor  # (B, C)
    target: Tensor  # (B,)
    attentions: list[Tensor]  # L x (B, H, T, T)
    attention_grads: list[Tensor]
    hidden: list[Tensor]  # L+1 x (B, T, d): hidden[l] = resid_pre of block l, hidden[l+1] = resid_post of block l
    hidden_grads: list[Tensor]

    def residual(self, block: int, hook_point: str) -> tuple[Tensor, Tensor]:
        index = block if hook_point == "resid_pre" else block + 1
        return self.hidden[index], self.hidden_grads[index]


def reference_capture(model, pixel_values: Tensor, target=None, text_embeds: Tensor | None = None) -> ReferenceCapture:
    model = copy.deepcopy(model).double().eval()
    pixels = pixel_values.double().requires_grad_(True)
    if isinstance(model, CLIPModel):
        vision = model.vision_model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        image = model.visual_projection(vision.pooler_output)
        image = image / image.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * image @ text_embeds.double().T
        attentions, hidden = vision.attentions, vision.hidden_states
    else:
        out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        logits, attentions, hidden = out.logits, out.attentions, out.hidden_states
    if target is None:
        target = logits.argmax(dim=-1)
    target = torch.as_tensor(target).long().reshape(-1).expand(logits.shape[0])
    y = sum(logits[b, target[b]] for b in range(logits.shape[0]))
    grads = torch.autograd.grad(y, list(attentions) + list(hidden), allow_unused=True)
    grads = [
        torch.zeros_like(t) if g is None else g for t, g in zip(list(attentions) + list(hidden), grads, strict=False)
    ]
    num = len(attentions)
    return ReferenceCapture(
        logits=logits.detach(),
        target=target,
        attentions=[a.detach() for a in attentions],
        attention_grads=grads[:num],
        hidden=[h.detach() for h in hidden],
        hidden_grads=grads[num:],
    )


def lower_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def decoder_and_bias(sae) -> tuple[Tensor, Tensor]:
    """D as rows (K, d) and b_dec in the residual space, float64."""
    scale = sae.config.norm_scaling_factor if sae.config.normalize_activations == "constant_scale" else 1.0
    return sae.W_dec.detach().double() / scale, sae.b_dec.detach().double() / scale


def features(sae64, x: Tensor) -> Tensor:
    """f of one token, computed by a float64 copy of the SAE (its own definition of the encoder)."""
    with torch.no_grad():
        return sae64.encode(x.double()[None])[0]


def token_score(variant: str, x: Tensor, g: Tensor, sae=None, mean: Tensor | None = None, permutation=None) -> float:
    if variant == "no-sae":
        return float(torch.dot(g, x))
    if variant == "mean-centered":
        return float(torch.dot(g, x - mean.double()))
    decoder, bias = decoder_and_bias(sae)
    if variant == "centered":
        return float(torch.dot(g, x - bias))
    f = features(sae, x)
    if variant == "activation":
        return sum(float(f[k]) for k in range(f.numel()))
    if variant == "shuffled":
        decoder = decoder[permutation]
    total = 0.0
    for k in torch.nonzero(f).flatten().tolist() if variant != "gradient" else range(f.numel()):
        grad_k = float(torch.dot(decoder[k], g))
        total += abs(grad_k) if variant == "gradient" else float(f[k]) * grad_k
    return total


def gates(scores: list[float], kappa: float, cmax: float, check_degenerate: bool, scale: float) -> list[float]:
    median = lower_median(scores)
    mad = lower_median([abs(s - median) for s in scores])
    if check_degenerate and mad <= 1e-6 * scale:
        return [1.0] * len(scores)
    return [math.exp(math.log(cmax) * math.tanh(kappa * (s - median) / (1.4826 * (mad + 1e-8)))) for s in scores]


def reference_fga(
    cap: ReferenceCapture,
    saes: dict,
    layers: list[int],
    variant: str,
    num_patches: int,
    kappa: float = 0.5,
    cmax: float = 10.0,
    means: dict | None = None,
    hook_point: str = "resid_post",
    seed: int = 12345,
) -> tuple[Tensor, dict[int, Tensor], dict[int, Tensor]]:
    """Gated maps `(B, N)` plus scores and gates per block `(B, N)`."""
    batch = cap.logits.shape[0]
    all_scores, all_gates = {}, {}
    for block in layers:
        sae = copy.deepcopy(saes[block]).double() if block in saes else None
        point = sae.config.hook_point if sae is not None else hook_point
        x_all, g_all = cap.residual(block, point)
        permutation = None
        if variant == "shuffled":
            permutation = torch.randperm(sae.config.d_sae, generator=torch.Generator().manual_seed(seed))
        block_scores, block_gates = [], []
        for b in range(batch):
            xs, gs = x_all[b, -num_patches:], g_all[b, -num_patches:]
            mean = (means or {}).get(block)
            s = [token_score(variant, xs[t], gs[t], sae, mean, permutation) for t in range(num_patches)]
            scale = max(float(gs[t].norm() * xs[t].norm()) for t in range(num_patches))
            block_scores.append(s)
            block_gates.append(gates(s, kappa, cmax, variant != "activation", scale))
        all_scores[block] = torch.tensor(block_scores, dtype=torch.float64)
        all_gates[block] = torch.tensor(block_gates, dtype=torch.float64)
    maps = torch.stack(
        [transmm_one(cap, b, {k: v[b] for k, v in all_gates.items()}, num_patches) for b in range(batch)]
    )
    return maps, all_scores, all_gates


def transmm_one(cap: ReferenceCapture, b: int, patch_gates: dict[int, Tensor], num_patches: int) -> Tensor:
    """R ← I; R ← R + Ā_ℓ diag(w) R with Ā_ℓ = mean_h((∇A ⊙ A)^+); returns R[0, patches] `(N,)`."""
    tokens = cap.attentions[0].shape[-1]
    extra = tokens - num_patches
    relevance = torch.eye(tokens, dtype=torch.float64)
    for block, (attention, grad) in enumerate(zip(cap.attentions, cap.attention_grads, strict=False)):
        heads = attention.shape[1]
        a_bar = torch.zeros(tokens, tokens, dtype=torch.float64)
        for h in range(heads):
            a_bar += torch.clamp(grad[b, h].double() * attention[b, h].double(), min=0)
        a_bar /= heads
        if block in patch_gates:
            w = [1.0] * extra + [float(v) for v in patch_gates[block]]
            for j in range(tokens):
                a_bar[:, j] *= w[j]
        relevance = relevance + a_bar @ relevance
    return relevance[0, extra:]


def reference_transmm(cap: ReferenceCapture, num_patches: int) -> Tensor:
    return torch.stack([transmm_one(cap, b, {}, num_patches) for b in range(cap.logits.shape[0])])


def reference_rollout(cap: ReferenceCapture, num_patches: int) -> Tensor:
    maps = []
    for b in range(cap.logits.shape[0]):
        tokens = cap.attentions[0].shape[-1]
        rollout = torch.eye(tokens, dtype=torch.float64)
        for attention in cap.attentions:
            mixed = 0.5 * attention[b].double().mean(dim=0) + 0.5 * torch.eye(tokens, dtype=torch.float64)
            for i in range(tokens):
                mixed[i] /= mixed[i].sum()
            rollout = mixed @ rollout
        maps.append(rollout[0, tokens - num_patches :])
    return torch.stack(maps)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.double().reshape(expected.shape), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
