"""
Grad-CAM for ViTs (method.md §8, as adapted in Chefer, Gur & Wolf 2021): the last block's attention A (H × T × T),
head weights α_h = mean over (i, j) of ∂y/∂A_h, map = ReLU( mean_h α_h A_h )[CLS, patches].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .base import AttributionMethod, MethodResult, register_method

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor


def grad_cam(attention: Tensor, attention_grad: Tensor, grid: tuple[int, int]) -> Tensor:
    """
    The Grad-CAM map of one block's attention.

    Args:
        attention (`Tensor` of shape `(B, H, T, T)`): attention probabilities of the last block.
        attention_grad (`Tensor` of shape `(B, H, T, T)`): ∂y/∂A of the same block.
        grid (`tuple[int, int]`): the patch grid (h, w); the N = h·w patch tokens are the last N tokens and the CLS
            token is token 0.

    Returns:
        `Tensor` of shape `(B, h, w)`: the CLS row of ReLU(mean_h α_h A_h) over the patch tokens.
    """
    patches = grid[0] * grid[1]
    weights = attention_grad.mean(dim=(2, 3), keepdim=True)
    cam = (weights * attention).mean(dim=1).clamp_min(0)
    return cam[:, 0, -patches:].reshape(-1, *grid)


@register_method
class GradCam(AttributionMethod):
    """`attribute(pixel_values, method="grad-cam")`, or `explain(capture, method="grad-cam")` on a shared capture."""

    name = "grad-cam"
    description = "Grad-CAM for ViTs: ReLU of the gradient-weighted head mean of the last block's CLS attention"
    uses_capture = True
    gradient_based = True

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        return MethodResult(attribution=grad_cam(capture.attentions[-1], capture.attention_grads[-1], capture.grid))
