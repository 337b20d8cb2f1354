"""SaCo, the Salience-guided Faithfulness Coefficient (Wu et al., CVPR 2024), scored from per-group records."""

import evaluate
import numpy as np

from .metric_module import mean_result, metric_info

_CITATION = """\
@inproceedings{wu2024faithfulness,
  title={On the Faithfulness of Vision Transformer Explanations},
  author={Wu, Junyi and Kang, Weitai and Tang, Hao and Hong, Yuan and Yan, Yan},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2024}
}
"""

_DESCRIPTION = """\
SaCo checks whether patch groups with more salience change the prediction more, weighting every violation by the
salience difference. For groups G_1..G_K (sorted by salience, descending) with salience sums s_i and probability
drops Δ_i (each group perturbed on its own), every pair i < j contributes w = s_i - s_j if Δ_i >= Δ_j and
w = -(s_i - s_j) otherwise; SaCo = Σw / Σ|w| ∈ [-1, 1] (method.md §5, thesis eq. 4.6-4.7). Higher is better.
When Σ|w| = 0 (all group saliences equal) the attribution claims no group matters more than another, so it earns
neither credit nor penalty: the score is defined as 0.0, which is also the expected score of a random attribution.
A constant attribution map scores 0.0 whatever the order of its patches: the `hf_fga.faithfulness` engine gives
its groups equal saliences even where the groups differ in size by one patch (N not divisible by K), since their
sums would otherwise differ by the group size alone and the score would depend on which patches fill the larger
groups.
"""

_KWARGS_DESCRIPTION = """
Args:
    saliences (`list` of `list` of `float`): per image, the salience sum s_i of each group, in group order (the
        `hf_fga.faithfulness` engine passes them sorted by salience, descending).
    drops (`list` of `list` of `float`): per image, the prediction drop Δ_i of each group, same length as saliences.
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-image scores.
Returns:
    saco (`float`): the mean SaCo over the images, in [-1, 1].
    saco_per_image (`list` of `float`): the per-image scores, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> saco = evaluate.load(metric_path("saco"))
    >>> results = saco.compute(
    ...     saliences=[[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]],
    ...     drops=[[0.3, 0.2, 0.1], [0.2, 0.3, 0.1]],
    ...     return_per_image=True,
    ... )
    >>> print(results)
    {'saco': 0.75, 'saco_per_image': [1.0, 0.5]}
"""


def saco_score(saliences: np.ndarray, drops: np.ndarray) -> float:
    """SaCo of one image from its `(K,)` group saliences and drops; 0.0 when every weight is zero (equal saliences)."""
    upper = np.triu(np.ones((len(saliences), len(saliences)), dtype=bool), k=1)
    difference = saliences[:, None] - saliences[None, :]
    agrees = drops[:, None] >= drops[None, :]
    weights = np.where(agrees, difference, -difference)[upper]
    total = np.abs(weights).sum()
    return float(weights.sum() / total) if total > 0 else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Saco(evaluate.Metric):
    def _info(self):
        return metric_info(
            _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["saliences", "drops"], "https://arxiv.org/abs/2404.01415"
        )

    def _compute(self, saliences, drops, return_per_image=False):
        if len(saliences) == 0:
            raise ValueError("saco got no images: pass at least one list of group saliences and drops.")
        scores = []
        for index, (salience, drop) in enumerate(zip(saliences, drops, strict=True)):
            salience, drop = np.asarray(salience, dtype=np.float64), np.asarray(drop, dtype=np.float64)
            if salience.shape != drop.shape or salience.size < 2:
                raise ValueError(
                    f"saco: image {index} has {salience.size} saliences and {drop.size} drops; expected the same "
                    "number (one per group) and at least 2 groups."
                )
            if not (np.isfinite(salience).all() and np.isfinite(drop).all()):
                raise ValueError(f"saco: image {index} has NaN or infinite saliences or drops; pass finite values.")
            scores.append(saco_score(salience, drop))
        return mean_result("saco", scores, return_per_image)
