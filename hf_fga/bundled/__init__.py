"""
The bundled chest X-ray ViT, its SAEs, its mean patch residuals and example images, shipped inside the package so
that everything runs offline. Every function returns a location that `from_pretrained` (or PIL) can read:

```python
>>> from transformers import ViTForImageClassification, ViTImageProcessorPil
>>> from hf_fga import bundled
>>> model = ViTForImageClassification.from_pretrained(bundled.model_dir())
>>> processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
>>> [record["label_name"] for record in bundled.example_records()][:2]
['NORMAL', 'NORMAL']
```

The assets are produced by `scripts/train_classifier.py`, `scripts/export_bundled_examples.py` and
`scripts/train_sae.py`; the exact commands are in the model folder's `README.md`.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODEL_FOLDER = "model"
SAE_FOLDER = "saes"
EXAMPLES_FOLDER = "examples"
EXAMPLES_INDEX = "examples.json"
MEAN_RESIDUALS_NAME = "mean_residuals.safetensors"
SPLITS_NAME = "splits.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _existing(path: Path, what: str, command: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"The bundled {what} is missing at {path}: this installation ships without it. Produce it with "
            f"`{command}` (see hf_fga/bundled/model/README.md) or reinstall hf_fga."
        )
    return path


def model_dir() -> Path:
    """Folder of the bundled `ViTForImageClassification` and its `ViTImageProcessorPil` (for `from_pretrained`)."""
    return _existing(ROOT / MODEL_FOLDER, "classifier", "python scripts/train_classifier.py")


def sae_dir() -> Path:
    """Folder of the bundled SAE set (one `block_<i>` subfolder per block; read it with `hf_fga.sae.load_saes`)."""
    return _existing(ROOT / SAE_FOLDER, "SAE set", "python scripts/train_sae.py")


def mean_residuals_path() -> Path:
    """The bundled model's mean patch residuals per block (read with `hf_fga.attribution.load_mean_residuals`)."""
    return _existing(ROOT / MEAN_RESIDUALS_NAME, "mean-residual file", "hf_fga.attribution.compute_mean_residuals")


def splits_path() -> Path:
    """JSON file naming the validation patients and file names carved out of the train split."""
    return _existing(ROOT / SPLITS_NAME, "split file", "python scripts/train_classifier.py")


def example_images() -> list[Path]:
    """Paths of the bundled example images (test split, both classes), sorted by name."""
    folder = _existing(ROOT / EXAMPLES_FOLDER, "example folder", "python scripts/export_bundled_examples.py")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def example_records() -> list[dict]:
    """
    One dict per example image, in the order of [`example_images`]: `path` (`Path`), `label` (`int`),
    `label_name`, `subtype`, `patient_id` and `source_file_name` (the file's name in the dataset).
    """
    folder = _existing(ROOT / EXAMPLES_FOLDER, "example folder", "python scripts/export_bundled_examples.py")
    index = json.loads((folder / EXAMPLES_INDEX).read_text())
    records = [{**record, "path": folder / record["file"]} for record in index["examples"]]
    return sorted(records, key=lambda record: record["path"].name)


__all__ = ["example_images", "example_records", "mean_residuals_path", "model_dir", "sae_dir", "splits_path"]
