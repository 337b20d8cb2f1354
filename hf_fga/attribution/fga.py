"""
Feature-Gradient Attribution: per-patch scores, robust normalisation and gates (method.md §3, thesis ch. 6).

All functions take the patch tokens of one gated block: residuals `x (B, N, d)` at the SAE's hook point and their
gradients `g = ∂y/∂x (B, N, d)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sae import SparseAutoencoder

VARIANTS = ("combined", "activation", "gradient", "no-sae", "shuffled", "centered", "mean-centered")
SAE_VARIANTS = ("combined", "activation", "gradient", "shuffled", "centered")
MAD_SCALE = 1.4826
MAD_EPS = 1e-8
DEGENERATE_TOLERANCE = 1e-6
CHUNK_TOKENS = 1024  # rows of a dense (tokens, d_sae) intermediate: 1024 × 49152 floats = 200 MB
# Top-K encoding reads its (tokens, d_sae) pre-activations once more for the selection: smaller chunks keep more of
# them in cache (128 rows measured fastest for d_sae = 49152 on the development CPU).
TOPK_CHUNK_TOKENS = 128


def _chunks(*tensors: Tensor, size: int = CHUNK_TOKENS) -> Iterator[tuple[Tensor, ...]]:
    for start in range(0, tensors[0].shape[0], size):
        yield tuple(t[start : start + size] for t in tensors)


@dataclass
class FeatureCodes:
    """
    The SAE features of a block's patch tokens, flattened to M = B·N rows.

    A Top-K SAE keeps only its active set (`values`, `indices`, each `(M, k)`): the dense `(M, d_sae)` features are
    never stored. A ReLU SAE keeps the dense features `dense (M, d_sae)`.
    """

    sae: SparseAutoencoder
    values: Tensor | None = None
    indices: Tensor | None = None
    dense: Tensor | None = None

    @classmethod
    @torch.no_grad()
    def encode(
        cls, sae: SparseAutoencoder, x: Tensor, encoder: Callable[[Tensor], Tensor] | None = None
    ) -> FeatureCodes:
        """
        Encode `x (M, d)` (input normalisation included), in chunks of tokens; `encoder` replaces the encoder
        matmul `z ↦ z W_enc + b_enc` (see [`SparseAutoencoder.pre_activations`]).
        """
        if sae.config.activation == "topk":
            parts = [sae.encode_topk(chunk, encoder) for (chunk,) in _chunks(x, size=TOPK_CHUNK_TOKENS)]
            return cls(sae, values=torch.cat([p[0] for p in parts]), indices=torch.cat([p[1] for p in parts]))
        return cls(sae, dense=torch.cat([sae.encode(chunk, encoder) for (chunk,) in _chunks(x)]))

    def total_activation(self) -> Tensor:
        """Σ_k f^k per row `(M,)`."""
        return (self.values if self.dense is None else self.dense).sum(dim=-1)

    @torch.no_grad()
    def decode(self, permutation: Tensor | None = None) -> Tensor:
        """
        D f per row `(M, d)` in the residual space, decoder bias excluded.

        With `permutation` π the decoder is D[:, π] (the shuffled-decoder control): Σ_k f^k D[:, π(k)].
        Top-K SAEs gather only the k active decoder columns (`embedding_bag`).
        """
        if self.dense is None:
            indices = self.indices if permutation is None else permutation[self.indices]
            return self.sae.decode_sparse(self.values, indices)
        decoder = self.sae.decoder_in_residual_space()
        features = self.dense if permutation is None else self.dense[:, torch.argsort(permutation)]
        return features @ decoder

    @torch.no_grad()
    def feature_gradients(self, g: Tensor, permutation: Tensor | None = None) -> Tensor:
        """
        (Dᵀ g)_k at the stored features: `(M, k)` at the active set of a Top-K SAE, `(M, d_sae)` for a ReLU SAE.
        """
        decoder = self.sae.decoder_in_residual_space()
        if self.dense is None:
            indices = self.indices if permutation is None else permutation[self.indices]
            parts = [
                torch.bmm(decoder[idx], grad[:, :, None])[..., 0] for idx, grad in _chunks(indices, g, size=64)
            ]
            return torch.cat(parts)
        full = torch.cat([grad @ decoder.T for (grad,) in _chunks(g)])
        return full if permutation is None else full[:, permutation]

    def contributions(self, g: Tensor, count: int, permutation: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        The `count` largest-|c| feature contributions c_k = f^k (Dᵀg)_k per row: signed values and feature indices,
        each `(M, m)` with m = min(count, active slots).
        """
        contrib = (self.values if self.dense is None else self.dense) * self.feature_gradients(g, permutation)
        m = min(count, contrib.shape[-1])
        order = contrib.abs().topk(m, dim=-1).indices
        features = order if self.dense is not None else self.indices.gather(-1, order)
        return contrib.gather(-1, order), features


def dense_gradient_norm(sae: SparseAutoencoder, g: Tensor) -> Tensor:
    """Σ_k |(Dᵀ g)_k| per row of `g (M, d)` (thesis eq. 6.6), in chunks of tokens."""
    decoder = sae.decoder_in_residual_space()
    return torch.cat([(grad @ decoder.T).abs().sum(dim=-1) for (grad,) in _chunks(g)])


