"""The settings of SAE training ([`train_saes`], `scripts/train_sae.py`), as an `HfArgumentParser` dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .activations import DTYPES
from .configuration_sae import ACTIVATIONS, HOOK_POINTS, TOKEN_SCOPES

B_DEC_INITS = ("geometric_median", "mean", "zeros")
TRAIN_NORMALIZATIONS = ("none", "constant_scale")


@dataclass
class SaeTrainingArguments:
    """Arguments of [`train_saes`] and `scripts/train_sae.py` (parsed with `HfArgumentParser`)."""

    model_name_or_path: str = field(metadata={"help": "ViTForImageClassification or CLIPModel folder / Hub id."})
    output_dir: str = field(metadata={"help": "Where the SAE set, metrics, checkpoints and activation cache go."})
    dataset_name_or_path: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset (folder or Hub id); not needed when one is passed in."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to harvest."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    max_images: int | None = field(default=None, metadata={"help": "Use only the first N images."})
    blocks: list[int] | None = field(default=None, metadata={"help": "0-indexed blocks (default: all)."})
    hook_point: str = field(default="resid_post", metadata={"help": "resid_pre or resid_post."})
    token_scope: str = field(default="patches", metadata={"help": "patches, cls or all."})
    activation: str = field(default="topk", metadata={"help": "topk or relu."})
    expansion_factor: int = field(default=16, metadata={"help": "d_sae = expansion_factor * d_in."})
    k: int = field(default=32, metadata={"help": "Active features per token (Top-K)."})
    l1_coefficient: float = field(default=1e-3, metadata={"help": "λ of the L1 penalty (ReLU)."})
    normalize_activations: str = field(default="constant_scale", metadata={"help": "none or constant_scale."})
    b_dec_init: str = field(default="geometric_median", metadata={"help": "geometric_median, mean or zeros."})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.999)
    warmup_steps: int = field(default=500, metadata={"help": "Linear warm-up steps (at most a fifth of the run)."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training tokens."})
    batch_size: int = field(default=4096, metadata={"help": "Tokens per step (global, over all processes)."})
    aux_k: int | None = field(default=None, metadata={"help": "k of the AuxK loss (default d_in // 2)."})
    aux_coefficient: float = field(default=1 / 32, metadata={"help": "Weight of the AuxK loss; 0 disables it."})
    dead_tokens: int = field(
        default=200_000, metadata={"help": "A feature is dead in training after this many tokens without firing."}
    )
    eval_fraction: float = field(default=0.05, metadata={"help": "Fraction of images held out for evaluation."})
    max_eval_tokens: int = field(default=200_000, metadata={"help": "Cap on held-out tokens evaluated per block."})
    harvest_batch_size: int = field(default=32, metadata={"help": "Images per forward pass while harvesting."})
    shard_tokens: int = field(default=65_536, metadata={"help": "Rows per activation shard on disk."})
    buffer_shards: int = field(default=4, metadata={"help": "Shards shuffled together while training."})
    cache_dtype: str = field(default="float16", metadata={"help": "float16, bfloat16 or float32 shards."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Activation cache (default output_dir/activations)."}
    )
    keep_cache: bool = field(default=True, metadata={"help": "Keep the activation shards after training."})
    save_dtype: str = field(default="float32", metadata={"help": "dtype of the saved SAE weights."})
    checkpoint_every: int = field(default=500, metadata={"help": "Steps between checkpoints."})
    log_every: int = field(default=10, metadata={"help": "Steps between progress-bar updates."})
    seed: int = field(default=0)
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for this run (e.g. 1 on a machine shared with others)."}
    )
    dataset_label: str | None = field(default=None, metadata={"help": "Dataset name for the model card."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the model cards."})
    command: str | None = field(default=None, metadata={"help": "Recorded in the cards (set by the script)."})

    def __post_init__(self) -> None:
        choices = {
            "hook_point": HOOK_POINTS,
            "token_scope": TOKEN_SCOPES,
            "activation": ACTIVATIONS,
            "normalize_activations": TRAIN_NORMALIZATIONS,
            "b_dec_init": B_DEC_INITS,
            "cache_dtype": tuple(DTYPES),
            "save_dtype": tuple(DTYPES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"SaeTrainingArguments.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}."
                )
        positive = (
            "expansion_factor",
            "k",
            "batch_size",
            "harvest_batch_size",
            "shard_tokens",
            "buffer_shards",
            "checkpoint_every",
            "log_every",
            "dead_tokens",
            "max_eval_tokens",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SaeTrainingArguments.{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"SaeTrainingArguments.eval_fraction must be in (0, 1), got {self.eval_fraction!r}.")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"SaeTrainingArguments.epochs and lr must be > 0, got {self.epochs!r} and {self.lr!r}.")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "activations"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"
