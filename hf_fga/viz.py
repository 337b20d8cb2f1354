"""Overlays, figures and feature boxes for attribution maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw


def normalize_map(attribution: np.ndarray) -> np.ndarray:
    """Min–max scale a map to [0, 1]; a constant map becomes all zeros."""
    a = np.asarray(attribution, dtype=np.float64)
    span = a.max() - a.min()
    return np.zeros_like(a) if span <= 0 else (a - a.min()) / span


def upsample(attribution: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an (h, w) patch map to `size = (width, height)` pixels, values in [0, 1]."""
    img = Image.fromarray((normalize_map(attribution) * 255).astype(np.uint8), mode="L")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0


def overlay(image: Image.Image, attribution: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The image with its attribution map (upsampled, min–max scaled, coloured by `cmap`) blended on top."""
    heat = upsample(attribution, image.size)
    coloured = (matplotlib.colormaps[cmap](heat)[..., :3] * 255).astype(np.uint8)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + coloured * alpha).round().astype(np.uint8))


def draw_patch_boxes(
    image: Image.Image, boxes: Sequence[tuple[int, int, str]], grid: tuple[int, int], width: int = 2
) -> Image.Image:
    """Draw `(row, col, colour)` patch boxes of an `grid = (h, w)` patch grid on a copy of `image`."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    ph, pw = out.height / grid[0], out.width / grid[1]
    for row, col, colour in boxes:
        draw.rectangle([col * pw, row * ph, (col + 1) * pw - 1, (row + 1) * ph - 1], outline=colour, width=width)
    return out


def attribution_figure(
    image: Image.Image,
    baseline: np.ndarray,
    attribution: np.ndarray,
    gates: Mapping[int, np.ndarray],
    title: str = "",
):
    """A matplotlib figure: the image, the TransMM and FGA overlays, and one gate map per gated block."""
    import matplotlib.pyplot as plt

    ncols = 3 + len(gates)
    fig, axes = plt.subplots(1, ncols, figsize=(2.6 * ncols, 3.0), squeeze=False)
    axes = axes[0]
    panels = [("image", image), ("TransMM", overlay(image, baseline)), ("FGA", overlay(image, attribution))]
    for ax, (name, picture) in zip(axes[:3], panels, strict=True):
        ax.imshow(picture)
        ax.set_title(name, fontsize=10)
    for ax, (block, gate) in zip(axes[3:], sorted(gates.items()), strict=True):
        norm = matplotlib.colors.LogNorm(vmin=min(gate.min(), 0.99), vmax=max(gate.max(), 1.01))
        im = ax.imshow(gate, cmap="RdYlGn", norm=norm)
        ax.set_title(f"gates, block {block}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