def shuffle_permutation(d_sae: int, seed: int) -> Tensor:
    """The fixed feature permutation π of the shuffled-decoder control (`torch.randperm`, as the thesis code)."""
    return torch.randperm(d_sae, generator=torch.Generator().manual_seed(seed))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def block_scores(
    variant: str,
    x: Tensor,
    g: Tensor,
    sae: SparseAutoencoder | None = None,
    codes: FeatureCodes | None = None,
    mean: Tensor | None = None,
    permutation: Tensor | None = None,
) -> Tensor:
    """
    The raw per-patch score s_t `(M,)` of a variant (method.md §3), from flattened `x`, `g` `(M, d)`.

    - `combined`: Σ_k f^k (Dᵀg)_k, computed as g · (D f) (sparse for Top-K SAEs);
    - `shuffled`: the same with D[:, π];
    - `activation`: Σ_k f^k;
    - `gradient`: Σ_k |(Dᵀg)_k| (thesis eq. 6.6; the thesis *code* summed signed values, i.e. g · D𝟙);
    - `no-sae`: g · x;  `centered`: g · (x − b_dec);  `mean-centered`: g · (x − μ_ℓ).
    `codes` (the block's encoded features) is needed by `combined`, `shuffled` and `activation`.
    For an SAE with a runtime layer norm (Prisma), f is computed on the normalised input but the raw residual
    gradient is projected onto the raw decoder, as the thesis code does.
    """
    if variant == "no-sae":
        return _dot(g, x)
    if variant == "mean-centered":
        return _dot(g, x - mean)
    if variant == "centered":
        return _dot(g, x - sae.decoder_bias_in_residual_space())
    if variant == "activation":
        return codes.total_activation()
    if variant == "gradient":
        return dense_gradient_norm(sae, g)
    if variant == "combined":
        return _dot(g, codes.decode())
    if variant == "shuffled":
        return _dot(g, codes.decode(permutation))
    raise ValueError(f"Unknown FGA variant {variant!r}: expected one of {list(VARIANTS)}.")


def robust_normalize(scores: Tensor) -> tuple[Tensor, Tensor]:
    """
    ŝ = (s − m) / (1.4826 · (MAD + ε)) over the last dimension (the patches of one image), m = median(s),
    MAD = median(|s − m|), ε = 1e-8, with the *lower* median of `torch.median` (as the thesis code). Returns (ŝ, MAD).
    """
    median = scores.median(dim=-1, keepdim=True).values
    mad = (scores - median).abs().median(dim=-1, keepdim=True).values
    return (scores - median) / (MAD_SCALE * (mad + MAD_EPS)), mad[..., 0]


def gates_from_scores(scores: Tensor, kappa: float, cmax: float) -> tuple[Tensor, Tensor]:
    """Gates w = exp(ln(c_max) · tanh(κ ŝ)) ∈ [1/c_max, c_max] of raw scores `(B, N)`; returns (w, MAD `(B,)`)."""
    normalized, mad = robust_normalize(scores)
    return torch.exp(math.log(cmax) * torch.tanh(kappa * normalized)), mad


def degenerate_images(mad: Tensor, x: Tensor, g: Tensor) -> Tensor:
    """
    `(B,)` bool: images whose score spread is at rounding level, MAD ≤ 1e-6 · max_t ‖g_t‖‖x_t‖ (method.md §3).

    `x`, `g` are `(B, N, d)`. At the output of the last block every patch gradient is 0; at the output of block L−2
    a patch reaches the output only through the last block's scale-invariant LayerNorm, so g·x = 0 exactly.
    """
    scale = (g.norm(dim=-1) * x.norm(dim=-1)).amax(dim=-1)
    return mad <= DEGENERATE_TOLERANCE * scale


def degenerate_reason(position: int, num_layers: int) -> str:
    """Why a block's gradient-based scores can be degenerate, from the block whose output it reads."""
    if position == num_layers - 1:
        return "at the output of the last block every patch gradient is 0 (the output reads only non-patch tokens)"
    if position == num_layers - 2:
        return (
            "at the output of block L-2 a patch reaches the output only through the scale-invariant LayerNorm of the "
            "last block, so g·x = 0 exactly (there `combined` equals −g·(b_dec + e), e the reconstruction error)"
        )
    return "the scores' spread is at floating-point rounding level"


@torch.no_grad()
def block_diagnostics(x: Tensor, g: Tensor, codes: FeatureCodes | None, batch: int) -> dict[str, Tensor]:
    """
    Mean over patches of |g·(x − b_dec)|, |g·e| (e = x − x̂ the reconstruction error) and |g·x|, each `(B,)`.

    Without an SAE only `g_dot_x` is defined; the other two are NaN.
    """
    out = {"g_dot_x": _dot(g, x).abs().reshape(batch, -1).mean(dim=-1)}
    if codes is None:
        nan = torch.full_like(out["g_dot_x"], float("nan"))
        return {"g_dot_centered": nan, "g_dot_error": nan.clone(), **out}
    sae = codes.sae
    bias = sae.decoder_bias_in_residual_space()
    if sae.config.normalize_activations == "layer_norm":
        reconstruction = torch.cat([sae(chunk).reconstruction for (chunk,) in _chunks(x)])
    else:
        reconstruction = codes.decode() + bias
    centered = _dot(g, x - bias).abs().reshape(batch, -1).mean(dim=-1)
    error = _dot(g, x - reconstruction).abs().reshape(batch, -1).mean(dim=-1)
    return {"g_dot_centered": centered, "g_dot_error": error, **out}
