"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"); attention only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .base import AttributionMethod, MethodResult, register_method
from .transmm import cls_to_patches

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """
    Attention rollout `(B, T, T)`.

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


@register_method
class AttentionRollout(AttributionMethod):
    name = "rollout"
    description = "Attention rollout (Abnar & Zuidema 2020): head-mean attention plus identity, multiplied over blocks"
    uses_capture = True

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        return MethodResult(attribution=cls_to_patches(attention_rollout(capture.attentions), capture.grid))
