"""Write the chest X-ray train split WITHOUT the validation patients as a parquet dataset folder.

The bundled SAEs and mean residuals are fitted on these images only, so that the classifier's validation patients
(listed in `hf_fga/bundled/splits.json` by `scripts/train_classifier.py`) stay unseen by every bundled asset.
The folder loads with `datasets.load_dataset(<output_dir>, split="train")`.

Usage:
    python scripts/export_sae_images.py --output_dir runs/chest_xray_train_without_validation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chest_xray_pneumonia"
DEFAULT_SPLITS = REPO / "hf_fga" / "bundled" / "splits.json"


def export(data_dir: str, splits_path: str, output_dir: str) -> int:
    held_out = set(json.loads(Path(splits_path).read_text())["validation_file_names"])
    ds = datasets.load_dataset(data_dir, split="train")
    ds = ds.filter(lambda name: name not in held_out, input_columns="file_name")
    out = Path(output_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(out / "train-00000-of-00001.parquet"))
    return len(ds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--splits_path", default=str(DEFAULT_SPLITS))
    parser.add_argument("--output_dir", default="runs/chest_xray_train_without_validation")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.data_dir, args.splits_path, args.output_dir)} images to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
