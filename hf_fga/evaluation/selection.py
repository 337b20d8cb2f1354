"""Which images an evaluation run scores: the dataset split, id filters and a seeded random subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .arguments import DataArguments


def _read_ids(path: str, key: str | None) -> set[str]:
    content = json.loads(Path(path).read_text())
    if isinstance(content, dict):
        if key is None or key not in content:
            lists = [k for k, v in content.items() if isinstance(v, list)]
            raise ValueError(f"{path} holds a JSON object: name its id list with --ids_key (one of {lists}).")
        content = content[key]
    if not isinstance(content, list):
        raise ValueError(f"{path} must hold a JSON list of ids (or an object of lists); got {type(content).__name__}.")
    return {str(item) for item in content}


def _column(dataset, name: str | None) -> list[str]:
    if name is None:
        return [str(i) for i in range(len(dataset))]
    if name not in dataset.column_names:
        raise ValueError(f"Column {name!r} is not in the dataset: its columns are {dataset.column_names}.")
    return [str(value) for value in dataset[name]]


def select_images(dataset, data_args: DataArguments) -> list[tuple[int, str]]:
    """
    The `(row index, image id)` pairs to evaluate: filtered by the include/exclude id files, in dataset order; with
    `limit`, the first `limit` of a permutation seeded by `seed`, in that (random) order, so that subsets of one seed
    are nested and a run stopped early has scored a random subset. Raises when ids are not unique.
    """
    ids = _column(dataset, data_args.id_column)
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"Image ids from {data_args.id_column or 'the row index'} are not unique: choose a unique --id_column."
        )
    keep = np.ones(len(ids), dtype=bool)
    if data_args.include_ids or data_args.exclude_ids:
        matched = _column(dataset, data_args.ids_column or data_args.id_column)
        if data_args.include_ids:
            wanted = _read_ids(data_args.include_ids, data_args.ids_key)
            keep &= np.array([value in wanted for value in matched], dtype=bool)
        if data_args.exclude_ids:
            unwanted = _read_ids(data_args.exclude_ids, data_args.ids_key)
            keep &= np.array([value not in unwanted for value in matched], dtype=bool)
    indices = np.flatnonzero(keep)
    if data_args.limit is not None:
        if data_args.limit < 1:
            raise ValueError(f"--limit must be a positive number of images, got {data_args.limit}.")
        # a seeded permutation, cut: subsets of one seed are nested (a larger --limit keeps the images already done),
        # and they are processed in that random order, so a run stopped early has scored a random subset
        indices = np.random.default_rng(data_args.seed).permutation(indices)[: data_args.limit]
    if not len(indices):
        raise ValueError("No image is left to evaluate after the id filters: check --include_ids/--ids_column.")
    return [(int(i), ids[i]) for i in indices]


def load_split(data_args: DataArguments, split: str | None = None):
    import datasets

    return datasets.load_dataset(data_args.dataset, data_args.dataset_config, split=split or data_args.split)


def label_names(dataset, column: str | None) -> list[str] | None:
    feature = dataset.features.get(column) if column else None
    return list(feature.names) if hasattr(feature, "names") else None


def label_column(data_args: DataArguments) -> str | None:
    """The label column, or None for `--label_column none` (or empty)."""
    return None if (data_args.label_column or "").lower() in ("", "none") else data_args.label_column


def check_columns(dataset, data_args: DataArguments) -> None:
    """A ValueError naming the image or label column that the dataset lacks, with its columns."""
    for column in (data_args.image_column, label_column(data_args)):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {dataset.column_names}): set --image_column / "
                "--label_column (or --label_column none)."
            )
