"""
The feature importances behind the `selective` FGA variant (method.md §10): per gated block ℓ and SAE feature k, the
mean over reference images of Σ_t |f_t^k (Dᵀ g_t)_k| (t the image's patches). S_ℓ = the m features of largest
importance. Computed once per model, SAE set and reference set (validation images, never the test split) and stored
as safetensors beside the results, like the mean residuals of `mean-centered`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from .methods.fga import FeatureCodes

if TYPE_CHECKING:
    from .engine import Attributor

FORMAT = "hf_fga.feature_importance"


def _key(block: int) -> str:
    return f"blocks.{block}"


@torch.no_grad()
def feature_contribution_sums(codes: FeatureCodes, g: Tensor, batch: int) -> Tensor:
    """
    Σ_t |f_t^k (Dᵀ g_t)_k| per image and feature, `(B, d_sae)`, from the codes of `B·N` patch rows and their
    gradients `g (B·N, d)` (rows image-major).
    """
    contributions = ((codes.values if codes.dense is None else codes.dense) * codes.feature_gradients(g)).abs()
    rows = contributions.shape[0] // batch
    if codes.dense is not None:
        return contributions.reshape(batch, rows, -1).sum(dim=1)
    out = torch.zeros(batch, codes.sae.config.d_sae, dtype=contributions.dtype, device=contributions.device)
    image = torch.arange(batch, device=contributions.device).repeat_interleave(rows)
    flat = image[:, None] * codes.sae.config.d_sae + codes.indices
    out.view(-1).index_add_(0, flat.reshape(-1), contributions.reshape(-1))
    return out


def compute_feature_importance(
    attributor: Attributor,
    pixel_batches: Iterable[Tensor],
    layers: Sequence[int],
    progress: bool = True,
) -> dict[int, Tensor]:
    """
    The importance `(d_sae,)` of every feature of each block's SAE: the mean over the images of Σ_t |f_t^k (Dᵀg_t)_k|,
    with g = ∂y/∂x for y the predicted class's score (the target FGA explains by default), accumulated in float64.

    Args:
        attributor ([`Attributor`]): holds the model and an SAE for every block of `layers`.
        pixel_batches (`Iterable[Tensor]`): preprocessed batches `(B, 3, H, W)` of reference images.
        layers (`Sequence[int]`): the gated blocks.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.

    Returns:
        `dict[int, Tensor]`: float32 importances on CPU, keyed by block.
    """
    layers = sorted(set(layers))
    missing = [block for block in layers if block not in attributor.saes]
    if not layers or missing:
        raise ValueError(
            f"layers must be a non-empty list of blocks that have an SAE; blocks {missing or layers} have none "
            f"(SAEs are given for {sorted(attributor.saes)})."
        )
    hook_points = {block: attributor.hook_point_of(block) for block in layers}
    sums = {block: torch.zeros(attributor.saes[block].config.d_sae, dtype=torch.float64) for block in layers}
    count = 0
    for pixels in tqdm(pixel_batches, desc="feature importance", disable=not progress):
        capture = attributor.capture(pixels, hook_points=hook_points)
        patches = capture.grid[0] * capture.grid[1]
        for block, point in hook_points.items():
            sae = attributor.saes[block]
            x = capture.residuals[(block, point)][:, -patches:].to(sae.W_dec.device, sae.W_dec.dtype)
            g = capture.residual_grads[(block, point)][:, -patches:].to(x)
            flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
            codes = FeatureCodes.encode(sae, flat_x)
            sums[block] += feature_contribution_sums(codes, flat_g, x.shape[0]).double().sum(dim=0).cpu()
        count += pixels.shape[0]
    if count == 0:
        raise ValueError("pixel_batches was empty: pass at least one batch of preprocessed images.")
    return {block: (total / count).float() for block, total in sums.items()}


def select_features(importance: Tensor, count: int) -> Tensor:
    """S_ℓ: the indices of the `count` most important features, `(count,)` long, most important first."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= importance.numel():
        raise ValueError(
            f"the number of selected features must be an integer in [1, {importance.numel()}]; got {count!r}."
        )
    return importance.topk(count).indices


def save_feature_importance(
    importance: Mapping[int, Tensor],
    path: str | PathLike,
    hook_points: Mapping[int, str],
    model_name: str | None = None,
    sae_name: str | None = None,
    images: str | None = None,
) -> None:
    """Write the importances (keys `blocks.<ℓ>`) with their hook points, model, SAE set and images as metadata."""
    tensors = {_key(b): t.detach().to("cpu", torch.float32).contiguous() for b, t in importance.items()}
    metadata = {
        "format": FORMAT,
        "hook_points": json.dumps({str(b): hook_points[b] for b in sorted(importance)}),
        "model_name": model_name or "",
        "sae_name": sae_name or "",
        "images": images or "",
    }
    save_file(tensors, str(path), metadata=metadata)


def load_feature_importance(path: str | PathLike, return_metadata: bool = False):
    """
    Read a file of [`save_feature_importance`]: `dict[int, Tensor]` keyed by block, plus its metadata dict when
    `return_metadata=True`.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a feature-importance file written by save_feature_importance.")
        importance = {int(key.split(".", 1)[1]): handle.get_tensor(key) for key in handle.keys()}
    importance = dict(sorted(importance.items()))
    if return_metadata:
        return importance, {**metadata, "hook_points": json.loads(metadata.get("hook_points") or "{}")}
    return importance
