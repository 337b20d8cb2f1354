"""
The facts `docs/results/<domain>_controls/plan.md` states about its validation sample, its power and its equivalence
margins: patients of the validation images (where the dataset has patient ids), byte-identical and near-duplicate
images between validation (and train) and test, the smallest paired effect the test split can detect, and 10 % of
FGA's per-unit gain over TransMM per metric and preset on the scored test images (once scripts/reproduce.sh has
scored them).

    python scripts/controls_plan_facts.py                                # chest X-ray
    python scripts/controls_plan_facts.py --domain breast_ultrasound
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import optimize, stats

from hf_fga import bundled
from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.hypothesis_tests import equivalence_margin, patient_keys, per_patient_means
from hf_fga.evaluation.split_overlap import image_digest, thumbnail_matrix
from hf_fga.evaluation.statistics import METRICS
from hf_fga.evaluation.storage import read_parts
from hf_fga.evaluation.summary import read_chosen_configuration

VALIDATION_SAMPLE = {"chest_xray": 256, "breast_ultrasound": 117}  # reproduce_controls.sh's VALIDATION_LIMIT
SUPERIORITY_TESTS = 48  # plan.md §3: the superiority family's size (Holm's first step tests at α / 48)


def load(data: Path, split: str) -> pd.DataFrame:
    """A split's rows with `key`: the patient key where the dataset has patient ids, else the file name."""
    frame = pq.read_table(sorted((data / "data").glob(f"{split}-*.parquet"))).to_pandas()
    has_patients = "patient_id" in frame.columns
    frame["key"] = patient_keys(frame["patient_id"], frame["file_name"]) if has_patients else frame["file_name"]
    return frame


def duplicates(name: str, images: pd.Series, test: pd.Series) -> str:
    """How many of `images` are byte-identical to a test image, and their best thumbnail correlation with one."""
    identical = images.map(image_digest).isin(set(test.map(image_digest))).sum()
    best = (thumbnail_matrix(images) @ thumbnail_matrix(test).T).max(axis=1)
    return (
        f"{name} images byte-identical to a test image: {identical}; best thumbnail correlation with a test "
        f"image: max {best.max():.4f}, above 0.99: {(best > 0.99).sum()}"
    )


def paired_power(n: int, alpha: float, effect: float) -> float:
    """Power of the two-sided one-sample t-test on n paired differences at standardised effect d_z = mean / SD."""
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    noncentrality = effect * np.sqrt(n)
    lower = np.nan_to_num(stats.nct.cdf(-critical, n - 1, noncentrality))  # scipy: NaN where it is ~0
    return float(stats.nct.sf(critical, n - 1, noncentrality) + lower)


