"""
Incremental, resumable parquet storage of per-image results.

Each process writes one file per chunk of images (`results/part-{rank}-{chunk}-{digest}.parquet`), first to a hidden
temporary file in the same folder and then renamed (`os.replace`, atomic on one file system), so a killed run leaves
only complete files behind and loses at most the chunk in flight. A row is identified by its key columns (image id,
configuration, preset, perturbation fill); re-running skips every key already stored. Parts written before the
fill was named `fill` hold it as `baseline`: they are read with the column renamed (`LEGACY_COLUMNS`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KEY_COLUMNS = ("image_id", "config", "preset", "fill")
LEGACY_COLUMNS = {"baseline": "fill"}  # the name a column had in files written by earlier versions
RESULTS_FOLDER = "results"
DIAGNOSTICS_FOLDER = "diagnostics"
RUN_FILE = "run.json"

Key = tuple[str, str, str, str]


def _digest(keys: Iterable[tuple]) -> str:
    return hashlib.sha1(json.dumps(sorted(map(list, keys))).encode()).hexdigest()[:10]


def write_part(folder: str | os.PathLike, rows: list[Mapping[str, object]], rank: int, chunk: int) -> Path | None:
    """
    Write `rows` atomically as one parquet file in `folder` (created if missing); returns its path (None if empty).

    The file name holds the process rank, the chunk index and a digest of the rows' keys, so a later run that adds
    configurations to the same chunk writes a new file rather than replacing the old one.
    """
    if not rows:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [tuple(row[c] for c in KEY_COLUMNS if c in row) + (row.get("block", ""),) for row in rows]
    path = folder / f"part-{rank:03d}-{chunk:06d}-{_digest(keys)}.parquet"
    temporary = folder / f".tmp-{path.name}-{os.getpid()}"
    pq.write_table(pa.Table.from_pylist(list(rows)), temporary)
    os.replace(temporary, path)
    return path


def part_files(folder: str | os.PathLike) -> list[Path]:
    """The complete part files of `folder` (temporary files of a killed run are ignored), in name order."""
    folder = Path(folder)
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_parts(folder: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """
    Every row of `folder`'s part files as one DataFrame; duplicate keys (a chunk redone after a crash between two
    writes) keep the last file's row. Sorted by key, so the result does not depend on how the work was sharded.
    """
    files = part_files(folder)
    if not files:
        return pd.DataFrame(columns=columns or list(KEY_COLUMNS))
    frames = [_read_part(path, columns) for path in files]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    keys = [c for c in (*KEY_COLUMNS, "block") if c in frame.columns]
    frame = frame.drop_duplicates(subset=keys, keep="last")
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def upgrade_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the columns of earlier versions renamed to their current names (`LEGACY_COLUMNS`)."""
    renames = {old: new for old, new in LEGACY_COLUMNS.items() if old in frame.columns and new not in frame.columns}
    return frame.rename(columns=renames) if renames else frame


def _read_part(path: Path, columns: list[str] | None) -> pd.DataFrame:
    if columns is not None:
        present = set(pq.read_schema(path).names)
        legacy = {new: old for old, new in LEGACY_COLUMNS.items()}
        columns = [legacy[c] if c not in present and legacy.get(c) in present else c for c in columns]
    return upgrade_columns(pq.read_table(path, columns=columns).to_pandas())


def completed_keys(output_dir: str | os.PathLike) -> set[Key]:
    """The `(image_id, config, preset, fill)` keys already stored under `output_dir/results`."""
    frame = read_parts(Path(output_dir) / RESULTS_FOLDER, columns=list(KEY_COLUMNS))
    return set(frame[list(KEY_COLUMNS)].astype(str).itertuples(index=False, name=None))


# fields a run records only when they differ from the default, and the value their absence stands for
ABSENT_MEANS = {"precision": "float32"}


def check_run_description(output_dir: str | os.PathLike, description: Mapping[str, object]) -> None:
    """
    Record what the results in `output_dir` were computed from (model, SAEs, dataset, …) in `run.json`; a later run
    into the same folder must describe the same inputs, else its rows would silently mix with others. A field the
    stored description lacks (written before that field was recorded) is not compared, except where the field has a
    value that its absence stands for (`ABSENT_MEANS`: a run stored without `precision` ran in float32).
    """
    path = Path(output_dir) / RUN_FILE
    description = json.loads(json.dumps(dict(description), default=str))
    if path.is_file():
        stored = json.loads(path.read_text())
        stored, now = {**ABSENT_MEANS, **stored}, {**ABSENT_MEANS, **description}
        changed = {k: (stored[k], v) for k, v in now.items() if k in stored and stored[k] != v}
        if changed:
            details = "; ".join(f"{k}: stored {old!r}, now {new!r}" for k, (old, new) in changed.items())
            hint = (
                f" For the thread count, pass --num_threads {changed['num_threads'][0]}."
                if "num_threads" in changed
                else ""
            )
            raise ValueError(
                f"{path} describes a run with other inputs ({details}). Resuming would mix results: use a new "
                f"--output_dir, or delete the folder to start over.{hint}"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{RUN_FILE}-{os.getpid()}")
    temporary.write_text(json.dumps(description, indent=1, sort_keys=True))
    os.replace(temporary, path)
