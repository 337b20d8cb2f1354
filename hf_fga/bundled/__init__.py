"""
The bundled ViTs, their SAEs, their mean patch residuals and example images, shipped inside the package so that
everything runs offline. Each shipped model is a *domain* offered by name ([`list_domains`]): `"chest_xray"` (the
default, used by every call without a name) and `"breast_ultrasound"`, plus `"cifar10"`, whose assets are too large
to ship: `scripts/build_cifar10_assets.sh` builds them outside the package, in `runs/cifar10_assets/` of the checkout
or the folder the `HF_FGA_CIFAR10_DIR` environment variable names (an *external* domain; until it is built every
function raises a `FileNotFoundError` naming that script, and [`available_domains`] leaves it out). Every function
returns a location that `from_pretrained` (or PIL) can read:

```python
>>> from transformers import ViTForImageClassification, ViTImageProcessorPil
>>> from hf_fga import bundled
>>> model = ViTForImageClassification.from_pretrained(bundled.model_dir())
>>> processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
>>> [record["label_name"] for record in bundled.example_records()][:2]
['NORMAL', 'NORMAL']
>>> bundled.list_domains()
['chest_xray', 'breast_ultrasound', 'cifar10']
>>> ViTForImageClassification.from_pretrained(bundled.model_dir("breast_ultrasound")).config.num_labels
3
>>> "chest_xray" in bundled.available_domains()  # model, SAEs, mean residuals and examples all installed
True

```

The assets are produced by `scripts/train_classifier.py`, `scripts/export_bundled_examples.py` and
`scripts/train_sae.py`; the exact commands are in each model folder's `README.md`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODEL_FOLDER = "model"
SAE_FOLDER = "saes"
EXAMPLES_FOLDER = "examples"
EXAMPLES_INDEX = "examples.json"
MEAN_RESIDUALS_NAME = "mean_residuals.safetensors"
SPLITS_NAME = "splits.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DEFAULT_DOMAIN = "chest_xray"
EXTERNAL_ROOT = ROOT.parents[1] / "runs"  # where external domains are built by default (the checkout's runs/)


@dataclass(frozen=True)
class Domain:
    """
    One shipped model and its assets.

    Args:
        subfolder (`str`): the domain's folder inside the package's bundled folder (`""`: the folder itself, where the
            first domain, chest X-ray, has always lived).
        dataset (`str`): the dataset (folder name under `shared/data`) it was trained on.
        build_script (`str`): the script holding the commands that produced the assets.
        title (`str`): the domain in words (for messages and captions).
        root_variable (`str`, *optional*): for an *external* domain (built, not shipped): the environment variable
            that names its folder; `subfolder` is then its default folder under [`EXTERNAL_ROOT`] (the checkout's
            `runs/`) instead of under the package.
    """

    subfolder: str
    dataset: str
    build_script: str
    title: str
    root_variable: str | None = None


DOMAINS = {
    "chest_xray": Domain("", "chest_xray_pneumonia", "scripts/build_bundled_assets.sh", "chest X-ray"),
    "breast_ultrasound": Domain(
        "breast_ultrasound", "breast_ultrasound", "scripts/build_breast_ultrasound_assets.sh", "breast ultrasound"
    ),
    "cifar10": Domain(
        "cifar10_assets", "cifar10", "scripts/build_cifar10_assets.sh", "CIFAR-10", root_variable="HF_FGA_CIFAR10_DIR"
    ),
}


def list_domains() -> list[str]:
    """The names of the bundled domains (the default, `"chest_xray"`, first)."""
    return list(DOMAINS)


def domain(name: str = DEFAULT_DOMAIN) -> Domain:
    """The [`Domain`] called `name`; raises `ValueError` listing the bundled domains when there is none."""
    if name not in DOMAINS:
        raise ValueError(f"No bundled domain called {name!r}: the bundled domains are {list_domains()}.")
    return DOMAINS[name]


def domain_root(name: str = DEFAULT_DOMAIN) -> Path:
    """
    The folder holding the domain's `model`, `saes`, `examples`, mean residuals and split file: inside the package
    for a shipped domain; for an external one the folder its `root_variable` names, else `EXTERNAL_ROOT/subfolder`.
    """
    found = domain(name)
    if found.root_variable is None:
        return ROOT / found.subfolder
    return Path(os.environ.get(found.root_variable) or EXTERNAL_ROOT / found.subfolder)


def _existing(name: str, relative: str, what: str, command: str) -> Path:
    path = domain_root(name) / relative
    if not path.exists():
        found = domain(name)
        if found.root_variable is not None:
            raise FileNotFoundError(
                f"The {what} of the {name!r} domain is missing at {path}: this domain is built, not shipped. Build "
                f"it with `bash {found.build_script}` (it writes to {domain_root(name)}), or set "
                f"{found.root_variable} to the folder where it was built."
            )
        raise FileNotFoundError(
            f"The bundled {what} of the {name!r} domain is missing at {path}: this installation ships without it. "
            f"Produce it with `{command}` (see {found.build_script}) or reinstall hf_fga."
        )
    return path


def model_dir(name: str = DEFAULT_DOMAIN) -> Path:
    """Folder of the domain's `ViTForImageClassification` and its `ViTImageProcessorPil` (for `from_pretrained`)."""
    return _existing(name, MODEL_FOLDER, "classifier", "python scripts/train_classifier.py")