def detectable_effect(n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest d_z the two-sided paired t-test detects with `power` at level `alpha` on n units."""
    high = 1.5  # a d_z above 1.5 is not worth a plan
    if paired_power(n, alpha, high) < power:
        raise ValueError(f"{n} units cannot detect even d_z = {high} with {power:.0%} power at α = {alpha:.3g}.")
    return float(optimize.brentq(lambda d: paired_power(n, alpha, d) - power, 1e-6, high))


def tost_margin(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The margin δ / SD a paired TOST on n units needs to claim equivalence with `power` when the truth is 0."""
    # both one-sided tests reject when |mean| < δ − t_{1−α}·SE; with mean ~ N(0, SE²), P = 2Φ((δ − t·SE)/SE) − 1
    t = stats.t.ppf(1 - alpha, n - 1)
    return float((t + stats.norm.ppf((1 + power) / 2)) / np.sqrt(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default=bundled.DEFAULT_DOMAIN, choices=sorted(VALIDATION_SAMPLE))
    parser.add_argument("--data", type=Path, default=None, help="default /work/shared/data/<the domain's dataset>")
    parser.add_argument("--splits", type=Path, default=None, help="default the domain's bundled splits.json")
    parser.add_argument("--results", type=Path, default=None, help="default docs/results/<domain>/test/results")
    parser.add_argument("--config", default=None, help="default docs/results/<domain>/chosen_configuration.txt")
    parser.add_argument("--sample", type=int, default=None, help="validation sample size (default the domain's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    domain = bundled.domain(args.domain)
    data = args.data or Path("/work/shared/data") / domain.dataset
    splits_file = args.splits or Path("hf_fga/bundled", domain.subfolder, "splits.json")
    results = args.results or Path("docs/results") / args.domain / "test" / "results"
    sample_size = args.sample or VALIDATION_SAMPLE[args.domain]
    splits = json.loads(splits_file.read_text())
    validation_split = splits.get("split_of", "validation")  # chest X-ray's validation images are carved from train
    source, test = load(data, validation_split), load(data, "test")
    has_patients = "patient_id" in test.columns
    is_val = source["file_name"].isin(set(splits["validation_file_names"])).to_numpy()
    val = source[is_val]
    train = source[~is_val] if validation_split == "train" else load(data, "train")
    if has_patients:
        print(
            f"validation: {len(val)} images, {val['key'].nunique()} patients; keys all in splits.json: "
            f"{set(val['key']) <= set(splits['validation_patient_keys'])}; validation patients with other train "
            f"images: {len(set(val['key']) & set(train['key']))}"
        )
    else:
        print(f"validation: {len(val)} images of the {validation_split} split; the dataset has no patient ids")
    # the evaluation tool's sample: a seeded permutation of the matching rows in dataset order, cut (runner.py)
    sample = source.iloc[np.random.default_rng(args.seed).permutation(np.flatnonzero(is_val))[:sample_size]]
    patients = f"{sample['key'].nunique()} patients, " if has_patients else ""
    print(
        f"sample of {sample_size} (seed {args.seed}): {patients}labels "
        f"{sample['label'].value_counts().sort_index().to_dict()}"
    )
    print(duplicates("validation", val["image"], test["image"]))
    if validation_split != "train":  # the SAEs and dictionaries are fitted on the train split
        print(duplicates("train", train["image"], test["image"]))
    if has_patients:
        print(
            f"validation keys that also occur as test keys (independent numbering): "
            f"{len(set(val['key']) & set(test['key']))}; test: {len(test)} images, {test['key'].nunique()} patients"
        )
    units = test["key"].nunique()
    unit = "patients" if has_patients else "images (no patient ids)"
    print(f"test: {len(test)} images, labels {test['label'].value_counts().sort_index().to_dict()}; {units} {unit}")
    for alpha in (0.05, 0.05 / SUPERIORITY_TESTS):
        print(
            f"power: at α = {alpha:.3g} a paired test on {units} units detects d_z = mean/SD of the per-unit "
            f"differences ≥ {detectable_effect(units, alpha):.3f} with 80 % power (t-test; Wilcoxon ≈ 1.02× that)"
        )
    print(
        f"power: a TOST at α = 0.05 on {units} units claims equivalence of a null difference with 80 % power "
        f"when δ ≥ {tost_margin(units):.3f} SD of the per-unit differences"
    )

    frame = read_parts(results)
    if frame.empty:
        print(f"margins: {results} holds no results yet (scripts/reproduce.sh --dataset {args.domain}, test stage)")
        return
    config = args.config or read_chosen_configuration(Path("docs/results") / args.domain / "chosen_configuration.txt")
    owner = dict(zip(test["file_name"], test["key"], strict=True))
    centered = dataclasses.replace(EvaluationConfiguration.from_key(config), variant="centered").key
    for (preset, fill), group in frame.groupby(["preset", "fill"]):
        for metric in METRICS:
            scores = {key: group[group["config"] == key].set_index("image_id")[metric] for key in (config, centered)}
            reference = group[group["config"] == "transmm||||"].set_index("image_id")[metric]

            def per_unit(a: pd.Series, b: pd.Series) -> pd.Series:
                differences = (a - b).dropna()
                return per_patient_means(differences.to_numpy(), [owner[i] for i in differences.index])

            gains = per_unit(scores[config], reference)
            margin = equivalence_margin(gains.mean())
            h1 = per_unit(scores[config], scores[centered])  # H1's differences, for the TOST's power (plan §3.1)
            print(
                f"{preset} {fill} {metric}: n={len((scores[config] - reference).dropna())} per-"
                f"{unit.split()[0][:-1]} gain {gains.mean():+.6g} "
                f"margin {margin:.6g}; δ / SD of the per-unit C − centered differences "
                f"{margin / h1.std(ddof=1) if len(h1) > 1 else float('nan'):.3f}"
            )


if __name__ == "__main__":
    main()
