"""hf_fga.evaluation.split_overlap: near-duplicate images across splits, on synthetic images with known answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_fga.evaluation.split_overlap import image_digest, nearest_matches, scores_by_overlap, thumbnail_matrix


def random_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8)  # blocky: survives the 16-px thumbnail
    return Image.fromarray(np.kron(base, np.ones((8, 8), dtype=np.uint8))).convert("RGB")


def encoded(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_thumbnail_rows_give_pearson_correlations():
    images = [random_image(s) for s in range(4)]
    matrix = thumbnail_matrix(images, size=16)
    grey = [np.asarray(i.convert("L").resize((16, 16)), np.float64).ravel() for i in images]
    for a in range(4):
        for b in range(4):
            assert matrix[a] @ matrix[b] == pytest.approx(np.corrcoef(grey[a], grey[b])[0, 1], abs=1e-12)
    flat = thumbnail_matrix([Image.new("L", (32, 32), 128)])
    assert np.isnan(flat).all()  # no variance, no correlation
    with pytest.raises(ValueError, match="at least 2"):
        thumbnail_matrix(images, size=1)
    with pytest.raises(TypeError, match="PIL image, encoded bytes"):
        thumbnail_matrix(["not an image"])


def test_matches_find_copies_brightness_changes_and_label_conflicts():
    references = [encoded(random_image(s)) for s in range(10)]
    brighter = Image.fromarray(
        np.clip(np.asarray(random_image(3), np.float64) * 0.8 + 30, 0, 255).astype(np.uint8)
    )  # an affine change of intensity keeps the correlation at 1 (up to resizing and rounding)
    queries = [references[7], encoded(brighter), encoded(random_image(99))]
    frame = nearest_matches(
        queries, references, query_ids=["q7", "q3b", "new"], reference_ids=[f"r{s}" for s in range(10)]
    )
    assert list(frame["query"]) == ["q7", "q3b", "new"]
    assert list(frame["match"][:2]) == ["r7", "r3"]
    assert list(frame["identical"]) == [True, False, False]
    assert frame["correlation"][0] == 1.0 and frame["correlation"][1] > 0.99
    assert frame["correlation"][2] < 0.5  # an unrelated image
    assert image_digest(references[7]) == image_digest(references[7]["bytes"])
    assert image_digest(random_image(1)) == image_digest(random_image(1)) != image_digest(random_image(2))
    with pytest.raises(ValueError, match="no reference images"):
        nearest_matches(queries, [])
    with pytest.raises(ValueError, match="ids and images differ"):
        nearest_matches(queries, references, query_ids=["a"])


def test_scores_by_overlap_against_hand_counts():
    labels = ["a", "a", "a", "b", "b", "c"]
    predictions = ["a", "b", "a", "b", "a", "c"]
    duplicated = [True, False, False, True, False, False]
    table = scores_by_overlap(labels, predictions, duplicated).set_index("group")
    # all: recalls a 2/3, b 1/2, c 1/1; accuracy 4/6
    assert table.loc["all", "accuracy"] == pytest.approx(4 / 6)
    assert table.loc["all", "balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # duplicated: a (right), b (right) → 1.0 over 2 classes
    assert table.loc["with a near-duplicate", "balanced_accuracy"] == 1.0
    assert table.loc["with a near-duplicate", "classes"] == 2
    # without: a: 1 of 2, b: 0 of 1, c: 1 of 1
    assert table.loc["without", "balanced_accuracy"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert table.loc["without", "images"] == 4
    with pytest.raises(ValueError, match="one entry per image; got 6, 6 and 2"):
        scores_by_overlap(labels, predictions, [True, False])
