"""FullGrad completeness error (Srinivas & Fleuret 2019; LibraGrad), scored from per-image gradient terms."""

import evaluate
import numpy as np

from .metric_module import mean_result, metric_info

_CITATION = """\
@inproceedings{srinivas2019fullgrad,
  title={Full-Gradient Representation for Neural Network Visualization},
  author={Srinivas, Suraj and Fleuret, Fran{\\c{c}}ois},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2019}
}
"""

_DESCRIPTION = """\
FullGrad completeness (method.md §8): a gradient g = ∂y/∂x decomposes the target y exactly when
y = Σ_i x_i g_i + Σ_b b · ∂y/∂b, b over every bias-like parameter (biases, LayerNorm β, position embeddings, CLS and
distillation tokens). The error of one image is |y − Σ_i x_i g_i − Σ_b b · ∂y/∂b| / |y|: about 0 (float64: < 1e-8)
for a ViT under LibraGrad's backward rules, large for plain gradients. Lower is better.
The model-running half (one forward and one backward per image, with the method's backward rules) lives in the
library, `hf_fga.attribution.completeness.model_completeness_terms`; this module scores its terms.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `float`): per image, the target score y.
    input_terms (`list` of `float`): per image, Σ_i x_i g_i over the input pixels and channels.
    bias_terms (`list` of `float`): per image, Σ_b b · ∂y/∂b over the bias-like parameters.
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-image errors.
Returns:
    completeness (`float`): the mean relative completeness error over the images (lower is better).
    completeness_per_image (`list` of `float`): the per-image errors, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> completeness = evaluate.load(metric_path("completeness"))
    >>> print(completeness.compute(
    ...     scores=[2.0, -4.0], input_terms=[1.5, -1.0], bias_terms=[0.5, -2.0], return_per_image=True
    ... ))
    {'completeness': 0.125, 'completeness_per_image': [0.0, 0.25]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Completeness(evaluate.Metric):
    def _info(self):
        columns = ["scores", "input_terms", "bias_terms"]
        url = "https://arxiv.org/abs/1905.00780"
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, columns, url, per_image_lists=False)

    def _compute(self, scores, input_terms, bias_terms, return_per_image=False):
        if len(scores) == 0:
            raise ValueError("completeness got no images: pass at least one score with its input and bias terms.")
        scores, input_terms, bias_terms = (np.asarray(v, dtype=np.float64) for v in (scores, input_terms, bias_terms))
        bad = ~(np.isfinite(scores) & np.isfinite(input_terms) & np.isfinite(bias_terms))
        if bad.any():
            raise ValueError(
                f"completeness: image {int(np.argmax(bad))} has a NaN or infinite score or term; pass finite values."
            )
        if (scores == 0).any():
            raise ValueError(
                f"completeness: the score of image {int(np.argmax(scores == 0))} is exactly 0, so its relative "
                "error is undefined."
            )
        errors = np.abs(scores - input_terms - bias_terms) / np.abs(scores)
        return mean_result("completeness", errors, return_per_image)
