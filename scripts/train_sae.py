"""
Train sparse autoencoders for the blocks of a ViT / CLIP model (see `hf_fga.sae.training`).

    python scripts/train_sae.py --model_name_or_path path/to/vit --dataset_name_or_path path/to/dataset \
        --output_dir saes --blocks 3 4 5 --expansion_factor 16 --k 32
    accelerate launch --multi_gpu --num_processes 2 scripts/train_sae.py ...   # data-parallel over processes

On a CPU-only machine use `--multi_gpu` too (the harness then runs gloo on CPU): `accelerate launch --cpu` always
starts a single process.
"""

from __future__ import annotations

import os
import shlex
import sys

from transformers import HfArgumentParser

from hf_fga.sae.training import SaeTrainingArguments, train_saes


def command_line() -> str:
    """The command that is running, as recorded in the model cards."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"accelerate launch --multi_gpu --num_processes {world}" if world > 1 else "python"
    return f"{launcher} {shlex.join(sys.argv)}"


def main() -> None:
    (args,) = HfArgumentParser(SaeTrainingArguments).parse_args_into_dataclasses()
    if args.command is None:
        args.command = command_line()
    saes = train_saes(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"Saved SAEs for blocks {sorted(saes)} to {args.output_dir} (quality table: {args.output_dir}/metrics.md)"
        )


if __name__ == "__main__":
    main()
