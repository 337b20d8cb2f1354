"""Patch deletion AUC (Petsiuk et al. 2018; the CaFE feature tests of Han, Kim & Kwak 2025), from per-image curves."""

import evaluate

from .curve_auc import curve_aucs
from .metric_module import mean_result, metric_info

_CITATION = """\
@inproceedings{petsiuk2018rise,
  title={RISE: Randomized Input Sampling for Explanation of Black-box Models},
  author={Petsiuk, Vitali and Das, Abir and Saenko, Kate},
  booktitle={British Machine Vision Conference (BMVC)},
  year={2018}
}
"""

_DESCRIPTION = """\
Patch deletion (method.md §5): the curve starts from the clean image and perturbs patches in descending attribution
order, so s_0 is the score of the clean image and s_N that of the fully perturbed image (the Pixel Flipping curve).
Lower is better. Its AUC is Pixel Flipping's normalised AUC, computed by the same code (`curve_auc.py`).
The tracked score is a class probability or any other target quantity (e.g. an SAE feature activation). The
normalised AUC puts the N + 1 points at k / N: AUC = (1/N) Σ_{k=1..N} (s_{k-1} + s_k) / 2.
"""

_KWARGS_DESCRIPTION = """
Args:
    curves (`list` of `list` of `float`): per image, the N + 1 scores s_0..s_N.
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-image scores.
Returns:
    deletion (`float`): the mean normalised AUC over the images.
    deletion_per_image (`list` of `float`): the per-image AUCs, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> deletion = evaluate.load(metric_path("deletion"))
    >>> print(deletion.compute(curves=[[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]], return_per_image=True))
    {'deletion': 0.625, 'deletion_per_image': [0.5, 0.75]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Deletion(evaluate.Metric):
    def _info(self):
        return metric_info(
            _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["curves"], "https://arxiv.org/abs/1806.07421"
        )

    def _compute(self, curves, return_per_image=False):
        return mean_result("deletion", curve_aucs(curves, "deletion"), return_per_image)
