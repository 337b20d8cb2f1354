"""A tiny on-disk evaluation setup: a random ViT with its image processor, an SAE set and a parquet dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import ViTImageProcessorPil

from hf_fga.sae import save_sae_set
from tests.helpers import IMAGE_SIZE, tiny_sae, tiny_vit

NUM_LAYERS = 4  # gated blocks 0 and 1 are not the degenerate blocks L-2, L-1
SAE_BLOCKS = (0, 1)


def write_dataset(root: Path, num_images: int = 6, seed: int = 0) -> Path:
    """A Hub-style parquet dataset folder (`data/test-*.parquet`) of random RGB images, labels and file names."""
    import datasets

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(num_images)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["class_0", "class_1", "class_2"]),
            "file_name": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {
            "image": images,
            "label": [int(i % 3) for i in range(num_images)],
            "file_name": [f"img-{i:03d}.png" for i in range(num_images)],
        },
        features=features,
    )
    folder = root / "dataset"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def write_model(root: Path) -> tuple[Path, Path]:
    """(model folder with its image processor, SAE set folder with Top-K SAEs on blocks 0 and 1)."""
    model_dir, sae_dir = root / "model", root / "saes"
    tiny_vit(num_layers=NUM_LAYERS).save_pretrained(model_dir)
    processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor.save_pretrained(model_dir)
    save_sae_set({block: tiny_sae(layer=block, seed=block) for block in SAE_BLOCKS}, sae_dir)
    return model_dir, sae_dir
