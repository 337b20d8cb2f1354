"""Train a small ViT on CIFAR-10 from scratch (issue 16, the natural-image domain).

The model is a `ViTForImageClassification` at the data's own resolution: 32 px, patch 4, so 8 x 8 = 64 patch tokens
plus CLS, `--num_hidden_layers` (at least 6) blocks. Data: the `cifar10` train split minus a validation split of
`--val_size` images (stratified, seeded; for model selection), decoded once into a uint8 tensor cache (safetensors).
Augmentation runs on whole batches on the training device: random crop with `--pad` pixels of zero padding, horizontal
flip, and (with probability `--mix_prob`) MixUp or CutMix. Class-balanced data, so plain cross-entropy with label
smoothing; AdamW with a cosine schedule and warm-up.

Resumable without pickle: every `--checkpoint_every` steps and at the end of every epoch the model, optimizer,
scheduler, RNG states, the epoch's sample order and the position in it go to `<output_dir>/last/` (safetensors +
JSON, `hf_fga.bundled.training_state`); re-running the same command continues from there, mid-epoch included. The
checkpoint with the best validation accuracy is kept in `<output_dir>/best/` (`save_pretrained`), and the test split
is evaluated once, at the end, through the saved image processor. With `--export_dir` the model, its processor,
`training_results.json` and its card (`README.md`, `hf_fga.bundled.model_card.write_cifar10_card`; with the SAE
table once `<export_dir>/../saes` exists: re-run the finished command to refresh it) are written there.

The validation rows go to `--splits_path` (default `<output_dir>/splits.json`, key `validation_rows`: row indices of
the train split as strings), so the SAEs, mean residuals and evaluations leave the same images out / in.

Runs on a GPU with `--device cuda` (bfloat16 autocast with `--bf16`, the default). `--max_steps` stops an invocation
after that many optimizer steps in all (a smoke run that measures the seconds per step; re-run without it to go on).

Usage:
    python scripts/train_cifar10.py --output_dir runs/cifar10 --max_steps 300          # CPU smoke run
    python scripts/train_cifar10.py --output_dir runs/cifar10 --device cuda --batch_size 512 --epochs 200
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hf_fga.bundled import classifier_training as training
from hf_fga.bundled.model_card import write_cifar10_card
from hf_fga.bundled.training_state import load_training_state, save_training_state

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10"
LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class TrainCifarArguments:
    """Command-line arguments (parsed with `HfArgumentParser`)."""

    output_dir: str = field(default="runs/cifar10", metadata={"help": "Checkpoints, logs and the best model."})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the decoded uint8 images are cached (154 MB for the train split; default: output_dir)."
        },
    )
    checkpoint_shard_mb: float | None = field(
        default=None,
        metadata={
            "help": "Split the resumable checkpoint's tensors over files of at most this many MiB (so that a long CPU "
            "run's output_dir can be committed to a repository with a file-size limit and resumed in a fresh "
            "checkout); one file when not given."
        },
    )
    export_dir: str | None = field(default=None, metadata={"help": "Where the final model and processor go."})
    splits_path: str | None = field(
        default=None,
        metadata={"help": "JSON file of the validation rows of the train split (default: <output_dir>/splits.json)."},
    )
    data_dir: str = field(default=str(DEFAULT_DATA), metadata={"help": "The cifar10 dataset folder."})
    seed: int = field(default=0)
    val_size: int = field(default=5000, metadata={"help": "Train images held out for model selection."})
    hidden_size: int = field(default=192)
    num_hidden_layers: int = field(default=6)
    num_attention_heads: int = field(default=3)
    intermediate_size: int = field(default=384)
    patch_size: int = field(default=4)
    epochs: int = field(default=200)
    batch_size: int = field(default=128)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.05)
    warmup_epochs: float = field(default=5.0)
    label_smoothing: float = field(default=0.1)
    max_grad_norm: float = field(default=1.0)
    pad: int = field(default=4, metadata={"help": "Zero padding of the random crop, in pixels."})
    hflip: bool = field(default=True)
    mix_prob: float = field(default=0.5, metadata={"help": "Probability that a batch is mixed (MixUp or CutMix)."})
    mixup_alpha: float = field(default=0.8)
    cutmix_alpha: float = field(default=1.0)
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast (on CUDA only)."})
    num_threads: int = field(default=1)
    checkpoint_every: int = field(default=200, metadata={"help": "Optimizer steps between checkpoints."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop once this many steps are done in all."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Subsample train (smoke tests)."})
    evaluate_test: bool = field(default=True, metadata={"help": "Evaluate the test split once at the end."})

    def __post_init__(self) -> None:
        if self.num_hidden_layers < 6:
            raise ValueError(f"num_hidden_layers must be at least 6 (issue 16), got {self.num_hidden_layers}.")
        if 32 % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide the 32 px images: pass e.g. 4.")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}.")
        if self.checkpoint_shard_mb is not None and self.checkpoint_shard_mb <= 0:
            raise ValueError(f"checkpoint_shard_mb must be positive, got {self.checkpoint_shard_mb}.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}.")


# ----------------------------------------------------------------------------------------------------------- data


def load_split(data_dir: str, split: str, cache_dir: Path) -> dict[str, torch.Tensor]:
    """Decode a split once into `images` uint8 `(N, 3, 32, 32)` and `labels` `(N,)` (cached as safetensors)."""
    cache = cache_dir / f"cache_{split}.safetensors"
    if cache.exists():
        return load_file(str(cache))
    import datasets

    ds = datasets.load_dataset(data_dir, split=split)
    images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in ds["image"]])).permute(0, 3, 1, 2)
    data = {"images": images.contiguous(), "labels": torch.tensor(ds["label"], dtype=torch.long)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file(data, str(cache))
    return data


def validation_index(labels: torch.Tensor, val_size: int, seed: int) -> torch.Tensor:
    """A seeded, stratified set of `val_size` train rows (as equal a share of every class as possible)."""
    gen = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    chosen = []
    for i, label in enumerate(classes.tolist()):
        rows = (labels == label).nonzero().squeeze(1)
        share = val_size // len(classes) + (1 if i < val_size % len(classes) else 0)
        chosen.append(rows[torch.randperm(len(rows), generator=gen)[:share]])
    return torch.cat(chosen).sort().values


def write_splits(path: Path, val_idx: torch.Tensor, args: TrainCifarArguments) -> None:
    """
    The validation split as `hf_fga.bundled.splits_path` files hold it: the train split's row indices (CIFAR-10 has no
    file names), as strings under `validation_rows`, which `scripts/evaluate_faithfulness.py --include_ids PATH
    --ids_key validation_rows` matches against its default ids (the row index).
    """
    record = {
        "dataset": "cifar10",
        "split": "train",
        "ids": "row index in the train split (datasets.load_dataset order)",
        "val_size": args.val_size,
        "seed": args.seed,
        "validation_rows": [str(i) for i in val_idx.tolist()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


# --------------------------------------------------------------------------------------------------- augmentation


def crop_and_flip(images: torch.Tensor, pad: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """
    Random crop of the zero-padded images (integer shifts of up to `pad` pixels) and random horizontal flips.

    Args:
        images (`torch.Tensor` of shape `(B, C, H, W)`): the batch (any float dtype, any device).
        pad (`int`): padding on every side, in pixels.
        hflip (`bool`): flip each image with probability 0.5.
        gen (`torch.Generator`): a CPU generator (the draws are moved to the images' device).

    Returns:
        `torch.Tensor` of shape `(B, C, H, W)`.
    """
    b, _, h, w = images.shape
    device = images.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(device)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]
    out = padded[torch.arange(b, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def mix(
    images: torch.Tensor, args: TrainCifarArguments, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """
    MixUp or CutMix (one of them, 50/50) of the batch with a permutation of itself, with probability `mix_prob`.

    Returns:
        `(images, permutation, lam)`: the loss is `lam * CE(y) + (1 - lam) * CE(y[permutation])`; `lam = 1` and the
        identity when the batch is not mixed.
    """
    b = images.shape[0]
    identity = torch.arange(b, device=images.device)
    if args.mix_prob == 0 or float(torch.rand((), generator=gen)) >= args.mix_prob:
        return images, identity, 1.0
    perm = torch.randperm(b, generator=gen).to(images.device)
    if float(torch.rand((), generator=gen)) < 0.5:  # MixUp
        lam = float(np.random.beta(args.mixup_alpha, args.mixup_alpha))
        return lam * images + (1 - lam) * images[perm], perm, lam
    lam = float(np.random.beta(args.cutmix_alpha, args.cutmix_alpha))  # CutMix: paste a box of area 1 - lam
    h, w = images.shape[-2:]
    cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return out, perm, 1 - (y1 - y0) * (x1 - x0) / (h * w)


# ------------------------------------------------------------------------------------------------ model & metrics


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` -> float `pixel_values` normalised per channel."""
    return (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def evaluate_cached(model, data: dict, mean, std, device, autocast, batch_size: int = 500) -> dict:
    images = data["images"]
    batches = (normalise(images[i : i + batch_size].to(device), mean, std) for i in range(0, len(images), batch_size))
    with autocast():
        preds = training.predict(model, batches)
    return training.classification_metrics(preds.cpu(), data["labels"], training.label_names(model))


# -------------------------------------------------------------------------------------------------------- training


def train(args: TrainCifarArguments) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device: pass --device cpu.")
    out, gen = training.start_run(args)

    data = load_split(args.data_dir, "train", Path(args.cache_dir) if args.cache_dir else out)
    is_val = torch.zeros(len(data["labels"]), dtype=torch.bool)
    is_val[validation_index(data["labels"], args.val_size, args.seed)] = True
    train_idx, val_idx = (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
    if args.max_train_samples is not None:
        train_idx = train_idx[: args.max_train_samples]
        val_idx = val_idx[: args.max_train_samples]
    train_images, train_labels = data["images"][train_idx].to(device), data["labels"][train_idx].to(device)
    val_data = {"images": data["images"][val_idx], "labels": data["labels"][val_idx]}
    write_splits(Path(args.splits_path or out / "splits.json"), val_idx, args)
    pixels = data["images"][train_idx].float() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))
    del pixels
    mean_d, std_d = mean.to(device), std.to(device)

    model = training.fresh_vit(args, 32, LABELS).to(device)
    print(f"forward FLOPs at 32 px: {training.forward_flops(model.config) / 1e9:.4f} GFLOP", flush=True)
    n = len(train_idx)
    steps_per_epoch = n // args.batch_size  # the last partial batch is dropped (a fresh order every epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={args.batch_size} is larger than the {n} training images: lower it.")
    optimizer, scheduler = training.adamw_cosine(model, args, steps_per_epoch)
    state = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best_accuracy": -1.0,
        "best_epoch": None,
        "train_seconds": 0.0,
    }
    order = torch.randperm(n, generator=gen)
    ckpt = out / "last"
    if ckpt.exists():
        state, tensors = load_training_state(
            ckpt, model=model, optimizer=optimizer, scheduler=scheduler, generator=gen
        )
        order = tensors["order"]
        print(f"resumed from {ckpt} at epoch {state['epoch']}, step {state['step_in_epoch']}", flush=True)

    def checkpoint() -> None:
        save_training_state(
            ckpt,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            generator=gen,
            extra=state,
            extra_tensors={"order": order},
            max_shard_bytes=None if args.checkpoint_shard_mb is None else int(args.checkpoint_shard_mb * 2**20),
        )

    def autocast():
        enabled = args.bf16 and device.type == "cuda"
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    while state["epoch"] < args.epochs:
        model.train()
        start, total_loss, seen = time.time(), 0.0, 0
        rate_start, cpu_start = start, time.process_time()  # for the printed rates (not reset by checkpoints)
        while state["step_in_epoch"] < steps_per_epoch:
            if args.max_steps is not None and state["global_step"] >= args.max_steps:
                state["train_seconds"] += time.time() - start
                checkpoint()
                print(f"stopped at step {state['global_step']} (--max_steps); re-run to go on", flush=True)
                return {"stopped_at_step": state["global_step"], "train_seconds": state["train_seconds"]}
            step = state["step_in_epoch"]
            idx = order[step * args.batch_size : (step + 1) * args.batch_size].to(device)
            images = crop_and_flip(normalise(train_images[idx], mean_d, std_d), args.pad, args.hflip, gen)
            images, perm, lam = mix(images, args, gen)
            labels = train_labels[idx]
            with autocast():
                logits = model(pixel_values=images).logits.float()
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
            if lam < 1:
                loss = loss + (1 - lam) * F.cross_entropy(logits, labels[perm], label_smoothing=args.label_smoothing)
            training.optimizer_step(model, optimizer, scheduler, loss, args.max_grad_norm)
            total_loss += loss.item() * len(idx)
            seen += len(idx)
            state["step_in_epoch"] += 1
            state["global_step"] += 1
            if state["global_step"] % 50 == 0:  # wall and CPU seconds per step (CPU: this process, all threads)
                steps = max(1, seen / args.batch_size)
                wall, cpu = (time.time() - rate_start) / steps, (time.process_time() - cpu_start) / steps
                print(
                    f"step {state['global_step']}: loss {loss.item():.4f}, {wall:.3f} s/step (CPU {cpu:.3f} s/step)",
                    flush=True,
                )
            if state["global_step"] % args.checkpoint_every == 0:
                state["train_seconds"] += time.time() - start
                start = time.time()
                checkpoint()
        state["train_seconds"] += time.time() - start
        val = evaluate_cached(model, val_data, mean_d, std_d, device, autocast)
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        order = torch.randperm(n, generator=gen)
        if val["accuracy"] > state["best_accuracy"]:
            state["best_accuracy"], state["best_epoch"] = val["accuracy"], state["epoch"]
            model.save_pretrained(out / "best")
            training.make_processor(mean.tolist(), std.tolist(), 32).save_pretrained(out / "best")
        training.log_record(
            out,
            {
                "epoch": state["epoch"],
                "global_step": state["global_step"],
                "train_loss": total_loss / max(1, seen),
                "lr": scheduler.get_last_lr()[0],
                "train_seconds": round(state["train_seconds"], 1),
                "val_accuracy": round(val["accuracy"], 4),
                "best_epoch": state["best_epoch"],
            },
        )
        checkpoint()
    return finish(args, out, state, {"num_train_images": n, "num_validation_images": len(val_idx)})


def finish(args: TrainCifarArguments, out: Path, state: dict, counts: dict) -> dict:
    """Load the selected checkpoint, evaluate the test split once (through the saved processor) and export."""
    model, processor = training.load_best(out)
    result = {
        "best_epoch": state["best_epoch"],
        "validation_accuracy": state["best_accuracy"],
        "train_seconds": round(state["train_seconds"], 1),
        "epochs": args.epochs,
        "global_steps": state["global_step"],
        **counts,
        "forward_gflops": training.forward_flops(model.config) / 1e9,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "device": args.device,
    }
    if args.evaluate_test:
        result["test"] = training.evaluate_test_once(out, model, processor, args.data_dir, batch_size=500)
    training.write_results(out, result)
    if args.export_dir:
        export = training.export_model(args.export_dir, model, processor, result, args)
        if args.evaluate_test:  # the card, with the SAE table once the SAE set sits beside the model
            sae_dir = export.parent / "saes"
            write_cifar10_card(export, sae_dir if sae_dir.is_dir() else None)
    return result


def main(argv: list[str] | None = None) -> dict:
    return train(training.parse_arguments(TrainCifarArguments, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
