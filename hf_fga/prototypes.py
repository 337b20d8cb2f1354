"""
Feature prototypes: for every feature of every SAE, its top activating images of a reference split, with the patches
where it fires (method.md §7). Computed once by `scripts/build_space_assets.py` and shipped with the Space as small
JPEG thumbnails, a JSON index and one compressed array file (the per-feature tables are too large for JSON); read by
the Space and by `scripts/feature_case_studies.py`.

Layout of an asset folder:

    prototypes.json     index: model, SAEs, reference split, grid, thumbnail size, images (file, name, label)
    prototypes.npz      per block b: `block_b_images` (K, top) int32 image ids (-1 = none),
                        `block_b_values` (K, top) float16 peak activations,
                        `block_b_patches` (K, top, P) uint8 row-major patch ids (255 = none)
    thumbs/NNNNN.jpg    the reference images, `thumbnail_size` pixels square
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .introspection import residual_hooks, vision_tower
from .viz import draw_patch_boxes, image_grid

INDEX_NAME = "prototypes.json"
ARRAYS_NAME = "prototypes.npz"
THUMBS_DIR = "thumbs"
FORMAT = "hf_fga.space_prototypes"
NO_PATCH = 255
PROTOTYPE_COLOUR = "#ffd400"  # yellow, as on the thesis's project page
MARK_FRACTION = 0.5  # a prototype marks the patches where the feature reaches this fraction of its peak


@dataclass
class PrototypeTable:
    """One block's prototypes: `images`, `values` `(K, top)`, `patches` `(K, top, P)` (see the module docstring)."""

    images: np.ndarray
    values: np.ndarray
    patches: np.ndarray


