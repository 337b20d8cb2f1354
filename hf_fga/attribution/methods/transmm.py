"""
TransMM (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers"; thesis §3.4), optionally with FGA's per-block column gates (method.md §2–3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .base import AttributionMethod, MethodResult, register_method

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor


def gradient_weighted_attention(attention: Tensor, attention_grad: Tensor) -> Tensor:
    """Ā_ℓ = mean_h((∇A_ℓ ⊙ A_ℓ)^+): `(B, H, T, T)` probabilities and gradients → `(B, T, T)`."""
    return (attention_grad * attention).clamp(min=0).mean(dim=1)


def propagate_relevance(weighted: Sequence[Tensor], gates: Mapping[int, Tensor] | None = None) -> Tensor:
    """
    The TransMM relevance R `(B, T, T)`: R ← I, then for ℓ = 0..L-1, R ← R + Ā_ℓ R (method.md §2).

    This is the convention of the authors' reference code; the thesis prints Ā = I + E_h[…] *and* R ← R + Ā R, which
    would add the identity twice, and is deliberately not followed.

    Args:
        weighted (`Sequence[Tensor]`): Ā_ℓ `(B, T, T)` for every block, in order.
        gates (`Mapping[int, Tensor]`, *optional*): per gated block ℓ, token gates `(B, T)` (1 on non-patch tokens).
            The block's Ā_ℓ is replaced by Ā_ℓ · diag(w), i.e. its columns are scaled (thesis eq. 6.12–6.14).
    """
    gates = gates or {}
    batch, tokens, _ = weighted[0].shape
    relevance = torch.eye(tokens, dtype=weighted[0].dtype, device=weighted[0].device).expand(batch, -1, -1)
    for index, a_bar in enumerate(weighted):
        if index in gates:
            a_bar = a_bar * gates[index][:, None, :]
        relevance = relevance + torch.bmm(a_bar, relevance)
    return relevance


def cls_to_patches(matrix: Tensor, grid: tuple[int, int]) -> Tensor:
    """Row 0 (the CLS token) of `(B, T, T)` restricted to the patch tokens (the last h·w), as `(B, h, w)`."""
    h, w = grid
    return matrix[:, 0, -h * w :].reshape(-1, h, w)


def weighted_attentions(capture: Capture) -> list[Tensor]:
    """Ā_ℓ `(B, T, T)` of every block of a capture (computed once per capture, then read from its cache)."""
    if "weighted" not in capture.cache:
        pairs = zip(capture.attentions, capture.attention_grads, strict=True)
        capture.cache["weighted"] = [gradient_weighted_attention(a, g) for a, g in pairs]
    return capture.cache["weighted"]


def transmm_map(capture: Capture) -> Tensor:
    """The TransMM map `(B, h, w)` of a capture (computed once per capture: it is every map's `baseline`)."""
    if "transmm" not in capture.cache:
        capture.cache["transmm"] = cls_to_patches(propagate_relevance(weighted_attentions(capture)), capture.grid)
    return capture.cache["transmm"]


@register_method
class TransMM(AttributionMethod):
    name = "transmm"
    description = "TransMM (Chefer et al. 2021): gradient-weighted attention propagated through every block"
    uses_capture = True
    gradient_based = True

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        return MethodResult(attribution=transmm_map(capture))
