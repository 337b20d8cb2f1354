"""
Training the SAE of one block from its activation shards: initialisation, Adam with a cosine schedule and warm-up,
dead-feature counters for AuxK, data-parallel gradient averaging, and the state a checkpoint restores.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .activations import count_rows, iterate_rows, shuffled_batches, steps_per_epoch
from .configuration_sae import SparseAutoencoderConfig
from .modeling_sae import SparseAutoencoder
from .training_arguments import SaeTrainingArguments
from .training_loss import normalize_decoder, project_decoder_gradient, sae_training_loss

CHECKPOINT_NAME = "checkpoint.pt"
INIT_SAMPLE_TOKENS = 65_536


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


class BlockTrainer:
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


def load_checkpoint(path: Path) -> dict:
    """
    A training checkpoint, read with `torch.load(weights_only=True)`: tensors and plain containers only, so a
    crafted file cannot run code; anything else is a `ValueError` naming the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects that hf_fga refuses to unpickle (weights_only=True), so it was not written "
            "by train_saes: delete the checkpoints folder to start over; never load files you do not trust."
        ) from err


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
