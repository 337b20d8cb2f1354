"""
Resumable training checkpoints without pickle: every tensor goes into one safetensors file, everything else into a JSON
file beside it, so that resuming never unpickles anything.

A checkpoint is a folder holding `tensors.safetensors` and `state.json`; [`save_training_state`] writes it atomically
(into a temporary folder that then replaces the old one) and [`load_training_state`] restores the model, the optimizer,
the scheduler and the RNG states (Python, NumPy, torch CPU, torch CUDA when saved, and a `torch.Generator`) exactly.
With `max_shard_bytes` the tensors are split over `tensors-00001-of-0000N.safetensors` files of at most that size
each (a checkpoint that has to be committed to a repository with a per-file size limit, so that a long CPU run can
resume in a fresh checkout); loading reads either layout.

```python
>>> save_training_state(  # doctest: +SKIP
...     "runs/x/last", model=model, optimizer=optimizer, scheduler=scheduler, generator=gen,
...     extra={"epoch": 3}, extra_tensors={"order": order})
>>> extra, extra_tensors = load_training_state("runs/x/last", model=model, optimizer=optimizer,  # doctest: +SKIP
...                                            scheduler=scheduler, generator=gen)

```
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSORS_NAME = "tensors.safetensors"
SHARD_NAME = "tensors-{index:05d}-of-{count:05d}.safetensors"
STATE_NAME = "state.json"
FORMAT = "hf_fga.training_state"
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def _split(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` with every tensor moved to `tensors` (replaced by a reference) and tuples tagged, for JSON."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(value, np.ndarray):
        return _split(torch.from_numpy(np.ascontiguousarray(value)), prefix, tensors)
    if isinstance(value, dict):
        if not all(isinstance(key, str | int) for key in value):
            raise TypeError(f"Only str or int keys can be saved, got {list(value)} at {prefix!r}.")
        # int keys (optimizer states are keyed by parameter index) are kept as ints through a tagged list of pairs
        if any(isinstance(key, int) for key in value):
            return {"__int_keys__": [[key, _split(v, f"{prefix}.{key}", tensors)] for key, v in value.items()]}
        return {key: _split(v, f"{prefix}.{key}", tensors) for key, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(
        f"Cannot save a {type(value).__name__} at {prefix!r} without pickle: pass tensors, arrays, numbers, strings, "
        "lists, tuples or dicts."
    )


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(_join(v, tensors) for v in value[_TUPLE])
        if set(value) == {"__int_keys__"}:
            return {key: _join(v, tensors) for key, v in value["__int_keys__"]}
        return {key: _join(v, tensors) for key, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def rng_states(generator: torch.Generator | None = None) -> dict:
    """The Python, NumPy, torch (CPU and, when initialised, CUDA) RNG states, and `generator`'s."""
    states = {
        "python": random.getstate(),
        "numpy": tuple(
            torch.from_numpy(v.astype(np.int64)) if isinstance(v, np.ndarray) else v for v in np.random.get_state()
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    if generator is not None:
        states["generator"] = generator.get_state()
    return states


def set_rng_states(states: dict, generator: torch.Generator | None = None) -> None:
    """Restore what [`rng_states`] returned (the CUDA states only when CUDA is available)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None:
        if "generator" not in states:
            raise ValueError("The checkpoint holds no generator state: it was saved without `generator`.")
        generator.set_state(states["generator"])


def save_training_state(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """
    Write a checkpoint folder (`tensors.safetensors` + `state.json`), atomically.

    Args:
        folder (`str` or `Path`): the checkpoint folder; replaced if it exists.
        model (`torch.nn.Module`): its `state_dict()` is saved.
        optimizer (`torch.optim.Optimizer`, *optional*): its `state_dict()` is saved.
        scheduler (*optional*): an LR scheduler; its `state_dict()` is saved (must hold no callables).
        generator (`torch.Generator`, *optional*): saved with the global RNG states.
        extra (`dict`, *optional*): JSON-able values (epoch, step, history, ...).
        extra_tensors (`dict[str, torch.Tensor]`, *optional*): more tensors (e.g. the epoch's sample order).
        max_shard_bytes (`int`, *optional*): split the tensors over numbered files of at most this many bytes of
            tensor data each (a single tensor larger than that gets a file of its own); one file when not given.

    Returns:
        `Path`: the folder.
    """
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    state = {
        "format": FORMAT,
        "model": _split(model.state_dict(), "model", tensors),
        "optimizer": _split(optimizer.state_dict(), "optimizer", tensors) if optimizer is not None else None,
        "scheduler": _split(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
        "rng": _split(rng_states(generator), "rng", tensors),
        "extra": _split(extra or {}, "extra", tensors),
        "extra_tensors": _split(dict(extra_tensors or {}), "extra_tensors", tensors),
    }
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if max_shard_bytes is None:
        save_file(tensors, str(tmp / TENSORS_NAME))
    else:
        shards = _shards(tensors, max_shard_bytes)
        for index, shard in enumerate(shards, start=1):
            save_file(shard, str(tmp / SHARD_NAME.format(index=index, count=len(shards))))
    (tmp / STATE_NAME).write_text(json.dumps(state) + "\n")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """`tensors` in order, cut into groups of at most `max_bytes` of data (one oversized tensor alone)."""
    if max_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_bytes}.")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _tensor_files(folder: Path) -> list[Path]:
    """The checkpoint's tensor file(s): `tensors.safetensors`, or every shard of one complete numbered set."""
    if (folder / TENSORS_NAME).is_file():
        return [folder / TENSORS_NAME]
    shards = sorted(folder.glob("tensors-*-of-*.safetensors"))
    if not shards:
        return []
    count = int(shards[0].stem.rsplit("-of-", 1)[1])
    expected = [folder / SHARD_NAME.format(index=i, count=count) for i in range(1, count + 1)]
    if shards != expected:
        missing = sorted({p.name for p in expected} - {p.name for p in shards})
        raise FileNotFoundError(
            f"{folder} holds an incomplete or mixed set of tensor shards (missing {missing or 'none'}, found "
            f"{[p.name for p in shards]}): restore the whole checkpoint folder."
        )
    return expected


def load_training_state(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """
    Restore a checkpoint written by [`save_training_state`] into the given objects (no pickle involved).

    Returns:
        `tuple[dict, dict[str, torch.Tensor]]`: the saved `extra` and `extra_tensors`.
    """
    folder = Path(folder)
    files = _tensor_files(folder)
    if not (folder / STATE_NAME).is_file() or not files:
        raise FileNotFoundError(
            f"{folder} is not a training checkpoint: it needs {STATE_NAME} and {TENSORS_NAME} (or its numbered "
            "shards), written by save_training_state."
        )
    state = json.loads((folder / STATE_NAME).read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{folder / STATE_NAME} has format {state.get('format')!r}, expected {FORMAT!r}.")
    tensors = {name: tensor for path in files for name, tensor in load_file(str(path)).items()}
    model.load_state_dict(_join(state["model"], tensors))
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None:
            if state[name] is None:
                raise ValueError(f"The checkpoint {folder} was saved without a {name}.")
            target.load_state_dict(_join(state[name], tensors))
    set_rng_states(_join(state["rng"], tensors), generator)
    return _join(state["extra"], tensors), _join(state["extra_tensors"], tensors)


__all__ = ["load_training_state", "rng_states", "save_training_state", "set_rng_states"]
