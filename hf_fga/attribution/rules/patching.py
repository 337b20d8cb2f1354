"""
Apply the backward rules of method.md §8 to a model for the duration of a `with` block.

The forward pass is unchanged bit for bit; on exit (also after an exception) every patched module gets its own
`forward` back and every hook is removed. What is patched, in the whole model:

- every `nn.LayerNorm`: the LN rule ([`layer_norm_rule`]);
- every activation written as x·φ(x) (GELU in its erf and tanh forms, QuickGELU, SiLU): the gate rule; ReLU and the
  identity are left as they are (their gradient already is φ(x) = 1[x > 0], resp. 1); any other activation is refused;
- every self-attention module (class name ending in `Attention`, with `q_proj`, `k_proj`, `v_proj`): the outputs of
  the three projections, through forward hooks, so any attention implementation (eager, SDPA) gets the rule;
- CLIP's image-embedding normalisation in [`model_logits`]: its norm is a constant, like LayerNorm's σ.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from functools import partial

from torch import Tensor, nn
from transformers import activations

from ...introspection import constant_embedding_norm
from .functions import (
    constant,
    erf_gate,
    fast_tanh_gate,
    gate_rule,
    layer_norm_rule,
    quick_gate,
    scale_gradient,
    tanh_gate,
)

ATTENTION_RULES = ("prune", "uniform")
# Uniform rule of AttnLRP (Achtibat et al. 2024, eq. 7) in gradient × input form: A·V gives half to A and half to V;
# A's half passes the softmax (whose AttnLRP rule is its gradient × input) to q·kᵀ, which halves it again.
UNIFORM_FACTORS = {"q_proj": 0.25, "k_proj": 0.25, "v_proj": 0.5}
PROJECTIONS = tuple(UNIFORM_FACTORS)

_GATES: dict[type[nn.Module], Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    activations.GELUActivation: lambda module: erf_gate,
    nn.GELU: lambda module: tanh_gate if module.approximate == "tanh" else erf_gate,
    activations.GELUTanh: lambda module: tanh_gate,
    activations.NewGELUActivation: lambda module: tanh_gate,
    activations.FastGELUActivation: lambda module: fast_tanh_gate,
    activations.QuickGELUActivation: lambda module: quick_gate,
    activations.SiLUActivation: lambda module: nn.functional.sigmoid,
    nn.SiLU: lambda module: nn.functional.sigmoid,
}
# Piecewise-linear activations: their gradient already passes φ(x)·grad.
_HOMOGENEOUS = (nn.ReLU, nn.Identity, activations.LinearActivation)
_ACTIVATION_MODULES = ("transformers.activations", "torch.nn.modules.activation")

# Models currently under a rule set: applying a second one at once would stack the rules.
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_NO_FORWARD = object()


def _layer_norm_forward(module: nn.LayerNorm, x: Tensor) -> Tensor:
    return layer_norm_rule(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _gated_forward(forward: Callable[[Tensor], Tensor], gate: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    return gate_rule(x, forward, gate)


def _rule_forward(name: str, module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The rule's replacement of `module.forward`, None for a module the rules leave alone; refuses the unknown."""
    if isinstance(module, nn.LayerNorm):
        if type(module).forward is not nn.LayerNorm.forward:
            raise TypeError(
                f"{name} ({type(module).__name__}) overrides LayerNorm.forward: the LN rule cannot be applied to it "
                "without changing its forward pass. The backward rules support nn.LayerNorm itself."
            )
        return partial(_layer_norm_forward, module)
    gate = _GATES.get(type(module))
    if gate is not None:
        return partial(_gated_forward, module.forward, gate(module))
    if isinstance(module, _HOMOGENEOUS) or type(module).__module__ not in _ACTIVATION_MODULES:
        return None
    if isinstance(module, nn.MultiheadAttention):
        return None  # refused with the attention modules
    supported = sorted({cls.__name__ for cls in _GATES} | {cls.__name__ for cls in _HOMOGENEOUS})
    raise TypeError(
        f"{name} is a {type(module).__name__} activation, which the gate rule does not cover (it needs the activation "
        f"written as x·φ(x)). Supported activations: {', '.join(supported)}."
    )


def _constant_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    return constant(output) if output.requires_grad else None


def _scale_hook(factor: float) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        return scale_gradient(output, factor) if output.requires_grad else None

    return hook


def _projection_hooks(attention: str) -> dict[str, Callable]:
    """The forward hook of each projection under an attention rule (pruning leaves the values alone)."""
    if attention == "prune":
        return {"q_proj": _constant_hook, "k_proj": _constant_hook}
    return {key: _scale_hook(factor) for key, factor in UNIFORM_FACTORS.items()}


def _attention_projections(name: str, module: nn.Module) -> dict[str, nn.Module]:
    projections = {key: getattr(module, key, None) for key in PROJECTIONS}
    if not all(isinstance(p, nn.Module) for p in projections.values()):
        raise TypeError(
            f"{name} ({type(module).__name__}) has no separate q_proj, k_proj and v_proj submodules: the attention "
            "rules (softmax pruning, uniform rule) cannot reach its queries, keys and values. Supported: the "
            "transformers 5 ViT family (ViT, DeiT, …) and CLIP."
        )
    return projections


@contextlib.contextmanager
def rules_applied(model: nn.Module, attention: str) -> Iterator[nn.Module]:
    """
    Apply the LN rule, the gate rule and an attention rule to `model` inside the block; restore it on exit.

    Args:
        model (`nn.Module`): a ViT-family classifier or a CLIPModel (any attention implementation).
        attention (`str`): `"prune"`, the softmax-pruning rule (q and k constants: the attention probabilities get no
            gradient path back, values do), or `"uniform"`, AttnLRP's uniform rule on q·kᵀ and A·V with the
            softmax's own gradient (AttnLRP's softmax rule in gradient × input form).

    Yields the model. Raises `TypeError` for a module the rules do not cover (named in the message) before anything
    is patched, and `RuntimeError` when rules are already applied to this model.
    """
    if attention not in ATTENTION_RULES:
        raise ValueError(f"attention={attention!r}; expected one of {ATTENTION_RULES}.")
    if model in _ACTIVE:
        raise RuntimeError(
            f"Backward rules are already applied to this {type(model).__name__}: nesting two rule sets would stack "
            "their rules. Leave the outer `with` block first."
        )
    forwards = {}
    hooks = []
    for name, module in model.named_modules():
        forward = _rule_forward(name, module)
        if forward is not None:
            forwards[module] = forward
        if type(module).__name__.endswith("Attention"):
            hooks.append(_attention_projections(name, module))
    saved = []
    handles = []
    _ACTIVE.add(model)
    try:
        for module, forward in forwards.items():
            saved.append((module, module.__dict__.get("forward", _NO_FORWARD)))
            module.forward = forward
        projection_hooks = _projection_hooks(attention)
        for projections in hooks:
            for key, hook in projection_hooks.items():
                handles.append(projections[key].register_forward_hook(hook))
        with constant_embedding_norm():
            yield model
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in saved:
            if previous is _NO_FORWARD:
                del module.forward
            else:
                module.forward = previous
        _ACTIVE.discard(model)
