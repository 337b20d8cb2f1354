"""
Checks of user-given options (numbers, counts, label lists) that every entry point shares, so that
`kappa=np.float32(0.5)` is accepted everywhere and `kappa=True` nowhere.

A *real number* is a Python `int` or `float`, a numpy integer or floating scalar, or a 0-d numpy array / torch tensor
of an integer or floating dtype. Booleans (Python, numpy or torch), complex numbers, strings and anything else are
refused with a `TypeError`; NaN, infinities and values outside the allowed range with a `ValueError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["candidate_label_list", "integer", "real_number"]


def _scalar(name: str, value: Any) -> Any:
    """A Python/numpy scalar out of `value` (0-d arrays and tensors unwrapped), or a `TypeError` for other shapes."""
    if hasattr(value, "detach") and hasattr(value, "dim"):  # a torch tensor, without importing torch here
        if value.dim() != 0:
            raise TypeError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}.")
        if value.dtype.is_complex or str(value.dtype) == "torch.bool":
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor.")
        return value.detach().cpu().item()
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise TypeError(f"{name} must be a single number, got an array of shape {value.shape}.")
        value = value[()]
    return value


def _describe(value: Any) -> str:
    return f"{value!r} (a {type(value).__name__})"


def real_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    inclusive: bool | tuple[bool, bool] = True,
    meaning: str = "",
) -> float:
    """
    `value` as a finite Python `float`, checked against `low` / `high`.

    Args:
        name (`str`): the option's name, used in the error (e.g. `"kappa"`).
        value: what the user passed.
        low (`float`, *optional*): the smallest allowed value.
        high (`float`, *optional*): the largest allowed value.
        inclusive (`bool` or `tuple[bool, bool]`, defaults to `True`): whether `low` and `high` themselves are
            allowed (one flag for both bounds, or `(low_inclusive, high_inclusive)`).
        meaning (`str`, *optional*): what the option does, appended to the error (e.g. `"the gate's sensitivity"`).

    Returns:
        `float`.

    Raises:
        `TypeError` for booleans, complex numbers, strings and other non-numbers; `ValueError` for NaN, infinities and
        values out of range. Both name the option, the allowed range and what was passed.

    Example:
    ```python
    >>> import numpy as np
    >>> real_number("kappa", np.float32(0.5), low=0, inclusive=False)
    0.5

    ```
    """
    low_inclusive, high_inclusive = (inclusive, inclusive) if isinstance(inclusive, bool) else inclusive
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high:g}")
    expected = f"a finite real number {' and '.join(bounds)}".rstrip() + (f" ({meaning})" if meaning else "")
    scalar = _scalar(name, value)
    if isinstance(scalar, (bool, np.bool_)) or not isinstance(scalar, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}.")
    number = float(scalar)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {expected}, got {number}.")
    too_low = low is not None and (number < low or (number == low and not low_inclusive))
    too_high = high is not None and (number > high or (number == high and not high_inclusive))
    if too_low or too_high:
        raise ValueError(f"{name} must be {expected}, got {number:g}.")
    return number


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None, meaning: str = "") -> int:
    """
    `value` as a Python `int` in `[low, high]`: Python and numpy integers and 0-d integer arrays / tensors; booleans
    and floats (even `2.0`) raise a `TypeError`, out-of-range values a `ValueError`.

    Example:
    ```python
    >>> integer("top_k_features", 5, low=1)
    5

    ```
    """
    bounds = [f">= {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []
    expected = f"an integer {' and '.join(bounds)}".rstrip() + (f" ({meaning})" if meaning else "")
    scalar = _scalar(name, value)
    if isinstance(scalar, (bool, np.bool_)) or not isinstance(scalar, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}.")
    number = int(scalar)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be {expected}, got {number}.")
    return number


def candidate_label_list(value: Any, name: str = "candidate_labels") -> list[str]:
    """
    Zero-shot labels as a list of distinct, non-empty strings.

    A string is one label, or several separated by commas (as transformers' zero-shot pipelines read it):
    `"cat"` is `["cat"]`, `"cat, dog"` is `["cat", "dog"]`. A list or tuple must hold strings.

    Example:
    ```python
    >>> candidate_label_list("cat, dog")
    ['cat', 'dog']

    ```
    """
    if isinstance(value, str):
        labels = [label.strip() for label in value.split(",") if label.strip()]
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        labels = list(value)
        bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
        if bad:
            raise TypeError(f"{name} must hold non-empty strings, got {bad[0]!r} among {labels!r}.")
    else:
        raise TypeError(
            f"{name} must be a list of strings or one comma-separated string (e.g. 'cat, dog'), got "
            f"{_describe(value)}."
        )
    if not labels:
        raise ValueError(f"{name} is empty: pass the zero-shot labels to choose between, e.g. ['cat', 'dog'].")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"{name} lists {repeated} more than once: each label must appear once.")
    return labels
