"""Mean patch residual μ_ℓ of every block of the bundled classifier (method.md §3, the `mean-centered` control).

Averaged over the patch tokens of the chest X-ray train images WITHOUT the validation patients (the folder written by
`scripts/export_sae_images.py`), preprocessed by the bundled image processor; written with
`hf_fga.attribution.save_mean_residuals` to `hf_fga/bundled/mean_residuals.safetensors`.

For another domain (`--domain breast_ultrasound`) the default data is the train split of its dataset (which holds no
validation image there) and the file goes into the domain's bundled folder. CIFAR-10 (`--domain cifar10`, whose
validation images are rows of its train split): the default data is `runs/cifar10_train_without_validation` (written
by `scripts/export_sae_images.py`, see `scripts/build_cifar10_assets.sh`) and the file goes into the domain's external
folder (`hf_fga.bundled.domain_root("cifar10")`).

Usage:
    python scripts/compute_bundled_mean_residuals.py --data_dir runs/chest_xray_train_without_validation
    python scripts/compute_bundled_mean_residuals.py --domain breast_ultrasound
    python scripts/compute_bundled_mean_residuals.py --domain cifar10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_fga import bundled
from hf_fga.attribution import compute_mean_residuals, save_mean_residuals

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pixel_batches(ds: datasets.Dataset, processor: ViTImageProcessorPil, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(ds), batch_size):
        images = [image.convert("RGB") for image in ds[start : start + batch_size]["image"]]
        yield processor(images=images, return_tensors="pt")["pixel_values"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default=bundled.DEFAULT_DOMAIN, choices=bundled.list_domains())
    parser.add_argument("--data_dir", default=None, help="default (chest X-ray): the folder of export_sae_images.py")
    parser.add_argument("--output", default=None, help="default: the domain's bundled mean-residual file")
    parser.add_argument("--hook_point", default="resid_post")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    default_data = {
        "chest_xray": "runs/chest_xray_train_without_validation",
        "cifar10": "runs/cifar10_train_without_validation",
    }
    data_dir = args.data_dir or default_data.get(args.domain, str(SHARED_DATA / bundled.domain(args.domain).dataset))
    output = args.output or str(bundled.domain_root(args.domain) / bundled.MEAN_RESIDUALS_NAME)
    model_dir = bundled.model_dir(args.domain)
    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    processor = ViTImageProcessorPil.from_pretrained(model_dir)
    ds = datasets.load_dataset(data_dir, split="train")
    layers = list(range(model.config.num_hidden_layers))
    means = compute_mean_residuals(model, pixel_batches(ds, processor, args.batch_size), layers, args.hook_point)
    checkout = bundled.ROOT.parents[1]  # the model's path as recorded: relative to the checkout when inside it
    model_name = str(model_dir.relative_to(checkout) if model_dir.is_relative_to(checkout) else model_dir)
    save_mean_residuals(means, output, hook_point=args.hook_point, model_name=model_name)
    print(f"wrote μ for blocks {layers} over {len(ds)} images to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
