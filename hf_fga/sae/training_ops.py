"""
Autograd functions that make SAE training steps cheap on CPU.

The SAE encoder is `pre = (x − b_dec) W_enc + b_enc` with data `x` that needs no gradient. Plain autograd would
back-propagate into `x − b_dec` with a full `(B, d_sae) × (d_sae, d_in)` matmul just to get the gradient of `b_dec`;
here `∂L/∂b_dec = −W_enc (Σ_b ∂L/∂pre_b)` costs one matrix-vector product instead.

For a Top-K SAE only the k selected pre-activations per token (plus the AuxK ones) receive a gradient, so
`∂L/∂W_enc = (x − b_dec)ᵀ G` is computed with `G` as a sparse `(B, d_sae)` matrix holding B·k entries: 2·B·k·d_in
FLOPs instead of the dense 2·B·d_in·d_sae. The forward keeps the dense encoder matmul (every pre-activation is needed
to pick the top k). `scripts/bench_sae_training.py` measures these against plain autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_sums(indices: Tensor, weights: Tensor, rows: Tensor, d_sae: int) -> Tensor:
    """
    `Σ_t weights[t, j] · rows[t]` per feature `f = indices[t, j]`, as a `(d_sae, d)` matrix: the product `Sᵀ rows`
    with the sparse `(B, d_sae)` matrix S of `(indices, weights)`, 2·B·k·d FLOPs. Entries are sorted by feature
    (stable, so the sums are reproducible) and summed with one `embedding_bag` whose bags are the features.
    """
    flat = indices.reshape(-1)
    # int32 keys: their sort stays fast when the CPU is shared (the int64 path stalls under thread contention).
    order = flat.to(torch.int32).argsort(stable=True)
    counts = torch.bincount(flat, minlength=d_sae)
    offsets = counts.cumsum(0) - counts
    tokens = order // indices.shape[1]
    return F.embedding_bag(tokens, rows, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order])


class _EncoderPreActivations(torch.autograd.Function):
    """`(x − b_dec) W_enc + b_enc` with the cheap `b_dec` gradient and no gradient for `x` (ReLU SAEs)."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
        centred = x - b_dec
        ctx.save_for_backward(centred, W_enc)
        return torch.addmm(b_enc, centred, W_enc)

    @staticmethod
    def backward(ctx, grad_pre: Tensor):
        centred, W_enc = ctx.saved_tensors
        grad_b_enc = grad_pre.sum(0)
        return None, centred.T @ grad_pre, grad_b_enc, -(W_enc @ grad_b_enc)


class _TopKPreActivations(torch.autograd.Function):
    """
    The top-k pre-activations `(values, indices)` per token and, when `dead` is given, the top-`k_aux` ones among the
    dead features (for AuxK); the backward pass only touches the selected entries.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dead: Tensor | None, k_aux: int):
        centred = x - b_dec
        pre = torch.addmm(b_enc, centred, W_enc)
        values, indices = pre.topk(k, dim=-1)
        if dead is not None:
            aux_values, aux_indices = pre.masked_fill_(~dead, float("-inf")).topk(k_aux, dim=-1)
        else:
            aux_values = pre.new_empty(x.shape[0], 0)
            aux_indices = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)
        ctx.save_for_backward(centred, W_enc, indices, aux_indices)
        ctx.d_sae = W_enc.shape[1]
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices, grad_aux_values: Tensor, _grad_aux_indices):
        centred, W_enc, indices, aux_indices = ctx.saved_tensors
        cols = torch.cat([indices, aux_indices], dim=1)
        grads = torch.cat([grad_values, grad_aux_values], dim=1)
        grad_W_enc = feature_sums(cols, grads, centred, ctx.d_sae).T
        grad_b_enc = torch.zeros(ctx.d_sae, dtype=grads.dtype, device=grads.device)
        grad_b_enc.index_add_(0, cols.reshape(-1), grads.reshape(-1))
        return None, grad_W_enc, grad_b_enc, -(W_enc @ grad_b_enc), None, None, None


class _SparseDecode(torch.autograd.Function):
    """`Σ_j values[t, j] · W_dec[indices[t, j]]` with a sparse W_dec gradient (forward and backward by features)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_W_dec = feature_sums(indices, values, grad_out, W_dec.shape[0])
        # One dense (B, d) x (d, d_sae) product then a gather: faster on CPU than B·k gathered row dot products.
        grad_values = (grad_out @ W_dec.T).gather(-1, indices)
        return grad_values, None, grad_W_dec


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """`D f` without bias from an active set `(values, indices)`, each `(B, k)`: `(B, d_in)`."""
    return _SparseDecode.apply(values, indices, W_dec)


def encoder_pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """Dense pre-activations `(B, d_sae)` of a batch `x (B, d_in)` that needs no gradient."""
    return _EncoderPreActivations.apply(x, W_enc, b_enc, b_dec)


def topk_pre_activations(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dead: Tensor | None = None, k_aux: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """
    `(values, indices)` of the k largest pre-activations per token, each `(B, k)`, and `(aux_values, aux_indices)`,
    each `(B, k_aux)`, of the largest among the `dead` features (empty when `dead` is None). Values are before ReLU.
    """
    return _TopKPreActivations.apply(x, W_enc, b_enc, b_dec, k, dead, k_aux)
