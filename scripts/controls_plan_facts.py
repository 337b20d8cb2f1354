"""
The facts `docs/results/chest_xray_controls/plan.md` states about its validation sample and equivalence margins:
patients of the validation split, byte-identical and near-duplicate images between validation and test, and 10 % of
FGA's per-patient gain over TransMM per metric and preset on the scored test images.

    python scripts/controls_plan_facts.py --data /work/shared/data/chest_xray_pneumonia
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from hf_fga.evaluation.hypothesis_tests import equivalence_margin, patient_keys, per_patient_means
from hf_fga.evaluation.statistics import METRICS
from hf_fga.evaluation.storage import read_parts


def load(data: Path, split: str) -> pd.DataFrame:
    frame = pq.read_table(sorted((data / "data").glob(f"{split}-*.parquet"))).to_pandas()
    frame["key"] = patient_keys(frame["patient_id"], frame["file_name"])
    return frame


def thumbnails(images: pd.Series) -> np.ndarray:
    """16 × 16 grey thumbnails, centred and scaled to unit norm: their dot product is a correlation."""
    rows = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("L").resize((16, 16)), np.float64).ravel()
            for item in images
        ]
    )
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/chest_xray_pneumonia"))
    parser.add_argument("--splits", type=Path, default=Path("hf_fga/bundled/splits.json"))
    parser.add_argument("--results", type=Path, default=Path("docs/results/chest_xray/test/results"))
    parser.add_argument("--config", default="fga|combined|0,1,2|0.5|10")
    parser.add_argument("--sample", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = json.loads(args.splits.read_text())
    train, test = load(args.data, "train"), load(args.data, "test")
    is_val = train["file_name"].isin(set(splits["validation_file_names"])).to_numpy()
    val, rest = train[is_val], train[~is_val]
    print(
        f"validation: {len(val)} images, {val['key'].nunique()} patients; keys all in splits.json: "
        f"{set(val['key']) <= set(splits['validation_patient_keys'])}; validation patients with other train "
        f"images: {len(set(val['key']) & set(rest['key']))}"
    )
    # the evaluation tool's sample: a seeded permutation of the matching rows in dataset order, cut (runner.py)
    sample = train.iloc[np.random.default_rng(args.seed).permutation(np.flatnonzero(is_val))[: args.sample]]
    print(
        f"sample of {args.sample} (seed {args.seed}): {sample['key'].nunique()} patients, labels "
        f"{sample['label'].value_counts().sort_index().to_dict()}"
    )
    digest = lambda item: hashlib.sha256(item["bytes"]).hexdigest()  # noqa: E731
    identical = val["image"].map(digest).isin(set(test["image"].map(digest))).sum()
    best = (thumbnails(val["image"]) @ thumbnails(test["image"]).T).max(axis=1)
    print(
        f"validation images byte-identical to a test image: {identical}; best thumbnail correlation with a test "
        f"image: max {best.max():.4f}, above 0.99: {(best > 0.99).sum()}"
    )
    print(
        f"validation keys that also occur as test keys (independent numbering): "
        f"{len(set(val['key']) & set(test['key']))}; test: {len(test)} images, {test['key'].nunique()} patients"
    )
    results = read_parts(args.results)
    owner = dict(zip(test["file_name"], test["key"], strict=True))
    for (preset, fill), group in results.groupby(["preset", "fill"]):
        for metric in METRICS:
            ours = group[group["config"] == args.config].set_index("image_id")[metric]
            reference = group[group["config"] == "transmm||||"].set_index("image_id")[metric]
            differences = (ours - reference).dropna()
            gain = per_patient_means(differences.to_numpy(), [owner[i] for i in differences.index]).mean()
            print(
                f"{preset} {fill} {metric}: n={len(differences)} per-patient gain {gain:+.6g} "
                f"margin {equivalence_margin(gain):.6g}"
            )


if __name__ == "__main__":
    main()