def sae_dir(name: str = DEFAULT_DOMAIN) -> Path:
    """Folder of the domain's SAE set (one `block_<i>` subfolder per block; read it with `hf_fga.sae.load_saes`)."""
    return _existing(name, SAE_FOLDER, "SAE set", "python scripts/train_sae.py")


def mean_residuals_path(name: str = DEFAULT_DOMAIN) -> Path:
    """The domain model's mean patch residuals per block (read with `hf_fga.attribution.load_mean_residuals`)."""
    command = "python scripts/compute_bundled_mean_residuals.py"
    return _existing(name, MEAN_RESIDUALS_NAME, "mean-residual file", command)


def splits_path(name: str = DEFAULT_DOMAIN) -> Path:
    """
    JSON file naming the validation images the model was selected on: their file names (and, for chest X-ray,
    patients), or for CIFAR-10 their row indices in the train split (`validation_rows`).
    """
    return _existing(name, SPLITS_NAME, "split file", "python scripts/train_classifier.py")


def example_images(name: str = DEFAULT_DOMAIN) -> list[Path]:
    """Paths of the domain's example images (test split, every class), sorted by name."""
    folder = _existing(name, EXAMPLES_FOLDER, "example folder", "python scripts/export_bundled_examples.py")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def missing_assets(name: str = DEFAULT_DOMAIN) -> list[str]:
    """
    What the domain lacks to be explained with FGA (by the Space or the demo): one message per missing or empty
    asset among its classifier (no `config.json`), its SAE set (no `block_<i>` folder), its mean residuals and its
    example images, each naming the script that produces it; empty when the domain is complete.
    """
    checks = (
        (model_dir, MODEL_FOLDER, lambda path: (path / "config.json").is_file(), "has no config.json"),
        (sae_dir, SAE_FOLDER, lambda path: any(path.glob("block_*")), "holds no block_<i> folder"),
        (mean_residuals_path, MEAN_RESIDUALS_NAME, Path.is_file, "is not a file"),
        (example_images, EXAMPLES_FOLDER, bool, "holds no image"),
    )
    missing = []
    for locate, relative, complete, problem in checks:
        try:
            found = locate(name)
        except FileNotFoundError as error:
            missing.append(str(error))
            continue
        if not complete(found):
            missing.append(
                f"The bundled {relative!r} of the {name!r} domain at {domain_root(name) / relative} {problem}: "
                f"produce it again (see {domain(name).build_script})."
            )
    return missing


def available_domains() -> list[str]:
    """The bundled domains whose assets are complete (no [`missing_assets`]), in the order of [`list_domains`]."""
    return [name for name in list_domains() if not missing_assets(name)]


def example_records(name: str = DEFAULT_DOMAIN) -> list[dict]:
    """
    One dict per example image, in the order of [`example_images`]: `path` (`Path`), `label` (`int`),
    `label_name`, `source_file_name` (the file's name in the dataset) and, for chest X-ray, `subtype` and
    `patient_id`.
    """
    folder = _existing(name, EXAMPLES_FOLDER, "example folder", "python scripts/export_bundled_examples.py")
    index = json.loads((folder / EXAMPLES_INDEX).read_text())
    records = [{**record, "path": folder / record["file"]} for record in index["examples"]]
    return sorted(records, key=lambda record: record["path"].name)


__all__ = [
    "DEFAULT_DOMAIN",
    "EXTERNAL_ROOT",
    "Domain",
    "available_domains",
    "domain",
    "domain_root",
    "example_images",
    "example_records",
    "list_domains",
    "mean_residuals_path",
    "missing_assets",
    "model_dir",
    "sae_dir",
    "splits_path",
]
