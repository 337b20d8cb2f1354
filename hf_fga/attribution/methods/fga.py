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
from .transmm import cls_to_patches, propagate_relevance, transmm_map, weighted_attentions

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
    # the decisive controls of method.md §10
    "error-scaled": ("sae", True),
    "error-only": ("sae", True),
    "transmm-power": (None, False),  # gates no block: TransMM's map raised to γ
    "random-gates": ("sae", True),
    "selective": ("sae", True),
}
CONTROL_VARIANTS = ("error-scaled", "error-only", "transmm-power", "random-gates", "selective")
UNGATED_VARIANTS = ("transmm-power",)
VARIANTS = tuple(variant for variant in VARIANT_TABLE if variant not in CONTROL_VARIANTS)  # method.md §3
SAE_VARIANTS = tuple(variant for variant, (needs, _) in VARIANT_TABLE.items() if needs == "sae")
# the options only one variant reads (None: required, when that variant is asked for)
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    "error-scaled": {"error_scale": None},
    "transmm-power": {"gamma": None},
    "selective": {"num_features": None, "feature_importance": None},
    "random-gates": {"gate_seed": 0},
}
# the one option a variant's evaluation key can carry, as `variant@value` (e.g. `error-scaled@0.5`)
VARIANT_PARAMETERS = {"error-scaled": "error_scale", "transmm-power": "gamma", "selective": "num_features"}
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
            parts = [torch.bmm(decoder[idx], grad[:, :, None])[..., 0] for idx, grad in _chunks(indices, g, size=64)]
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


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """
    A variant as evaluation keys write it, `name` or `name@value` for the controls with one parameter
    (`VARIANT_PARAMETERS`), into the variant and its options.

    Example:
    ```python
    >>> parse_variant("error-scaled@0.5"), parse_variant("selective@64"), parse_variant("combined")
    (('error-scaled', {'error_scale': 0.5}), ('selective', {'num_features': 64}), ('combined', {}))

    ```
    """
    variant, separator, value = str(text).partition("@")
    if not separator:
        return variant, {}
    if variant not in VARIANT_PARAMETERS:
        raise ValueError(
            f"Variant {variant!r} takes no parameter (got {text!r}); only {sorted(VARIANT_PARAMETERS)} "
            "do, written as e.g. 'error-scaled@0.5'."
        )
    name = VARIANT_PARAMETERS[variant]
    try:
        parsed = int(value) if name == "num_features" else float(value)
    except ValueError:
        kind = "an integer" if name == "num_features" else "a number"
        raise ValueError(f"The parameter of {text!r} ({name}) must be {kind}.") from None
    return variant, {name: parsed}


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def power_map(attribution: Tensor, gamma: float) -> Tensor:
    """
    sign(a) · |a|^γ elementwise (`transmm-power`, method.md §10): a sharpening (γ > 1) or flattening (γ < 1) of a map
    that keeps its order and signs. TransMM's map is non-negative by construction (Ā_ℓ ≥ 0 after the clamp, R starts
    at I), so there this is plainly a^γ; the sign-safe form keeps a map with negative entries monotone and odd instead
    of producing NaN (a negative base to a fractional power) or flipping signs (even powers).
    """
    return attribution.sign() * attribution.abs().pow(gamma)


def patch_permutation(num_patches: int, seed: int, block: int) -> Tensor:
    """
    The fixed patch permutation of `random-gates` at one block: `torch.randperm(N)` seeded with `seed + block`. The
    same for every image, so a batch gives the same maps as its images one by one (method.md §1).
    """
    return torch.randperm(num_patches, generator=torch.Generator().manual_seed(seed + block))


