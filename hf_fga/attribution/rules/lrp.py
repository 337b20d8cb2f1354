"""
LRP for transformers in gradient × input form (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers"; the `lxt` package), method.md §8.

- CP-LRP (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative Propagation"): LN rule +
  gate rule (LRP's identity rule on the activation) + softmax pruning. These are LibraGrad's rules, so on the models
  supported here CP-LRP equals LibraGrad's gradient × input (the tests check it).
- AttnLRP: LN rule + gate rule, the softmax rule of the paper (R_i = x_i (R_i − s_i Σ_j R_j), eq. 13, which is the
  softmax's gradient × input, so its gradient passes unchanged) and the uniform rule (eq. 7) on q·kᵀ and A·V.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .patching import rules_applied


@contextlib.contextmanager
def cp_lrp(model: nn.Module) -> Iterator[nn.Module]:
    """CP-LRP's backward rules on `model` inside the block (forward unchanged; model restored on exit)."""
    with rules_applied(model, attention="prune") as patched:
        yield patched


@contextlib.contextmanager
def attnlrp(model: nn.Module) -> Iterator[nn.Module]:
    """AttnLRP's backward rules on `model` inside the block (forward unchanged; model restored on exit)."""
    with rules_applied(model, attention="uniform") as patched:
        yield patched
