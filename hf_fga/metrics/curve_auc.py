"""
The area under a perturbation curve s_0..s_N, shared by the `pixel_flipping`, `deletion` and `insertion` modules.

Each of those folders holds a link to this file, so that `evaluate` loads it as a local import of the module's own
folder (`from .curve_auc import curve_aucs`) and a folder pushed to the Hub as a Space stays self-contained. Deletion
is therefore the normalised Pixel Flipping AUC by construction, not by a copy of it.
"""

import numpy as np

AUC_KINDS = ("normalized", "trapezoid")


def curve_aucs(curves, metric: str, auc: str = "normalized") -> list[float]:
    """
    The AUC of every curve.

    Args:
        curves (`list` of `list` of `float`): per image, the N + 1 scores s_0..s_N (N >= 1), all finite.
        metric (`str`): the calling module's name, for the error messages.
        auc (`str`, *optional*, defaults to `"normalized"`): `"normalized"`: (1/N) Σ_{k=1..N} (s_{k-1} + s_k) / 2,
            the points placed at k / N; `"trapezoid"`: the same sum with dx = 1, not divided by N.

    Returns:
        `list[float]`: one AUC per curve.

    Example:
    ```python
    >>> curve_aucs([[1.0, 0.5, 0.0]], "pixel_flipping"), curve_aucs([[1.0, 0.5, 0.0]], "pixel_flipping", "trapezoid")
    ([0.5], [1.0])

    ```
    """
    if auc not in AUC_KINDS:
        raise ValueError(f"{metric} got auc={auc!r}; expected one of {AUC_KINDS}.")
    if len(curves) == 0:
        raise ValueError(f"{metric} got no images: pass at least one curve of N + 1 scores.")
    scores = []
    for index, curve in enumerate(curves):
        curve = np.asarray(curve, dtype=np.float64)
        if curve.ndim != 1 or curve.size < 2 or not np.isfinite(curve).all():
            raise ValueError(
                f"{metric}: image {index} has a curve of {curve.size} values; expected at least 2 finite scores "
                "s_0..s_N."
            )
        area = float(((curve[:-1] + curve[1:]) / 2).sum())
        scores.append(area / (curve.size - 1) if auc == "normalized" else area)
    return scores
