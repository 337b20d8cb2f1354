"""Raw attention: the last block's head-mean CLS → patch attention (Abnar & Zuidema 2020's baseline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .base import AttributionMethod, MethodResult, register_method
from .transmm import cls_to_patches

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor


def raw_attention(attentions: Sequence[Tensor]) -> Tensor:
    """The last block's head-mean attention `(B, T, T)`."""
    return attentions[-1].mean(dim=1)


@register_method
class RawAttention(AttributionMethod):
    name = "raw-attention"
    description = "Raw attention: the last block's head-mean attention from CLS to the patches (no gradients)"
    uses_capture = True

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        return MethodResult(attribution=cls_to_patches(raw_attention(capture.attentions), capture.grid))
