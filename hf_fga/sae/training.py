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

Modules: `training_arguments` (settings), `harvest` (activations to shards), `training_loss` (step loss, decoder
constraints), `trainer` (one block's loop and checkpoint state), `quality` (held-out figures), `training_card`
(provenance for the model card); this module runs them in order and saves the SAE set.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..introspection import load_vision_model, vision_config
from .activations import DTYPES, shard_files
from .harvest import harvest
from .modeling_sae import SparseAutoencoder
from .quality import evaluate_sae, quality_markdown
from .sae_set import save_sae_set
from .trainer import CHECKPOINT_NAME, BlockTrainer, atomic_torch_save, geometric_median, load_checkpoint
from .training_arguments import SaeTrainingArguments
from .training_card import training_info
from .training_loss import normalize_decoder, project_decoder_gradient, sae_training_loss


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
    resume = load_checkpoint(checkpoint_file) if checkpoint_file.is_file() else None
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
        trainer = BlockTrainer(args, block, meta["d_in"], shard_files(args.cache_path, block, "train"), accelerator)
        if resume and resume.get("current") and resume["current"]["block"] == block:
            trainer.load_state_dict(resume["current"])

        def save_checkpoint(state: dict, done=done) -> None:
            if accelerator.is_main_process:
                atomic_torch_save({"settings": run_settings, "done": done, "current": state}, checkpoint_file)

        trainer.train(save_checkpoint)
        sae = trainer.sae.cpu()
        block_metrics = evaluate_sae(sae, shard_files(args.cache_path, block, "eval"), args.max_eval_tokens)
        block_metrics["training_tokens"] = trainer.step * args.batch_size
        block_metrics["unique_training_tokens"] = trainer.n_rows
        block_metrics["steps"] = trainer.step
        sae.config.training_info = training_info(args, block_metrics)
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


__all__ = [
    "SaeTrainingArguments",
    "evaluate_sae",
    "geometric_median",
    "harvest",
    "load_vision_model",
    "normalize_decoder",
    "project_decoder_gradient",
    "quality_markdown",
    "sae_training_loss",
    "train_saes",
]
