"""
Training sparse autoencoders on the residual stream of any `ViTForImageClassification` / `CLIPModel`.

    harvest (one pass, all blocks)  →  shards on disk  →  per block: init, Adam + cosine/warm-up, eval  →  SAE set

Method (method.md §4, Gao et al. 2024 "Scaling and evaluating sparse autoencoders" for what the spec leaves open):

- Input normalisation `constant_scale` (default): x is multiplied by `sqrt(d_in) / E‖x‖` (estimated on training
  tokens) so that one learning rate suits every block; the factor is stored in the SAE config and applied by
  `encode` / `decode`, so the saved SAE reads raw residuals.
- Initialisation: unit-norm decoder rows, encoder = decoder transpose, `b_dec` = mean or geometric median (Weiszfeld)
  of a sample of training tokens, `b_enc` = 0.
- Loss: mean over tokens of ‖x − x̂‖² (+ λ‖f‖₁ for ReLU SAEs) + `aux_coefficient` · AuxK. AuxK (Gao et al. §A.2):
  the residual e = x − x̂ (detached) is reconstructed from the top-`aux_k` pre-activations among the dead features
  (those that did not fire in the last `dead_tokens` training tokens), without the decoder bias; the term
  ‖e − ê‖² is scaled by min(1, n_dead / aux_k) as in SAELens. The same AuxK-style term revives dead ReLU features.
- After each backward: the gradient component of W_dec parallel to its rows is removed; after each step the rows
  are renormalised to unit norm.
- Top-K forward: `topk` on the pre-activations, then ReLU on the k values; the decoder runs on the active set only
  (`embedding_bag`), see `scripts/bench_sae_training.py` for the measurement against the dense decoder.
- Data parallel (`accelerate launch`): every process harvests its share of the images; in training every process
  takes the same global batch order and its own rows of each batch, gradients are averaged with an all-reduce.
- Checkpoints (`checkpoint_every` steps) hold the SAE, Adam, scheduler, RNG, dead-feature counters and the data
  position (block, step); a rerun with the same `output_dir` resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .activations import (
    DTYPES,
    ShardWriter,
    count_rows,
    iterate_rows,
    residual_activations,
    shard_files,
    shuffled_batches,
    steps_per_epoch,
    vision_config,
)
from .configuration_sae import ACTIVATIONS, HOOK_POINTS, TOKEN_SCOPES, SparseAutoencoderConfig
from .model_card import QUALITY_FIELDS
from .modeling_sae import SparseAutoencoder
from .sae_set import save_sae_set
from .training_ops import encoder_pre_activations, sparse_decode, topk_pre_activations

CHECKPOINT_NAME = "checkpoint.pt"
HARVEST_META = "harvest.json"
B_DEC_INITS = ("geometric_median", "mean", "zeros")
TRAIN_NORMALIZATIONS = ("none", "constant_scale")
INIT_SAMPLE_TOKENS = 65_536


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


# ---------------------------------------------------------------------------------------------- model / data loading
def load_vision_model(name_or_path: str):
    """A `CLIPModel` for CLIP checkpoints, otherwise `AutoModelForImageClassification`, in eval mode."""
    from transformers import AutoConfig, AutoModelForImageClassification, CLIPModel

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == "clip":
        return CLIPModel.from_pretrained(name_or_path).eval()
    return AutoModelForImageClassification.from_pretrained(name_or_path).eval()


def _dataset_and_split(args: SaeTrainingArguments, dataset, world: int):
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


def _pixel_values(dataset, indices: list[int], column: str, processor) -> Tensor:
    images = [img.convert("RGB") if hasattr(img, "convert") else img for img in dataset[indices][column]]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def harvest(args: SaeTrainingArguments, model, dataset, processor, accelerator) -> dict:
    """
    Write the activations of all requested blocks, for train and held-out images, from one pass over the images.
    Reuses a finished cache with the same settings (`harvest.json`), so a resumed run does not harvest again.
    """
    root = args.cache_path
    blocks = args.blocks
    dataset, splits = _dataset_and_split(args, dataset, accelerator.num_processes)
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
            pixels = _pixel_values(
                dataset, mine[start : start + args.harvest_batch_size], args.image_column, processor
            )
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


# ------------------------------------------------------------------------------------------------- SAE training math
def geometric_median(points: Tensor, iterations: int = 64, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's algorithm in float64: the point minimising the sum of Euclidean distances to `points (n, d)`."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=-1).clamp_min(eps)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= 1e-7 * median.norm().clamp_min(1.0):
            median = updated
            break
        median = updated
    return median.float()


@dataclass
class StepStats:
    loss: Tensor
    mse: Tensor
    sum_sq_err: Tensor
    sum_sq_centred: Tensor
    l0: Tensor
    fired: Tensor


def sae_training_loss(sae: SparseAutoencoder, x: Tensor, dead: Tensor | None, aux_k: int, aux_coefficient: float):
    """
    Loss and statistics of one batch `x (B, d_in)` already in the SAE's normalised space (method.md §4 + AuxK).

    Top-K: `topk` on the pre-activations and ReLU on the k values; the decoder sums only the active rows
    (`embedding_bag`) and the encoder backward touches only the selected entries (`training_ops`). ReLU: dense
    decoder and λ‖f‖₁. `dead (d_sae,)` marks the features the AuxK term may use (None or all False: no AuxK).
    """
    config = sae.config
    n_dead = int(dead.sum()) if dead is not None and aux_coefficient > 0 else 0
    k_aux = min(aux_k, n_dead)
    aux_hat = None
    if config.activation == "topk":
        values, indices, aux_values, aux_indices = topk_pre_activations(
            x, sae.W_enc, sae.b_enc, sae.b_dec, config.k, dead if k_aux else None, k_aux
        )
        values = F.relu(values)
        x_hat = sparse_decode(values, indices, sae.W_dec) + sae.b_dec
        active = values > 0
        fired = torch.zeros(config.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[active]] = True
        l0 = active.sum(-1).float().mean()
        sparsity = x.new_zeros(())
        if k_aux:
            aux_hat = sparse_decode(F.relu(aux_values), aux_indices, sae.W_dec)
    else:
        pre = encoder_pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec)
        f = F.relu(pre)
        x_hat = f @ sae.W_dec + sae.b_dec
        fired = (f > 0).any(0)
        l0 = (f > 0).sum(-1).float().mean()
        sparsity = config.l1_coefficient * f.sum(-1).mean()
        if k_aux:
            aux_values, aux_indices = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
            aux_hat = sparse_decode(F.relu(aux_values), aux_indices, sae.W_dec)
    err = x - x_hat
    sum_sq_err = err.pow(2).sum()
    mse = sum_sq_err / x.shape[0]
    loss = mse + sparsity
    if aux_hat is not None:
        aux = (err.detach() - aux_hat).pow(2).sum(-1).mean()
        loss = loss + aux_coefficient * min(1.0, n_dead / aux_k) * aux
    centred = x - x.mean(0)
    return StepStats(
        loss=loss,
        mse=mse.detach(),
        sum_sq_err=sum_sq_err.detach(),
        sum_sq_centred=centred.pow(2).sum(),
        l0=l0.detach(),
        fired=fired,
    )


@torch.no_grad()
def project_decoder_gradient(sae: SparseAutoencoder) -> None:
    """Remove the component of each W_dec row's gradient parallel to the row (the rows stay on the unit sphere)."""
    if sae.W_dec.grad is not None:
        w = sae.W_dec
        sae.W_dec.grad -= (sae.W_dec.grad * w).sum(-1, keepdim=True) * w


