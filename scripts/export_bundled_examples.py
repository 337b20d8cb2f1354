"""Copy about a dozen images of the chest X-ray TEST split into `hf_fga/bundled/examples/` (both classes).

The images are copied byte for byte (the dataset's own JPEG files), one per patient, chosen with a seeded RNG:
`--per_class` NORMAL images and as many PNEUMONIA images (half bacterial, half viral). `examples.json` records file
name, label, subtype and patient id; `README.md` gives the dataset's CC BY 4.0 attribution.

Usage:
    python scripts/export_bundled_examples.py --seed 0 --per_class 6
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chest_xray_pneumonia"
DEFAULT_OUT = REPO / "hf_fga" / "bundled" / "examples"
LABELS = ("NORMAL", "PNEUMONIA")
ATTRIBUTION = (
    "Images from the test split of the pediatric chest X-ray data of Kermany et al., \"Identifying Medical Diagnoses "
    "and Treatable Diseases by Image-Based Deep Learning\", Cell 172(5), 2018 (Mendeley Data, "
    "doi:10.17632/rscbjbr9sj), licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); resized to "
    "224 x 224 px by the dataset copy this project uses."
)


def choose(ds: datasets.Dataset, per_class: int, seed: int) -> list[int]:
    """Row indices: `per_class` NORMAL rows, then `per_class` PNEUMONIA rows split between bacteria and virus."""
    rng = np.random.default_rng(seed)
    groups = [("normal", per_class), ("bacteria", per_class - per_class // 2), ("virus", per_class // 2)]
    rows: list[int] = []
    for subtype, count in groups:
        seen: set[str] = set()
        candidates = [i for i, s in enumerate(ds["subtype"]) if s == subtype]
        for i in rng.permutation(candidates).tolist():
            if ds[i]["patient_id"] not in seen and len(seen) < count:
                seen.add(ds[i]["patient_id"])
                rows.append(i)
    return rows


def export(data_dir: str, out: Path, per_class: int, seed: int) -> list[dict]:
    ds = datasets.load_dataset(data_dir, split="test").cast_column("image", datasets.Image(decode=False))
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in choose(ds, per_class, seed):
        row = ds[i]
        name = f"{LABELS[row['label']].lower()}_{Path(row['file_name']).stem}.jpeg"
        (out / name).write_bytes(row["image"]["bytes"])
        records.append({
            "file": name, "label": row["label"], "label_name": LABELS[row["label"]], "subtype": row["subtype"],
            "patient_id": row["patient_id"], "source_file_name": row["file_name"], "split": "test",
        })
    records.sort(key=lambda r: r["file"])
    meta = {"dataset": "chest_xray_pneumonia", "seed": seed, "license": "CC BY 4.0", "attribution": ATTRIBUTION,
            "examples": records}
    (out / "examples.json").write_text(json.dumps(meta, indent=1) + "\n")
    table = "\n".join(
        f"| {r['file']} | {r['label_name']} | {r['subtype']} | {r['patient_id']} | {r['source_file_name']} |"
        for r in records
    )
    (out / "README.md").write_text(
        "# Example chest X-rays (test split)\n\n"
        f"{ATTRIBUTION}\n\nChosen by `python scripts/export_bundled_examples.py --seed {seed} --per_class {per_class}`"
        " (one image per patient; never used for training or model selection).\n\n"
        "| file | label | subtype | patient id | file in the dataset |\n| --- | --- | --- | --- | --- |\n"
        f"{table}\n"
    )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--output_dir", default=str(DEFAULT_OUT))
    parser.add_argument("--per_class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = export(args.data_dir, Path(args.output_dir), args.per_class, args.seed)
    print(f"wrote {len(records)} examples to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
