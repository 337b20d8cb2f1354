"""Mean patch residual μ_ℓ of every block of the bundled classifier (method.md §3, the `mean-centered` control).

Averaged over the patch tokens of the chest X-ray train images WITHOUT the validation patients (the folder written by
`scripts/export_sae_images.py`), preprocessed by the bundled image processor; written with
`hf_fga.attribution.save_mean_residuals` to `hf_fga/bundled/mean_residuals.safetensors`.

Usage:
    python scripts/compute_bundled_mean_residuals.py --data_dir runs/chest_xray_train_without_validation
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import datasets
import torch
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_fga import bundled
from hf_fga.attribution import compute_mean_residuals, save_mean_residuals


def pixel_batches(ds: datasets.Dataset, processor: ViTImageProcessorPil, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(ds), batch_size):
        images = [image.convert("RGB") for image in ds[start : start + batch_size]["image"]]
        yield processor(images=images, return_tensors="pt")["pixel_values"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="runs/chest_xray_train_without_validation")
    parser.add_argument("--output", default=str(bundled.ROOT / bundled.MEAN_RESIDUALS_NAME))
    parser.add_argument("--hook_point", default="resid_post")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    model = ViTForImageClassification.from_pretrained(bundled.model_dir()).eval()
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
    ds = datasets.load_dataset(args.data_dir, split="train")
    layers = list(range(model.config.num_hidden_layers))
    means = compute_mean_residuals(model, pixel_batches(ds, processor, args.batch_size), layers, args.hook_point)
    save_mean_residuals(means, args.output, hook_point=args.hook_point, model_name="hf_fga/bundled/model")
    print(f"wrote μ for blocks {layers} over {len(ds)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
