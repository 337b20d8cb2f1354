"""
CP-LRP and AttnLRP (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers"; the `lxt` package), method.md §8: the relevance of y propagated to the input is gradient × input under
the LRP rules ([`hf_fga.attribution.rules`]), summed over each patch's pixels and channels in the preprocessed input
space. One forward and one backward pass, like gradient × input.

- `cp-lrp`: LN rule + gate rule + softmax pruning. These are exactly LibraGrad's rules, so on every model the rules
  support (ViT, DeiT, CLIP) `cp-lrp` equals `gradient-x-input` with `libragrad=True`, bit for bit (tested); its
  relevance is FullGrad-complete: Σ_p A(p) = y − Σ_b b·∂y/∂b.
- `attnlrp`: LN rule + gate rule + the softmax rule of the paper (its gradient × input form keeps the softmax's
  gradient) + the uniform rule on q·kᵀ and A·V.

Both agree with lxt 2.1's own rules applied to transformers' ViT to ~1e-8 relative in float64 (lxt's identity rule
divides by x + 1e-10); see `tests/attribution/test_lxt_crosscheck.py`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import ClassVar

from transformers import PreTrainedModel

from ..rules import backward_rules
from .base import register_method
from .gradient_x_input import GradientXInput


class RuleGradientXInput(GradientXInput):
    """Gradient × input whose forward and backward pass run under the backward rule set `rule_set`."""

    rule_set: ClassVar[str]
    gradient_based = False  # the rules are the method's own: `libragrad=True` would stack a second set

    def method_context(self, model: PreTrainedModel) -> AbstractContextManager:
        return backward_rules(self.rule_set)(model)


@register_method
class CPLRP(RuleGradientXInput):
    name = "cp-lrp"
    description = "CP-LRP (Ali et al. 2022): gradient × input under the LN, gate and softmax-pruning rules"
    rule_set = "cp-lrp"


@register_method
class AttnLRP(RuleGradientXInput):
    name = "attnlrp"
    description = "AttnLRP (Achtibat et al. 2024): gradient × input under the LN, gate, softmax and uniform rules"
    rule_set = "attnlrp"
