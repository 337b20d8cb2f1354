"""
What the classifier-training scripts share (`scripts/train_classifier.py` for the bundled medical ViTs,
`scripts/train_cifar10.py` for the natural-image one): the run's setup, the ViT, its optimiser and step, the
classification metrics, the test split evaluated once through the saved image processor, and the export.

The scripts' arguments are `HfArgumentParser` dataclasses; the functions here read only the fields both have
(`output_dir`, `num_threads`, `seed`, the ViT sizes, `learning_rate`, `weight_decay`, `warmup_epochs`, `epochs`).

```python
>>> args = parse_arguments(TrainCifarArguments, ["--output_dir", "runs/x"])
>>> out, gen = start_run(args)
>>> model = fresh_vit(args, image_size=32, labels=("cat", "dog"))
>>> optimizer, scheduler = adamw_cosine(model, args, steps_per_epoch=100)

```
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup
from transformers.models.vit import ViTImageProcessorPil

from .model_card import RESULTS_NAME

T = TypeVar("T")
TEST_METRICS_NAME = "test_metrics.json"


def parse_arguments(arguments_class: type[T], argv: list[str] | None = None) -> T:
    """The command line `argv` (default: `sys.argv[1:]`) parsed into one `arguments_class` dataclass."""
    (args,) = HfArgumentParser(arguments_class).parse_args_into_dataclasses(args=argv)
    return args


def start_run(args: Any) -> tuple[Path, torch.Generator]:
    """
    Set the torch threads (`args.num_threads`), create `args.output_dir` with the arguments in `args.json`, and seed
    Python, NumPy and torch with `args.seed`.

    Returns:
        `tuple[Path, torch.Generator]`: the output folder and a CPU generator seeded with `args.seed`.
    """
    torch.set_num_threads(args.num_threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(asdict(args), indent=1) + "\n")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    return out, torch.Generator().manual_seed(args.seed)


def label_config(labels: Sequence[str]) -> dict[str, Any]:
    """`num_labels`, `id2label` and `label2id` of a ViT config for `labels`, in the order of their integer ids."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def fresh_vit(args: Any, image_size: int, labels: Sequence[str]) -> ViTForImageClassification:
    """A randomly initialised 3-channel ViT of the arguments' size (`patch_size`, `hidden_size`, …), no dropout."""
    config = ViTConfig(
        image_size=image_size,
        patch_size=args.patch_size,
        num_channels=3,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **label_config(labels),
    )
    return ViTForImageClassification(config)


def make_processor(mean: Sequence[float], std: Sequence[float], size: int) -> ViTImageProcessorPil:
    """The image processor saved with a model: resize to `size` px, rescale to [0, 1], normalise per channel."""
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def adamw_cosine(
    model: torch.nn.Module, args: Any, steps_per_epoch: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (`args.learning_rate`, `args.weight_decay`), cosine schedule after `args.warmup_epochs` of warm-up."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch
    )
    return optimizer, scheduler


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    max_grad_norm: float,
) -> None:
    """One step: the gradients of `loss`, clipped to the global norm `max_grad_norm`, then optimizer and scheduler."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()


def forward_flops(config: ViTConfig, image_size: int | None = None) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass of a `ViTForImageClassification` on one image.

    Counts the matrix products: patch embedding, Q/K/V/output projections, the two attention products, the MLP and
    the classifier head (layer norms, softmax, GELU and additions are negligible and left out).
    """
    size = image_size or config.image_size
    patches = (size // config.patch_size) ** 2
    tokens = patches + 1
    d, m = config.hidden_size, config.intermediate_size
    patch_embed = patches * config.num_channels * config.patch_size**2 * d
    per_block = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
    head = d * config.num_labels
    return 2 * (patch_embed + config.num_hidden_layers * per_block + head)


def confusion(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> list[list[int]]:
    """Confusion matrix, rows = true label, columns = predicted label."""
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
    cm.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    return cm.tolist()


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, label_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix of predictions `(N,)` against labels."""
    cm = confusion(preds, labels, len(label_names))
    recalls = [row[i] / max(1, sum(row)) for i, row in enumerate(cm)]
    return {
        "accuracy": float((preds == labels).float().mean()),
        "balanced_accuracy": float(sum(recalls) / len(recalls)),
        "recall_per_class": dict(zip(label_names, recalls, strict=True)),
        "confusion_matrix": cm,
        "num_examples": int(labels.numel()),
    }


def label_names(model: ViTForImageClassification) -> tuple[str, ...]:
    """The model's label names, in the order of their ids."""
    return tuple(model.config.id2label[i] for i in range(model.config.num_labels))


@torch.no_grad()
def predict(model: ViTForImageClassification, pixel_batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The argmax class `(N,)` of every image of the batches (position embeddings interpolated off the native size)."""
    model.eval()
    size = model.config.image_size
    preds = []
    for pixels in pixel_batches:
        interpolate = pixels.shape[-1] != size
        preds.append(model(pixel_values=pixels, interpolate_pos_encoding=interpolate).logits.argmax(-1))
    return torch.cat(preds)


def evaluate_with_processor(model, processor, data_dir: str, split: str, batch_size: int = 64) -> dict:
    """Evaluate through the saved image processor on the dataset's own (RGB) images, as a user would."""
    import datasets

    ds = datasets.load_dataset(data_dir, split=split)
    batches = (
        processor(images=ds[i : i + batch_size]["image"], return_tensors="pt")["pixel_values"]
        for i in range(0, len(ds), batch_size)
    )
    return classification_metrics(predict(model, batches), torch.tensor(ds["label"]), label_names(model))


def evaluate_test_once(out: Path, model, processor, data_dir: str, batch_size: int) -> dict:
    """The test split's metrics ([`evaluate_with_processor`]), computed once: re-runs read `out/test_metrics.json`."""
    path = out / TEST_METRICS_NAME
    if path.exists():
        return json.loads(path.read_text())
    test = evaluate_with_processor(model, processor, data_dir, "test", batch_size=batch_size)
    path.write_text(json.dumps(test, indent=1) + "\n")
    return test


def load_best(out: Path) -> tuple[ViTForImageClassification, ViTImageProcessorPil]:
    """The selected checkpoint `out/best` (in eval mode) and its image processor."""
    model = ViTForImageClassification.from_pretrained(out / "best").eval()
    return model, ViTImageProcessorPil.from_pretrained(out / "best")


def log_record(out: Path, record: dict) -> None:
    """Print `record` as one JSON line and append it to `out/log.jsonl`."""
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def write_results(out: Path, result: dict) -> None:
    """`out/results.json`, and the same dict printed as one JSON line."""
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


def export_model(export_dir: str | Path, model, processor, result: dict, args: Any) -> Path:
    """Save the model, its processor and the results with the arguments (`training_results.json`) to `export_dir`."""
    export = Path(export_dir)
    model.save_pretrained(export)
    processor.save_pretrained(export)
    (export / RESULTS_NAME).write_text(json.dumps({**result, "args": asdict(args)}, indent=1) + "\n")
    return export
