"""Merge SAE sets: the blocks of `--base`, with the blocks of each `--override` set replacing or adding to them.

Copies the block folders (config, weights, model card) as they are and writes a merged `sae_set.json` (blocks,
subfolders, hook points and per-block metrics taken from the set each block comes from). Used for the bundled set,
whose last block was retrained narrower (see docs/results/classifier.md).

Usage:
    python scripts/merge_sae_sets.py --base runs/saes_v3 --override runs/saes_b5 --output hf_fga/bundled/saes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from hf_fga.sae.sae_set import SET_INDEX_NAME, block_folder

PER_BLOCK_KEYS = ("hook_points", "metrics", "subfolders")


def merge(base: Path, overrides: list[Path], output: Path) -> dict:
    index = json.loads((base / SET_INDEX_NAME).read_text())
    sources = {block: base for block in index["blocks"]}
    for other in overrides:
        extra = json.loads((other / SET_INDEX_NAME).read_text())
        if extra.get("base_model_name_or_path") != index.get("base_model_name_or_path"):
            raise ValueError(
                f"{other} was trained on {extra.get('base_model_name_or_path')!r}, {base} on "
                f"{index.get('base_model_name_or_path')!r}: only sets of the same model can be merged."
            )
        for block in extra["blocks"]:
            sources[block] = other
            for key in PER_BLOCK_KEYS:
                if key in extra:
                    index.setdefault(key, {})[str(block)] = extra[key][str(block)]
    index["blocks"] = sorted(sources)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for block, source in sorted(sources.items()):
        shutil.copytree(source / block_folder(block), output / block_folder(block))
    (output / SET_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    index = merge(Path(args.base), [Path(p) for p in args.override], Path(args.output))
    print(f"wrote an SAE set of blocks {index['blocks']} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