@torch.no_grad()
def normalize_decoder(sae: SparseAutoencoder) -> None:
    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def sae_quality(sae: SparseAutoencoder, batches: Iterable[Tensor], max_tokens: int | None = None) -> dict[str, float]:
    """
    Quality figures of method.md §4 on raw (un-normalised) tokens, given as `(rows, d_in)` batches, through the SAE's
    own forward (float64 accumulation): explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², L0, dead fraction (never
    active on these tokens), mean cos(x, x̂), and the number of tokens. At most `max_tokens` tokens are read.
    """
    sae.eval()
    device = sae.W_dec.device
    n, sq_err, sum_x, sum_sq_x, l0, cos = 0, 0.0, None, 0.0, 0.0, 0.0
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool, device=device)
    for rows in batches:
        rows = rows[: None if max_tokens is None else max_tokens - n].to(device, sae.W_dec.dtype)
        if rows.shape[0] == 0:
            break
        out = sae(rows)
        x, x_hat = rows.double(), out.reconstruction.double()
        sq_err += (x - x_hat).pow(2).sum().item()
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_sq_x += x.pow(2).sum().item()
        active = out.features > 0
        l0 += active.sum().item()
        fired |= active.any(0)
        cos += F.cosine_similarity(x, x_hat, dim=-1).sum().item()
        n += rows.shape[0]
    if n == 0:
        raise ValueError("No tokens to evaluate the SAE on: give held-out tokens (raise eval_fraction or use more "
                         "images).")
    total_var = sum_sq_x - (sum_x.pow(2).sum().item() / n)
    return {
        "explained_variance": 1.0 - sq_err / total_var,
        "l0": l0 / n,
        "dead_fraction": 1.0 - fired.float().mean().item(),
        "cosine_similarity": cos / n,
        "eval_tokens": n,
    }


