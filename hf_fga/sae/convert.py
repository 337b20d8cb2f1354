"""
Importers for SAEs saved by Prisma (ViT-Prisma) and SAELens, into [`SparseAutoencoder`].

Formats (read from the public code of both projects; nothing of theirs is imported):

- **Prisma**: `config.json` with `hook_point_layer`, `layer_subtype` (`"hook_resid_post"`, ...), `d_in`,
  `expansion_factor` / `d_sae`, `activation_fn_str` (`"relu"` / `"topk"`), `activation_fn_kwargs` (`{"k": ...}`),
  `normalize_activations`, `l1_coefficient`, `model_name`; weights `W_enc, b_enc, W_dec, b_dec` in a `.safetensors`
  file or a `.pt` file holding a plain state dict (optionally under `"state_dict"`).
- **SAELens**: `cfg.json` + `sae_weights.safetensors`. Flat (< 6.0): `hook_name` (`"blocks.5.hook_resid_post"`),
  `hook_layer`, `d_in`, `d_sae`, `activation_fn_str`, `activation_fn_kwargs`, `apply_b_dec_to_input`,
  `normalize_activations`, `model_name`, optionally `architecture`. Nested (6.x): `architecture`, `d_in`, `d_sae`,
  `k` (Top-K), `apply_b_dec_to_input`, `normalize_activations`, and `metadata` with `hook_name`, `model_name`, ....

Supported architectures: standard/ReLU and Top-K. JumpReLU, gated and BatchTopK SAEs (extra parameters such as
`threshold`, `r_mag`, `b_gate`) are refused with an error: their encoders differ from method.md §4.

Input normalisation: `"none"`; Prisma/SAELens `"layer_norm"` (runtime, per token) → `"layer_norm"`;
`"expected_average_only_in"` → `"constant_scale"` when the config carries its `norm_scaling_factor` (SAELens folds
the factor into the weights when it saves, and then writes `"none"`); `"constant_norm_rescale"` (a per-token norm,
not a constant) is refused: FGA's decoder fold (method.md §3) needs a constant or the Prisma layer norm.

`.pt` files are read with `torch.load(..., weights_only=True)`: a file that pickles arbitrary Python objects (e.g. a
config object) is refused, never executed.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from .configuration_sae import SparseAutoencoderConfig
from .modeling_sae import SparseAutoencoder
from .weights import WEIGHT_NAMES, check_finite, check_present, check_shapes, load_safetensors

UNSUPPORTED_WEIGHTS = ("threshold", "log_threshold", "r_mag", "b_gate", "b_mag")
SUPPORTED_ARCHITECTURES = ("standard", "topk", "relu")
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
HOOK_NAME = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|[a-z_]+)")


def detect_format(folder: Path) -> str | None:
    """`"hf_fga"`, `"prisma"`, `"saelens"` or None, from the config file in `folder`."""
    if (folder / SAELENS_CONFIG).is_file():
        return "saelens"
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    config = _read_json(config_file)
    if config.get("model_type") == SparseAutoencoderConfig.model_type:
        return "hf_fga"
    if "hook_point_layer" in config or "layer_subtype" in config:
        return "prisma"
    return None


def load_foreign_sae(folder: Path, fmt: str) -> SparseAutoencoder:
    if fmt == "prisma":
        return load_prisma_sae(folder)
    if fmt == "saelens":
        return load_saelens_sae(folder)
    raise ValueError(f"Unknown SAE format {fmt!r}: expected 'prisma' or 'saelens'.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): re-download or re-export the SAE.") from err


def _hook_point(subtype: str, where: str) -> str:
    point = subtype.removeprefix("hook_")
    if point not in ("resid_pre", "resid_post"):
        raise ValueError(
            f"{where}: the SAE reads hook '{subtype}', but hf_fga's SAEs read the residual stream "
            "('hook_resid_pre' or 'hook_resid_post'); FGA needs residual-stream SAEs."
        )
    return point


def _normalization(name: str | None, config: dict, where: str) -> tuple[str, float]:
    if name in (None, "none", "None"):
        return "none", 1.0
    if name == "layer_norm":
        return "layer_norm", 1.0
    if name == "expected_average_only_in":
        factor = config.get("norm_scaling_factor") or config.get("scaling_factor")
        if factor is None:
            raise ValueError(
                f"{where}: normalize_activations='expected_average_only_in' but no norm_scaling_factor is recorded; "
                "fold the factor into the weights (SAELens does this when it saves) or add it to the config."
            )
        return "constant_scale", factor
    raise ValueError(
        f"{where}: normalize_activations={name!r} is not supported (supported: 'none', 'layer_norm', "
        "'expected_average_only_in' with its norm_scaling_factor); 'constant_norm_rescale' rescales each token by "
        "its own norm, which FGA cannot fold into the decoder."
    )


def _activation(name: str | None, kwargs: dict | None, k_field, where: str) -> tuple[str, int]:
    if name in (None, "relu", "standard"):
        return "relu", 0
    if name == "topk":
        k = k_field if k_field is not None else (kwargs or {}).get("k")
        if k is None:
            raise ValueError(f"{where}: a Top-K SAE must record k (activation_fn_kwargs={{'k': ...}} or k).")
        return "topk", k
    raise ValueError(
        f"{where}: activation/architecture {name!r} is not supported; hf_fga imports ReLU ('standard') and Top-K "
        "SAEs. JumpReLU, gated and BatchTopK SAEs have different encoders."
    )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a `.safetensors` file, or the state dict of a `.pt` / `.pth` file (tensors only)."""
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} pickles Python objects that hf_fga refuses to unpickle (weights_only=True): only plain "
                "tensor state dicts are read. Convert it where you trust it, e.g. "
                "safetensors.torch.save_file(torch.load(p)['state_dict'], 'sae_weights.safetensors')."
            ) from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(
            f"{path} does not hold a state dict of tensors (got {type(state).__name__}): save the SAE's "
            f"{list(WEIGHT_NAMES)} as a dict of tensors."
        )
    return state


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The SAE tensors of a weights file; refuses JumpReLU / gated SAEs."""
    state = _read_state(path)
    present_unsupported = [name for name in UNSUPPORTED_WEIGHTS if name in state]
    if present_unsupported:
        raise ValueError(
            f"{path} holds {present_unsupported}: a JumpReLU / gated SAE, which hf_fga does not support "
            "(ReLU and Top-K only)."
        )
    check_present(state, str(path))
    check_finite(state.items(), str(path))
    return state


def _config(path: Path, **fields) -> SparseAutoencoderConfig:
    """The hf_fga config of an imported SAE; an invalid field is a `ValueError` naming the file it came from."""
    try:
        return SparseAutoencoderConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err} Fix the field in that file.") from err


def _build(config: SparseAutoencoderConfig, weights: dict[str, torch.Tensor], where: str) -> SparseAutoencoder:
    """The SAE of `config` with `weights` (every tensor present, shaped as the config implies)."""
    check_shapes({name: tuple(tensor.shape) for name, tensor in weights.items()}, config, where)
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            getattr(sae, name).copy_(weights[name].to(torch.float32))
    return sae.eval()


def _prisma_hook(cfg: dict, where: str) -> tuple[int, str]:
    """The block and hook of a Prisma config: `hook_point_layer` + `layer_subtype`, or the `hook_point` name."""
    match = HOOK_NAME.fullmatch(cfg.get("hook_point") or "")
    layer = cfg.get("hook_point_layer", int(match.group(1)) if match else None)
    if isinstance(layer, list):
        if len(layer) != 1:
            raise ValueError(f"{where}: hook_point_layer={layer} names several blocks; one SAE reads one block.")
        layer = layer[0]
    subtype = cfg.get("layer_subtype") or (match.group(2) if match else None)
    if layer is None or subtype is None:
        raise ValueError(
            f"{where} names no hook: expected hook_point_layer and layer_subtype (e.g. 1 and 'hook_resid_post') or "
            f"hook_point (e.g. 'blocks.1.hook_resid_post'); found hook_point_layer={cfg.get('hook_point_layer')!r}, "
            f"layer_subtype={cfg.get('layer_subtype')!r}, hook_point={cfg.get('hook_point')!r}. Add them to the "
            "config."
        )
    return layer, subtype


def load_prisma_sae(folder: str | Path) -> SparseAutoencoder:
    """Import a Prisma SAE folder (`config.json` + weights in `.safetensors` or `.pt`)."""
    folder = Path(folder)
    where = f"Prisma SAE at {folder}"
    where_config = folder / "config.json"
    cfg = _read_json(where_config)
    weight_files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.pt")) or sorted(folder.glob("*.pth"))
    if not weight_files:
        raise FileNotFoundError(f"{where}: no weights file (*.safetensors, *.pt or *.pth) next to config.json.")
    weights = _load_weights(weight_files[0])
    where = f"Prisma SAE weights {weight_files[0]}"
    layer, subtype = _prisma_hook(cfg, str(where_config))
    d_in = cfg.get("d_in", weights["W_enc"].shape[0])
    d_sae = cfg.get("d_sae") or d_in * cfg.get("expansion_factor", weights["W_enc"].shape[1] // d_in)
    activation, k = _activation(cfg.get("activation_fn_str"), cfg.get("activation_fn_kwargs"), None, where)
    normalization, factor = _normalization(cfg.get("normalize_activations"), cfg, where)
    config = _config(
        where_config,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        k=k or 1,
        l1_coefficient=cfg.get("l1_coefficient") or 0.0,
        hook_layer=layer,
        hook_point=_hook_point(subtype, where),
        token_scope="cls" if cfg.get("cls_token_only") else "all",
        normalize_activations=normalization,
        norm_scaling_factor=factor,
        apply_b_dec_to_input=True,
        base_model_name_or_path=cfg.get("model_name"),
        training_info={"source_format": "Prisma", "dataset": cfg.get("dataset_path")}
        if cfg.get("dataset_path")
        else {"source_format": "Prisma"},
    )
    return _build(config, weights, where)


def load_saelens_sae(folder: str | Path) -> SparseAutoencoder:
    """Import a SAELens SAE folder (`cfg.json` + `sae_weights.safetensors`, flat < 6.0 or nested 6.x config)."""
    folder = Path(folder)
    where = f"SAELens SAE at {folder}"
    cfg = _read_json(folder / SAELENS_CONFIG)
    weights_file = folder / SAELENS_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{where}: {SAELENS_WEIGHTS} is missing next to {SAELENS_CONFIG}.")
    meta = cfg.get("metadata") or {}
    hook_name = meta.get("hook_name") or cfg.get("hook_name")
    match = HOOK_NAME.fullmatch(hook_name or "")
    if match is None:
        raise ValueError(f"{where}: hook_name {hook_name!r} is not of the form 'blocks.<i>.hook_resid_post'.")
    architecture = cfg.get("architecture")
    if architecture is not None and architecture not in SUPPORTED_ARCHITECTURES:
        _activation(architecture, None, None, where)
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(
            f"{where}: rescale_acts_by_decoder_norm=True scales the features by the decoder norms at run time, "
            "which hf_fga does not support; fold the norms into W_enc / b_enc / W_dec first."
        )
    name = architecture if architecture in ("topk",) else cfg.get("activation_fn_str", architecture)
    activation, k = _activation(name, cfg.get("activation_fn_kwargs"), cfg.get("k"), where)
    normalization, factor = _normalization(cfg.get("normalize_activations"), cfg, where)
    weights = _load_weights(weights_file)
    scaling = weights.get("scaling_factor")
    if scaling is not None:
        # Pre-6.0 SAELens finetuning scaling: f is multiplied by it before decoding; fold it into W_dec.
        weights["W_dec"] = weights["W_dec"] * scaling[:, None]
    layer = cfg.get("hook_layer", int(match.group(1)))
    dataset = meta.get("dataset_path") or cfg.get("dataset_path")
    info = {"source_format": "SAELens"} | ({"dataset": dataset} if dataset else {})
    config = _config(
        folder / SAELENS_CONFIG,
        d_in=cfg.get("d_in"),
        d_sae=cfg.get("d_sae"),
        activation=activation,
        k=k or 1,
        l1_coefficient=cfg.get("l1_coefficient") or 0.0,
        hook_layer=layer,
        hook_point=_hook_point(match.group(2), where),
        token_scope="all",
        normalize_activations=normalization,
        norm_scaling_factor=factor,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        base_model_name_or_path=meta.get("model_name") or cfg.get("model_name"),
        training_info=info,
    )
    return _build(config, weights, str(weights_file))
