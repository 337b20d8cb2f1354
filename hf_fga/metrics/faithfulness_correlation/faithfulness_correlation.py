"""Faithfulness Correlation (Bhatt et al., IJCAI 2020), scored from per-subset attribution sums and output drops."""

import evaluate
import numpy as np
from scipy.stats import rankdata

from .metric_module import mean_result, metric_info

_CITATION = """\
@inproceedings{bhatt2020evaluating,
  title={Evaluating and Aggregating Feature-based Model Explanations},
  author={Bhatt, Umang and Weller, Adrian and Moura, Jos{\\'e} M. F.},
  booktitle={Proceedings of the Twenty-Ninth International Joint Conference on Artificial Intelligence (IJCAI)},
  year={2020}
}
"""

_DESCRIPTION = """\
Faithfulness Correlation (method.md §5, thesis eq. 4.1): for random subsets S of patches, the correlation between
the attribution sum a = Σ_{p∈S} attribution_p and the logit drop Δ = y(x) - y(x with S perturbed). The papers preset
uses Pearson over 100 subsets; the thesis preset Spearman over 20 subsets per trial, averaged over 3 trials
(`correlation="spearman", trials=3`: the runs of each image are split into `trials` consecutive, equal chunks).
Higher is better. A correlation is undefined when the sums or the drops do not vary (e.g. a constant attribution):
such a trial scores 0.0 (no association can be measured), never NaN; constancy is tested as a spread below 1e-12
of the largest magnitude.
"""

_KWARGS_DESCRIPTION = """
Args:
    attribution_sums (`list` of `list` of `float`): per image, the attribution sum of each subset.
    drops (`list` of `list` of `float`): per image, the target-logit drop of each subset, same length.
    correlation (`str`, *optional*, defaults to `"pearson"`): `"pearson"` or `"spearman"` (average ranks for ties).
    trials (`int`, *optional*, defaults to 1): split each image's runs into this many equal trials and average.
    return_per_image (`bool`, *optional*, defaults to `False`): also return the per-image scores.
Returns:
    faithfulness_correlation (`float`): the mean correlation over the images, in [-1, 1].
    faithfulness_correlation_per_image (`list` of `float`): per-image scores, only with `return_per_image=True`.
Examples:
    >>> import evaluate
    >>> from hf_fga.metrics import metric_path
    >>> fc = evaluate.load(metric_path("faithfulness_correlation"))
    >>> results = fc.compute(
    ...     attribution_sums=[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]],
    ...     drops=[[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]],
    ...     return_per_image=True,
    ... )
    >>> per_image = results["faithfulness_correlation_per_image"]
    >>> print(round(results["faithfulness_correlation"], 6), [round(r, 6) for r in per_image])
    0.0 [1.0, -1.0]
"""

CORRELATIONS = ("pearson", "spearman")


def correlation_or_zero(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    """Pearson or Spearman correlation of two 1-d arrays; 0.0 when either does not vary."""
    if kind == "spearman":
        a, b = rankdata(a), rankdata(b)
    centred = []
    for values in (a, b):
        deviation = values - values.mean()
        if np.abs(deviation).max() <= 1e-12 * np.abs(values).max():
            return 0.0
        centred.append(deviation)
    a, b = centred
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FaithfulnessCorrelation(evaluate.Metric):
    def _info(self):
        return metric_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            ["attribution_sums", "drops"],
            "https://arxiv.org/abs/2005.00631",
        )

    def _compute(self, attribution_sums, drops, correlation="pearson", trials=1, return_per_image=False):
        if correlation not in CORRELATIONS:
            raise ValueError(
                f"faithfulness_correlation got correlation={correlation!r}; expected one of {CORRELATIONS}."
            )
        if not isinstance(trials, int) or trials < 1:
            raise ValueError(f"faithfulness_correlation got trials={trials!r}; expected a positive integer.")
        if len(attribution_sums) == 0:
            raise ValueError("faithfulness_correlation got no images: pass at least one list of subset records.")
        scores = []
        for index, (sums, drop) in enumerate(zip(attribution_sums, drops, strict=True)):
            sums, drop = np.asarray(sums, dtype=np.float64), np.asarray(drop, dtype=np.float64)
            if sums.shape != drop.shape or sums.size % trials or sums.size // trials < 2:
                raise ValueError(
                    f"faithfulness_correlation: image {index} has {sums.size} attribution sums and {drop.size} drops; "
                    f"expected the same number, divisible into trials={trials} chunks of at least 2 runs."
                )
            if not (np.isfinite(sums).all() and np.isfinite(drop).all()):
                raise ValueError(
                    f"faithfulness_correlation: image {index} has NaN or infinite values; pass finite values."
                )
            per_trial = [
                correlation_or_zero(a, b, correlation)
                for a, b in zip(np.split(sums, trials), np.split(drop, trials), strict=True)
            ]
            scores.append(float(np.mean(per_trial)))
        return mean_result("faithfulness_correlation", scores, return_per_image)