def evaluate_sae(sae: SparseAutoencoder, files: list[Path], max_tokens: int, chunk: int = 8192) -> dict[str, float]:
    """[`sae_quality`] on the first `max_tokens` held-out tokens of activation shard `files`."""
    return sae_quality(sae, iterate_rows(files, chunk), max_tokens)


# ------------------------------------------------------------------------------------------------- the training loop
class _BlockTrainer:
    """Trains the SAE of one block from its shards; owns the state a checkpoint must restore."""

    def __init__(self, args: SaeTrainingArguments, block: int, d_in: int, files: list[Path], accelerator):
        self.args, self.block, self.files, self.accelerator = args, block, files, accelerator
        self.n_rows = count_rows(files)
        world = accelerator.num_processes
        if args.batch_size % world:
            raise ValueError(f"batch_size={args.batch_size} must be divisible by the {world} processes.")
        self.steps_per_epoch = steps_per_epoch(self.n_rows, args.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"Block {block} has {self.n_rows} training tokens, fewer than one batch of {args.batch_size}: "
                "lower batch_size or use more images."
            )
        self.total_steps = max(1, math.ceil(args.epochs * self.steps_per_epoch))
        self.sae = self._init_sae(d_in).to(accelerator.device)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=args.lr, betas=(args.adam_beta1, args.adam_beta2))
        warmup = min(args.warmup_steps, self.total_steps // 5)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.tokens_since_fired = torch.zeros(self.sae.config.d_sae, dtype=torch.long, device=accelerator.device)
        self.step = 0

    def _init_sae(self, d_in: int) -> SparseAutoencoder:
        args = self.args
        sample = next(iterate_rows(self.files, INIT_SAMPLE_TOKENS))
        factor = 1.0
        if args.normalize_activations == "constant_scale":
            factor = math.sqrt(d_in) / sample.norm(dim=-1).mean().clamp_min(1e-12).item()
        config = SparseAutoencoderConfig(
            d_in=d_in,
            d_sae=args.expansion_factor * d_in,
            activation=args.activation,
            k=args.k,
            l1_coefficient=args.l1_coefficient if args.activation == "relu" else 0.0,
            hook_layer=self.block,
            hook_point=args.hook_point,
            token_scope=args.token_scope,
            normalize_activations=args.normalize_activations,
            norm_scaling_factor=factor,
            base_model_name_or_path=args.model_name_or_path,
            seed=args.seed + self.block,
        )
        sae = SparseAutoencoder(config)
        scaled = sample * factor
        with torch.no_grad():
            if args.b_dec_init == "mean":
                sae.b_dec.copy_(scaled.mean(0))
            elif args.b_dec_init == "geometric_median":
                sae.b_dec.copy_(geometric_median(scaled[:16_384]))
        return sae.train()

    def state_dict(self) -> dict:
        return {
            "block": self.block,
            "step": self.step,
            "sae": self.sae.state_dict(),
            "config": self.sae.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "tokens_since_fired": self.tokens_since_fired.cpu(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sae.config.norm_scaling_factor = state["config"]["norm_scaling_factor"]
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]

    def _batches(self):
        """Global batches from the current step on; each process keeps its own rows."""
        args, acc = self.args, self.accelerator
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        while True:
            stream = shuffled_batches(
                self.files, args.batch_size, args.seed + 7919 * self.block, epoch, args.buffer_shards
            )
            for i, batch in enumerate(stream):
                if i < skip:
                    continue
                yield (
                    batch[acc.process_index :: acc.num_processes].to(acc.device) * self.sae.config.norm_scaling_factor
                )
            epoch, skip = epoch + 1, 0

    def _all_reduce_gradients(self) -> None:
        if self.accelerator.num_processes > 1:
            for p in self.sae.parameters():
                if p.grad is not None:
                    p.grad.copy_(self.accelerator.reduce(p.grad, reduction="mean"))

    def train(self, save_checkpoint) -> None:
        args, acc = self.args, self.accelerator
        aux_k = args.aux_k or max(1, self.sae.config.d_in // 2)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc=f"block {self.block}", disable=not acc.is_main_process
        )
        batches = self._batches()
        while self.step < self.total_steps:
            x = next(batches)
            dead = self.tokens_since_fired >= args.dead_tokens
            stats = sae_training_loss(self.sae, x, dead, aux_k, args.aux_coefficient)
            self.optimizer.zero_grad(set_to_none=True)
            stats.loss.backward()
            self._all_reduce_gradients()
            project_decoder_gradient(self.sae)
            self.optimizer.step()
            self.scheduler.step()
            normalize_decoder(self.sae)
            fired = stats.fired
            if acc.num_processes > 1:
                fired = acc.reduce(fired.to(torch.int32), reduction="sum") > 0
            self.tokens_since_fired += args.batch_size
            self.tokens_since_fired[fired] = 0
            self.step += 1
            bar.update(1)
            if self.step % args.log_every == 0 or self.step == self.total_steps:
                bar.set_postfix(
                    loss=f"{stats.loss.item():.4g}",
                    ev=f"{1 - (stats.sum_sq_err / stats.sum_sq_centred).item():.3f}",
                    l0=f"{stats.l0.item():.1f}",
                    dead=f"{dead.float().mean().item():.3f}",
                )
            if self.step % args.checkpoint_every == 0 and self.step < self.total_steps:
                save_checkpoint(self.state_dict())
        bar.close()
        self.sae.eval()


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _default_command(args: SaeTrainingArguments) -> str:
    if args.command:
        return args.command
    fields_ = {k: v for k, v in asdict(args).items() if k != "command"}
    return f'python -c "from hf_fga.sae.training import *; train_saes(SaeTrainingArguments(**{fields_!r}))"'


def quality_markdown(rows: dict[int, dict[str, float]]) -> str:
    header = "| block | " + " | ".join(label for _, label in QUALITY_FIELDS) + " | eval tokens |"
    rule = "|---|" + "---|" * (len(QUALITY_FIELDS) + 1)
    lines = [header, rule]
    for block, m in sorted(rows.items()):
        cells = " | ".join(f"{m[key]:.4f}" for key, _ in QUALITY_FIELDS)
        lines.append(f"| {block} | {cells} | {m['eval_tokens']} |")
    return "\n".join(lines) + "\n"


def train_saes(
    args: SaeTrainingArguments, model=None, dataset=None, image_processor=None
) -> dict[int, SparseAutoencoder]:
    """
    Harvest, train and save one SAE per requested block (see the module docstring for the method).

    Args:
        args ([`SaeTrainingArguments`]): every setting; `output_dir` receives the SAE set (`sae_set.json`,
            `block_<i>/` with config, weights and model card), `metrics.json`, `metrics.md`, `training_args.json`,
            `checkpoints/` and, unless `cache_dir` is set, the activation shards.
        model (`ViTForImageClassification` or `CLIPModel`, *optional*): loaded from `args.model_name_or_path`
            when omitted.
        dataset (`datasets.Dataset`, *optional*): loaded from `args.dataset_name_or_path` when omitted.
        image_processor (*optional*): defaults to `AutoImageProcessor.from_pretrained(args.model_name_or_path)`.

    Returns:
        `dict[int, SparseAutoencoder]`: the trained SAEs by block (in float32, eval mode).
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: multi-process CPU runs use gloo
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    if model is None:
        model = load_vision_model(args.model_name_or_path)
    if image_processor is None:
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    n_blocks = vision_config(model).num_hidden_layers
    args.blocks = sorted(set(args.blocks)) if args.blocks else list(range(n_blocks))
    bad = [b for b in args.blocks if not 0 <= b < n_blocks]
    if bad:
        raise ValueError(f"blocks {bad} out of range: the model has blocks 0..{n_blocks - 1}.")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        meta = harvest(args, model, dataset, image_processor, accelerator)
    finally:  # the caller's model comes back as it was given
        model.train(was_training)
        model.to(device)
    checkpoint_file = args.checkpoint_dir / CHECKPOINT_NAME
    resume = torch.load(checkpoint_file, weights_only=True) if checkpoint_file.is_file() else None
    run_settings = _resume_settings(args)
    if resume is not None and resume.get("settings", run_settings) != run_settings:
        changed = sorted(k for k in run_settings if resume.get("settings", {}).get(k) != run_settings[k])
        raise ValueError(
            f"{checkpoint_file} belongs to a run with other settings ({changed}): use a fresh output_dir, or delete "
            f"{args.checkpoint_dir} to start over."
        )
    done = dict(resume["done"]) if resume else {}
    saes: dict[int, SparseAutoencoder] = {}
    metrics: dict[int, dict] = {}
    for block in args.blocks:
        finished = args.checkpoint_dir / f"block_{block}"
        if str(block) in done:
            saes[block] = SparseAutoencoder.from_pretrained(finished).float()
            metrics[block] = done[str(block)]
            continue
        trainer = _BlockTrainer(args, block, meta["d_in"], shard_files(args.cache_path, block, "train"), accelerator)
        if resume and resume.get("current") and resume["current"]["block"] == block:
            trainer.load_state_dict(resume["current"])

        def save_checkpoint(state: dict, done=done) -> None:
            if accelerator.is_main_process:
                _atomic_torch_save({"settings": run_settings, "done": done, "current": state}, checkpoint_file)

        trainer.train(save_checkpoint)
        sae = trainer.sae.cpu()
        block_metrics = evaluate_sae(sae, shard_files(args.cache_path, block, "eval"), args.max_eval_tokens)
        block_metrics["training_tokens"] = trainer.step * args.batch_size
        block_metrics["unique_training_tokens"] = trainer.n_rows
        block_metrics["steps"] = trainer.step
        sae.config.training_info = _training_info(args, block_metrics)
        saes[block], metrics[block] = sae, block_metrics
        if accelerator.is_main_process:
            sae.save_pretrained(finished)
        done[str(block)] = block_metrics
        save_checkpoint(None)
    if accelerator.is_main_process:
        _write_outputs(args, saes, metrics, out)
    accelerator.wait_for_everyone()
    return saes


RESUME_IRRELEVANT = (
    "output_dir",
    "command",
    "log_every",
    "checkpoint_every",
    "keep_cache",
    "save_dtype",
    "torch_threads",
    "dataset_label",
    "license",
    "cache_dir",
)


def _resume_settings(args: SaeTrainingArguments) -> dict:
    """The arguments a checkpoint must agree with to be resumed (everything that changes the trained weights)."""
    return {k: v for k, v in asdict(args).items() if k not in RESUME_IRRELEVANT}


def _training_info(args: SaeTrainingArguments, metrics: dict) -> dict:
    return {
        "dataset": args.dataset_label or args.dataset_name_or_path or "an in-memory dataset",
        "dataset_split": args.dataset_split,
        "training_tokens": metrics["training_tokens"],
        "unique_training_tokens": metrics["unique_training_tokens"],
        "steps": metrics["steps"],
        "eval_tokens": metrics["eval_tokens"],
        "seed": args.seed,
        "command": _default_command(args),
        "license": args.license,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "aux_k": args.aux_k,
        "aux_coefficient": args.aux_coefficient,
        "b_dec_init": args.b_dec_init,
        "metrics": {key: metrics[key] for key, _ in QUALITY_FIELDS},
    }


def _write_outputs(args: SaeTrainingArguments, saes: dict, metrics: dict, out: Path) -> None:
    dtype = DTYPES[args.save_dtype]
    to_save = {b: sae if dtype == torch.float32 else _cast_copy(sae, dtype) for b, sae in saes.items()}
    table = {str(b): m for b, m in sorted(metrics.items())}
    save_sae_set(to_save, out, extra_index={"metrics": table})
    (out / "metrics.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "metrics.md").write_text(quality_markdown(metrics))
    (out / "training_args.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    if not args.keep_cache:
        shutil.rmtree(args.cache_path, ignore_errors=True)


def _cast_copy(sae: SparseAutoencoder, dtype: torch.dtype) -> SparseAutoencoder:
    copy = SparseAutoencoder(sae.config)
    copy.load_state_dict(sae.state_dict())
    return copy.to(dtype)
