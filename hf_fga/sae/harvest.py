"""
Harvesting SAE training data: one pass over the images writes the residual activations of every requested block, for
the training and the held-out images, as shards on disk (reused by a resumed run with the same settings).
"""

from __future__ import annotations

import json
import shutil

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..introspection import vision_config
from .activations import DTYPES, ShardWriter, residual_activations
from .training_arguments import SaeTrainingArguments

HARVEST_META = "harvest.json"


def dataset_and_split(args: SaeTrainingArguments, dataset, world: int):
    if dataset is None:
        if args.dataset_name_or_path is None:
            raise ValueError("Pass a dataset, or set SaeTrainingArguments.dataset_name_or_path.")
        from datasets import load_dataset

        dataset = load_dataset(args.dataset_name_or_path, split=args.dataset_split)
    if args.image_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no column {args.image_column!r} (columns: {dataset.column_names}): set image_column."
        )
    n = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    n_eval = max(1, round(args.eval_fraction * n))
    if n - n_eval < world:
        raise ValueError(f"{n} images are too few: need at least {n_eval + world} for training and held-out tokens.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)).tolist()
    return dataset, {"train": sorted(perm[n_eval:]), "eval": sorted(perm[:n_eval])}


def pixel_values(dataset, indices: list[int], column: str, processor) -> Tensor:
    images = [img.convert("RGB") if hasattr(img, "convert") else img for img in dataset[indices][column]]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def harvest(args: SaeTrainingArguments, model, dataset, processor, accelerator) -> dict:
    """
    Write the activations of all requested blocks, for train and held-out images, from one pass over the images.
    Reuses a finished cache with the same settings (`harvest.json`), so a resumed run does not harvest again.
    """
    root = args.cache_path
    blocks = args.blocks
    dataset, splits = dataset_and_split(args, dataset, accelerator.num_processes)
    settings = {
        "model": args.model_name_or_path,
        "dataset": args.dataset_name_or_path,
        "split": args.dataset_split,
        "n_images": {s: len(v) for s, v in splits.items()},
        "blocks": blocks,
        "hook_point": args.hook_point,
        "token_scope": args.token_scope,
        "cache_dtype": args.cache_dtype,
        "seed": args.seed,
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "max_images": args.max_images,
    }
    meta_file = root / HARVEST_META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("settings") == settings:
            return meta
    if accelerator.is_main_process:  # an interrupted harvest leaves partial shards: start the cache afresh
        for block in blocks:
            shutil.rmtree(root / f"block_{block}", ignore_errors=True)
    accelerator.wait_for_everyone()
    writer = ShardWriter(root, accelerator.process_index, args.shard_tokens, DTYPES[args.cache_dtype])
    device = accelerator.device
    model.to(device)
    for split, indices in splits.items():
        mine = indices[accelerator.process_index :: accelerator.num_processes]
        batches = range(0, len(mine), args.harvest_batch_size)
        for start in tqdm(batches, desc=f"harvest {split}", disable=not accelerator.is_main_process):
            pixels = pixel_values(dataset, mine[start : start + args.harvest_batch_size], args.image_column, processor)
            for block, rows in residual_activations(
                model, pixels.to(device, model.dtype), blocks, args.hook_point, args.token_scope
            ).items():
                writer.add(block, split, rows)
    writer.close()
    accelerator.wait_for_everyone()
    meta = {"settings": settings, "d_in": vision_config(model).hidden_size}
    if accelerator.is_main_process:
        meta_file.write_text(json.dumps(meta, indent=2))
    accelerator.wait_for_everyone()
    return meta
