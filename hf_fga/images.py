"""
Turning what users pass (paths, URLs, base64 strings, PIL images, arrays, `datasets` cells) into RGB PIL images, with
clear errors.

Accepted pixel values of arrays and tensors, by dtype (anything else is an error naming the expected range):

| dtype | values | read as |
| --- | --- | --- |
| `uint8` | 0–255 | 8-bit |
| `uint16` | 0–65535 | 16-bit, scaled to 8 bits (v · 255 / 65535) |
| other integers | all in 0–255, or all in 0–65535 | 8-bit, or 16-bit scaled as above |
| floats | all in [0, 1], or all in [0, 255] (NaN and ±inf refused) | ×255, or as they are, rounded |
| bool, complex, object, strings | refused | |

A float array whose maximum is ≤ 1 is read as [0, 1]: pass a very dark [0, 255] image as `uint8`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16
MAX_PIXELS = 40_000_000
ACCEPTED = (
    "a file path, an http(s) URL, a base64-encoded image, a PIL image, an H×W / H×W×C (or C×H×W) array or tensor, "
    "or a `datasets` image cell"
)
REMOTE_PREFIXES = ("http://", "https://", "data:image/")
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError)


class ImageInputError(ValueError):
    """An input that cannot be turned into an RGB image."""


def _name(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        return repr(text if len(text) <= 80 else text[:60] + "…")
    return f"input of type {type(item).__name__}"


def _integer_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if array.dtype == np.uint8:
        return array
    if low < 0 or high > 65535:
        raise ImageInputError(
            f"{name}: {array.dtype} pixel values must lie in 0–255 (8-bit) or 0–65535 (16-bit), got values from "
            f"{low} to {high}; rescale the image into one of these ranges."
        )
    if array.dtype == np.uint16 or high > 255:
        return (array.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
    return array.astype(np.uint8)


def _float_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageInputError(f"{name}: the array contains NaN or infinite pixel values; clean the image first.")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < 0 or high > 255:
        raise ImageInputError(
            f"{name}: float pixel values must lie in [0, 1] or [0, 255], got values from {low:.4g} to {high:.4g}; "
            "rescale the image into one of these ranges."
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return (array.astype(np.float64) * scale).round().astype(np.uint8)


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """An array `(H, W)`, `(H, W, C)` or `(C, H, W)` (C in 1, 3, 4) as a PIL image, by the dtype rules above."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (C, H, W)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{name}: an image array must be H×W, H×W×3, H×W×4 or C×H×W, got shape {array.shape}.")
    if array.dtype.kind in "iu":
        array = _integer_to_uint8(array, name)
    elif array.dtype.kind == "f":
        array = _float_to_uint8(array, name)
    else:
        raise ImageInputError(
            f"{name}: {array.dtype} arrays are not images; pass uint8 (0–255), uint16 (0–65535), another integer "
            "type within one of those ranges, or floats in [0, 1] or [0, 255]."
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Grayscale, 16-bit and palette images become RGB; transparency is composited onto black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _to_rgb(_from_array(np.asarray(image), name), name)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_size(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageInputError(
            f"{name}: {width}×{height} is too small to explain; images need at least {MIN_SIDE}×{MIN_SIDE} pixels."
        )
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{name}: {width}×{height} is larger than {MAX_PIXELS:,} pixels; downscale it before explaining it."
        )


def _open_file(source: str | os.PathLike | io.BytesIO, name: str) -> Image.Image:
    """Decode a file, checking its size from the header first (PIL reads the size without decoding the pixels)."""
    with Image.open(source) as opened:
        _check_size(opened.width, opened.height, name)
        opened.load()
        return ImageOps.exif_transpose(opened)


def _load_remote(text: str, name: str, timeout: float | None) -> Image.Image:
    """An http(s) URL, a `data:image/` URL or base64 text, read by transformers' `load_image` (8-bit RGB)."""
    from transformers.image_utils import load_image as load_remote

    try:
        return load_remote(text, timeout=timeout)
    except DECODE_ERRORS as err:
        raise ImageInputError(f"{name}: the downloaded data is not an image ({err}); pass {ACCEPTED}.") from None
    except ValueError:
        raise ImageInputError(
            f"{name}: no such image file, and not an http(s) URL or a base64-encoded image either; pass {ACCEPTED}."
        ) from None
    except Exception as err:  # network errors (httpx) and timeouts
        raise ImageInputError(f"{name}: could not be downloaded ({type(err).__name__}: {err}).") from err


def _looks_like_path(text: str) -> bool:
    """A string with a file suffix that is not a URL: a path to a missing file, not base64 text (which has no dot)."""
    return not text.startswith(REMOTE_PREFIXES) and len(text) < 4096 and bool(Path(text).suffix)


def load_image(item: Any, name: str | None = None, timeout: float | None = None) -> Image.Image:
    """
    One input as an RGB `PIL.Image`, upright (EXIF orientation applied).

    Args:
        item: one of ``ACCEPTED`` (see the module docstring for the accepted array values).
        name (`str`, *optional*): how errors call the input (default: the path, or its type).
        timeout (`float`, *optional*): seconds to wait for a URL (passed to `transformers.image_utils.load_image`).

    Raises:
        `ImageInputError` (a `ValueError`) naming the input and what to do when it is unreadable, too small (< 16 px
        a side), too large (> 40 megapixels, checked from the file header before decoding), or has pixel values
        outside the accepted ranges.
    """
    name = name or _name(item)
    if isinstance(item, dict) and ("bytes" in item or "path" in item):  # an undecoded `datasets` Image cell
        item = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
    try:
        if isinstance(item, Image.Image):
            image = ImageOps.exif_transpose(item)
        elif isinstance(item, np.ndarray):
            image = _from_array(item, name)
        elif hasattr(item, "detach") and hasattr(item, "numpy"):  # a torch tensor (bfloat16 has no numpy dtype)
            tensor = item.detach().cpu()
            image = _from_array((tensor.float() if tensor.is_floating_point() else tensor).numpy(), name)
        elif isinstance(item, io.BytesIO) or (isinstance(item, (str, os.PathLike)) and os.path.isfile(item)):
            image = _open_file(item, name)
        elif isinstance(item, os.PathLike) or (isinstance(item, str) and _looks_like_path(item)):
            raise ImageInputError(f"{name}: no such image file.")
        elif isinstance(item, str):
            image = _load_remote(item, name, timeout)
        else:
            raise ImageInputError(f"{name}: cannot be read as an image; pass {ACCEPTED}.")
    except ImageInputError:
        raise
    except DECODE_ERRORS as err:
        raise ImageInputError(f"{name}: the file is corrupt or not an image ({err}); pass {ACCEPTED}.") from None
    _check_size(image.width, image.height, name)
    return _to_rgb(image, name)


def as_pipeline_inputs(inputs: Any) -> Any:
    """
    What `transformers.Pipeline.__call__` should get: several images as a `list` (so that they are batched and a list
    comes back), everything else unchanged (one image; a `Dataset`, `KeyDataset` or generator, which stream).

    Tuples, `datasets` columns and 4-D arrays / tensors `(B, …)` become lists; an empty collection is an error.
    """
    if isinstance(inputs, (str, bytes, os.PathLike, Image.Image, dict, io.BytesIO)):
        return inputs
    if isinstance(inputs, np.ndarray) or (hasattr(inputs, "detach") and hasattr(inputs, "dim")):
        return list(inputs) if inputs.ndim == 4 else inputs
    if isinstance(inputs, Sequence):  # lists, tuples, `datasets` columns
        items = list(inputs)
        if not items:
            raise ImageInputError("The list of images is empty: pass at least one image.")
        return items
    if not isinstance(inputs, Iterable) and not hasattr(inputs, "__getitem__"):
        raise ImageInputError(f"Cannot explain an input of type {type(inputs).__name__}; pass {ACCEPTED}, or a list.")
    return inputs
