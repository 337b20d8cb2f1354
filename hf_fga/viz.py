"""Overlays, figures, patch boxes, gate maps, legends and image grids for attribution maps (all PIL drawing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont


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
    image: Image.Image,
    boxes: Sequence[tuple[int, int, str]],
    grid: tuple[int, int],
    width: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """
    Draw `(row, col, colour)` patch boxes of a `grid = (h, w)` patch grid on a copy of `image`; `labels` (one per
    box), when given, are written on a band of the box's colour in its top-left corner.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    ph, pw = out.height / grid[0], out.width / grid[1]
    for n, (row, col, colour) in enumerate(boxes):
        box = [col * pw, row * ph, (col + 1) * pw - 1, (row + 1) * ph - 1]
        draw.rectangle(box, outline=colour, width=width)
        if labels is not None:
            draw.rectangle([box[0], box[1], box[0] + 7 * len(labels[n]) + 4, box[1] + 12], fill=colour)
            draw.text((box[0] + 2, box[1]), labels[n], fill="black")
    return out


def fit_within(image: Image.Image, side: int) -> Image.Image:
    """`image` scaled down (bilinear, aspect kept) so that its long side is at most `side`; smaller images as is."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def gate_image(gate: np.ndarray, cmax: float, size: int = 224) -> Image.Image:
    """A gate map `(h, w)` on a log colour scale over [1/c_max, c_max] (red < 1, yellow 1, green > 1), `size` px."""
    norm = matplotlib.colors.LogNorm(vmin=1.0 / cmax, vmax=cmax)
    rgb = (matplotlib.colormaps["RdYlGn"](norm(np.clip(gate, 1.0 / cmax, cmax)))[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((size, size), Image.NEAREST)


def image_grid(tiles: Sequence[Image.Image], columns: int, size: int) -> Image.Image:
    """`size`-pixel square tiles `columns` to a row on a white sheet, in reading order."""
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile.convert("RGB").resize((size, size)), ((n % columns) * size, (n // columns) * size))
    return sheet


def captioned_stack(panels: Sequence[tuple[Image.Image, str]], gap: int = 6, font_size: int = 15) -> Image.Image:
    """The panels one below the other on a white sheet, each under its one-line caption."""
    font = ImageFont.load_default(size=font_size)
    band = font_size + 9
    width = max(p.width for p, _ in panels)
    sheet = Image.new("RGB", (width, sum(p.height + band + gap for p, _ in panels)), "white")
    draw, top = ImageDraw.Draw(sheet), 0
    for picture, caption in panels:
        draw.text((4, top + 3), caption, fill="black", font=font)
        sheet.paste(picture, (0, top + band))
        top += picture.height + band + gap
    return sheet


def feature_card(
    image: Image.Image,
    boxes: Sequence[tuple[int, int, str]],
    grid: tuple[int, int],
    prototypes: Image.Image | None,
    note: str,
    side: int = 224,
) -> Image.Image:
    """
    One feature's card, `side` pixels high: the explained image with the feature's patch boxes `(row, col, colour)`
    on the left, its prototype sheet on the right (or `note` on white when it has none).
    """
    left = draw_patch_boxes(image.convert("RGB").resize((side, side)), boxes, grid, width=3)
    right = prototypes if prototypes is not None else Image.new("RGB", (2 * side, side), "white")
    if prototypes is None:
        ImageDraw.Draw(right).multiline_text((10, 10), note, fill="black")
    right = right.resize((max(1, round(right.width * side / right.height)), side))
    sheet = Image.new("RGB", (side + 8 + right.width, side), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (side + 8, 0))
    return sheet


def cafe_panels(
    image: Image.Image,
    activation_map: np.ndarray,
    ierf: np.ndarray,
    position: int,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    side: int = 224,
) -> Image.Image:
    """
    A CaFE pair, `side` pixels high: the feature's activation map and the positive part of its iERF (method.md §9),
    each over the image, the explained token boxed in white when it is a patch.
    """
    base = image.convert("RGB").resize((side, side))
    patch = position - num_prefix_tokens
    boxes = [(patch // grid[1], patch % grid[1], "white")] if patch >= 0 else []
    panels = [
        draw_patch_boxes(overlay(base, np.asarray(activation_map, dtype=np.float32)), boxes, grid, width=3),
        draw_patch_boxes(overlay(base, np.clip(np.asarray(ierf, dtype=np.float32), 0, None)), boxes, grid, width=3),
    ]
    sheet = Image.new("RGB", (2 * side + 8, side), "white")
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (side + 8, 0))
    return sheet


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    """`left` and `right` next to each other on white, top-aligned."""
    sheet = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + gap, 0))
    return sheet


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
