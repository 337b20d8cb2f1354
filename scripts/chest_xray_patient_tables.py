"""
The tables of `docs/results/chest_xray.md` from the chest X-ray test run, as Markdown: per preset the mean ± SEM of
every configuration (with the image-level paired Wilcoxon stars), and the patient-level statistics of method.md §10
for two declared families of tests, each Holm-corrected across all its rows:

- family 1, "every configuration vs TransMM × 3 metrics × 2 presets";
- family 2, the issue-7 controls: FGA `combined` vs `centered`, `mean-centered` and `no-sae` × 3 metrics × 2 presets.

Each row gives the per-patient mean difference, the mean per-image difference with its patient-cluster bootstrap
95 % CI, the two-sided Wilcoxon p on per-patient means, its Holm-adjusted p, the image-level Wilcoxon p, and the
verdict at both levels ("better", "worse", "no difference" at p < 0.05; image level: the uncorrected per-image
Wilcoxon, patient level: the Holm-adjusted per-patient Wilcoxon), so a verdict that changes is visible.

    python scripts/chest_xray_patient_tables.py    # prints the tables
    python scripts/chest_xray_patient_tables.py --output_dir docs/results/chest_xray/test  # + patient_level.md, CSVs

Idempotent (seeded bootstrap); a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hf_fga.evaluation.configuration import REFERENCE, EvaluationConfiguration, key_label
from hf_fga.evaluation.hypothesis_tests import (
    TWO_SIDED,
    Comparison,
    comparison_markdown,
    split_patients,
    superiority_family,
)
from hf_fga.evaluation.statistics import (
    CONFIG_COLUMNS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    METRICS,
    paired_comparison,
    summarize,
)
from hf_fga.evaluation.storage import RESULTS_FOLDER, read_parts

CONTROLS = ("centered", "mean-centered", "no-sae")
BETTER, WORSE, SAME = "better", "worse", "no difference"


def verdicts(table: pd.DataFrame, difference: str, p_value: str, alpha: float = 0.05) -> pd.Series:
    """
    Per row of a comparison table: "better" / "worse" when `p_value` < `alpha` and the `difference` (config −
    reference) points that way (higher is better, lower for the metrics of `LOWER_IS_BETTER`), else "no difference".
    """
    lower = table["metric"].isin(LOWER_IS_BETTER)
    better = (table[difference] < 0).where(lower, table[difference] > 0)
    significant = table[p_value] < alpha
    return pd.Series(
        [(BETTER if b else WORSE) if s else SAME for b, s in zip(better, significant, strict=True)],
        index=table.index,
        dtype=object,
    )


def family_table(
    results: pd.DataFrame,
    pairs: list[tuple[str, str]],
    patients: dict[str, str],
    name: str,
    *,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
) -> pd.DataFrame:
    """
    One declared family: the patient-level two-sided tests of every (config, reference) pair per preset and metric
    (`superiority_family`, Holm across all its rows), joined with the image-level paired Wilcoxon of the same cells,
    and the verdict at both levels (`image_verdict`, `patient_verdict`) and whether it `changed`.
    """
    comparisons = [Comparison(name, config, reference, TWO_SIDED) for config, reference in pairs]
    family = superiority_family(results, comparisons, patients, alpha=alpha, n_resamples=n_resamples, seed=0)
    keys = ["preset", "fill", "config", "reference", "metric"]
    images = pd.concat([paired_comparison(results, a, b) for a, b in pairs], ignore_index=True)
    images = images[keys + ["wilcoxon_p"]].rename(columns={"wilcoxon_p": "image_wilcoxon_p"})
    family = family.merge(images, on=keys, how="left", validate="one_to_one")
    family["image_verdict"] = verdicts(family, "mean_difference", "image_wilcoxon_p", alpha)
    family["patient_verdict"] = verdicts(family, "patient_mean_difference", "holm_p", alpha)
    family["changed"] = family["image_verdict"] != family["patient_verdict"]
    return family


def means_table(summary: pd.DataFrame, preset: str) -> str:
    """Mean ± SEM per configuration of one preset, with the % change against TransMM and the paired Wilcoxon stars."""
    rows = summary[summary["preset"] == preset]
    metrics = [m for m in METRICS if m in set(rows["metric"])]
    header = " | ".join(f"{METRIC_NAMES[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics)
    lines = [f"| configuration | n | {header} |", "|" + " --- |" * (len(metrics) + 2)]
    for config, frame in rows.groupby("config", sort=False):
        cells = []
        for metric in metrics:
            row = frame[frame["metric"] == metric].iloc[0]
            cell = f"{row['mean']:.4g} ± {row['sem']:.2g}"
            if config != REFERENCE.key:
                cell += f" ({row['pct_change']:+.1f} %{row['paired_stars']})"
            cells.append(cell)
        lines.append(f"| {key_label(config)} | {int(frame['n'].max())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FAMILY_COLUMNS = {
    "preset": "preset",
    "config": "A",
    "reference": "B",
    "metric": "metric",
    "n_patients": "patients",
    "patient_mean_difference": "A − B, per-patient mean",
    "image_difference": "A − B, image mean [95 % patient-bootstrap CI]",
    "wilcoxon_p": "Wilcoxon p (patients)",
    "holm_p": "Holm p",
    "image_wilcoxon_p": "Wilcoxon p (images)",
    "verdict": "A vs B: images → patients + Holm",
}


def family_markdown(family: pd.DataFrame) -> str:
    shown = family.assign(
        patient_mean_difference=[f"{v:+.4g}" for v in family["patient_mean_difference"]],
        image_difference=[
            f"{m:+.4g} [{lo:+.4g}, {hi:+.4g}]"
            for m, lo, hi in zip(family["mean_difference"], family["ci_low"], family["ci_high"], strict=True)
        ],
        verdict=[
            f"**{i} → {p}**" if c else f"{i} → {p}"
            for i, p, c in zip(family["image_verdict"], family["patient_verdict"], family["changed"], strict=True)
        ],
    )
    return comparison_markdown(shown, FAMILY_COLUMNS)


def changes(family: pd.DataFrame) -> list[str]:
    rows = family[family["changed"]]
    if rows.empty:
        return ["No verdict changes between the image level and the patient level with Holm."]
    return [
        f"- {r.preset}, {key_label(r.config)} vs {key_label(r.reference)}, {METRIC_NAMES[r.metric]}: "
        f"{r.image_verdict} "
        f"(image-level Wilcoxon p = {r.image_wilcoxon_p:.2g}) → {r.patient_verdict} "
        f"(patients: p = {r.wilcoxon_p:.2g}, Holm p = {r.holm_p:.2g})"
        for r in rows.itertuples()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("docs/results/chest_xray/test"), help="the test run folder")
    parser.add_argument("--config", default="fga|combined|0,1,2|0.5|10", help="the chosen FGA combined configuration")
    parser.add_argument("--data", default="/work/shared/data/chest_xray_pneumonia", help="the dataset (patient ids)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--n_resamples", type=int, default=10_000, help="patient-cluster bootstrap resamples")
    parser.add_argument("--output_dir", type=Path, default=None, help="also write patient_level.md and its CSVs here")
    args = parser.parse_args(argv)

    columns = [*dict.fromkeys(["image_id", "preset", "fill", *CONFIG_COLUMNS, "label", *METRICS])]
    results = read_parts(args.run / RESULTS_FOLDER, columns=columns)
    if results.empty:
        parser.error(f"no results under {args.run / RESULTS_FOLDER}.")
    chosen = EvaluationConfiguration.from_key(args.config)
    if args.config not in set(results["config"]):
        parser.error(f"--config {args.config!r} is not in the results.")
    patients = split_patients(args.data)
    summary = summarize(results)
    options = dict(alpha=args.alpha, n_resamples=args.n_resamples)

    others = [c for c in summary["config"].drop_duplicates() if c != REFERENCE.key]
    versus_transmm = family_table(results, [(c, REFERENCE.key) for c in others], patients, "vs TransMM", **options)
    controls = [EvaluationConfiguration("fga", v, chosen.layers, chosen.kappa, chosen.cmax).key for v in CONTROLS]
    issue7 = family_table(results, [(args.config, c) for c in controls], patients, "issue 7", **options)

    n_images, n_patients = results["image_id"].nunique(), len({patients[i] for i in results["image_id"].unique()})
    lines = [f"{n_images} test images of {n_patients} patients.", ""]
    for preset in summary["preset"].drop_duplicates():
        lines += [f"## Mean ± SEM, preset `{preset}`", "", means_table(summary, preset), ""]
    presets, metrics = summary["preset"].nunique(), summary["metric"].nunique()
    size = f"× {metrics} metrics × {presets} preset{'s' if presets > 1 else ''}"
    for title, family in (
        (f"Family 1: every configuration vs TransMM {size} ({len(versus_transmm)} tests)", versus_transmm),
        (f"Family 2: `combined` vs `centered` / `mean-centered` / `no-sae` {size} ({len(issue7)} tests)", issue7),
    ):
        lines += [f"## {title}", "", family_markdown(family), "", "Verdicts that change:", "", *changes(family), ""]
    text = "\n".join(lines)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "patient_level.md").write_text(
            "# Chest X-ray test split: patient-level statistics and Holm (method.md §10)\n\n"
            "`python scripts/chest_xray_patient_tables.py --output_dir docs/results/chest_xray/test`\n\n" + text
        )
        versus_transmm.to_csv(args.output_dir / "patient_level_vs_transmm.csv", index=False)
        issue7.to_csv(args.output_dir / "patient_level_controls.csv", index=False)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
