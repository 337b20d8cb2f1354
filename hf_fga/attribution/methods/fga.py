"""
Feature-Gradient Attribution: per-patch scores, robust normalisation and gates (method.md §3, thesis ch. 6).

All functions take the patch tokens of one gated block: residuals `x (B, N, d)` at the SAE's hook point and their
gradients `g = ∂y/∂x (B, N, d)`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...sae import SparseAutoencoder
from .base import AttributionMethod, MethodResult, register_method
from .transmm import cls_to_patches, propagate_relevance, weighted_attentions

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor

# variant -> (what the block needs: "sae" or "mean" or None, whether the score reads the SAE's features)
VARIANT_TABLE: dict[str, tuple[str | None, bool]] = {
    "combined": ("sae", True),
    "activation": ("sae", True),
    "gradient": ("sae", False),
    "no-sae": (None, False),
    "shuffled": ("sae", True),
    "centered": ("sae", False),
    "mean-centered": ("mean", False),
}
VARIANTS = tuple(VARIANT_TABLE)
SAE_VARIANTS = tuple(variant for variant, (needs, _) in VARIANT_TABLE.items() if needs == "sae")
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
    `codes` (the block's encoded features) is needed by the variants that read them (`VARIANT_TABLE`).
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


def _check_number(name: str, value: Any, minimum: float, meaning: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > minimum):
        raise ValueError(f"{name} must be a finite number > {minimum:g} ({meaning}), got {value!r}.")
    return float(value)


@register_method
class FeatureGradientAttributionMethod(AttributionMethod):
    """
    FGA: TransMM whose gated blocks scale Ā_ℓ's columns by per-patch gates from a feature-gradient score
    (method.md §3). Options:

    - `variant` (`str`, defaults to `"combined"`): the score, one of `VARIANTS`;
    - `layers` (`Sequence[int]`, *optional*): gated blocks; defaults to every block with an SAE (with a mean residual
      for `mean-centered`);
    - `kappa` (`float`, defaults to 0.5): κ > 0, the gate's sensitivity; `cmax` (`float`, defaults to 10.0):
      c_max > 1, gates lie in [1/c_max, c_max];
    - `return_diagnostics`, `return_contributions` (`bool`): add the per-block score decomposition / the per-patch
      feature contributions; `num_contributions` (`int`, defaults to 16): contributions kept per patch;
    - `shuffle_seed` (`int`, defaults to 12345): seed of the feature permutation of the `shuffled` variant.
    """

    name = "fga"
    description = "Feature-Gradient Attribution: TransMM with per-patch gates from SAE feature-gradient scores"
    uses_capture = True
    gradient_based = True
    options = {
        "variant": "combined",
        "layers": None,
        "kappa": 0.5,
        "cmax": 10.0,
        "return_diagnostics": False,
        "return_contributions": False,
        "num_contributions": 16,
        "shuffle_seed": 12345,
    }

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        options = super().check_options(attributor, **options)
        if options["variant"] not in VARIANT_TABLE:
            raise ValueError(f"Unknown FGA variant {options['variant']!r}: expected one of {list(VARIANTS)}.")
        options["kappa"] = _check_number("kappa", options["kappa"], 0, "the gate's sensitivity")
        options["cmax"] = _check_number("cmax", options["cmax"], 1, "gates lie in [1/cmax, cmax]")
        count = options["num_contributions"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_contributions must be a positive integer, got {count!r}.")
        options["layers"] = self.gated_blocks(attributor, options["variant"], options["layers"])
        return options

    @staticmethod
    def gated_blocks(attributor: Attributor, variant: str, layers: Sequence[int] | int | None) -> list[int]:
        """The validated, sorted blocks a variant gates (`layers`, or its default when `None`)."""
        needs = VARIANT_TABLE[variant][0]
        if layers is None:
            layers = sorted(attributor.mean_residuals if needs == "mean" else attributor.saes)
            if not layers:
                source = "mean_residuals" if needs == "mean" else "saes"
                raise ValueError(
                    f"FGA variant {variant!r} has no block to gate: pass layers=[...] or build the Attributor with "
                    f"{source}."
                )
        if isinstance(layers, int):
            layers = [layers]
        blocks = sorted({attributor.check_block(block, "layers") for block in layers})
        for block in blocks:
            if needs == "sae" and block not in attributor.saes:
                raise ValueError(
                    f"Variant {variant!r} needs an SAE for block {block}, but SAEs were given only for blocks "
                    f"{sorted(attributor.saes)}: pass one in saes={{{block}: sae}} or choose other layers."
                )
            if needs == "mean" and block not in attributor.mean_residuals:
                raise ValueError(
                    f"Variant 'mean-centered' needs the mean residual μ of block {block}, but mean_residuals covers "
                    f"only blocks {sorted(attributor.mean_residuals)}: compute it with compute_mean_residuals(model, "
                    "...)."
                )
        return blocks

    def hook_points(self, attributor: Attributor, options: Mapping[str, Any]) -> dict[int, str]:
        return {block: attributor.hook_point_of(block) for block in options["layers"]}

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        weighted = weighted_attentions(capture)
        batch, tokens, _ = weighted[0].shape
        h, w = capture.grid
        scores, gates, diagnostics, contributions, full_gates = {}, {}, {}, {}, {}
        for block, hook_point in self.hook_points(attributor, options).items():
            result = self._gate_block(attributor, capture, block, hook_point, options)
            scores[block] = result["scores"].reshape(batch, h, w)
            gates[block] = result["gates"].reshape(batch, h, w)
            if "diagnostics" in result:
                diagnostics[block] = result["diagnostics"]
            if "contributions" in result:
                values, indices = result["contributions"]
                contributions[block] = (values.reshape(batch, h * w, -1), indices.reshape(batch, h * w, -1))
            full = torch.ones(batch, tokens, dtype=weighted[0].dtype, device=weighted[0].device)
            full[:, -h * w :] = result["gates"].to(full)
            full_gates[block] = full
        return MethodResult(
            attribution=cls_to_patches(propagate_relevance(weighted, full_gates), capture.grid),
            scores=scores,
            gates=gates,
            diagnostics=diagnostics if options["return_diagnostics"] else None,
            contributions=contributions if options["return_contributions"] else None,
        )

    def _gate_block(
        self, attributor: Attributor, capture: Capture, block: int, hook_point: str, options: Mapping[str, Any]
    ) -> dict:
        """Scores, gates (and on request diagnostics and contributions) of one gated block, each over its patches."""
        patches = capture.grid[0] * capture.grid[1]
        x = capture.residuals[(block, hook_point)][:, -patches:]
        g = capture.residual_grads[(block, hook_point)][:, -patches:]
        batch, _, width = x.shape
        sae = attributor.saes.get(block)
        if sae is not None:
            x = x.to(sae.W_dec.device, sae.W_dec.dtype)
            g = g.to(sae.W_dec.device, sae.W_dec.dtype)
        flat_x, flat_g = x.reshape(-1, width), g.reshape(-1, width)
        variant = options["variant"]
        reads_features = VARIANT_TABLE[variant][1]
        codes = None
        if sae is not None and (reads_features or options["return_diagnostics"] or options["return_contributions"]):
            key = ("codes", block, hook_point, id(sae))
            if key not in capture.cache:
                capture.cache[key] = FeatureCodes.encode(sae, flat_x, attributor.sae_encoder(block, capture))
            codes = capture.cache[key]
        permutation = None
        if variant == "shuffled":
            permutation = shuffle_permutation(sae.config.d_sae, options["shuffle_seed"]).to(x.device)
        mean = attributor.mean_residuals.get(block)
        mean = mean.to(x.device, x.dtype) if mean is not None else None

        with torch.no_grad():
            scores = block_scores(variant, flat_x, flat_g, sae, codes, mean, permutation).reshape(batch, patches)
            gates, mad = gates_from_scores(scores, options["kappa"], options["cmax"])
            if variant != "activation":
                degenerate = degenerate_images(mad, x, g)
                if degenerate.any():
                    gates = torch.where(degenerate[:, None], torch.ones_like(gates), gates)
                    position = block if hook_point == "resid_post" else block - 1
                    warnings.warn(
                        f"FGA block {block} ({hook_point}): the '{variant}' scores of {int(degenerate.sum())} of "
                        f"{batch} image(s) have a spread at rounding level (MAD <= 1e-6 * max ||g|| ||x||), so their "
                        f"gates are set to 1. Reason: {degenerate_reason(position, attributor.num_layers)}.",
                        UserWarning,
                        stacklevel=5,
                    )
        result = {"scores": scores, "gates": gates}
        if options["return_diagnostics"]:
            result["diagnostics"] = block_diagnostics(flat_x, flat_g, codes, batch)
        if options["return_contributions"] and codes is not None:
            result["contributions"] = codes.contributions(flat_g, options["num_contributions"], permutation)
        return result
