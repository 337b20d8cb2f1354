"""Attention-only baselines: attention rollout and raw attention (no gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """
    Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"), `(B, T, T)`.

    Per block: the head-mean attention A_ℓ, the residual connection as 0.5·A_ℓ + 0.5·I, rows renormalised to sum to 1;
    the rollout is the product Ã_{L-1} ⋯ Ã_1 Ã_0 (later blocks on the left).
    """
    rollout = None
    for attention in attentions:
        mean = attention.mean(dim=1)
        eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
        mixed = 0.5 * mean + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else torch.bmm(mixed, rollout)
    return rollout


def raw_attention(attentions: Sequence[Tensor]) -> Tensor:
    """Raw attention: the last block's head-mean attention `(B, T, T)` (Abnar & Zuidema 2020's baseline)."""
    return attentions[-1].mean(dim=1)
