"""
Non-locality of an explained SAE activation (method.md §9): the share of the iERF's positive mass that falls in the
3 × 3 patch neighbourhood of the explained token q. A share below 0.25 marks the activation non-local; an activation at
the CLS token (or any other non-patch token) has no neighbourhood and is non-local by definition, reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NON_LOCAL_THRESHOLD = 0.25


@dataclass
class Locality:
    """
    Args:
        share (`Tensor` of shape `(...)`): positive iERF mass in the 3 × 3 neighbourhood of q over all positive mass;
            NaN where q is not a patch token, or where the iERF has no positive mass (nothing to share).
        non_local (`Tensor` of shape `(...)`, bool): `share < threshold`, and True at non-patch tokens.
        at_cls (`Tensor` of shape `(...)`, bool): q is the CLS (or another non-patch) token: non-local by definition,
            to be reported apart from the patch activations.
        threshold (`float`): the share below which an activation is non-local (0.25).
    """

    share: Tensor
    non_local: Tensor
    at_cls: Tensor
    threshold: float = NON_LOCAL_THRESHOLD


def neighbourhood_share(
    ierf: Tensor, position: Tensor, num_prefix_tokens: int = 1, threshold: float = NON_LOCAL_THRESHOLD
) -> Locality:
    """
    The locality of explained activations.

    Args:
        ierf (`Tensor` of shape `(..., h, w)`): signed iERF maps.
        position (`LongTensor` of shape `(...)`): the explained token of each map (0 = CLS; patch p at
            `num_prefix_tokens + p`, row-major).
        num_prefix_tokens (`int`, defaults to 1): tokens before the patches (CLS, distillation, registers).
        threshold (`float`, defaults to 0.25): the share below which an activation is non-local.

    Returns:
        [`Locality`].

    Example:
    ```python
    >>> ierf = torch.zeros(1, 4, 4); ierf[0, 0, 0] = 1.0; ierf[0, 3, 3] = 3.0
    >>> neighbourhood_share(ierf, torch.tensor([1])).share  # q = patch (0, 0): 1 of 4
    tensor([0.2500])

    ```
    """
    height, width = ierf.shape[-2:]
    positive = ierf.clamp(min=0).to(torch.float64)
    patch = position.to(ierf.device) - num_prefix_tokens
    at_cls = patch < 0
    row, col = patch.clamp(min=0) // width, patch.clamp(min=0) % width
    rows = torch.arange(height, device=ierf.device)
    cols = torch.arange(width, device=ierf.device)
    near = ((rows - row[..., None]).abs() <= 1)[..., :, None] & ((cols - col[..., None]).abs() <= 1)[..., None, :]
    total = positive.sum(dim=(-2, -1))
    inside = (positive * near).sum(dim=(-2, -1))
    defined = (total > 0) & ~at_cls
    share = torch.where(defined, inside / torch.where(defined, total, torch.ones_like(total)), torch.nan)
    non_local = at_cls | (defined & (share < threshold))
    return Locality(share=share.float(), non_local=non_local, at_cls=at_cls, threshold=threshold)


def verdict(share: float, non_local: bool, at_cls: bool) -> str:
    """
    One line on an explained activation's locality, e.g. `"local: 62% of the positive iERF within 3×3 of the peak"`.

    Example:
    ```python
    >>> verdict(0.12, True, False)
    'non-local: 12% of the positive iERF within 3×3 of the peak'

    ```
    """
    if at_cls:
        return "CLS-token feature: non-local by definition"
    if share != share:  # NaN: no positive iERF mass
        return "undetermined: the iERF has no positive mass"
    return f"{'non-local' if non_local else 'local'}: {share:.0%} of the positive iERF within 3×3 of the peak"
