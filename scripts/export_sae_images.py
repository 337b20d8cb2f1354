"""Write the chest X-ray train split WITHOUT the validation patients as a parquet dataset folder.

The bundled SAEs and mean residuals are fitted on these images only, so that the classifier's validation patients
(listed in `hf_fga/bundled/splits.json` by `scripts/train_classifier.py`) stay unseen by every bundled asset.
The folder loads with `datasets.load_dataset(<output_dir>, split="train")`.

Another dataset: `--ids_key` names the split file's list of validation ids, matched against `--id_column` (`none`:
the row index, for CIFAR-10, whose split file `scripts/train_cifar10.py` writes with `validation_rows`).

Usage:
    python scripts/export_sae_images.py --output_dir runs/chest_xray_train_without_validation
    python scripts/export_sae_images.py --data_dir ../shared/data/cifar10 \
        --splits_path runs/cifar10_assets/splits.json \
        --id_column none --ids_key validation_rows --output_dir runs/cifar10_train_without_validation
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


def export(
    data_dir: str,
    splits_path: str,
    output_dir: str,
    id_column: str | None = "file_name",
    ids_key: str = "validation_file_names",
) -> int:
    """The train split without the ids under `ids_key` of `splits_path` (matched against `id_column`, `None`: the
    row index, as a string); returns the number of images written."""
    held_out = set(json.loads(Path(splits_path).read_text())[ids_key])
    ds = datasets.load_dataset(data_dir, split="train")
    if id_column is None:
        ds = ds.filter(lambda _, row: str(row) not in held_out, with_indices=True, input_columns="label")
    else:
        ds = ds.filter(lambda name: name not in held_out, input_columns=id_column)
    out = Path(output_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(out / "train-00000-of-00001.parquet"))
    return len(ds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--splits_path", default=str(DEFAULT_SPLITS))
    parser.add_argument("--output_dir", default="runs/chest_xray_train_without_validation")
    parser.add_argument("--id_column", default="file_name", help="the column of the ids; none: the row index")
    parser.add_argument("--ids_key", default="validation_file_names", help="the split file's list of held-out ids")
    args = parser.parse_args(argv)
    id_column = None if args.id_column.lower() == "none" else args.id_column
    count = export(args.data_dir, args.splits_path, args.output_dir, id_column, args.ids_key)
    print(f"wrote {count} images to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
