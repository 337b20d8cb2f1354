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
    prototype_ierfs.npz (optional) every prototype's iERF for its feature (CaFE, method.md §9) at its peak patch:
                        per block b `block_b_ierfs` (K, top, h, w) uint8, the positive part of the iERF in
                        `IERF_LEVELS + 1` levels of its own maximum (0 = none), `block_b_images` (the prototype ids
                        they were computed for) and `meta` (JSON: back-end, levels, SAE fingerprints)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .introspection import prepared_model, residual_hooks, residual_stream, vision_config, vision_tower
from .viz import draw_patch_boxes, image_grid, overlay

INDEX_NAME = "prototypes.json"
ARRAYS_NAME = "prototypes.npz"
THUMBS_DIR = "thumbs"
IERFS_NAME = "prototype_ierfs.npz"
IERF_LEVELS = 15  # the prototypes' iERFs are shown as overlays on 112-pixel thumbnails: 16 levels are plenty
IERF_METHOD = "gradient-x-input"
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
        ierfs (`dict[int, np.ndarray]`, *optional*): per block, the prototypes' quantised iERFs `(K, top, h, w)`
            (see the module docstring); None when the asset folder has none for these prototypes.
        ierf_problem (`str`, *optional*): why `ierfs` is None, in words a reader can act on.
    """

    folder: Path
    meta: dict
    tables: dict[int, PrototypeTable] = field(default_factory=dict)
    ierfs: dict[int, np.ndarray] | None = None
    ierf_problem: str | None = None

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
        index = cls(folder, meta, tables)
        index.ierfs, index.ierf_problem = read_prototype_ierfs(folder, tables)
        return index

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

    @property
    def has_ierfs(self) -> bool:
        return self.ierfs is not None

    def strip(self, block: int, feature: int, columns: int = 5, ierfs: bool = False) -> Image.Image | None:
        """
        A grid of the feature's prototypes (`columns` per row), its patches boxed in yellow; None if it has none.
        With `ierfs=True` each prototype is overlaid with its iERF for the feature (what makes it fire there); a
        ValueError ([`ierf_problem`]) when the asset folder has none.
        """
        if ierfs and self.ierfs is None:
            raise ValueError(self.ierf_problem)
        found = self.prototypes(block, feature)
        if not found:
            return None
        tiles = []
        slot = {image: n for n, image in enumerate(self.tables[block].images[feature])}
        for image, _, patches in found:
            boxes = [(p // self.grid[1], p % self.grid[1], PROTOTYPE_COLOUR) for p in patches]
            thumbnail = self.thumbnail(image)
            if ierfs:
                heat = self.ierfs[block][feature, slot[image]]
                if heat.any():
                    thumbnail = overlay(thumbnail, heat.astype(np.float32))
            tiles.append(draw_patch_boxes(thumbnail, boxes, self.grid, width=2))
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


# ------------------------------------------------------------------------------------------------ prototype iERFs
def compute_prototype_ierfs(
    model,
    saes: Mapping[int, object],
    tables: Mapping[int, PrototypeTable],
    load_pixels: Callable[[int], torch.Tensor],
    method: str = IERF_METHOD,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, np.ndarray]:
    """
    Every prototype's iERF for its feature (CaFE, method.md §9): the attribution of the feature's activation at the
    prototype's peak patch (`patches[..., 0]`) to the input patches, through [`hf_fga.cafe.explain_feature`]; the
    features of one image and block share one forward pass.

    Args:
        model: the ViT the SAEs read.
        saes (`Mapping[int, SparseAutoencoder]`): per block, the SAEs the `tables` were computed for.
        tables (`Mapping[int, PrototypeTable]`): from [`compute_prototypes`] (image ids index `load_pixels`).
        load_pixels (`Callable[[int], Tensor]`): image id → its preprocessed `pixel_values (1, C, H, W)`.
        method (`str`, defaults to `"gradient-x-input"`): the CaFE back-end.
        progress (`Callable[[int, int], None]`, *optional*): called with (images done, images in all).

    Returns:
        `dict[int, np.ndarray]`: per block, float32 iERFs `(K, top, h, w)`, 0 where there is no prototype.
    """
    from .cafe import explain_feature  # the CaFE package reads the attribution engine: imported on use

    used = sorted({int(i) for table in tables.values() for i in table.images.ravel() if i >= 0})
    maps, prefix = {}, None
    for n, image in enumerate(used):
        pixels = load_pixels(image)
        grid = (pixels.shape[-2] // _patch_size(model), pixels.shape[-1] // _patch_size(model))
        for block, sae in saes.items():
            table = tables[block]
            if block not in maps:
                maps[block] = np.zeros((*table.images.shape, *grid), np.float32)
            features, slots = np.nonzero(table.images == image)
            if len(features) == 0:
                continue
            if prefix is None:  # the prototypes index the last h·w tokens: the patches
                with prepared_model(model), torch.no_grad():
                    tokens = residual_stream(model, pixels, block, sae.config.hook_point).shape[1]
                prefix = tokens - grid[0] * grid[1]
            position = torch.as_tensor(prefix + table.patches[features, slots, 0].astype(np.int64))[None]
            out = explain_feature(model, sae, pixels, features.tolist(), position=position, method=method)
            maps[block][features, slots] = out.ierf[0].numpy()
        if progress is not None:
            progress(n + 1, len(used))
    return maps


def _patch_size(model) -> int:
    size = vision_config(model).patch_size
    return int(size[0]) if isinstance(size, list | tuple) else int(size)


def quantize_ierfs(maps: np.ndarray, levels: int = IERF_LEVELS) -> np.ndarray:
    """The positive part of iERFs `(..., h, w)` in `levels + 1` steps of each map's own maximum, as uint8."""
    positive = np.clip(np.nan_to_num(maps.astype(np.float32)), 0, None)
    peak = positive.max(axis=(-2, -1), keepdims=True)
    scaled = np.divide(positive, peak, out=np.zeros_like(positive), where=peak > 0)
    return np.rint(scaled * levels).astype(np.uint8)


