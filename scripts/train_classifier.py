"""Train the bundled chest X-ray ViT from scratch (issue 4, "The bundled model").

The model is a `ViTForImageClassification` with the thesis's patch grid (224 px, patch 16: 14 x 14 patches). Training
is progressive: most epochs at a low resolution (112 px: 7 x 7 patches, about 4x cheaper), where the 14 x 14 position
embeddings are resized on the fly with `interpolate_pos_encoding=True` (bicubic, CLS embedding kept), then the last
epochs at 224 px on the native grid. The shipped model therefore needs no interpolation.

Data: the `chest_xray_pneumonia` train split, with a validation split carved out **by patient_id** (seeded; the
validation patients and file names are written to `--splits_path` so other tools reuse the same split). Images are
grey (R = G = B), so they are decoded once into a uint8 tensor cache of shape (N, 224, 224); augmentation is done with
torch ops on whole batches (random resized crop with mild scale and aspect ratio, small rotation, brightness and
contrast jitter; no horizontal flip, so that the anatomy, e.g. the heart's side, stays consistent for attribution
maps). Classes are balanced with a class-weighted cross-entropy. Checkpoints are written every epoch (model,
optimiser, scheduler, RNG states, epoch, history); re-running the same command resumes. The checkpoint is selected on
validation balanced accuracy at 224 px, and the untouched test split is evaluated once at the end, through the saved
image processor.

Other datasets (`--dataset`, see `DATASETS`): `breast_ultrasound` (BUSI, 3 classes) uses the dataset's own
validation split, and is fine-tuned from the bundled chest X-ray ViT with `--init_from` (its 2-class head replaced by
a freshly initialised head for the new labels) with horizontal flips (`--hflip`).

Usage:
    python scripts/train_classifier.py --output_dir runs/classifier --export_dir hf_fga/bundled/model
    python scripts/train_classifier.py --dataset breast_ultrasound --init_from hf_fga/bundled/model \
        --output_dir runs/breast_ultrasound_classifier --low_res_epochs 0 --epochs 60 --hflip True
"""

from __future__ import annotations

import json
import math
import pickle
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ViTForImageClassification

from hf_fga.bundled import classifier_training as training
from hf_fga.bundled.model_card import write_classifier_card, write_domain_card
from hf_fga.evaluation.hypothesis_tests import patient_keys

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "chest_xray_pneumonia"
LABELS = ("NORMAL", "PNEUMONIA")
FULL_RES = 224


@dataclass(frozen=True)
class DatasetSpec:
    """What the script needs to know about a dataset folder.

    Args:
        labels (`tuple[str, ...]`): label names in the order of the dataset's integer labels.
        validation (`str`): `"patients"` to carve the validation split out of train by patient (seeded), or `"split"`
            to use the dataset's own `validation` split.
        hflip (`bool`): the default of `--hflip` (random horizontal flips while training).
    """

    labels: tuple[str, ...]
    validation: str
    hflip: bool


DATASETS = {
    "chest_xray_pneumonia": DatasetSpec(LABELS, "patients", hflip=False),
    "breast_ultrasound": DatasetSpec(("benign", "malignant", "normal"), "split", hflip=True),
}


