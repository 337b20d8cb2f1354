"""
Harvesting residual-stream activations of a ViT / CLIP vision tower into safetensors shards on disk.

One forward pass per image batch records every requested block at once (forward hooks on the blocks; the forward is
stopped after the deepest requested block), keeps the requested tokens (`patches`, `cls` or `all`), and appends them
to per-block buffers that are flushed to `block_<i>/<split>/r<rank>_<j>.safetensors` whenever they hold
`shard_tokens` rows, so memory stays bounded whatever the dataset size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PreTrainedModel

from ..introspection import residual_hooks, vision_config, vision_layers, vision_tower

ACTIVATION_KEY = "activations"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block: the rest of the forward pass is not needed."""


def select_tokens(hidden: Tensor, pixel_values: Tensor, patch_size: int, token_scope: str) -> Tensor:
    """
    Tokens of `hidden (B, T, d)` for a scope: `patches` drops CLS and any other leading non-patch tokens
    (distillation token, registers), `cls` keeps token 0, `all` keeps everything. Returns `(n, d)`.
    """
    if token_scope == "all":
        return hidden.reshape(-1, hidden.shape[-1])
    if token_scope == "cls":
        return hidden[:, 0]
    n_patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
    n_prefix = hidden.shape[1] - n_patches
    if n_prefix < 0:
        raise ValueError(f"The model returned {hidden.shape[1]} tokens for {n_patches} patches: cannot find them.")
    return hidden[:, n_prefix:].reshape(-1, hidden.shape[-1])


@torch.no_grad()
def residual_activations(
    model: PreTrainedModel, pixel_values: Tensor, blocks: Sequence[int], hook_point: str, token_scope: str
) -> dict[int, Tensor]:
    """
    Residual vectors `(n_tokens, d)` at `hook_point` (`resid_pre`: the block's input, `resid_post`: its output) of
    each block, from one forward pass of the vision tower. Hooks are removed afterwards, also on error.
    """
    layers = vision_layers(model)
    bad = [b for b in blocks if not 0 <= b < len(layers)]
    if bad:
        raise ValueError(f"Block(s) {bad} out of range: the model has blocks 0..{len(layers) - 1}.")
    patch_size = vision_config(model).patch_size
    captured: dict[int, Tensor] = {}
    last = max(blocks)

    def record(block: int, point: str, hidden: Tensor) -> None:
        captured[block] = select_tokens(hidden, pixel_values, patch_size, token_scope)
        if block == last:
            raise _StopForward

    with residual_hooks(model, {block: hook_point for block in blocks}, record):
        try:
            vision_tower(model)(pixel_values=pixel_values)
        except _StopForward:
            pass
    return captured


class ShardWriter:
    """Buffers rows per (block, split) and writes a shard each time a buffer reaches `shard_tokens` rows."""

    def __init__(self, root: Path, rank: int, shard_tokens: int, dtype: torch.dtype):
        self.root, self.rank, self.shard_tokens, self.dtype = root, rank, shard_tokens, dtype
        self.buffers: dict[tuple[int, str], list[Tensor]] = {}
        self.counts: dict[tuple[int, str], int] = {}
        self.next_index: dict[tuple[int, str], int] = {}

    def add(self, block: int, split: str, rows: Tensor) -> None:
        key = (block, split)
        self.buffers.setdefault(key, []).append(rows.detach().to("cpu", self.dtype))
        self.counts[key] = self.counts.get(key, 0) + rows.shape[0]
        if sum(t.shape[0] for t in self.buffers[key]) >= self.shard_tokens:
            self._flush(key)

    def _flush(self, key: tuple[int, str]) -> None:
        rows = self.buffers.pop(key, [])
        if not rows:
            return
        block, split = key
        folder = self.root / f"block_{block}" / split
        folder.mkdir(parents=True, exist_ok=True)
        index = self.next_index.get(key, 0)
        self.next_index[key] = index + 1
        save_file(
            {ACTIVATION_KEY: torch.cat(rows).contiguous()}, str(folder / f"r{self.rank:03d}_{index:06d}.safetensors")
        )

    def close(self) -> dict[tuple[int, str], int]:
        for key in list(self.buffers):
            self._flush(key)
        return dict(self.counts)


def shard_files(root: Path, block: int, split: str) -> list[Path]:
    return sorted((root / f"block_{block}" / split).glob("*.safetensors"))


def read_shard(path: Path) -> Tensor:
    return load_file(str(path))[ACTIVATION_KEY].to(torch.float32)


def count_rows(files: Sequence[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            total += handle.get_slice(ACTIVATION_KEY).get_shape()[0]
    return total


def iterate_rows(files: Sequence[Path], chunk: int) -> Iterator[Tensor]:
    """All rows of the shards in order, in chunks of at most `chunk` rows (float32)."""
    for path in files:
        rows = read_shard(path)
        for start in range(0, rows.shape[0], chunk):
            yield rows[start : start + chunk]


def shuffled_batches(
    files: Sequence[Path], batch_size: int, seed: int, epoch: int, buffer_shards: int
) -> Iterator[Tensor]:
    """
    The batches of one epoch: shard order and rows within groups of `buffer_shards` shards are permuted by a
    generator seeded from `(seed, epoch)`, leftover rows carry over into the next group, and the last incomplete
    batch is dropped. A pure function of its arguments, so a resumed run replays exactly the same batches.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(files), generator=gen).tolist()
    carry = torch.empty(0)
    for start in range(0, len(order), buffer_shards):
        group = [read_shard(files[i]) for i in order[start : start + buffer_shards]]
        rows = torch.cat(([carry] if carry.numel() else []) + group)
        rows = rows[torch.randperm(rows.shape[0], generator=gen)]
        n_full = rows.shape[0] // batch_size
        for b in range(n_full):
            yield rows[b * batch_size : (b + 1) * batch_size]
        carry = rows[n_full * batch_size :]


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return math.floor(n_rows / batch_size)