def save_prototype_ierfs(
    folder: str | Path, maps: Mapping[int, np.ndarray], tables: Mapping[int, PrototypeTable], saes, method: str
) -> Path:
    """Write `prototype_ierfs.npz` (see the module docstring) next to the index; returns its path."""
    path = Path(folder) / IERFS_NAME
    arrays = {}
    for block, table in tables.items():
        arrays[f"block_{block}_ierfs"] = quantize_ierfs(maps[block])
        arrays[f"block_{block}_images"] = table.images.astype(np.int32)
    meta = {
        "method": method,
        "levels": IERF_LEVELS,
        "blocks": sorted(int(b) for b in tables),
        "sae_fingerprints": {str(b): sae_fingerprint(sae) for b, sae in saes.items()},
    }
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def read_prototype_ierfs(
    folder: str | Path, tables: Mapping[int, PrototypeTable]
) -> tuple[dict[int, np.ndarray] | None, str | None]:
    """
    `(ierfs, None)` from `prototype_ierfs.npz` when it was computed for exactly these prototypes, else
    `(None, why)`; the reason names the command that writes them.
    """
    path = Path(folder) / IERFS_NAME
    remedy = "run python scripts/build_space_assets.py --ierfs-only to compute them"
    if not path.is_file():
        return None, f"The prototypes' iERFs are not among the assets ({path.name} is missing): {remedy}."
    with np.load(path) as arrays:
        meta = json.loads(str(arrays["meta"]))
        if sorted(meta.get("blocks", [])) != sorted(tables) or any(
            not np.array_equal(arrays[f"block_{b}_images"], table.images) for b, table in tables.items()
        ):
            return None, f"The prototypes' iERFs in {path.name} belong to other prototypes: {remedy}."
        return {b: arrays[f"block_{b}_ierfs"] for b in tables}, None
