"""Configuration of a sparse autoencoder trained on one block of a Vision Transformer's residual stream."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from importlib import metadata

from transformers import PretrainedConfig

ACTIVATIONS = ("relu", "topk")
HOOK_POINTS = ("resid_pre", "resid_post")
TOKEN_SCOPES = ("patches", "all", "cls")
NORMALIZATIONS = ("none", "constant_scale", "layer_norm")


def library_version() -> str:
    """The installed `hf_fga` version (read lazily: the package may still be importing)."""
    module = sys.modules.get("hf_fga")
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = metadata.version("hf_fga")
        except metadata.PackageNotFoundError:
            version = "unknown"
    return version


def _check_choice(field: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SparseAutoencoderConfig.{field} must be one of {list(allowed)}, got {value!r}.")


def _kind(value) -> str:
    return f"{value!r} (a {type(value).__name__})"


def _what_to_pass(value, wanted: str) -> str:
    if isinstance(value, str | bool):
        return f"pass {wanted}, not a string or a bool (e.g. read JSON numbers as numbers)"
    return f"pass {wanted}"


def _check_integer(field: str, value, minimum: int, maximum: int | None = None, note: str = "") -> int:
    """`value` as an `int` in [minimum, maximum]; any integral type but `bool`, else a ValueError naming the field."""
    bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"SparseAutoencoderConfig.{field} must be an integer {bound}{note}, got {_kind(value)}: "
            f"{_what_to_pass(value, 'an integer')}."
        )
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"SparseAutoencoderConfig.{field} must be an integer {bound}{note}, got {value!r}.")
    return int(value)


def _check_real(field: str, value, *, positive: bool) -> float:
    """`value` as a finite `float` (> 0 or >= 0); any real type but `bool`, else a ValueError naming the field."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"SparseAutoencoderConfig.{field} must be a finite real number {bound}, got {_kind(value)}: "
            f"{_what_to_pass(value, 'a number')}."
        )
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"SparseAutoencoderConfig.{field} must be a finite real number {bound}, got {value!r}.")
    return value


_KNOWN_BASE_KEYS = set(PretrainedConfig().to_dict()) | {"name_or_path", "torch_dtype", "num_labels"}


class SparseAutoencoderConfig(PretrainedConfig):
    r"""
    Configuration of a [`SparseAutoencoder`] (method.md §4).

    Args:
        d_in (`int`, *optional*, defaults to 768):
            Width of the residual stream the SAE reads (the base model's `hidden_size`).
        d_sae (`int`, *optional*, defaults to 49152):
            Number of dictionary features (64 × 768 in the thesis).
        activation (`str`, *optional*, defaults to `"topk"`):
            `"relu"` (vanilla SAE, L1 penalty) or `"topk"` (Gao et al. 2024: keep the `k` largest pre-activations).
        k (`int`, *optional*, defaults to 128):
            Active features per token of a Top-K SAE; ignored by ReLU SAEs.
        l1_coefficient (`float`, *optional*, defaults to 0.0):
            λ of the L1 sparsity penalty (ReLU SAEs).
        hook_layer (`int`, *optional*, defaults to 0):
            0-indexed transformer block whose residual stream the SAE reads.
        hook_point (`str`, *optional*, defaults to `"resid_post"`):
            `"resid_pre"` (input of block `hook_layer`) or `"resid_post"` (its output).
        token_scope (`str`, *optional*, defaults to `"patches"`):
            Tokens it was trained on: `"patches"`, `"all"` or `"cls"`.
        normalize_activations (`str`, *optional*, defaults to `"none"`):
            Input normalisation: `"none"`; `"constant_scale"` (x is multiplied by `norm_scaling_factor` before
            encoding and the reconstruction divided by it); `"layer_norm"` (Prisma's runtime layer norm, per token).
        norm_scaling_factor (`float`, *optional*, defaults to 1.0):
            The constant of `"constant_scale"` normalisation.
        apply_b_dec_to_input (`bool`, *optional*, defaults to `True`):
            Encode `x - b_dec` (method.md §4) rather than `x`.
        base_model_name_or_path (`str`, *optional*):
            The model whose activations the SAE was trained on.
        training_info (`dict`, *optional*):
            Provenance written by the training harness or an importer (dataset, training tokens, seed, command,
            held-out quality figures, source format); the model card is filled in from it.
        hf_fga_version (`str`, *optional*):
            The `hf_fga` version that wrote the config. A config from another version loads with a warning (naming
            both versions and any field this version does not know), never an error.
    """

    model_type = "sparse_autoencoder"

    def __init__(
        self,
        d_in: int = 768,
        d_sae: int = 49152,
        activation: str = "topk",
        k: int = 128,
        l1_coefficient: float = 0.0,
        hook_layer: int = 0,
        hook_point: str = "resid_post",
        token_scope: str = "patches",
        normalize_activations: str = "none",
        norm_scaling_factor: float = 1.0,
        apply_b_dec_to_input: bool = True,
        base_model_name_or_path: str | None = None,
        training_info: dict | None = None,
        hf_fga_version: str | None = None,
        **kwargs,
    ):
        d_in = _check_integer("d_in", d_in, 1)
        d_sae = _check_integer("d_sae", d_sae, 1)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("hook_point", hook_point, HOOK_POINTS)
        _check_choice("token_scope", token_scope, TOKEN_SCOPES)
        _check_choice("normalize_activations", normalize_activations, NORMALIZATIONS)
        if activation == "topk":
            k = _check_integer("k", k, 1, d_sae, note=" (d_sae) for a Top-K SAE")
        else:  # unused by ReLU SAEs, but stored: still a valid count
            k = _check_integer("k", k, 0)
        l1_coefficient = _check_real("l1_coefficient", l1_coefficient, positive=False)
        hook_layer = _check_integer("hook_layer", hook_layer, 0)
        norm_scaling_factor = _check_real("norm_scaling_factor", norm_scaling_factor, positive=True)
        if not isinstance(apply_b_dec_to_input, bool | numbers.Integral) or apply_b_dec_to_input not in (0, 1):
            raise ValueError(
                "SparseAutoencoderConfig.apply_b_dec_to_input must be True or False, got "
                f"{_kind(apply_b_dec_to_input)}."
            )
        self.d_in = d_in
        self.d_sae = d_sae
        self.activation = activation
        self.k = k
        self.l1_coefficient = float(l1_coefficient)
        self.hook_layer = hook_layer
        self.hook_point = hook_point
        self.token_scope = token_scope
        self.normalize_activations = normalize_activations
        self.norm_scaling_factor = float(norm_scaling_factor)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.base_model_name_or_path = base_model_name_or_path
        self.training_info = dict(training_info) if training_info else {}
        current = library_version()
        if hf_fga_version is not None and hf_fga_version != current:
            unknown = sorted(set(kwargs) - _KNOWN_BASE_KEYS)
            extra = f"; fields this version does not know, kept as attributes: {unknown}" if unknown else ""
            warnings.warn(
                f"This SAE config was written by hf_fga {hf_fga_version}, you are running hf_fga {current}{extra}. "
                "It loads as is; re-save it to record the current version.",
                UserWarning,
                stacklevel=2,
            )
        self.hf_fga_version = current
        super().__init__(**kwargs)

    @property
    def expansion_factor(self) -> float:
        return self.d_sae / self.d_in
