"""What a trained SAE's config records about its training (`training_info`), from which its model card is filled."""

from __future__ import annotations

from dataclasses import asdict

from .model_card import QUALITY_FIELDS
from .training_arguments import SaeTrainingArguments


def default_command(args: SaeTrainingArguments) -> str:
    if args.command:
        return args.command
    fields_ = {k: v for k, v in asdict(args).items() if k != "command"}
    return f'python -c "from hf_fga.sae.training import *; train_saes(SaeTrainingArguments(**{fields_!r}))"'


def training_info(args: SaeTrainingArguments, metrics: dict) -> dict:
    return {
        "dataset": args.dataset_label or args.dataset_name_or_path or "an in-memory dataset",
        "dataset_split": args.dataset_split,
        "training_tokens": metrics["training_tokens"],
        "unique_training_tokens": metrics["unique_training_tokens"],
        "steps": metrics["steps"],
        "eval_tokens": metrics["eval_tokens"],
        "seed": args.seed,
        "command": default_command(args),
        "license": args.license,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "aux_k": args.aux_k,
        "aux_coefficient": args.aux_coefficient,
        "b_dec_init": args.b_dec_init,
        "metrics": {key: metrics[key] for key, _ in QUALITY_FIELDS},
    }
