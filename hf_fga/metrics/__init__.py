"""The `evaluate` modules that score the faithfulness records of `hf_fga.faithfulness` (one folder per metric)."""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = (
    "saco",
    "faithfulness_correlation",
    "pixel_flipping",
    "insertion",
    "deletion",
    "completeness",
    "feature_insertion",
)


def metric_path(name: str) -> str:
    """
    The folder of the bundled `evaluate` module `name`, for `evaluate.load(metric_path(name))` (works offline).

    Args:
        name (`str`):
            One of `"saco"`, `"faithfulness_correlation"`, `"pixel_flipping"`, `"insertion"`, `"deletion"`,
            `"completeness"`, `"feature_insertion"`.

    Returns:
        `str`: the absolute path of the folder that holds `<name>.py`, its README metric card and `app.py`.

    Example:
    ```python
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> saco = evaluate.load(metric_path("saco"))

    ```
    """
    if name not in METRIC_NAMES:
        raise ValueError(
            f"metric_path got name={name!r}, which is not a bundled metric: expected one of {', '.join(METRIC_NAMES)}."
        )
    return str(METRICS_DIR / name)


__all__ = ["METRIC_NAMES", "metric_path"]
