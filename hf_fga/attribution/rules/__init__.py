"""
Backward-only rules (method.md §8) as context managers, and a registry of rule sets by name.

A gradient-based method runs its forward and backward passes inside `backward_rules(name)(model)` to get the
gradients of that rule set; `libragrad=True` is `backward_rules("libragrad")`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn

from .libragrad import libragrad
from .lrp import attnlrp, cp_lrp
from .patching import rules_applied

RuleSet = Callable[[nn.Module], contextlib.AbstractContextManager]

RULE_SETS: dict[str, RuleSet] = {"libragrad": libragrad, "cp-lrp": cp_lrp, "attnlrp": attnlrp}


def backward_rules(name: str) -> RuleSet:
    """
    The rule set `name` as a callable `model -> context manager` (what `Attributor.capture(backward_context=...)`
    takes).

    Raises `ValueError` naming the registered rule sets for an unknown name.
    """
    if name not in RULE_SETS:
        raise ValueError(f"Unknown backward rule set {name!r}; registered: {', '.join(sorted(RULE_SETS))}.")
    return RULE_SETS[name]


__all__ = ["RULE_SETS", "RuleSet", "attnlrp", "backward_rules", "cp_lrp", "libragrad", "rules_applied"]
