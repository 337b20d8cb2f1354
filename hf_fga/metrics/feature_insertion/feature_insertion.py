"""Feature insertion AUC (CaFE, Han, Kim & Kwak 2025; method.md §9): insertion curve over the clean value."""

import evaluate
import numpy as np

from .curve_auc import curve_aucs
from .metric_module import mean_result, metric_info

_CITATION = """\
@inproceedings{han2025cafe,
  title={Causal Interpretation of Sparse Autoencoder Features in Vision},
  author={Han, Sangyu and Kim, Yearim and Kwak, Nojun},
  year={2025}
}
"""

_DESCRIPTION = """\
Feature insertion (method.md §9): start from the fully filled image x̄ and insert the original patches in ranking
order; z_j is the SAE feature's activation at the explained token q after j patches, so z_N is its clean value.
AUC = (1/N) Σ_{j=1..N} (z_{j-1} + z_j) / 2 divided by z_N. Higher is better: a ranking that puts the patches that
make the feature fire first recovers z sooner. z_N must be positive (the feature fires at q on the clean image).
"""

_KWARGS_DESCRIPTION = """
Args:
    curves (`list` of `list` of `float`): per explained activation, the N + 1 values z_0..z_N (z_N > 0).
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-activation scores.
Returns:
    feature_insertion (`float`): the mean normalised AUC over the explained activations.
    feature_insertion_per_image (`list` of `float`): the per-activation AUCs, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> metric = evaluate.load(metric_path("feature_insertion"))
    >>> print(metric.compute(curves=[[0.0, 1.0, 2.0], [0.0, 2.0, 2.0]], return_per_image=True))
    {'feature_insertion': 0.625, 'feature_insertion_per_image': [0.5, 0.75]}
"""


def normalised_curves(curves) -> list[np.ndarray]:
    """Every curve divided by its last value z_N; a ValueError naming the first curve whose z_N is not positive."""
    result = []
    for index, curve in enumerate(curves):
        curve = np.asarray(curve, dtype=np.float64)
        if curve.ndim != 1 or curve.size < 2 or not np.isfinite(curve).all():
            raise ValueError(
                f"feature_insertion: curve {index} has {curve.size} values; expected at least 2 finite values "
                "z_0..z_N."
            )
        if not curve[-1] > 0:
            raise ValueError(
                f"feature_insertion: curve {index} ends at z_N = {curve[-1]!r}; the AUC is divided by the clean "
                "activation z_N, which must be positive (explain a token where the feature fires)."
            )
        result.append(curve / curve[-1])
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FeatureInsertion(evaluate.Metric):
    def _info(self):
        return metric_info(
            _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ["curves"], "https://arxiv.org/abs/1806.07421"
        )

    def _compute(self, curves, return_per_image=False):
        if len(curves) == 0:
            raise ValueError("feature_insertion got no curves: pass at least one curve z_0..z_N.")
        scores = curve_aucs(normalised_curves(curves), "feature_insertion")
        return mean_result("feature_insertion", scores, return_per_image)