def _reconstruction_terms(codes: FeatureCodes, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """
    (g·(x − b_dec), g·D f) per row. D f = x̂ − b_dec holds for SAEs without a runtime layer norm (the method's
    `check_options` refuses the error variants on the others).
    """
    return _dot(g, x - codes.sae.decoder_bias_in_residual_space()), _dot(g, codes.decode())


def selective_scores(codes: FeatureCodes, g: Tensor, selected: Tensor) -> Tensor:
    """Σ_{k∈S} f^k (Dᵀg)_k per row of `g (M, d)`, S the feature indices `selected (m,)` (`selective`)."""
    if codes.dense is None:
        contributions = codes.values * codes.feature_gradients(g)
        return (contributions * torch.isin(codes.indices, selected.to(codes.indices.device))).sum(dim=-1)
    decoder = codes.sae.decoder_in_residual_space()[selected]
    return torch.cat([(f[:, selected] * (grad @ decoder.T)).sum(dim=-1) for f, grad in _chunks(codes.dense, g)])


def block_scores(
    variant: str,
    x: Tensor,
    g: Tensor,
    sae: SparseAutoencoder | None = None,
    codes: FeatureCodes | None = None,
    mean: Tensor | None = None,
    permutation: Tensor | None = None,
    error_scale: float | None = None,
    selected: Tensor | None = None,
) -> Tensor:
    """
    The raw per-patch score s_t `(M,)` of a variant (method.md §3), from flattened `x`, `g` `(M, d)`.

    - `combined`: Σ_k f^k (Dᵀg)_k, computed as g · (D f) (sparse for Top-K SAEs);
    - `shuffled`: the same with D[:, π];
    - `activation`: Σ_k f^k;
    - `gradient`: Σ_k |(Dᵀg)_k| (thesis eq. 6.6; the thesis *code* summed signed values, i.e. g · D𝟙);
    - `no-sae`: g · x;  `centered`: g · (x − b_dec);  `mean-centered`: g · (x − μ_ℓ);
    - `error-scaled` (λ = `error_scale`): g · (x − b_dec) − λ g · e with e = x − x̂, computed as
      (1 − λ) g · (x − b_dec) + λ g · (D f) (the same number, since e = x − b_dec − D f), so that λ = 0 gives
      `centered` and λ = 1 gives `combined` exactly;  `error-only`: −g · e = g · (D f) − g · (x − b_dec);
    - `selective`: Σ_{k∈S} f^k (Dᵀg)_k, S = the feature indices `selected`;
    - `random-gates`: the `combined` score (its patches are permuted by the caller).
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
    if variant in ("error-scaled", "error-only"):
        centered, combined = _reconstruction_terms(codes, x, g)
        if variant == "error-only":
            return combined - centered
        return (1.0 - error_scale) * centered + error_scale * combined
    if variant == "selective":
        return selective_scores(codes, g, selected)
    if variant == "random-gates":
        return _dot(g, codes.decode())
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

    The controls of method.md §10 (`CONTROL_VARIANTS`) take their own options, each accepted only with its variant:

    - `error-scaled` needs `error_scale` (λ, a finite number): s = g·(x − b_dec) − λ g·e; λ = 0 is `centered`,
      λ = 1 is `combined`. `error-only` (s = −g·e) takes none. Both need an SAE without a runtime layer norm;
    - `transmm-power` needs `gamma` (γ > 0): the map is sign(R)·|R|^γ of TransMM's map ([`power_map`]); it gates no
      block, so `layers`, `kappa` and `cmax` are not used;
    - `random-gates` (`gate_seed`, `int`, defaults to 0): the `combined` gates of each image, permuted over its
      patches by a fixed permutation per block ([`patch_permutation`]): the same spread, no information;
    - `selective` needs `num_features` (m) and `feature_importance` (`Mapping[int, Tensor]`, a `(d_sae,)` importance
      per gated block, e.g. [`hf_fga.attribution.feature_selection.compute_feature_importance`]): s_t = Σ_{k∈S_ℓ}
      f_t^k (Dᵀ g_t)_k with S_ℓ the m most important features.
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
        **{name: default for variant_options in VARIANT_OPTIONS.values() for name, default in variant_options.items()},
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
        self._check_variant_options(options)
        options["layers"] = self.gated_blocks(attributor, options["variant"], options["layers"])
        if options["variant"] in ("error-scaled", "error-only"):
            for block in options["layers"]:
                if attributor.saes[block].config.normalize_activations == "layer_norm":
                    raise ValueError(
                        f"Variant {options['variant']!r} needs an SAE whose reconstruction is linear in its features "
                        f"(x̂ = D f + b_dec), but the SAE of block {block} normalises its input with a runtime layer "
                        "norm, where x̂ − b_dec ≠ D f: use `combined` / `centered` with it, or an SAE with "
                        "normalize_activations 'none' or 'constant_scale'."
                    )
        if options["variant"] == "selective":
            options["selected"] = self._selected_features(attributor, options)
        return options

    def _check_variant_options(self, options: dict[str, Any]) -> None:
        """Each control option only with its variant; the required ones present and valid."""
        variant = options["variant"]
        for owner, variant_options in VARIANT_OPTIONS.items():
            for name, default in variant_options.items():
                given = options[name] is not default if default is None else options[name] != default
                if owner != variant and given:
                    raise ValueError(f"{name} applies only to variant {owner!r}; got it with variant {variant!r}.")
                if owner == variant and options[name] is None:
                    raise ValueError(
                        f"Variant {variant!r} needs the option {name}: pass {name}=... (see the "
                        "FeatureGradientAttributionMethod docstring)."
                    )
        if variant == "error-scaled":
            scale = options["error_scale"]
            if isinstance(scale, bool) or not (isinstance(scale, int | float) and math.isfinite(scale)):
                raise ValueError(f"error_scale must be a finite number (λ of the error term), got {scale!r}.")
            options["error_scale"] = float(scale)
        if variant == "transmm-power":
            options["gamma"] = _check_number("gamma", options["gamma"], 0, "the power of TransMM's map")
        if variant == "random-gates":
            seed = options["gate_seed"]
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"gate_seed must be a non-negative integer, got {seed!r}.")

    @staticmethod
    def _selected_features(attributor: Attributor, options: Mapping[str, Any]) -> dict[int, Tensor]:
        """S_ℓ per gated block: the `num_features` features of largest importance."""
        importance, count, selected = options["feature_importance"], options["num_features"], {}
        if not isinstance(importance, Mapping):
            raise ValueError(
                "feature_importance must map each gated block to a (d_sae,) tensor of importances "
                "(load_feature_importance reads them from a file)."
            )
        for block in options["layers"]:
            d_sae = attributor.saes[block].config.d_sae
            if block not in importance:
                raise ValueError(
                    f"Variant 'selective' has no feature importance for block {block}: it covers blocks "
                    f"{sorted(importance)}; compute it for every gated block."
                )
            values = torch.as_tensor(importance[block])
            if values.shape != (d_sae,) or not torch.isfinite(values).all():
                raise ValueError(
                    f"The feature importance of block {block} must be a finite tensor of shape "
                    f"({d_sae},), one value per SAE feature; got shape {tuple(values.shape)}."
                )
            if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= d_sae:
                raise ValueError(
                    f"num_features must be an integer in [1, {d_sae}] (the SAE of block {block} has "
                    f"{d_sae} features), got {count!r}."
                )
            selected[block] = values.topk(count).indices
        return selected

    @staticmethod
    def gated_blocks(attributor: Attributor, variant: str, layers: Sequence[int] | int | None) -> list[int]:
        """The validated, sorted blocks a variant gates (`layers`, or its default when `None`; none for the
        `UNGATED_VARIANTS`)."""
        if variant in UNGATED_VARIANTS:
            return []
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
        attribution = cls_to_patches(propagate_relevance(weighted, full_gates), capture.grid)
        if options["variant"] == "transmm-power":
            attribution = power_map(transmm_map(capture), options["gamma"])
        return MethodResult(
            attribution=attribution,
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
            selected = options["selected"][block] if variant == "selective" else None
            scores = block_scores(
                variant, flat_x, flat_g, sae, codes, mean, permutation, options["error_scale"], selected
            ).reshape(batch, patches)
            if variant == "random-gates":  # the same scores (and so gates), moved to other patches
                scores = scores[:, patch_permutation(patches, options["gate_seed"], block).to(scores.device)]
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