@dataclass
class PrototypeIndex:
    """
    The prototypes of an SAE set over a reference split.

    Args:
        folder (`Path`): where the thumbnails lie.
        meta (`dict`): the JSON index (model, SAEs, split, grid, thumbnail size, images).
        tables (`dict[int, PrototypeTable]`): per block.
    """

    folder: Path
    meta: dict
    tables: dict[int, PrototypeTable] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> PrototypeIndex:
        """Read an asset folder written by [`PrototypeIndex.save`]; a `FileNotFoundError` names what is missing."""
        folder = Path(folder)
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"No prototype index at {index_path}: run scripts/build_space_assets.py first.")
        meta = json.loads(index_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{index_path} is not a prototype index (format {meta.get('format')!r}, expected {FORMAT!r})."
            )
        with np.load(folder / ARRAYS_NAME) as arrays:
            tables = {
                int(b): PrototypeTable(*(arrays[f"block_{b}_{part}"] for part in ("images", "values", "patches")))
                for b in meta["blocks"]
            }
        return cls(folder, meta, tables)

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the JSON index and the arrays (the thumbnails are written by [`write_thumbnails`])."""
        folder = Path(folder or self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for b, table in self.tables.items():
            arrays[f"block_{b}_images"] = table.images.astype(np.int32)
            arrays[f"block_{b}_values"] = table.values.astype(np.float16)
            arrays[f"block_{b}_patches"] = table.patches.astype(np.uint8)
        np.savez_compressed(folder / ARRAYS_NAME, **arrays)
        meta = dict(self.meta, format=FORMAT, blocks=sorted(self.tables))
        (folder / INDEX_NAME).write_text(json.dumps(meta, indent=1))
        self.folder, self.meta = folder, meta
        return folder

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])

    def matches(self, saes: Mapping[int, object]) -> bool:
        """Whether these prototypes were computed for these SAEs (same widths and, when recorded, same encoders)."""
        sizes, prints = self.meta.get("d_sae", {}), self.meta.get("sae_fingerprints")
        return all(
            sizes.get(str(b)) == sae.config.d_sae and (prints is None or prints.get(str(b)) == sae_fingerprint(sae))
            for b, sae in saes.items()
        )

    def prototypes(self, block: int, feature: int) -> list[tuple[int, float, list[int]]]:
        """`(image id, peak activation, marked patches)` of a feature's top images, strongest first."""
        table = self.tables.get(block)
        if table is None or not 0 <= feature < table.images.shape[0]:
            return []
        out = []
        rows = zip(table.images[feature], table.values[feature], table.patches[feature], strict=True)
        for image, value, patches in rows:
            if image < 0 or not value > 0:
                continue
            out.append((int(image), float(value), [int(p) for p in patches if p != NO_PATCH]))
        return out

    def thumbnail(self, image: int) -> Image.Image:
        return Image.open(self.folder / self.meta["images"][image]["file"]).convert("RGB")

    def strip(self, block: int, feature: int, columns: int = 5) -> Image.Image | None:
        """A grid of the feature's prototypes (`columns` per row), its patches boxed in yellow; None if it has none."""
        found = self.prototypes(block, feature)
        if not found:
            return None
        tiles = []
        for image, _, patches in found:
            boxes = [(p // self.grid[1], p % self.grid[1], PROTOTYPE_COLOUR) for p in patches]
            tiles.append(draw_patch_boxes(self.thumbnail(image), boxes, self.grid, width=2))
        return image_grid(tiles, columns, int(self.meta["thumbnail_size"]))


def sae_fingerprint(sae) -> str:
    """A short hash of an SAE's encoder (weights, biases, decoder bias): prototypes belong to exactly one encoder."""
    digest = hashlib.blake2b(digest_size=12)
    for name in ("W_enc", "b_enc", "b_dec"):
        digest.update(getattr(sae, name).detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_thumbnails(images: Iterable[Image.Image], folder: str | Path, size: int, quality: int = 80) -> list[str]:
    """Save each image as a `size`-pixel square JPEG under `folder/thumbs/`; returns the relative file names."""
    (Path(folder) / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    names = []
    for n, image in enumerate(images):
        name = f"{THUMBS_DIR}/{n:05d}.jpg"
        image.convert("RGB").resize((size, size), Image.BILINEAR).save(Path(folder) / name, quality=quality)
        names.append(name)
    return names


def _merge_top(best: PrototypeTable, values: torch.Tensor, images: torch.Tensor, patches: torch.Tensor, top: int):
    """Keep, per feature, the `top` largest peaks among the current best and the new candidates `(K, n)`."""
    all_values = torch.cat([torch.from_numpy(best.values).float(), values], dim=1)
    all_images = torch.cat([torch.from_numpy(best.images).long(), images], dim=1)
    all_patches = torch.cat([torch.from_numpy(best.patches).long(), patches], dim=1)
    order = all_values.topk(top, dim=1).indices
    best.values = all_values.gather(1, order).numpy()
    best.images = all_images.gather(1, order).numpy()
    best.patches = all_patches.gather(1, order[..., None].expand(-1, -1, all_patches.shape[-1])).numpy()


@torch.no_grad()
def compute_prototypes(
    model,
    saes: Mapping[int, object],
    pixel_batches: Iterable[torch.Tensor],
    grid: tuple[int, int],
    top: int = 10,
    patches_per_image: int = 4,
) -> dict[int, PrototypeTable]:
    """
    Every feature's `top` activating images over the reference images, by the feature's peak activation over the
    image's patch tokens (non-patch tokens such as CLS are skipped, as the SAEs were trained on patches only).

    Args:
        model: the ViT the SAEs read (classifier or CLIP).
        saes (`Mapping[int, SparseAutoencoder]`): per block; each SAE's `config.hook_point` says where it reads.
        pixel_batches (`Iterable[Tensor]`): preprocessed images `(B, 3, H, W)`, in the order of the image ids.
        grid (`tuple[int, int]`): the patch grid (h, w).
        top (`int`, defaults to 10): prototypes per feature.
        patches_per_image (`int`, defaults to 4): at most this many patches are marked per prototype: the feature's
            strongest patches that reach `MARK_FRACTION` of its peak in that image.

    Returns:
        `dict[int, PrototypeTable]`; features that never fire keep image id -1.
    """
    num_patches = grid[0] * grid[1]
    marks = min(patches_per_image, num_patches)
    tables = {
        b: PrototypeTable(
            np.full((sae.config.d_sae, top), -1, np.int64),
            np.zeros((sae.config.d_sae, top), np.float32),
            np.full((sae.config.d_sae, top, marks), NO_PATCH, np.int64),
        )
        for b, sae in saes.items()
    }
    points = {b: getattr(sae.config, "hook_point", "resid_post") for b, sae in saes.items()}
    offset = 0
    with residual_hooks(model, points) as seen:
        for pixel_values in pixel_batches:
            batch = pixel_values.shape[0]
            vision_tower(model)(pixel_values=pixel_values)
            for b, sae in saes.items():
                x = seen[b][:, -num_patches:].float()
                acts = sae.encode(x.reshape(-1, x.shape[-1]).to(sae.dtype)).float().reshape(batch, num_patches, -1)
                peak, where = acts.topk(marks, dim=1)  # (B, P, K)
                keep = peak >= MARK_FRACTION * peak[:, :1]
                where = torch.where(keep & (peak > 0), where, torch.full_like(where, NO_PATCH))
                ids = torch.arange(offset, offset + batch).expand(acts.shape[-1], batch)
                _merge_top(tables[b], peak[:, 0].T, ids, where.permute(2, 0, 1), top)
            offset += batch
    for table in tables.values():
        table.images[table.values <= 0] = -1
    return tables
