"""
The backward-only rules of method.md §8 as tensor operations: each returns its input's forward value bit for bit and
changes only what flows back.

- [`layer_norm_rule`]: LayerNorm whose normalising σ is a constant in the backward pass (the mean-centring keeps its
  gradient), so the layer is linear in its input: y = γ ⊙ (x − μ(x)) / σ + β.
- [`gate_rule`]: an activation written as x·φ(x) passes φ(x)·grad back (φ treated as a constant).
- [`constant`]: a tensor treated as a constant (softmax pruning: the attention probabilities built from the queries
  and keys get no path back).
- [`scale_gradient`]: the identity whose backward multiplies the gradient by a factor (the uniform rule of a product
  of two input-dependent operands: each operand receives half of the gradient–input product).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import FunctionCtx


class _LayerNormRule(Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        normalized_shape: tuple[int, ...],
        eps: float,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dims = ctx.dims
        centred = x - x.mean(dim=dims, keepdim=True)
        sigma = (centred.square().mean(dim=dims, keepdim=True) + ctx.eps).sqrt()
        grad_normalised = grad if weight is None else grad * weight
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # d/dx of (x − mean(x)) / σ with σ constant: centre the incoming gradient, divide by σ
            grad_x = (grad_normalised - grad_normalised.mean(dim=dims, keepdim=True)) / sigma
        batch_dims = tuple(range(grad.dim() - len(dims)))
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad * centred / sigma).sum(dim=batch_dims)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=batch_dims)
        return grad_x, grad_w, grad_b, None, None


def layer_norm_rule(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """
    `F.layer_norm(x, normalized_shape, weight, bias, eps)` (same values), whose backward treats σ as a constant.

    The weight and bias receive their true gradients; only the input gradient changes.
    """
    return _LayerNormRule.apply(x, weight, bias, tuple(normalized_shape), eps)


class _GateRule(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, activation: Callable[[Tensor], Tensor], gate: Callable) -> Tensor:
        ctx.save_for_backward(x)
        ctx.gate = gate
        return activation(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        return grad * ctx.gate(x), None, None


def gate_rule(x: Tensor, activation: Callable[[Tensor], Tensor], gate: Callable[[Tensor], Tensor]) -> Tensor:
    """`activation(x)` (same values) whose backward passes `gate(x) · grad`, for an activation equal to x·gate(x)."""
    return _GateRule.apply(x, activation, gate)


class _ScaleGradient(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """The identity in the forward pass; the backward multiplies the gradient by `factor`."""
    return _ScaleGradient.apply(x, factor)


def constant(x: Tensor) -> Tensor:
    """
    `x` cut from the graph: nothing flows back into what produced it.

    The result stays a tensor that requires a gradient when `x` did, so that tensors computed from it (the attention
    probabilities) can still be differentiated against (TransMM reads ∂y/∂A).
    """
    return x.detach().requires_grad_(x.requires_grad)


# φ of activations written as x·φ(x): the forward formulas of torch / transformers, so that x·φ(x) equals the
# activation's output to rounding (FullGrad completeness depends on it).
def erf_gate(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5)))


def tanh_gate(x: Tensor, coefficient: float = math.sqrt(2.0 / math.pi)) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(coefficient * (x + 0.044715 * x * x * x)))


def fast_tanh_gate(x: Tensor) -> Tensor:
    return tanh_gate(x, 0.7978845608)


def quick_gate(x: Tensor) -> Tensor:
    return torch.sigmoid(1.702 * x)
