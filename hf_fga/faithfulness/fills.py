"""Patch grids and perturbation fills, all patch-aligned in the model's preprocessed input space (method.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..introspection import is_clip, vision_config

FILLS = ("mean", "zero", "black", "blur", "uniform")


@dataclass(frozen=True)
class PatchGrid:
    """The h × w patch grid of `patch_size`-pixel patches that the model sees (N = h · w)."""

    patch_size: int
    height: int
    width: int

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def pixel_mask(self, masks: Tensor) -> Tensor:
        """Patch masks `(R, N)` → pixel masks `(R, 1, h · patch_size, w · patch_size)`."""
        grid = masks.reshape(-1, 1, self.height, self.width)
        return grid.repeat_interleave(self.patch_size, dim=2).repeat_interleave(self.patch_size, dim=3)

    def patch_sums(self, images: Tensor) -> Tensor:
        """Sum over channels and pixels of every patch: `(B, C, H, W)` → `(B, N)`."""
        p = self.patch_size
        patches = images.reshape(images.shape[0], -1, self.height, p, self.width, p)
        return patches.sum(dim=(1, 3, 5)).reshape(images.shape[0], -1)


def _as_int(value) -> int:
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


def patch_grid(model, pixel_values: Tensor, patch_size: int | None = None) -> PatchGrid:
    """
    The patch grid from the model config (`patch_size`, `image_size`; CLIP: its vision config), checked against
    `pixel_values (B, C, H, W)`. For a plain callable `pixel_values -> scores`, pass `patch_size`.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W); got shape {tuple(pixel_values.shape)}.")
    height, width = pixel_values.shape[-2:]
    if isinstance(model, PreTrainedModel) and patch_size is None:
        config = vision_config(model)
        patch_size = _as_int(config.patch_size)
        image_size = _as_int(config.image_size)
        if (height, width) != (image_size, image_size):
            raise ValueError(
                f"pixel_values are {height}×{width} but {type(model).__name__} expects {image_size}×{image_size} "
                "(config.image_size): preprocess the images with the model's image processor."
            )
    if patch_size is None:
        raise ValueError("the model is a plain callable: pass patch_size (pixels per patch side) to get a patch grid.")
    if height % patch_size or width % patch_size:
        raise ValueError(f"pixel_values of {height}×{width} pixels do not tile into {patch_size}-pixel patches.")
    return PatchGrid(patch_size, height // patch_size, width // patch_size)


def check_pixel_values(pixel_values: Tensor) -> None:
    """A ValueError naming the images whose `pixel_values (B, C, H, W)` hold NaN or infinite values."""
    finite = torch.isfinite(pixel_values).flatten(1).all(dim=1)
    if not finite.all():
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(
            f"pixel_values of image(s) {bad} contain NaN or infinite values: every score of a perturbed copy would be "
            "NaN. Check the images and their preprocessing (e.g. a division by a zero image_std)."
        )


def check_attributions(attributions, grid: PatchGrid, batch_size: int) -> np.ndarray:
    """Attributions `(B, h, w)` as float64 `(B, N)`; a ValueError naming both shapes when the grid differs."""
    values = attributions.detach().cpu().double().numpy() if isinstance(attributions, Tensor) else attributions
    values = np.asarray(values, dtype=np.float64)
    expected = (batch_size, grid.height, grid.width)
    if values.shape != expected:
        raise ValueError(
            f"attributions have shape {values.shape} but the model's patch grid needs {expected} "
            f"(batch, {grid.height}×{grid.width} patches of {grid.patch_size} pixels): pass one value per patch."
        )
    if not np.isfinite(values).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(values))[:, 0]})
        raise ValueError(
            f"attributions of image(s) {bad} contain NaN or infinite values: faithfulness needs finite maps."
        )
    return values.reshape(batch_size, -1)


def default_normalization(model) -> tuple[list[float], list[float]]:
    """The processor mean/std to assume when none is given: OpenAI CLIP's for CLIP, else (0.5, 0.5, 0.5) as ViT."""
    if isinstance(model, PreTrainedModel) and is_clip(model):
        return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    return list(IMAGENET_STANDARD_MEAN), list(IMAGENET_STANDARD_STD)


