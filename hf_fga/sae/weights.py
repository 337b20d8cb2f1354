"""
Checks of SAE weight files before and after loading: every tensor present, shapes as the config implies, all finite.

A safetensors header gives names and shapes without reading the tensors, so a missing or transposed tensor, or a
truncated file, is reported with the file, the tensor and what was expected before transformers (or an importer)
would fill a missing decoder with random values or fail with a size-mismatch report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .configuration_sae import SparseAutoencoderConfig

WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def expected_shapes(config: SparseAutoencoderConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every SAE tensor as the config implies it (SAELens / Prisma layout: `x @ W_enc` encodes)."""
    return {
        "W_enc": (config.d_in, config.d_sae),
        "b_enc": (config.d_sae,),
        "W_dec": (config.d_sae, config.d_in),
        "b_dec": (config.d_in,),
    }


def _unreadable(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"{path} is not a readable safetensors file ({type(err).__name__}: {err}): it is truncated or corrupt. "
        "Re-download it (huggingface_hub: force_download=True) or save the SAE again."
    )


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """
    `{tensor name: shape}` from the header of a safetensors file, without reading the tensors.

    Raises:
        `ValueError`: naming the file when it is truncated or not a safetensors file.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or corrupt file is a `ValueError` naming it."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def check_present(names: Iterable[str], where: str) -> None:
    """Every SAE tensor (`WEIGHT_NAMES`) is among `names`; else a `ValueError` naming the missing ones."""
    names = set(names)
    missing = [name for name in WEIGHT_NAMES if name not in names]
    if missing:
        raise ValueError(
            f"{where} lacks the tensor(s) {missing}: an SAE needs all of {list(WEIGHT_NAMES)} (found "
            f"{sorted(names)}). The file is incomplete or holds another kind of model: re-export the SAE with every "
            "tensor."
        )


def check_shapes(shapes: Mapping[str, tuple[int, ...]], config: SparseAutoencoderConfig, where: str) -> None:
    """
    Every SAE tensor is in `shapes` with the shape the config implies.

    Args:
        shapes (`Mapping[str, tuple[int, ...]]`): the tensors found, by name.
        config ([`SparseAutoencoderConfig`]): what the shapes must agree with.
        where (`str`): the file (or folder) the tensors come from, for the message.

    Raises:
        `ValueError`: naming the missing tensors, or the tensor whose shape differs (and whether it is transposed).
    """
    check_present(shapes, where)
    expected = expected_shapes(config)
    for name, shape in expected.items():
        found = tuple(shapes[name])
        if found == shape:
            continue
        hint = (
            f"it looks transposed: hf_fga stores {name} as {shape} (SAELens / Prisma layout, x @ W_enc encodes); "
            "transpose it before saving"
            if found == shape[::-1]
            else f"the config (d_in={config.d_in}, d_sae={config.d_sae}) does not match these weights: use the "
            "config saved with them"
        )
        raise ValueError(f"{where}: tensor {name} has shape {found}, expected {shape}; {hint}.")


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Every tensor is finite; else a `ValueError` naming the tensor and how many NaN / infinite entries it has."""
    for name, tensor in tensors:
        bad = ~torch.isfinite(tensor.detach())
        if bad.any():
            raise ValueError(
                f"{where}: tensor {name} has {int(bad.sum())} NaN or infinite value(s) of {tensor.numel()}: every "
                "attribution through this SAE would be NaN. The training run diverged or the file is damaged: use "
                "another checkpoint."
            )


def weight_files(folder: Path, weights_name: str, index_name: str) -> list[Path] | None:
    """
    The safetensors files of a saved model in `folder`: `[weights_name]`, the shards its `index_name` lists, or
    None when the folder holds neither (e.g. PyTorch `.bin` weights, which transformers reads itself).
    """
    single = folder / weights_name
    if single.is_file():
        return [single]
    index = folder / index_name
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / shard for shard in shards]
    return None


def check_weight_files(files: list[Path], config: SparseAutoencoderConfig) -> None:
    """`check_shapes` over the union of the headers of `files` (one file, or the shards of one model)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the shard index lists it. Re-download the SAE.")
        shapes.update(safetensors_shapes(path))
    check_shapes(shapes, config, str(files[0]) if len(files) == 1 else f"the shards {[str(f) for f in files]}")
