"""
SAE sets: the SAEs of several blocks of one model in one folder (or Hub repo), one subfolder per block.

Layout written by [`save_sae_set`]:

    <path>/sae_set.json             index: format, base_model_name_or_path, hook_point(s), blocks, ...
    <path>/block_<i>/config.json    one SparseAutoencoder per block, with its model card README.md
    <path>/block_<i>/model.safetensors
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .configuration_sae import library_version
from .model_card import render_sae_set_card
from .modeling_sae import MODEL_CARD_NAME, SparseAutoencoder

SET_INDEX_NAME = "sae_set.json"
SET_FORMAT = "hf_fga.sae_set"
CONFIG_NAME = "config.json"
BLOCK_FOLDER = "block_{}"

SaeSource = SparseAutoencoder | str | os.PathLike


def block_folder(block: int) -> str:
    return BLOCK_FOLDER.format(block)


def save_sae_set(
    saes: Mapping[int, SparseAutoencoder], path: str | os.PathLike, extra_index: Mapping | None = None
) -> Path:
    """
    Save SAEs keyed by block as one set: a subfolder `block_<i>` per SAE (`save_pretrained`: config, weights, model
    card) plus the index `sae_set.json` naming the base model, hook point(s) and blocks.

    Args:
        saes (`Mapping[int, SparseAutoencoder]`): the SAEs by 0-indexed block; each key must equal its SAE's
            `config.hook_layer`.
        path (`str` or `os.PathLike`): the folder of the set (created if needed).
        extra_index (`Mapping`, *optional*): more JSON-serialisable entries for the index (e.g. a quality table).

    Returns:
        `Path`: the set's folder.

    Example:
    ```python
    >>> from hf_fga.sae import SparseAutoencoder, SparseAutoencoderConfig, load_saes, save_sae_set
    >>> saes = {b: SparseAutoencoder(SparseAutoencoderConfig(d_in=8, d_sae=16, k=2, hook_layer=b)) for b in (1, 2)}
    >>> import tempfile
    >>> folder = save_sae_set(saes, tempfile.mkdtemp())
    >>> sorted(load_saes(folder))
    [1, 2]

    ```
    """
    if not saes:
        raise ValueError("save_sae_set needs at least one SAE: got an empty mapping.")
    for block, sae in saes.items():
        if not isinstance(sae, SparseAutoencoder):
            raise ValueError(f"save_sae_set expects SparseAutoencoder values; block {block} is {type(sae).__name__}.")
        if sae.config.hook_layer != block:
            raise ValueError(
                f"The SAE stored under block {block} has config.hook_layer={sae.config.hook_layer}: key the mapping "
                "by each SAE's hook_layer."
            )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    blocks = sorted(saes)
    for block in blocks:
        saes[block].save_pretrained(root / block_folder(block))
    hook_points = {str(b): saes[b].config.hook_point for b in blocks}
    base_models = sorted({str(saes[b].config.base_model_name_or_path) for b in blocks})
    index = {
        "format": SET_FORMAT,
        "hf_fga_version": library_version(),
        "base_model_name_or_path": saes[blocks[0]].config.base_model_name_or_path if len(base_models) == 1 else None,
        "hook_point": hook_points[str(blocks[0])] if len(set(hook_points.values())) == 1 else None,
        "hook_points": hook_points,
        "blocks": blocks,
        "subfolders": {str(b): block_folder(b) for b in blocks},
        **dict(extra_index or {}),
    }
    (root / SET_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    card = render_sae_set_card({b: saes[b].config for b in blocks})
    (root / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
    return root


def push_sae_set_to_hub(
    saes: Mapping[int, SparseAutoencoder] | str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload SAE set",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """
    Upload an SAE set to one Hub repo (`sae_set.json`, README.md, `block_<i>/`): either SAEs keyed by block (saved
    with [`save_sae_set`] into a temporary folder) or the folder of a saved set. Returns the commit info.
    """
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as work_dir:
        if isinstance(saes, Mapping):
            folder = save_sae_set(saes, work_dir)
        else:
            folder = Path(saes)
            if not (folder / SET_INDEX_NAME).is_file():
                raise ValueError(f"{folder} is not an SAE set (no {SET_INDEX_NAME}): save it with save_sae_set first.")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=["activations/*", "checkpoints/*"],
        )


def _resolve_folder(source: str | os.PathLike, hub_kwargs: dict) -> Path:
    """A local folder as is; otherwise a Hub repo id, fetched with `snapshot_download`."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{source} is a file: pass the folder that holds the SAE (config.json or cfg.json).")
    text = str(source)
    looks_like_repo = text.count("/") <= 1 and not text.startswith((".", "/", "~")) and text.strip() == text
    if not looks_like_repo:
        raise FileNotFoundError(f"No SAE folder at {source}: the path does not exist.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, **hub_kwargs))
    except Exception as err:  # offline, missing repo, no access: one actionable message
        raise FileNotFoundError(
            f"{source} is neither a local folder nor a Hub repo that could be fetched ({type(err).__name__}: {err}). "
            "Pass the folder of an SAE or SAE set, or a Hub id reachable from this machine."
        ) from err


def _load_set(root: Path, index: dict) -> dict[int, SparseAutoencoder]:
    subfolders = index.get("subfolders") or {str(b): block_folder(b) for b in index.get("blocks", [])}
    saes = {}
    for block, sub in subfolders.items():
        folder = root / sub
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"The SAE set at {root} lists block {block} in {SET_INDEX_NAME} but {folder} has no {CONFIG_NAME}."
            )
        saes[int(block)] = SparseAutoencoder.from_pretrained(folder)
    return saes