@dataclass
class TrainClassifierArguments:
    """Command-line arguments (parsed with `HfArgumentParser`)."""

    output_dir: str = field(default="runs/classifier", metadata={"help": "Checkpoints, logs and the best model."})
    export_dir: str | None = field(
        default=None, metadata={"help": "Where the final model and processor are saved (e.g. hf_fga/bundled/model)."}
    )
    dataset: str = field(default="chest_xray_pneumonia", metadata={"help": f"One of {sorted(DATASETS)}."})
    data_dir: str | None = field(
        default=None, metadata={"help": "The dataset folder (default: shared/data/<dataset>)."}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "Fine-tune this ViTForImageClassification folder (its head is replaced for the labels)."},
    )
    hflip: bool | None = field(default=None, metadata={"help": "Random horizontal flips (default: per dataset)."})
    splits_path: str | None = field(
        default=None, metadata={"help": "JSON file for the validation split (default: <output_dir>/splits.json)."}
    )
    seed: int = field(default=0)
    val_fraction: float = field(default=0.12, metadata={"help": "Fraction of train patients held out."})
    hidden_size: int = field(default=192)
    num_hidden_layers: int = field(default=6)
    num_attention_heads: int = field(default=3)
    intermediate_size: int = field(default=384)
    image_size: int = field(default=FULL_RES, metadata={"help": "Final resolution (the model's native grid)."})
    patch_size: int = field(default=16)
    low_res: int = field(default=112, metadata={"help": "Resolution of the first --low_res_epochs epochs."})
    low_res_epochs: int = field(default=20)
    epochs: int = field(default=24, metadata={"help": "Total epochs (low-res plus full-res)."})
    batch_size: int = field(default=64)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.05)
    warmup_epochs: float = field(default=1.0)
    label_smoothing: float = field(default=0.1)
    max_grad_norm: float = field(default=1.0)
    crop_scale_min: float = field(default=0.75, metadata={"help": "Smallest area fraction of the random crop."})
    max_rotation_deg: float = field(default=7.0)
    brightness: float = field(default=0.15, metadata={"help": "Additive brightness jitter (fraction of range)."})
    contrast: float = field(default=0.15, metadata={"help": "Multiplicative contrast jitter (+- fraction)."})
    num_threads: int = field(default=2)
    max_train_samples: int | None = field(default=None, metadata={"help": "Subsample train (smoke tests)."})
    max_steps_per_epoch: int | None = field(default=None, metadata={"help": "Cap steps per epoch (smoke tests)."})
    evaluate_test: bool = field(default=True, metadata={"help": "Evaluate the test split once at the end."})

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}: pass one of {sorted(DATASETS)}.")
        if self.data_dir is None:
            self.data_dir = str(SHARED_DATA / self.dataset)
        if self.hflip is None:
            self.hflip = DATASETS[self.dataset].hflip
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}: pass e.g. 0.12.")
        if not 0 <= self.low_res_epochs <= self.epochs:
            raise ValueError(
                f"low_res_epochs must be between 0 and epochs={self.epochs}, got {self.low_res_epochs}: lower it."
            )
        for name in ("image_size", "low_res"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of patch_size={self.patch_size}.")


# ----------------------------------------------------------------------------------------------------------- data


def load_split(data_dir: str, split: str, cache_dir: Path) -> dict:
    """Decode a split once into grey uint8 images `(N, H, W)` plus labels and ids (cached as a `.pt` file)."""
    cache = cache_dir / f"cache_{split}.pt"
    if cache.exists():
        return safe_torch_load(cache)
    import datasets

    ds = datasets.load_dataset(data_dir, split=split)
    images = torch.stack([torch.from_numpy(np.array(im.convert("L"))) for im in ds["image"]])
    data = {
        "images": images,
        "labels": torch.tensor(ds["label"], dtype=torch.long),
        "patient_ids": list(ds["patient_id" if "patient_id" in ds.column_names else "file_name"]),
        "file_names": list(ds["file_name"]),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def patient_split(keys: list[str], labels: list[int], val_fraction: float, seed: int) -> set[str]:
    """The validation patients: a seeded random `val_fraction` of the patients of each class (stratified)."""
    label_of = dict(zip(keys, labels, strict=True))
    rng = np.random.default_rng(seed)
    val = set()
    for label in sorted(set(labels)):
        unique = sorted(k for k, v in label_of.items() if v == label)
        n_val = max(1, round(val_fraction * len(unique)))
        val.update(unique[i] for i in rng.permutation(len(unique))[:n_val])
    return val


def write_splits(path: Path, data: dict, val_patients: set[str], args: TrainClassifierArguments) -> None:
    is_val = [p in val_patients for p in data["patient_keys"]]
    record = {
        "dataset": args.dataset,
        "split_of": "train",
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "patient_key": "patient_id, except NORMAL2-IM-NNNN (file name prefix) for the catch-all id NORMAL2-IM",
        "validation_patient_keys": sorted(val_patients),
        "validation_file_names": sorted(f for f, v in zip(data["file_names"], is_val, strict=True) if v),
        "num_train": len(is_val) - sum(is_val),
        "num_validation": sum(is_val),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def subset(data: dict, index: torch.Tensor) -> dict:
    idx = index.tolist()
    return {
        "images": data["images"][index],
        "labels": data["labels"][index],
        "patient_ids": [data["patient_ids"][i] for i in idx],
        "file_names": [data["file_names"][i] for i in idx],
    }


# --------------------------------------------------------------------------------------------------- augmentation


def augment(images: torch.Tensor, size: int, args: TrainClassifierArguments, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + rotation in one affine resampling, then brightness/contrast jitter.

    Args:
        images (`torch.Tensor` of shape `(B, H, W)`, float in [0, 1]): grey images.
        size (`int`): output side in pixels.

    Returns:
        `torch.Tensor` of shape `(B, size, size)` in [0, 1].
    """
    b = images.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)  # noqa: E731
    area = u(args.crop_scale_min, 1.0)
    log_ratio = u(math.log(3 / 4), math.log(4 / 3)) * 0.5
    sx = (area * torch.exp(log_ratio)).sqrt().clamp(max=1.0)
    sy = (area / torch.exp(log_ratio)).sqrt().clamp(max=1.0)
    tx = (1 - sx) * u(-1.0, 1.0)
    ty = (1 - sy) * u(-1.0, 1.0)
    angle = u(-args.max_rotation_deg, args.max_rotation_deg) * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    # a horizontal flip mirrors the grid's x axis (drawn only with --hflip: other runs keep their RNG stream)
    fx = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if args.hflip else torch.ones(b)
    theta = torch.stack(
        [torch.stack([fx * sx * cos, -sy * sin, tx], 1), torch.stack([fx * sx * sin, sy * cos, ty], 1)], 1
    )
    src = images.unsqueeze(1)
    if size < src.shape[-1]:  # anti-alias before the (bilinear) resampling
        src = F.interpolate(src, size=(size, size), mode="area")
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False).squeeze(1)
    contrast = u(1 - args.contrast, 1 + args.contrast).view(b, 1, 1)
    brightness = u(-args.brightness, args.brightness).view(b, 1, 1)
    mean = out.mean(dim=(1, 2), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def to_pixels(grey: torch.Tensor, mean: float, std: float, size: int | None = None) -> torch.Tensor:
    """Grey `(B, H, W)` in [0, 1] -> normalised 3-channel `pixel_values` `(B, 3, size, size)`."""
    x = grey.unsqueeze(1)
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="area")
    return ((x - mean) / std).expand(-1, 3, -1, -1)


# ------------------------------------------------------------------------------------------------ model & metrics


def build_model(args: TrainClassifierArguments) -> ViTForImageClassification:
    """A fresh ViT of the arguments' size, or (`--init_from`) a trained one with a new head for the labels."""
    labels = DATASETS[args.dataset].labels
    if args.init_from is not None:
        # every weight but the classifier is loaded; the classifier (shape changed, or same shape but other labels) is
        # re-initialised by transformers' `_init_weights` (normal std = initializer_range, zero bias), seeded above
        # (num_labels follows from id2label; passing both makes transformers warn about the parent's 2 labels)
        config = training.label_config(labels)
        model = ViTForImageClassification.from_pretrained(
            args.init_from,
            id2label=config["id2label"],
            label2id=config["label2id"],
            ignore_mismatched_sizes=True,
        )
        if model.config.num_labels == len(labels) and model.config.id2label != config["id2label"]:
            model.classifier.reset_parameters()
        grid = (model.config.image_size, model.config.patch_size)
        if grid != (args.image_size, args.patch_size):
            raise ValueError(
                f"--init_from {args.init_from} has image_size, patch_size = {grid}, the arguments "
                f"{(args.image_size, args.patch_size)}: pass --image_size {grid[0]} --patch_size {grid[1]}."
            )
        return model
    return training.fresh_vit(args, args.image_size, labels)


def evaluate_cached(model, data: dict, mean: float, std: float, size: int, batch_size: int = 128) -> dict:
    images = data["images"]
    batches = (
        to_pixels(images[i : i + batch_size].float() / 255, mean, std, size) for i in range(0, len(images), batch_size)
    )
    preds = training.predict(model, batches)
    return training.classification_metrics(preds, data["labels"], training.label_names(model))


# -------------------------------------------------------------------------------------------------------- training


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG state as tensors and plain Python values, so a checkpoint loads with `weights_only=True`."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "py": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    numpy = state["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["gauss"])
    )
    random.setstate(state["py"])


def safe_torch_load(path: Path) -> dict:
    """
    A checkpoint or cache written by this script, read with `torch.load(weights_only=True)`: tensors and plain
    Python containers only, so a crafted file cannot run code. Anything else is a `ValueError` naming the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects that this script refuses to unpickle (weights_only=True): only tensors and "
            "plain containers are read, so a crafted file cannot run code. If it was written by an older version of "
            "this script (NumPy RNG state as an array), delete it to start over; never load files you do not trust."
        ) from err


def train_and_validation(args: TrainClassifierArguments, out: Path, gen: torch.Generator) -> tuple[dict, dict, dict]:
    """The train and validation data (decoded, cached) and their sizes; writes the split file.

    The validation split is carved out of train by patient (`DatasetSpec.validation == "patients"`) or is the
    dataset's own `validation` split (`"split"`, then recorded by file name).
    """
    data = load_split(args.data_dir, "train", out)
    splits_file = Path(args.splits_path or out / "splits.json")
    if DATASETS[args.dataset].validation == "split":
        train_data, val_data = data, load_split(args.data_dir, "validation", out)
        splits_file.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "dataset": args.dataset,
            "validation": "the dataset's own validation split",
            "validation_file_names": sorted(val_data["file_names"]),
            "num_train": len(train_data["file_names"]),
            "num_validation": len(val_data["file_names"]),
        }
        splits_file.write_text(json.dumps(record, indent=1) + "\n")
        train_idx, val_idx = torch.arange(len(train_data["labels"])), torch.arange(len(val_data["labels"]))
        extra = {}
    else:
        data["patient_keys"] = patient_keys(data["patient_ids"], data["file_names"])
        val_patients = patient_split(data["patient_keys"], data["labels"].tolist(), args.val_fraction, args.seed)
        write_splits(splits_file, data, val_patients, args)
        is_val = torch.tensor([p in val_patients for p in data["patient_keys"]])
        train_idx, val_idx = (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
        train_data = val_data = data
        extra = {"num_validation_patients": len(val_patients)}
    if args.max_train_samples is not None:
        train_idx = train_idx[torch.randperm(len(train_idx), generator=gen)[: args.max_train_samples]]
        val_idx = val_idx[: args.max_train_samples]
    counts = {"num_train_images": len(train_idx), "num_validation_images": len(val_idx), **extra}
    return subset(train_data, train_idx), subset(val_data, val_idx), counts


def train(args: TrainClassifierArguments) -> dict:
    out, gen = training.start_run(args)

    train_data, val_data, counts = train_and_validation(args, out, gen)
    pixels01 = train_data["images"].float() / 255
    mean, std = float(pixels01.mean()), float(pixels01.std())
    del pixels01

    model = build_model(args)
    print(f"forward FLOPs at {args.image_size} px: {training.forward_flops(model.config) / 1e9:.3f} GFLOP", flush=True)
    num_labels = model.config.num_labels
    label_counts = torch.bincount(train_data["labels"], minlength=num_labels).float()
    class_weights = label_counts.sum() / (num_labels * label_counts.clamp(min=1))
    n = len(train_data["labels"])
    steps_per_epoch = math.ceil(n / args.batch_size)
    if args.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    optimizer, scheduler = training.adamw_cosine(model, args, steps_per_epoch)
    state = {"epoch": 0, "best_balanced_accuracy": -1.0, "best_epoch": None, "train_seconds": 0.0}
    ckpt = out / "last.pt"
    if ckpt.exists():
        saved = safe_torch_load(ckpt)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], gen)
        state = saved["state"]
        print(f"resumed from {ckpt} at epoch {state['epoch']}", flush=True)

    while state["epoch"] < args.epochs:
        epoch = state["epoch"]
        size = args.low_res if epoch < args.low_res_epochs else args.image_size
        model.train()
        start = time.time()
        order = torch.randperm(n, generator=gen)
        total_loss, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            grey = augment(train_data["images"][idx].float() / 255, size, args, gen)
            labels = train_data["labels"][idx]
            logits = model(pixel_values=to_pixels(grey, mean, std), interpolate_pos_encoding=size != args.image_size)
            loss = F.cross_entropy(logits.logits, labels, weight=class_weights, label_smoothing=args.label_smoothing)
            training.optimizer_step(model, optimizer, scheduler, loss, args.max_grad_norm)
            total_loss += loss.item() * len(idx)
            seen += len(idx)
        train_seconds = time.time() - start
        val = evaluate_cached(model, val_data, mean, std, size)
        state["train_seconds"] += train_seconds
        state["epoch"] = epoch + 1
        selectable = size == args.image_size
        if selectable and val["balanced_accuracy"] > state["best_balanced_accuracy"]:
            state["best_balanced_accuracy"], state["best_epoch"] = val["balanced_accuracy"], epoch + 1
            model.save_pretrained(out / "best")
            training.make_processor([mean] * 3, [std] * 3, args.image_size).save_pretrained(out / "best")
        training.log_record(
            out,
            {
                "epoch": epoch + 1,
                "resolution": size,
                "train_loss": total_loss / max(1, seen),
                "lr": scheduler.get_last_lr()[0],
                "epoch_seconds": round(train_seconds, 1),
                "val_accuracy": round(val["accuracy"], 4),
                "val_balanced_accuracy": round(val["balanced_accuracy"], 4),
                "val_confusion_matrix": val["confusion_matrix"],
                "best_epoch": state["best_epoch"],
            },
        )
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(gen),
                "state": state,
                "mean": mean,
                "std": std,
            },
            out / "last.pt.tmp",
        )
        (out / "last.pt.tmp").replace(ckpt)

    return finish(args, out, state, mean, std, counts)


def finish(args: TrainClassifierArguments, out: Path, state: dict, mean: float, std: float, counts: dict) -> dict:
    """Load the selected checkpoint, evaluate the test split once and export the model with its processor."""
    if state["best_epoch"] is None:
        raise ValueError(
            "No full-resolution epoch was run, so no checkpoint was selected: set low_res_epochs < epochs."
        )
    model, processor = training.load_best(out)
    result = {
        "best_epoch": state["best_epoch"],
        "validation_balanced_accuracy": state["best_balanced_accuracy"],
        "train_seconds": round(state["train_seconds"], 1),
        "epochs": args.epochs,
        **counts,
        "forward_gflops": training.forward_flops(model.config) / 1e9,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "pixel_mean": mean,
        "pixel_std": std,
        "torch_version": torch.__version__,
        "num_threads": args.num_threads,
    }
    if args.evaluate_test:
        result["test"] = training.evaluate_test_once(out, model, processor, args.data_dir, batch_size=64)
    training.write_results(out, result)
    if args.export_dir:
        export = training.export_model(args.export_dir, model, processor, result, args)
        if args.evaluate_test:
            sae_dir = export.parent / "saes"
            sae_dir = sae_dir if sae_dir.is_dir() else None
            if args.dataset == "chest_xray_pneumonia":
                write_classifier_card(export, sae_dir)
            else:
                write_domain_card(export, args.dataset, sae_dir)
    return result


def main(argv: list[str] | None = None) -> dict:
    return train(training.parse_arguments(TrainClassifierArguments, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
