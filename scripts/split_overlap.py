"""
Which test images of a bundled domain also sit, byte for byte or almost, in the images its model learnt from (the
train split, and the validation split where the data set has one), and what that does to the model's test score and
to the attribution comparisons (`hf_fga.evaluation.split_overlap`).

    python scripts/split_overlap.py --domain breast_ultrasound    # → docs/results/breast_ultrasound/split_overlap

A test image has a *near-duplicate* when its 16 × 16 grey thumbnail correlates above `--threshold` (0.99) with the
thumbnail of a train or validation image; *identical* when the encoded files are byte-identical. The screening rule
is the one scripts/controls_plan_facts.py used before; the figure shows the pairs so a reader can judge them.

The model's predictions and every configuration's per-image scores are read from the domain's test run
(`--run`, default `docs/results/<domain>/test`, written by `scripts/reproduce.sh`): no model is run. Writes
`overlap.csv` (one row per test image), `overlap.md`, `pairs.png` (the `--figure_count` best-correlated pairs) and
`run.json`. The comparison of FGA and `centered` with TransMM on the images without a near-duplicate is
*exploratory* (not in any plan): it says whether the paired attribution results lean on the duplicated images.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from pathlib import Path

import datasets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from hf_fga import bundled  # noqa: E402
from hf_fga.evaluation.configuration import REFERENCE  # noqa: E402
from hf_fga.evaluation.hypothesis_tests import (  # noqa: E402
    comparison_markdown,
    directional_holds,
    patient_comparison,
    split_units,
)
from hf_fga.evaluation.split_overlap import nearest_matches, scores_by_overlap  # noqa: E402
from hf_fga.evaluation.statistics import METRICS  # noqa: E402
from hf_fga.evaluation.storage import read_parts  # noqa: E402
from hf_fga.evaluation.summary import read_chosen_configuration  # noqa: E402
from hf_fga.images import load_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", required=True, choices=bundled.list_domains(), help="the bundled model")
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--run", type=Path, default=None, help="the test run (default docs/results/<domain>/test)")
    parser.add_argument("--output", type=Path, default=None, help="default docs/results/<domain>/split_overlap")
    parser.add_argument("--threshold", type=float, default=0.99, help="thumbnail correlation of a near-duplicate")
    parser.add_argument("--figure_count", type=int, default=8)
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold is a correlation in (0, 1]; got {args.threshold}.")
    args.run = args.run or REPO / "docs" / "results" / args.domain / "test"
    args.output = args.output or REPO / "docs" / "results" / args.domain / "split_overlap"
    return args


def load_splits(folder: Path) -> dict[str, datasets.Dataset]:
    """
    The test split and the splits the model learnt from or was selected on (train, and validation where the data set
    has one), images left encoded (`{'bytes', 'path'}`): digests read the files as stored.
    """
    loaded = datasets.load_dataset(str(folder))
    if "test" not in loaded or "train" not in loaded:
        raise SystemExit(f"{folder} needs a train and a test split; it has {sorted(loaded)}.")
    splits = {name: loaded[name] for name in ("train", "validation", "test") if name in loaded}
    for name, dataset in splits.items():
        if "file_name" not in dataset.column_names:
            raise SystemExit(f"the {name} split of {folder} has no file_name column: this check needs named images.")
    return {name: d.cast_column("image", datasets.Image(decode=False)) for name, d in splits.items()}


def paired_table(results: pd.DataFrame, keep: set[str], config: str, units: dict[str, str]) -> pd.DataFrame:
    """
    The chosen configuration and its `centered` control against TransMM, on all test images and on `keep`: one row
    per (preset, configuration, metric, images) of `hypothesis_tests.patient_comparison` (per unit of `units`: the
    patient where the data set has patient ids, the image otherwise; bootstrap CI over units, 2,000 resamples,
    seed 0), with `better`: the mean points the better way and the uncorrected Wilcoxon p < 0.05.
    """
    tables = []
    controls = ((config, "FGA combined"), (config.replace("|combined|", "|centered|"), "`centered`"))
    for rank, (key, title) in enumerate(controls):
        for group, subset in (("all", results), ("without a near-duplicate", results[results["image_id"].isin(keep)])):
            table = patient_comparison(subset, key, REFERENCE.key, units, n_resamples=2_000, seed=0)
            tables.append(table.assign(configuration=title, images=group, rank=rank, subset=group != "all"))
    table = pd.concat(tables, ignore_index=True)
    table["better"] = directional_holds(table, p_column="wilcoxon_p")
    table["metric_rank"] = table["metric"].map({m: i for i, m in enumerate(METRICS)})
    ordered = table.sort_values(["preset", "rank", "metric_rank", "subset"], kind="stable", ignore_index=True)
    return ordered.drop(columns=["rank", "metric_rank", "subset"])


def figure_pairs(overlap: pd.DataFrame, threshold: float, count: int) -> pd.DataFrame:
    """The pairs drawn: the best `count` − 4, then the 2 just above `threshold` and the 2 just below it."""
    ranked = overlap.sort_values("correlation", ascending=False)
    above, below = ranked[ranked["correlation"] > threshold], ranked[ranked["correlation"] <= threshold]
    chosen = pd.concat([ranked.head(max(count - 4, 0)), above.tail(2), below.head(2)])
    return chosen[~chosen.index.duplicated()]


def pairs_figure(pairs: pd.DataFrame, images: dict[str, dict], path: Path) -> None:
    rows = (len(pairs) + 1) // 2
    figure, axes = plt.subplots(rows, 4, figsize=(10, 2.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for position, (_, pair) in enumerate(pairs.iterrows()):
        sides = ((pair["image_id"], "test", pair["label"]), (pair["match"], pair["match_split"], pair["match_label"]))
        for side, (name, split, label) in enumerate(sides):
            axis = axes[position // 2, 2 * (position % 2) + side]
            axis.imshow(load_image(Image.open(io.BytesIO(images[f"{split}/{name}"]["bytes"]))))
            note = f"r = {pair['correlation']:.4f}" + (" (identical)" if pair["identical"] else "")
            axis.set_title(f"{split}: {name} ({label})" + (f"\n{note}" if side == 0 else "\n"), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.data_root / bundled.domain(args.domain).dataset
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: pass --data_root with the folder holding the dataset.")
    if not (args.run / "results").is_dir():
        raise SystemExit(
            f"{args.run} holds no results/: run scripts/reproduce.sh --dataset {args.domain} first (its test stage)."
        )
    splits = load_splits(folder)
    learnt = [name for name in ("train", "validation") if name in splits]
    config = json.loads((bundled.model_dir(args.domain) / "config.json").read_text())
    names = {int(k): v for k, v in config["id2label"].items()}
    reference_split = [s for s in learnt for _ in range(len(splits[s]))]
    reference_images = [item for s in learnt for item in splits[s]["image"]]
    reference_names = [name for s in learnt for name in splits[s]["file_name"]]
    reference_labels = [label for s in learnt for label in splits[s]["label"]]
    test = splits["test"]
    matches = nearest_matches(
        list(test["image"]), reference_images, query_ids=list(test["file_name"]),
        reference_ids=[f"{s}/{n}" for s, n in zip(reference_split, reference_names, strict=True)],
    )  # fmt: skip
    label_of = {
        f"{s}/{n}": names[int(label)]
        for s, n, label in zip(reference_split, reference_names, reference_labels, strict=True)
    }
    overlap = pd.DataFrame(
        {
            "image_id": matches["query"],
            "label": [names[int(label)] for label in test["label"]],
            "match_split": [m.split("/", 1)[0] for m in matches["match"]],
            "match": [m.split("/", 1)[1] for m in matches["match"]],
            "match_label": [label_of[m] for m in matches["match"]],
            "correlation": matches["correlation"],
            "identical": matches["identical"],
        }
    )
    overlap["near_duplicate"] = overlap["correlation"] > args.threshold
    results = read_parts(args.run / "results")
    transmm = results[(results["config"] == REFERENCE.key) & (results["preset"] == results["preset"].iloc[0])]
    predicted = transmm.set_index("image_id")["prediction"].map(lambda p: names[int(p)])
    overlap["prediction"] = overlap["image_id"].map(predicted)
    scored = overlap.dropna(subset=["prediction"])
    table = scores_by_overlap(scored["label"], scored["prediction"], scored["near_duplicate"])
    chosen = read_chosen_configuration(args.run.parent / "chosen_configuration.txt")
    keep = set(overlap.loc[~overlap["near_duplicate"], "image_id"])
    units, by_patient = split_units(folder, "test")
    paired = paired_table(results, keep, chosen, units)

    args.output.mkdir(parents=True, exist_ok=True)
    overlap.to_csv(args.output / "overlap.csv", index=False)
    images = {f"test/{n}": i for n, i in zip(test["file_name"], test["image"], strict=True)}
    images.update({f"{s}/{n}": i for s, n, i in zip(reference_split, reference_names, reference_images, strict=True)})
    pairs_figure(figure_pairs(overlap, args.threshold, args.figure_count), images, args.output / "pairs.png")
    command = "python " + " ".join(
        shlex.quote(a) for a in ["scripts/split_overlap.py", *(argv if argv is not None else sys.argv[1:])]
    )
    duplicated = overlap[overlap["near_duplicate"]]
    conflicts = duplicated[duplicated["label"] != duplicated["match_label"]]
    thresholds = ", ".join(f"> {t}: {(overlap['correlation'] > t).sum()}" for t in (0.999, 0.99, 0.95, 0.9))
    lines = [
        f"# Test images of `{args.domain}` that the model has (almost) seen",
        "",
        f"`{command}`. Test split: {len(test)} images; compared with the {len(reference_images)} images of the "
        f"{' and '.join(learnt)} split(s), which the model learnt from or was selected on. Near-duplicate: 16 × 16 "
        "grey-thumbnail correlation > "
        f"{args.threshold} (the threshold `scripts/controls_plan_facts.py` already used, set before these pairs were "
        "looked at; a screening rule: `hf_fga.evaluation.split_overlap`).",
        "",
        f"- **{len(duplicated)} of {len(test)} test images ({len(duplicated) / len(test):.0%}) have a "
        "near-duplicate** "
        f"among them ({int(overlap['identical'].sum())} byte-identical); by class: "
        + (", ".join(f"{c} {n}" for c, n in duplicated["label"].value_counts().items()) or "none")
        + f". Test images above other thresholds: {thresholds}.",
        f"- **Label conflicts**: {len(conflicts)} near-duplicate pair(s) carry different labels"
        + (
            ": "
            + "; ".join(
                f"test `{r.image_id}` ({r.label}) = {r.match_split} `{r.match}` ({r.match_label}), "
                f"r = {r.correlation:.4f}"
                for r in conflicts.itertuples()
            )
            if len(conflicts)
            else ""
        )
        + ".",
        "",
        "## The model's score, split by overlap",
        "",
        "Predictions of the bundled model as stored in the test run (`"
        + str(args.run.relative_to(REPO) if args.run.is_relative_to(REPO) else args.run)
        + "`); balanced accuracy: mean recall over the classes present in the group.",
        "",
        "| images | n | accuracy | balanced accuracy | classes |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r.group} | {r.images} | {r.accuracy:.3f} | {r.balanced_accuracy:.3f} | {r.classes} |"
            for r in table.itertuples()
        ),
        "",
        "## Exploratory: do the attribution comparisons lean on the duplicated images?",
        "",
        f"The configuration's score minus TransMM's (chosen configuration `{chosen}` and its `centered` control), on "
        "all test images and on those without a near-duplicate, "
        + ("per patient (the mean of each patient's images)" if by_patient else "per image (no patient ids)")
        + ": mean per-image difference"
        + (", the mean of the per-patient means" if by_patient else "")
        + ", its "
        + ("patient-cluster " if by_patient else "")
        + "bootstrap 95 % CI (2,000 resamples, seed 0), two-sided Wilcoxon signed-rank test, no correction (not in "
        "any plan). 'better than TransMM': the mean points the better way and p < 0.05.",
        "",
        comparison_markdown(
            paired,
            {
                "preset": "preset",
                "configuration": "configuration",
                "metric": "metric",
                "images": "images",
                "n_images": "n",
                **({"n_patients": "patients", "patient_mean_difference": "per-patient mean"} if by_patient else {}),
                "mean_difference": "mean difference",
                "ci_low": "CI low",
                "ci_high": "CI high",
                "wilcoxon_p": "Wilcoxon p",
                "better": "better than TransMM",
            },
        ),  # fmt: skip
        "",
        "![Test images and their nearest train or validation image](pairs.png)",
        "",
        "*Test image and its nearest train or validation image (thumbnail correlation r): the "
        f"{args.figure_count - 4} best-correlated pairs, then the 2 just above and the 2 just below the threshold "
        f"{args.threshold}.*",
        "",
    ]
    (args.output / "overlap.md").write_text("\n".join(lines))
    (args.output / "run.json").write_text(
        json.dumps(
            {"command": command, "threshold": args.threshold, "run": str(args.run), "dataset": str(folder)}, indent=1
        )
        + "\n"
    )
    print("\n".join(lines[:7]))
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
