"""
Train sparse autoencoders for the blocks of a ViT / CLIP model (see `hf_fga.sae.training`).

    python scripts/train_sae.py --model_name_or_path path/to/vit --dataset_name_or_path path/to/dataset \
        --output_dir saes --blocks 3 4 5 --expansion_factor 16 --k 32
    accelerate launch scripts/train_sae.py ...   # data-parallel over processes
"""

from __future__ import annotations

import os
import shlex
import sys

from transformers import HfArgumentParser

from hf_fga.sae.training import SaeTrainingArguments, train_saes


def command_line() -> str:
    """The command that is running, as recorded in the model cards."""
    launched = any(name.startswith("ACCELERATE_") for name in os.environ) and "LOCAL_RANK" in os.environ
    return f"{'accelerate launch' if launched else 'python'} {shlex.join(sys.argv)}"


def main() -> None:
    (args,) = HfArgumentParser(SaeTrainingArguments).parse_args_into_dataclasses()
    if args.command is None:
        args.command = command_line()
    saes = train_saes(args)
    print(f"Saved SAEs for blocks {sorted(saes)} to {args.output_dir} (quality table: {args.output_dir}/metrics.md)")


if __name__ == "__main__":
    main()
