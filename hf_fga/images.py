"""Turning what users pass (paths, PIL images, arrays, `datasets` cells) into RGB PIL images, with clear errors."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 16
MAX_PIXELS = 40_000_000
ACCEPTED = "a file path, a PIL image, an H×W / H×W×C uint8, uint16 or float array, or a `datasets` image cell"


class ImageInputError(ValueError):
    """An input that cannot be turned into an RGB image."""


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (C, H, W)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{name}: an image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}.")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageInputError(f"{name}: the array contains NaN or infinite pixel values; clean the image first.")
        if array.min() < 0:
            raise ImageInputError(
                f"{name}: float pixel values must be in [0, 1] or [0, 255], got a minimum of {array.min():.3g}."
            )
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.max(initial=0) > 255):
        array = (array.astype(np.float64) / 65535.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    else:
        array = array.astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Grayscale, 16-bit and palette images become RGB; transparency is composited onto black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_rgb(_from_array(np.asarray(image), name), name)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(item: Any, name: str | None = None) -> Image.Image:
    """
    One input as an RGB `PIL.Image`. Accepts ``ACCEPTED`` inputs; raises `ImageInputError` (a `ValueError`) naming the
    input and what to do when it is unreadable, too small (< 16 px a side), too large (> 40 megapixels), or has NaN
    pixels.
    """
    name = name or (repr(item) if isinstance(item, (str, os.PathLike)) else f"input of type {type(item).__name__}")
    if isinstance(item, dict) and ("bytes" in item or "path" in item):  # an undecoded `datasets` Image cell
        item = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
    try:
        if isinstance(item, Image.Image):
            image = item
        elif isinstance(item, np.ndarray):
            image = _from_array(item, name)
        elif hasattr(item, "numpy") and callable(item.numpy):  # a torch tensor
            image = _from_array(item.detach().cpu().numpy(), name)
        elif isinstance(item, (str, os.PathLike, io.BytesIO)):
            if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
                raise ImageInputError(f"{name}: no such image file.")
            with Image.open(item) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ImageInputError(
                        f"{name}: {opened.width}×{opened.height} is larger than {MAX_PIXELS:,} pixels; "
                        "downscale it before explaining it."
                    )
                opened.load()
                image = opened.copy()
        else:
            raise ImageInputError(f"{name}: cannot be read as an image; pass {ACCEPTED}.")
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"{name}: the file is corrupt or not an image ({err}); pass {ACCEPTED}.") from None
    if image.width < MIN_SIDE or image.height < MIN_SIDE:
        raise ImageInputError(
            f"{name}: {image.width}×{image.height} is too small to explain; images need at least "
            f"{MIN_SIDE}×{MIN_SIDE} pixels."
        )
    if image.width * image.height > MAX_PIXELS:
        raise ImageInputError(
            f"{name}: {image.width}×{image.height} is larger than {MAX_PIXELS:,} pixels; "
            "downscale it before explaining it."
        )
    return _to_rgb(image, name)


def as_image_list(inputs: Any) -> tuple[list[Any], bool]:
    """`(items, was_single)`: a single image or any iterable of images (lists, `datasets` columns) as a list."""
    single = isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray, dict, io.BytesIO)) or hasattr(
        inputs, "numpy"
    )
    if single:
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return list(inputs), False
        return [inputs], True
    if not isinstance(inputs, Iterable):
        raise ImageInputError(f"Cannot explain an input of type {type(inputs).__name__}; pass {ACCEPTED}, or a list.")
    items = list(inputs)
    if not items:
        raise ImageInputError("The list of images is empty: pass at least one image.")
    return items, False
