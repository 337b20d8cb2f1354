"""
The loss of one SAE training step (method.md §4 + AuxK of Gao et al. 2024) and the decoder constraints around the
optimiser step (unit-norm rows, gradient projected onto their tangent space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .modeling_sae import SparseAutoencoder
from .training_ops import encoder_pre_activations, sparse_decode, topk_pre_activations


@dataclass
class StepStats:
    loss: Tensor
    mse: Tensor
    sum_sq_err: Tensor
    sum_sq_centred: Tensor
    l0: Tensor
    fired: Tensor


def sae_training_loss(sae: SparseAutoencoder, x: Tensor, dead: Tensor | None, aux_k: int, aux_coefficient: float):
    """
    Loss and statistics of one batch `x (B, d_in)` already in the SAE's normalised space (method.md §4 + AuxK).

    Top-K: `topk` on the pre-activations and ReLU on the k values; the decoder sums only the active rows
    (`embedding_bag`) and the encoder backward touches only the selected entries (`training_ops`). ReLU: dense
    decoder and λ‖f‖₁. `dead (d_sae,)` marks the features the AuxK term may use (None or all False: no AuxK).
    """
    config = sae.config
    n_dead = int(dead.sum()) if dead is not None and aux_coefficient > 0 else 0
    k_aux = min(aux_k, n_dead)
    aux_hat = None
    if config.activation == "topk":
        values, indices, aux_values, aux_indices = topk_pre_activations(
            x, sae.W_enc, sae.b_enc, sae.b_dec, config.k, dead if k_aux else None, k_aux
        )
        values = F.relu(values)
        x_hat = sparse_decode(values, indices, sae.W_dec) + sae.b_dec
        active = values > 0
        fired = torch.zeros(config.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[active]] = True
        l0 = active.sum(-1).float().mean()
        sparsity = x.new_zeros(())
        if k_aux:
            aux_hat = sparse_decode(F.relu(aux_values), aux_indices, sae.W_dec)
    else:
        pre = encoder_pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
        f = F.relu(pre)
        x_hat = f @ sae.W_dec + sae.b_dec
        fired = (f > 0).any(0)
        l0 = (f > 0).sum(-1).float().mean()
        sparsity = config.l1_coefficient * f.sum(-1).mean()
        if k_aux:
            aux_values, aux_indices = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
            aux_hat = sparse_decode(F.relu(aux_values), aux_indices, sae.W_dec)
    err = x - x_hat
    sum_sq_err = err.pow(2).sum()
    mse = sum_sq_err / x.shape[0]
    loss = mse + sparsity
    if aux_hat is not None:
        aux = (err.detach() - aux_hat).pow(2).sum(-1).mean()
        loss = loss + aux_coefficient * min(1.0, n_dead / aux_k) * aux
    centred = x - x.mean(0)
    return StepStats(
        loss=loss,
        mse=mse.detach(),
        sum_sq_err=sum_sq_err.detach(),
        sum_sq_centred=centred.pow(2).sum(),
        l0=l0.detach(),
        fired=fired,
    )


@torch.no_grad()
def project_decoder_gradient(sae: SparseAutoencoder) -> None:
    """Remove the component of each W_dec row's gradient parallel to the row (the rows stay on the unit sphere)."""
    if sae.W_dec.grad is not None:
        w = sae.W_dec
        sae.W_dec.grad -= (sae.W_dec.grad * w).sum(-1, keepdim=True) * w


@torch.no_grad()
def normalize_decoder(sae: SparseAutoencoder) -> None:
    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
