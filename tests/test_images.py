"""`hf_fga.images`: accepted pixel ranges per dtype, string sources (paths, URLs, base64), EXIF, size checks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_fga.images import ImageInputError, as_pipeline_inputs, load_image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


@pytest.fixture(scope="module")
def gray8() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)


def test_uint8_and_uint16_ranges(gray8):
    rgb = pixels(load_image(gray8))
    assert rgb.shape == (20, 24, 3) and (rgb[..., 0] == gray8).all()
    sixteen = gray8.astype(np.uint16) * 257  # 0..65535 in steps of 257: exactly the 8-bit values after scaling
    np.testing.assert_array_equal(pixels(load_image(sixteen)), rgb)
    np.testing.assert_array_equal(pixels(load_image(Image.fromarray(sixteen))), rgb)  # a 16-bit PIL image


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_other_integers_are_8_bit_within_0_255_and_16_bit_within_0_65535(gray8, dtype):
    if np.iinfo(dtype).max < 255:
        small = (gray8 // 2).astype(dtype)  # int8 holds 0..127
        np.testing.assert_array_equal(pixels(load_image(small)), pixels(load_image((gray8 // 2).astype(np.uint8))))
        return
    np.testing.assert_array_equal(pixels(load_image(gray8.astype(dtype))), pixels(load_image(gray8)))
    if np.iinfo(dtype).max >= 65535:
        wide = gray8.astype(dtype) * 257
        np.testing.assert_array_equal(pixels(load_image(wide)), pixels(load_image(gray8)))


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((20, 20), -1, dtype=np.int16), "0–255 .* 0–65535.*-1"),
        (np.full((20, 20), 70000, dtype=np.int32), "0–255 .* 0–65535.*70000"),
        (np.full((20, 20), 256.5, dtype=np.float32), r"\[0, 1\] or \[0, 255\].*256.5"),
        (np.full((20, 20), -0.25, dtype=np.float64), r"\[0, 1\] or \[0, 255\].*-0.25"),
        (np.full((20, 20), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.ones((20, 20), dtype=np.complex64), "complex64 arrays are not images"),
        (np.ones((20, 20), dtype=bool), "bool arrays are not images"),
        (np.ones((20, 20), dtype=object), "object arrays are not images"),
    ],
)
def test_values_out_of_range_are_errors_naming_the_range(array, expected):
    with pytest.raises(ImageInputError, match=expected):
        load_image(array)


def test_floats_in_0_1_and_0_255(gray8):
    unit = gray8.astype(np.float64) / 255.0
    np.testing.assert_array_equal(pixels(load_image(unit)), pixels(load_image(gray8)))
    np.testing.assert_array_equal(pixels(load_image(gray8.astype(np.float32))), pixels(load_image(gray8)))
    tensor = torch.from_numpy(unit).to(torch.bfloat16)  # no numpy dtype: read through float32
    assert pixels(load_image(tensor)).shape == (20, 24, 3)
    channels_first = np.stack([gray8] * 3).astype(np.float32)  # (3, H, W)
    np.testing.assert_array_equal(pixels(load_image(channels_first)), pixels(load_image(gray8)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_base64_and_data_urls_and_missing_files(gray8, tmp_path):
    image = Image.fromarray(gray8).convert("RGB")
    encoded = base64.b64encode(png_bytes(image)).decode()
    np.testing.assert_array_equal(pixels(load_image(encoded)), pixels(image))
    np.testing.assert_array_equal(pixels(load_image("data:image/png;base64," + encoded)), pixels(image))
    with pytest.raises(ImageInputError, match="no such image file"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ImageInputError, match="not an http\\(s\\) URL or a base64-encoded image"):
        load_image("definitely not an image")


def test_urls_go_through_transformers_load_image_with_the_timeout(gray8, monkeypatch):
    import transformers.image_utils

    seen = {}

    def fake_get(url, timeout=None, follow_redirects=False):
        seen["url"], seen["timeout"] = url, timeout
        return type("Response", (), {"content": png_bytes(Image.fromarray(gray8))})()

    monkeypatch.setattr(transformers.image_utils.httpx, "get", fake_get)
    image = load_image("https://example.org/x.png", timeout=2.5)
    assert seen == {"url": "https://example.org/x.png", "timeout": 2.5} and image.size == (24, 20)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3) % 251)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = load_image(str(path))
    assert upright.size == (30, 40)
    assert load_image(Image.open(path)).size == (30, 40)


def test_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the pixels were decoded"))
    with pytest.raises(ImageInputError, match="larger than"):
        load_image(str(huge))


def test_tiny_images_are_too_small():
    with pytest.raises(ImageInputError, match="too small"):
        load_image(Image.new("RGB", (1, 1)))


def test_pipeline_inputs():
    images = [Image.new("RGB", (20, 20))] * 2
    assert as_pipeline_inputs(tuple(images)) == images
    assert len(as_pipeline_inputs(np.zeros((3, 20, 20, 3), dtype=np.uint8))) == 3
    assert isinstance(as_pipeline_inputs(np.zeros((20, 20, 3), dtype=np.uint8)), np.ndarray)
    assert as_pipeline_inputs("x.png") == "x.png"
    generator = (i for i in images)
    assert as_pipeline_inputs(generator) is generator
    with pytest.raises(ImageInputError, match="empty"):
        as_pipeline_inputs([])