def derived_seed(seed: int, image_id: int, stream: int) -> int:
    """A seed for one image and one random stream that does not depend on how images are batched."""
    return int(np.random.SeedSequence([seed, image_id, stream]).generate_state(1)[0])


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel, radius ceil(3σ), reflect padding (replicate when the image is small)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype).to(images.device)
    channels = images.shape[1]
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    padded = F.pad(images, (radius, radius, radius, radius), mode=mode)
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def fill_source(
    pixel_values: Tensor,
    fill: str,
    *,
    mean_fill: str = "per_channel",
    image_mean: list[float],
    image_std: list[float],
    seed: int = 0,
    image_ids: list[int] | None = None,
    blur_sigma: float = 1.0,
) -> Tensor:
    """
    The image a perturbed patch takes its pixels from: `(B, C, H, W)`, or a broadcastable `(B or 1, C or 1, 1, 1)`
    for the constant fills (mean, zero, black), which saves memory and copies.

    - `mean`: the clean image's per-channel mean (`mean_fill="per_channel"`) or its scalar mean (`"scalar"`).
    - `zero`: 0 in the preprocessed space (the dataset mean colour for a mean/std-normalising processor).
    - `black`: the preprocessed value of a black pixel, (0 − image_mean) / image_std per channel.
    - `blur`: the image blurred with a Gaussian of `blur_sigma` pixels.
    - `uniform`: uniform noise in [0, 1] pixel space, normalised with image_mean / image_std, seeded per image from
      (seed, image id) so it does not depend on batching.
    """
    images = pixel_values
    if fill == "mean":
        dims = (1, 2, 3) if mean_fill == "scalar" else (2, 3)
        return images.mean(dim=dims, keepdim=True)
    if fill == "zero":
        return images.new_zeros(1, 1, 1, 1)
    mean = torch.tensor(image_mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    if mean.shape[1] != images.shape[1] or std.shape[1] != images.shape[1]:
        raise ValueError(
            f"image_mean/image_std have {mean.shape[1]}/{std.shape[1]} values but the images have "
            f"{images.shape[1]} channels: pass the image processor's image_mean and image_std."
        )
    if fill == "black":
        return -mean / std
    if fill == "blur":
        return gaussian_blur(images, blur_sigma)
    if fill == "uniform":
        ids = list(range(images.shape[0])) if image_ids is None else image_ids
        noise = torch.stack(
            [
                torch.rand(images.shape[1:], generator=torch.Generator().manual_seed(derived_seed(seed, i, 1)))
                for i in ids
            ]
        )
        return (noise.to(images.dtype).to(images.device) - mean) / std
    raise ValueError(f"fill={fill!r} is unknown: expected one of {FILLS}.")


def recomputed_scalar_fill(image: Tensor, order: np.ndarray, grid: PatchGrid) -> Tensor:
    """
    The thesis code's Pixel Flipping fill for one image `(C, H, W)` and flipping order `(N,)`: before step k the
    scalar mean m of the partly perturbed image is recomputed, and patch order[k] takes it.

    Patch order[k] is still clean when it is flipped, so m follows in closed form from the clean patch sums:
    m ← m + (P / T) · (m − mean of that patch), P the values in a patch and T in the image. Every patch keeps the
    value it was given, so one fill image serves all N steps.
    """
    sums = grid.patch_sums(image[None].double())[0].cpu().numpy()
    per_patch = image.numel() // grid.num_patches
    fraction = per_patch / image.numel()
    running = float(sums.sum() / image.numel())
    values = np.empty(grid.num_patches, dtype=np.float64)
    for patch in order:
        values[patch] = running
        running += fraction * (running - sums[patch] / per_patch)
    patch_values = torch.as_tensor(values, dtype=image.dtype, device=image.device)
    return grid.pixel_mask(patch_values[None]).expand(1, image.shape[0], -1, -1)[0]
