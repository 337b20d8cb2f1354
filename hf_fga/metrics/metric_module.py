"""
The two pieces every bundled `evaluate` module shares: its `MetricInfo` and its result dict.

Each metric folder holds a link to this file, so that `evaluate` loads it as a local import of the module's own
folder (`from .metric_module import metric_info, mean_result`) and a folder pushed to the Hub as a Space stays
self-contained, as with `curve_auc.py`. It imports nothing from its own folder: `evaluate` copies only the script's
direct local imports.
"""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np


def metric_info(
    description: str,
    citation: str,
    inputs_description: str,
    columns: Sequence[str],
    reference_url: str,
    per_image_lists: bool = True,
) -> evaluate.MetricInfo:
    """
    The `MetricInfo` of a module whose inputs are float64 columns.

    Args:
        description (`str`): the module's `_DESCRIPTION`.
        citation (`str`): the module's `_CITATION`.
        inputs_description (`str`): the module's `_KWARGS_DESCRIPTION`.
        columns (`Sequence[str]`): the names of the `compute` inputs, in order.
        reference_url (`str`): the paper the metric comes from.
        per_image_lists (`bool`, *optional*, defaults to `True`): every column holds one list of floats per image
            (`datasets.List(datasets.Value("float64"))`); `False`: one float per image (`datasets.Value("float64")`).

    Returns:
        `evaluate.MetricInfo`: with `features` the typed columns and `reference_urls` `[reference_url]`.

    Example:
    ```python
    >>> info = metric_info("AUC.", "", "Args: curves.", ["curves"], "https://arxiv.org/abs/1806.07421")
    >>> list(info.features)
    ['curves']

    ```
    """
    value = datasets.Value("float64")
    feature = datasets.List(value) if per_image_lists else value
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({name: feature for name in columns}),
        reference_urls=[reference_url],
    )


def mean_result(name: str, scores, return_per_image: bool) -> dict:
    """
    The flat result of a module: the mean score over the images, and with `return_per_image` the scores themselves.

    Args:
        name (`str`): the module's name, the key of the mean (`f"{name}_per_image"` that of the scores).
        scores (`list` of `float` or `np.ndarray` of shape `(B,)`): one score per image.
        return_per_image (`bool`): also return the per-image scores, as a list of Python floats.

    Returns:
        `dict`: `{name: float}`, plus `{f"{name}_per_image": list[float]}` with `return_per_image`.

    Example:
    ```python
    >>> mean_result("deletion", [0.5, 0.75], return_per_image=True)
    {'deletion': 0.625, 'deletion_per_image': [0.5, 0.75]}

    ```
    """
    result = {name: float(np.mean(scores))}
    if return_per_image:
        result[f"{name}_per_image"] = np.asarray(scores, dtype=np.float64).tolist()
    return result
