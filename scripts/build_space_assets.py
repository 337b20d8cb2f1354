"""
Precompute the Space's feature prototypes (method.md §7): for every feature of every SAE of a bundled domain's set,
its top activating images of a reference split with the patches where it fires, written to `spaces/assets/` (another
domain than chest X-ray: `spaces/assets/<its bundled subfolder>/`, where the Space looks for them) as small JPEG
thumbnails, a JSON index and one compressed array file (see `hf_fga/prototypes.py`).

The reference split is the domain model's validation split (its `splits.json`; for chest X-ray: patients carved out
of the train split, named by `split_of`; without `split_of`: the dataset's own validation split), never the test
split. Only images that are some feature's prototype get a thumbnail.
Then every prototype's iERF for its feature (CaFE, method.md §9: gradient × input of the feature's activation at the
prototype's peak patch), from the full-size image, quantised to a small uint8 map (`prototype_ierfs.npz`), for the
Space's "show the prototypes' iERFs" toggle.

    python scripts/build_space_assets.py                       # bundled model and SAEs -> spaces/assets
    python scripts/build_space_assets.py --domain breast_ultrasound   # -> spaces/assets/breast_ultrasound
    python scripts/build_space_assets.py --limit 64 --output /tmp/assets   # a quick trial
    python scripts/build_space_assets.py --ierfs-only          # only the prototypes' iERFs, for the index there
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import pipeline

import hf_fga  # noqa: F401  (registers the pipeline task)
from hf_fga import bundled
from hf_fga.images import load_image
from hf_fga.pipelines import TASK
from hf_fga.prototypes import (
    ARRAYS_NAME,
    IERF_METHOD,
    IERFS_NAME,
    INDEX_NAME,
    THUMBS_DIR,
    PrototypeIndex,
    compute_prototype_ierfs,
    compute_prototypes,
    sae_fingerprint,
    save_prototype_ierfs,
    write_thumbnails,
)

ROOT = Path(__file__).resolve().parents[1]

SHARED_DATA = ROOT.parent / "shared" / "data"


def default_output(domain: str) -> Path:
    """Where the Space reads a domain's prototypes (`spaces/app.py`'s `domain_assets`)."""
    return ROOT / "spaces" / "assets" / bundled.domain(domain).subfolder


def reference_split(data: Path, limit: int | None, domain: str = bundled.DEFAULT_DOMAIN):
    """
    The validation images of the domain's `splits.json`, in file-name order: file names within the split it names
    as `split_of` (chest X-ray: carved out of train, by patient), else the dataset's own `validation` split.
    """
    from datasets import load_dataset

    path = bundled.splits_path(domain)
    splits = json.loads(path.read_text())
    wanted = set(splits["validation_file_names"])
    source = load_dataset(str(data), split=splits.get("split_of", "validation"))
    rows = [i for i, name in enumerate(source["file_name"]) if name in wanted]
    rows.sort(key=lambda i: source[i]["file_name"])
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise SystemExit(f"No validation image of {path} was found in {data}.")
    how = "by patient id" if "split_of" in splits else "the dataset's validation split"
    return source.select(rows), f"{splits['dataset']} validation split ({len(wanted)} images, {how})"


def write_ierfs(pipe, dataset, rows: list[int], tables, output: Path, preprocess) -> None:
    """The prototypes' iERFs (`rows[i]` is the dataset row of prototype image id i), written next to the index."""
    begin = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"iERFs: {done}/{total} images, {time.perf_counter() - begin:.0f} s", flush=True)

    def load_pixels(image: int) -> torch.Tensor:
        return preprocess([load_image(dataset[rows[image]]["image"])])

    maps = compute_prototype_ierfs(pipe.model, pipe.saes, tables, load_pixels, IERF_METHOD, progress)
    path = save_prototype_ierfs(output, maps, tables, pipe.saes, IERF_METHOD)
    print(f"Wrote the prototypes' iERFs to {path} ({path.stat().st_size / 2**20:.2f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--domain",
        default=bundled.DEFAULT_DOMAIN,
        choices=bundled.list_domains(),
        help="the bundled domain: its model, SAEs, validation split, dataset and Space asset folder are the defaults",
    )
    parser.add_argument("--data", type=Path, default=None, help="the dataset folder (default: shared/data/<its name>)")
    parser.add_argument("--model", default=None, help="model folder (default: the domain's bundled classifier)")
    parser.add_argument("--sae", default=None, help="SAE set folder (default: the domain's bundled SAEs)")
    parser.add_argument("--name", default="bundled", help="the model name the app matches the assets against")
    parser.add_argument("--output", type=Path, default=None, help="default: where the Space reads the domain's")
    parser.add_argument("--top", type=int, default=10, help="prototypes per feature (the thesis: 10)")
    parser.add_argument("--thumbnail-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N reference images")
    parser.add_argument(
        "--ierfs-only",
        action="store_true",
        help="only compute the prototypes' iERFs for the prototype index already in --output",
    )
    parser.add_argument("--skip-ierfs", action="store_true", help="do not compute the prototypes' iERFs")
    args = parser.parse_args(argv)
    args.data = args.data or SHARED_DATA / bundled.domain(args.domain).dataset
    args.output = args.output or default_output(args.domain)

    torch.set_grad_enabled(False)
    model, sae = args.model or str(bundled.model_dir(args.domain)), args.sae or str(bundled.sae_dir(args.domain))
    pipe = pipeline(TASK, model=model, sae=sae)
    config = pipe.model.config
    grid = (config.image_size // config.patch_size,) * 2
    dataset, description = reference_split(args.data, args.limit, args.domain)
    names = dataset.features["label"].names if hasattr(dataset.features["label"], "names") else None
    print(f"{len(dataset)} reference images, SAEs for blocks {sorted(pipe.saes)}, grid {grid}")

    def preprocess(images) -> torch.Tensor:
        return pipe.image_processor(images=images, return_tensors="pt")["pixel_values"].to(pipe.model.dtype)

    def batches():
        for start in range(0, len(dataset), args.batch_size):
            yield preprocess([load_image(image) for image in dataset[start : start + args.batch_size]["image"]])

    if args.ierfs_only:
        index = PrototypeIndex.load(args.output)
        if not index.matches(pipe.saes):
            raise SystemExit(f"The prototypes in {args.output} are for other SAEs: rebuild all, no --ierfs-only.")
        row = {name: i for i, name in enumerate(dataset["file_name"])}
        missing = [e["file_name"] for e in index.meta["images"] if e.get("file_name") not in row]
        if missing:
            raise SystemExit(f"{len(missing)} prototype images (e.g. {missing[0]}) are not in the reference split.")
        used = [row[entry["file_name"]] for entry in index.meta["images"]]
        write_ierfs(pipe, dataset, used, index.tables, args.output, preprocess)
        return 0

    begin = time.perf_counter()
    tables = compute_prototypes(pipe.model, pipe.saes, batches(), grid, top=args.top)
    print(f"Activations of {len(dataset)} images: {time.perf_counter() - begin:.1f} s")

    used = sorted({int(i) for table in tables.values() for i in table.images.ravel() if i >= 0})
    remap = np.full(len(dataset), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    for table in tables.values():
        table.images = np.where(table.images >= 0, remap[np.maximum(table.images, 0)], -1)
    for stale in (args.output / THUMBS_DIR, args.output / INDEX_NAME, args.output / ARRAYS_NAME):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    files = write_thumbnails((load_image(dataset[i]["image"]) for i in used), args.output, args.thumbnail_size)
    records = [
        {
            "file": file,
            "file_name": dataset[i]["file_name"],
            "label": names[dataset[i]["label"]] if names else config.id2label[int(dataset[i]["label"])],
        }
        for file, i in zip(files, used, strict=True)
    ]
    meta = {
        "model": args.name,
        "reference_split": description,
        "grid": list(grid),
        "thumbnail_size": args.thumbnail_size,
        "top": args.top,
        "d_sae": {str(b): sae.config.d_sae for b, sae in pipe.saes.items()},
        "sae_fingerprints": {str(b): sae_fingerprint(sae) for b, sae in pipe.saes.items()},
        "hook_points": {str(b): sae.config.hook_point for b, sae in pipe.saes.items()},
        "images": records,
    }
    PrototypeIndex(args.output, meta, tables).save()
    stale = args.output / IERFS_NAME
    if stale.exists():
        stale.unlink()
    if not args.skip_ierfs:
        write_ierfs(pipe, dataset, used, tables, args.output, preprocess)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"Wrote {len(used)} thumbnails and the index to {args.output} ({size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
