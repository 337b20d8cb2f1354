"""Patch Pixel Flipping (Bach et al. 2015): the area under the probability curve of cumulative patch removal."""

import evaluate

from .curve_auc import curve_aucs
from .metric_module import mean_result, metric_info

_CITATION = """\
@article{bach2015pixel,
  title={On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation},
  author={Bach, Sebastian and Binder, Alexander and Montavon, Gr{\\'e}goire and Klauschen, Frederick and
          M{\\"u}ller, Klaus-Robert and Samek, Wojciech},
  journal={PLoS ONE},
  volume={10},
  number={7},
  year={2015}
}
"""

_DESCRIPTION = """\
Pixel Flipping, patch version (method.md §5, thesis eq. 4.3-4.4). Patches are removed in descending attribution
order; s_k is the probability of the class predicted on the clean image after the top-k patches are perturbed,
k = 0..N. With `auc="normalized"` (papers preset) AUC = (1/N) Σ_{k=1..N} (s_{k-1} + s_k) / 2 ∈ [0, 1]; with
`auc="trapezoid"` (thesis preset) the trapezoid with dx = 1 is not divided by N (unit of the thesis tables, e.g.
93.17 with N = 196). Lower is better.
"""

_KWARGS_DESCRIPTION = """
Args:
    curves (`list` of `list` of `float`): per image, the N + 1 scores s_0..s_N.
    auc (`str`, *optional*, defaults to `"normalized"`): `"normalized"` or `"trapezoid"` (dx = 1, not normalised).
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-image scores.
Returns:
    pixel_flipping (`float`): the mean AUC over the images.
    pixel_flipping_per_image (`list` of `float`): the per-image AUCs, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> pixel_flipping = evaluate.load(metric_path("pixel_flipping"))
    >>> print(pixel_flipping.compute(curves=[[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]], return_per_image=True))
    {'pixel_flipping': 0.625, 'pixel_flipping_per_image': [0.5, 0.75]}
    >>> print(pixel_flipping.compute(curves=[[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]], auc="trapezoid"))
    {'pixel_flipping': 1.25}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PixelFlipping(evaluate.Metric):
    def _info(self):
        return metric_info(
            _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["curves"], "https://doi.org/10.1371/journal.pone.0130140"
        )

    def _compute(self, curves, auc="normalized", return_per_image=False):
        return mean_result("pixel_flipping", curve_aucs(curves, "pixel_flipping", auc), return_per_image)
