"""
The mean patch residual μ_ℓ of a block over a reference set of images, for the `mean-centered` control
(method.md §3): compute it once per model and block, store it as safetensors with its hook point and model name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from os import PathLike

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..introspection import (
    HOOK_POINTS,
    model_dtype,
    prepared_model,
    residual_hooks,
    vision_config,
    vision_layers,
    vision_tower,
)

FORMAT = "hf_fga.mean_residuals"


def _key(block: int) -> str:
    return f"blocks.{block}"


@torch.no_grad()
def compute_mean_residuals(
    model: PreTrainedModel,
    pixel_batches: Iterable[Tensor],
    layers: Sequence[int],
    hook_point: str = "resid_post",
    progress: bool = True,
) -> dict[int, Tensor]:
    """
    μ_ℓ `(d,)` per block: the mean of the residual at `hook_point` of block ℓ over all images and their patch tokens
    only (CLS and other non-patch tokens excluded), accumulated in float64.

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a CLIPModel (its vision tower is run).
        pixel_batches (`Iterable[Tensor]`): preprocessed batches `(B, 3, H, W)`.
        layers (`Sequence[int]`): 0-indexed blocks.
        hook_point (`str`, *optional*, defaults to `"resid_post"`): `"resid_pre"` or `"resid_post"`.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm progress bar.

    Returns:
        `dict[int, Tensor]`: float32 μ_ℓ on CPU, keyed by block.
    """
    num_layers = len(vision_layers(model))
    if hook_point not in HOOK_POINTS:
        raise ValueError(f"hook_point must be one of {list(HOOK_POINTS)}, got {hook_point!r}.")
    layers = sorted(set(layers))
    if not layers or any(not 0 <= block < num_layers for block in layers):
        raise ValueError(f"layers must be a non-empty list of blocks in 0..{num_layers - 1}, got {layers}.")
    config = vision_config(model)
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    sums = {block: torch.zeros(config.hidden_size, dtype=torch.float64) for block in layers}
    count = 0
    tower = vision_tower(model)
    with prepared_model(model), residual_hooks(model, {block: hook_point for block in layers}) as seen:
        for pixels in tqdm(pixel_batches, desc="mean residuals", disable=not progress):
            tower(pixel_values=pixels.to(model.device, model_dtype(model)))
            patches = (pixels.shape[2] // patch) * (pixels.shape[3] // patch)
            for block in layers:
                x = seen[block][:, -patches:]
                sums[block] += x.double().sum(dim=(0, 1)).cpu()
            count += pixels.shape[0] * patches
    if count == 0:
        raise ValueError("pixel_batches was empty: pass at least one batch of preprocessed images.")
    return {block: (total / count).float() for block, total in sums.items()}


def save_mean_residuals(
    means: dict[int, Tensor],
    path: str | PathLike,
    hook_point: str = "resid_post",
    model_name: str | None = None,
) -> None:
    """Write μ_ℓ per block to a safetensors file (keys `blocks.<ℓ>`), with hook point and model name as metadata."""
    if hook_point not in HOOK_POINTS:
        raise ValueError(f"hook_point must be one of {list(HOOK_POINTS)}, got {hook_point!r}.")
    tensors = {_key(block): mean.detach().to("cpu", torch.float32).contiguous() for block, mean in means.items()}
    metadata = {
        "format": FORMAT,
        "hook_point": hook_point,
        "model_name": model_name or "",
        "layers": json.dumps(sorted(means)),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_mean_residuals(path: str | PathLike, return_metadata: bool = False):
    """
    Read a file written by [`save_mean_residuals`]: `dict[int, Tensor]` keyed by block, plus the metadata dict
    (`hook_point`, `model_name`) when `return_metadata=True`.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a mean-residual file written by save_mean_residuals (format={FORMAT}).")
        means = {int(key.split(".", 1)[1]): handle.get_tensor(key) for key in handle.keys()}
    means = dict(sorted(means.items()))
    if return_metadata:
        return means, {"hook_point": metadata.get("hook_point"), "model_name": metadata.get("model_name") or None}
    return means
