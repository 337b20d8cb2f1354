"""
The confirmatory analysis of `docs/results/chest_xray_controls/plan.md` (issue 15, method.md §10): the superiority
family (H1–H5, 48 patient-level Wilcoxon tests, Holm), the equivalence family (18 TOSTs, Holm), the secondary
per-class family (H6, 24 tests, Holm) and the exploratory comparisons, written to `hypotheses.md` and CSV files.

    python scripts/controls_analysis.py --gamma 2 --m 64

Inputs (per-image results of `scripts/evaluate_faithfulness.py`):
    --issue7   the issue-7 test run: TransMM, FGA combined, centered, mean-centered, no-sae (bundled SAEs)
    --controls the issue-15 test run with the bundled SAEs: error-scaled, error-only, transmm-power, random-gates,
               selective
    --pca, --random, --ev090, --ev075   test runs of `combined` (and `centered` for the lower-fidelity sets) with the
               dictionaries / SAE sets of `scripts/build_controls_saes.py`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hf_fga.evaluation.configuration import REFERENCE, EvaluationConfiguration
from hf_fga.evaluation.hypothesis_tests import (
    TWO_SIDED,
    Comparison,
    combine_configurations,
    comparison_markdown,
    directional_holds,
    equivalence_family,
    gain_margins,
    holm,
    patient_comparison,
    split_patients,
    superiority_family,
)
from hf_fga.evaluation.storage import RESULTS_FOLDER, read_parts

CLASSES = {0: "NORMAL", 1: "PNEUMONIA"}
COLUMNS = ["image_id", "preset", "fill", "config", "label", "saco", "faithfulness_correlation", "pixel_flipping"]


def load(folder: Path, tag: str | None, needed: list[str], keep_reference: bool = False) -> pd.DataFrame:
    """
    Per-image results of a run, configuration keys prefixed with `tag/` when given; TransMM (which every run scores)
    is kept from the issue-7 run only (`keep_reference`).
    """
    if not (folder / RESULTS_FOLDER).is_dir():
        raise SystemExit(
            f"{folder / RESULTS_FOLDER} does not exist: run scripts/reproduce_chest_xray_controls.sh "
            "(the test stages) first."
        )
    frame = read_parts(folder / RESULTS_FOLDER, columns=COLUMNS)
    missing = sorted(set(needed) - set(frame["config"]))
    if missing:
        raise SystemExit(f"{folder} lacks the configurations {missing}: its run is not finished.")
    if not keep_reference:
        frame = frame[frame["config"] != REFERENCE.key]
    return frame if tag is None else frame.assign(config=tag + "/" + frame["config"])


def key(variant: str, chosen: EvaluationConfiguration) -> str:
    return EvaluationConfiguration("fga", variant, chosen.layers, chosen.kappa, chosen.cmax).key


SUPERIORITY_COLUMNS = {
    "hypothesis": "hypothesis",
    "preset": "preset",
    "metric": "metric",
    "config": "A",
    "reference": "B",
    "n_patients": "patients",
    "patient_mean_difference": "A − B (patients)",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "wilcoxon_p": "Wilcoxon p",
    "holm_p": "Holm p",
    "holds": "holds",
}
EQUIVALENCE_COLUMNS = {
    "hypothesis": "hypothesis",
    "preset": "preset",
    "metric": "metric",
    "config": "A",
    "reference": "B",
    "patient_mean_difference": "A − B (patients)",
    "margin": "δ",
    "tost_p": "TOST p",
    "holm_p": "Holm p",
    "equivalent": "equivalent",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path("docs/results/chest_xray_controls")
    parser.add_argument("--issue7", type=Path, default=Path("docs/results/chest_xray/test"))
    parser.add_argument("--controls", type=Path, default=root / "test")
    for name in ("pca", "random", "ev090", "ev075"):
        parser.add_argument(f"--{name}", type=Path, default=root / f"test_{name}")
    parser.add_argument("--config", default="fga|combined|0,1,2|0.5|10", help="the chosen configuration C")
    parser.add_argument("--gamma", required=True, help="γ* of transmm-power, chosen on validation")
    parser.add_argument("--m", required=True, help="m* of selective, chosen on validation")
    parser.add_argument("--data", default="/work/shared/data/chest_xray_pneumonia")
    parser.add_argument("--output_dir", type=Path, default=root / "test")
    parser.add_argument("--n_resamples", type=int, default=10_000)
    args = parser.parse_args()

    chosen = EvaluationConfiguration.from_key(args.config)
    c, centered = args.config, key("centered", chosen)
    power, random_gates = key(f"transmm-power@{args.gamma}", chosen), key("random-gates", chosen)
    selective = key(f"selective@{args.m}", chosen)
    scaled = [key(f"error-scaled@{lam}", chosen) for lam in ("0.5", "2", "4")] + [key("error-only", chosen)]
    results = pd.concat(
        [
            load(
                args.issue7,
                None,
                [REFERENCE.key, c, centered, key("mean-centered", chosen), key("no-sae", chosen)],
                keep_reference=True,
            ),
            load(args.controls, None, [power, random_gates, selective, *scaled]),
            load(args.pca, "pca", [c]),
            load(args.random, "random", [c]),
            load(args.ev090, "ev0.90", [c, centered]),
            load(args.ev075, "ev0.75", [c, centered]),
        ],
        ignore_index=True,
    )
    for level in ("0.90", "0.75"):  # D_f − D_0.98 as (combined_f − centered_f + centered) − combined
        terms = {f"ev{level}/{c}": 1.0, f"ev{level}/{centered}": -1.0, centered: 1.0}
        derived = combine_configurations(results, f"D{level} − D0.98 + C", terms)
        results = pd.concat([results, derived], ignore_index=True)
    patients = split_patients(args.data)
    options = dict(n_resamples=args.n_resamples, seed=0)

    superiority = [
        Comparison("H1", c, centered),
        Comparison("H2a", c, f"pca/{c}"),
        Comparison("H2b", c, f"random/{c}"),
        Comparison("H3a", "D0.90 − D0.98 + C", c, TWO_SIDED),
        Comparison("H3b", "D0.75 − D0.98 + C", c, TWO_SIDED),
        Comparison("H4a", c, power),
        Comparison("H4b", c, random_gates),
        Comparison("H5", selective, centered),
    ]
    family = superiority_family(results, superiority, patients, **options)
    margins = gain_margins(results, c, REFERENCE.key, patients)
    equivalence = equivalence_family(results, superiority[:3], patients, margins)
    per_class = []
    for label, name in CLASSES.items():
        subset = results[results["label"] == label]
        per_class.append(
            superiority_family(
                subset,
                [Comparison(f"H6 {name} (H1)", c, centered), Comparison(f"H6 {name} (H5)", selective, centered)],
                patients,
                **options,
            )
        )
    secondary = pd.concat(per_class, ignore_index=True)
    secondary["holm_p"] = holm(secondary["wilcoxon_p"].to_numpy())  # one family over both classes (plan.md §3)
    secondary["holds"] = directional_holds(secondary)
    exploratory = pd.concat(
        [
            patient_comparison(results, a, b, patients, **options).assign(hypothesis="exploratory")
            for a, b in [(v, REFERENCE.key) for v in scaled]
            + [(v, centered) for v in scaled]
            + [(c, key("mean-centered", chosen)), (c, key("no-sae", chosen)), (selective, c)]
        ],
        ignore_index=True,
    )

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("superiority", family),
        ("equivalence", equivalence),
        ("per_class", secondary),
        ("exploratory", exploratory),
    ):
        table.to_csv(out / f"hypotheses_{name}.csv", index=False)
    verdicts = family.groupby("hypothesis", sort=False)["holds"].agg(["sum", "count"])
    lines = [
        "# Controls of method.md §10 on chest X-rays: the pre-registered tests",
        "",
        f"Plan: `docs/results/chest_xray_controls/plan.md`. C = `{c}`, γ* = {args.gamma}, m* = {args.m}. "
        "Patient-level two-sided Wilcoxon tests on per-patient mean differences; Holm within each family.",
        "",
        "| hypothesis | cells that hold (Holm p < 0.05, hypothesised direction) |",
        "| --- | --- |",
        *[f"| {h} | {int(r['sum'])} of {int(r['count'])} |" for h, r in verdicts.iterrows()],
        "",
        "## Superiority family (48 tests)",
        "",
        comparison_markdown(family, SUPERIORITY_COLUMNS),
        "",
        "## Equivalence family (18 TOSTs)",
        "",
        comparison_markdown(equivalence, EQUIVALENCE_COLUMNS),
        "",
        "## Secondary family: per class (24 tests)",
        "",
        comparison_markdown(secondary, SUPERIORITY_COLUMNS),
        "",
        "## Exploratory (uncorrected)",
        "",
        comparison_markdown(exploratory.assign(holm_p=float("nan"), holds=False), SUPERIORITY_COLUMNS),
    ]
    (out / "hypotheses.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'hypotheses.md'}")


if __name__ == "__main__":
    main()
