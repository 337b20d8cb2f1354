"""
Images of a test split that also sit, byte for byte or almost, in the splits a model learnt from.

A public data set split by image (not by patient) can hold the same scan twice: two frames of one examination, one
export saved twice, sometimes under two labels. A classifier scored on such a test split is partly scored on its
training data. This module finds those images and splits a model's scores by them:

- [`thumbnail_matrix`]: each image as a small grey thumbnail (default 16 × 16), centred and scaled to unit norm, so
  the dot product of two rows is the Pearson correlation of the thumbnails: 1 for the same picture, also after a
  brightness or contrast change, and well below 1 for two different scans.
- [`nearest_matches`]: for every query image its best-correlated reference image, and whether the two are
  byte-identical (SHA-256 of the encoded file).
- [`scores_by_overlap`]: accuracy and balanced accuracy (the mean of the per-class recalls, method.md §6's "balanced
  accuracy") of a model on all queries, on those with a near-duplicate, and on the rest.

The threshold that makes a match a near-duplicate is the caller's (the scripts use 0.99 and say so): a thumbnail
correlation is a screening rule, not proof; look at the pairs (`scripts/split_overlap.py` draws them).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image


def _pil(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict) and item.get("bytes") is not None:  # a `datasets` Image column read without decoding
        return Image.open(io.BytesIO(item["bytes"]))
    if isinstance(item, (bytes, bytearray)):
        return Image.open(io.BytesIO(item))
    raise TypeError(
        f"an image must be a PIL image, encoded bytes or a {{'bytes': ...}} record of a parquet image column; got "
        f"{type(item).__name__}."
    )


def image_digest(item: Any) -> str:
    """SHA-256 of an image's encoded bytes (a PIL image without its file: of its decoded pixels and size)."""
    if isinstance(item, dict) and item.get("bytes") is not None:
        return hashlib.sha256(item["bytes"]).hexdigest()
    if isinstance(item, (bytes, bytearray)):
        return hashlib.sha256(item).hexdigest()
    image = _pil(item)
    return hashlib.sha256(repr((image.mode, image.size)).encode() + image.tobytes()).hexdigest()


def thumbnail_matrix(images: Iterable[Any], size: int = 16) -> np.ndarray:
    """
    One row per image: its `size` × `size` grey thumbnail (float64), minus its mean, divided by its norm, so that
    `A @ B.T` holds the Pearson correlations of the thumbnails. A flat image (no variance) has no correlation: its
    row is NaN.
    """
    if size < 2:
        raise ValueError(f"size must be at least 2 pixels; got {size}.")
    rows = [np.asarray(_pil(item).convert("L").resize((size, size)), np.float64).ravel() for item in images]
    if not rows:
        return np.zeros((0, size * size))
    matrix = np.stack(rows)
    matrix -= matrix.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, matrix / norms, np.nan)


def nearest_matches(
    queries: Sequence[Any],
    references: Sequence[Any],
    *,
    query_ids: Sequence[str] | None = None,
    reference_ids: Sequence[str] | None = None,
    size: int = 16,
) -> pd.DataFrame:
    """
    For every query image, the reference image of highest thumbnail correlation.

    Returns one row per query, in query order: `query`, `match` (ids; default the positions), `correlation` and
    `identical` (the two are byte-identical; an identical pair anywhere in the references counts even if another
    reference correlates as well).
    """
    if len(references) == 0:
        raise ValueError("there are no reference images to compare with: pass the training (and validation) images.")
    query_ids = [str(i) for i in range(len(queries))] if query_ids is None else list(query_ids)
    reference_ids = [str(i) for i in range(len(references))] if reference_ids is None else list(reference_ids)
    if len(query_ids) != len(queries) or len(reference_ids) != len(references):
        raise ValueError(
            f"ids and images differ in length: {len(query_ids)} query ids for {len(queries)} images, "
            f"{len(reference_ids)} reference ids for {len(references)} images."
        )
    correlations = np.nan_to_num(thumbnail_matrix(queries, size) @ thumbnail_matrix(references, size).T, nan=-1.0)
    best = correlations.argmax(axis=1) if len(queries) else np.zeros(0, dtype=int)
    reference_digests: dict[str, int] = {}
    for position, item in enumerate(references):
        reference_digests.setdefault(image_digest(item), position)
    identical = [image_digest(item) in reference_digests for item in queries]
    match = [
        reference_ids[reference_digests[image_digest(item)]] if same else reference_ids[int(b)]
        for item, same, b in zip(queries, identical, best, strict=True)
    ]
    return pd.DataFrame(
        {
            "query": query_ids,
            "match": match,
            "correlation": [
                1.0 if same else float(correlations[q, b])
                for q, (same, b) in enumerate(zip(identical, best, strict=True))
            ],
            "identical": identical,
        }
    )


def balanced_accuracy(labels: pd.Series, predictions: pd.Series) -> float:
    """The mean recall over the classes present in `labels` (NaN without images)."""
    recalls = [float((predictions[labels == c] == c).mean()) for c in sorted(labels.unique())]
    return float(np.mean(recalls)) if recalls else float("nan")


def _scores(labels: pd.Series, predictions: pd.Series) -> dict[str, float]:
    return {
        "images": int(len(labels)),
        "accuracy": float((predictions == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
        "classes": int(labels.nunique()),
    }


def scores_by_overlap(labels: Sequence[Any], predictions: Sequence[Any], duplicated: Sequence[bool]) -> pd.DataFrame:
    """
    Accuracy and balanced accuracy (mean recall over the classes present in the group) on all images, on those
    `duplicated` (a near-duplicate in the training data) and on the rest. One row per group: `group`, `images`,
    `accuracy`, `balanced_accuracy`, `classes` (the number of classes in the group's mean).
    """
    labels, predictions, duplicated = list(labels), list(predictions), [bool(d) for d in duplicated]
    if not len(labels) == len(predictions) == len(duplicated):
        raise ValueError(
            f"labels, predictions and duplicated must have one entry per image; got {len(labels)}, "
            f"{len(predictions)} and {len(duplicated)}."
        )
    frame = pd.DataFrame({"label": labels, "prediction": predictions, "duplicated": duplicated})
    groups = {
        "all": frame,
        "with a near-duplicate": frame[frame["duplicated"]],
        "without": frame[~frame["duplicated"]],
    }
    return pd.DataFrame([{"group": name, **_scores(g["label"], g["prediction"])} for name, g in groups.items()])


__all__ = ["balanced_accuracy", "image_digest", "nearest_matches", "scores_by_overlap", "thumbnail_matrix"]