def _block_subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob(BLOCK_FOLDER.format("*")) if (p / CONFIG_NAME).is_file())


def load_folder(root: Path) -> dict[int, SparseAutoencoder]:
    """Load one local folder: an hf_fga set or SAE, a Prisma or a SAELens SAE (auto-detected)."""
    from .convert import detect_format, load_foreign_sae

    index_file = root / SET_INDEX_NAME
    if index_file.is_file():
        return _load_set(root, json.loads(index_file.read_text(encoding="utf-8")))
    fmt = detect_format(root)
    if fmt == "hf_fga":
        sae = SparseAutoencoder.from_pretrained(root)
        return {sae.config.hook_layer: sae}
    if fmt is not None:
        sae = load_foreign_sae(root, fmt)
        return {sae.config.hook_layer: sae}
    subfolders = _block_subfolders(root)
    if subfolders:
        return _merge([load_folder(sub) for sub in subfolders], where=str(root))
    present = sorted(p.name for p in root.iterdir())[:20]
    raise ValueError(
        f"Unknown SAE format in {root}: expected {SET_INDEX_NAME} (an hf_fga SAE set), config.json with "
        "model_type 'sparse_autoencoder' (an hf_fga SAE), config.json with hook_point_layer (Prisma) or cfg.json + "
        f"sae_weights.safetensors (SAELens); found {present}."
    )


def _merge(parts: Iterable[dict[int, SparseAutoencoder]], where: str) -> dict[int, SparseAutoencoder]:
    merged: dict[int, SparseAutoencoder] = {}
    for part in parts:
        for block, sae in part.items():
            if block in merged:
                raise ValueError(
                    f"Two SAEs for block {block} in {where}: pass one SAE per block (pick with layers=[...])."
                )
            merged[block] = sae
    return merged


def _load_one(source, hub_kwargs: dict) -> dict[int, SparseAutoencoder]:
    if isinstance(source, SparseAutoencoder):
        return {source.config.hook_layer: source}
    if isinstance(source, str | os.PathLike):
        return load_folder(_resolve_folder(source, hub_kwargs))
    raise ValueError(
        f"Cannot load an SAE from {type(source).__name__}: pass a SparseAutoencoder, a folder or Hub id (of one SAE "
        "or of a set), or a list / dict of those."
    )


def load_saes(
    sae: SaeSource | list[SaeSource] | tuple[SaeSource, ...] | Mapping[int, SaeSource],
    layers: Iterable[int] | None = None,
    **hub_kwargs,
) -> dict[int, SparseAutoencoder]:
    """
    Load SAEs keyed by 0-indexed block from whatever the user has.

    Args:
        sae: a [`SparseAutoencoder`]; a local folder or Hub id of one SAE (hf_fga `config.json`, Prisma, SAELens:
            auto-detected) or of an SAE set (`sae_set.json` + `block_<i>/`); a list of those; or a dict
            `{block: source}` where each source resolves to that block's SAE.
        layers (`Iterable[int]`, *optional*): the blocks to keep (all when omitted).
        hub_kwargs: passed to `huggingface_hub.snapshot_download` for Hub ids (`revision`, `token`, `cache_dir`, ...).

    Returns:
        `dict[int, SparseAutoencoder]`, sorted by block.

    Example:
    ```python
    >>> saes = load_saes("path/to/sae_set", layers=[4, 5])  # doctest: +SKIP

    ```
    """
    if isinstance(sae, Mapping):
        parts = []
        for block, source in sae.items():
            loaded = _load_one(source, hub_kwargs)
            if block in loaded:
                picked = loaded[block]
            elif len(loaded) == 1:
                picked = next(iter(loaded.values()))
                raise ValueError(
                    f"The SAE given for block {block} was trained on block {picked.config.hook_layer} "
                    f"(config.hook_layer): key the dict by the SAE's own block."
                )
            else:
                raise ValueError(f"The set given for block {block} has no SAE for it: it has blocks {sorted(loaded)}.")
            parts.append({block: picked})
        merged = _merge(parts, where="the dict")
    elif isinstance(sae, list | tuple):
        if not sae:
            raise ValueError("load_saes got an empty list: pass at least one SAE, folder or Hub id.")
        merged = _merge((_load_one(s, hub_kwargs) for s in sae), where="the list")
    else:
        merged = _load_one(sae, hub_kwargs)
    if layers is not None:
        wanted = list(layers)
        missing = [b for b in wanted if b not in merged]
        if missing:
            raise ValueError(f"No SAE for block(s) {missing}: the SAEs given cover blocks {sorted(merged)}.")
        merged = {b: merged[b] for b in wanted}
    return dict(sorted(merged.items()))
