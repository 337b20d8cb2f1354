"""`hf_fga.viz`: overlays, patch boxes, gate maps, grids and cards (checked pixel by pixel where it matters)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hf_fga.viz import (
    captioned_stack,
    draw_patch_boxes,
    feature_card,
    fit_within,
    gate_image,
    image_grid,
    normalize_map,
    overlay,
)

WHITE, RED = (255, 255, 255), (255, 0, 0)


def test_normalize_map_and_overlay():
    np.testing.assert_allclose(normalize_map(np.array([[1.0, 3.0]])), [[0.0, 1.0]])
    assert not normalize_map(np.full((2, 2), 5.0)).any()
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    blended = overlay(image, np.array([[0.0, 1.0]]), alpha=0.0)
    assert blended.size == (40, 20) and np.asarray(blended).tolist() == np.asarray(image).tolist()


def test_patch_boxes_and_labels():
    image = Image.new("RGB", (40, 40), "white")
    boxed = np.asarray(draw_patch_boxes(image, [(1, 0, "#ff0000")], (2, 2), width=1))
    assert tuple(boxed[20, 5]) == RED and tuple(boxed[25, 5]) == WHITE  # top edge of the lower-left patch only
    assert tuple(boxed[5, 5]) == WHITE
    labelled = np.asarray(draw_patch_boxes(image, [(0, 1, "#ff0000")], (2, 2), width=1, labels=["7"]))
    band = labelled[1:12, 21:30]
    assert (band == RED).all(axis=-1).mean() > 0.5 and (band != RED).any()  # a red band with the digit on it


def test_fit_within_keeps_the_aspect_and_small_images():
    small = Image.new("RGB", (100, 50))
    assert fit_within(small, 448) is small
    assert fit_within(Image.new("RGB", (1000, 500)), 448).size == (448, 224)


def test_gate_image_colours_the_log_scale():
    gate = np.array([[0.1, 1.0], [10.0, 100.0]])  # 100 is clipped to c_max
    rgb = np.asarray(gate_image(gate, cmax=10.0, size=2)).astype(int)
    assert rgb[0, 0, 0] > 150 and rgb[0, 0, 1] < 50  # red: suppressed
    assert rgb[1, 0, 1] > 80 and rgb[1, 0, 0] < 50  # green: amplified
    assert (rgb[1, 1] == rgb[1, 0]).all()
    assert rgb[0, 1, 0] > 200 and rgb[0, 1, 1] > 200  # yellow-ish: 1


def test_grid_stack_and_card_sizes():
    tiles = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(5)]
    grid = image_grid(tiles, columns=2, size=10)
    assert grid.size == (20, 30) and grid.getpixel((15, 5)) == (40, 0, 0) and grid.getpixel((15, 25)) == WHITE
    stack = captioned_stack([(Image.new("RGB", (30, 10)), "a"), (Image.new("RGB", (20, 10)), "b")], gap=2)
    assert stack.size == (30, 2 * (10 + 24 + 2))
    card = feature_card(Image.new("RGB", (50, 50)), [(0, 0, "#00ff00")], (2, 2), None, "none", side=20)
    assert card.size == (20 + 8 + 40, 20)
    with_sheet = feature_card(Image.new("RGB", (50, 50)), [], (2, 2), Image.new("RGB", (60, 30)), "", side=20)
    assert with_sheet.size == (20 + 8 + 40, 20)


@pytest.mark.parametrize("count", [1, 3])
def test_image_grid_columns_never_exceed_the_tiles(count):
    assert image_grid([Image.new("RGB", (4, 4))] * count, columns=5, size=4).size == (4 * count, 4)
