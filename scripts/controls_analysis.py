"""
The confirmatory analysis of `docs/results/<domain>_controls/plan.md` (issues 15 and 16, method.md §10): the
superiority family (H1–H5, 48 Wilcoxon tests, Holm), the equivalence family (18 TOSTs, Holm), the secondary
per-class family (H6, 2 comparisons × classes × 6 cells, Holm) and the exploratory comparisons, written to
`hypotheses.md` and CSV files. The unit of the tests is the patient where the dataset has patient ids (chest X-ray)
and the image otherwise (breast ultrasound: every image is its own unit, and the report says so).

    python scripts/controls_analysis.py --gamma 2 --m 64                                  # chest X-ray
    python scripts/controls_analysis.py --domain breast_ultrasound --gamma 2 --m 64

Inputs (per-image results of `scripts/evaluate_faithfulness.py`; defaults from `--domain`):
    --issue7   the test run of `scripts/reproduce.sh` (docs/results/<domain>/test): TransMM, FGA combined, centered,
               mean-centered, no-sae (bundled SAEs)
    --controls the controls' test run with the bundled SAEs: error-scaled, error-only, transmm-power, random-gates,
               selective
    --pca, --random, --ev090, --ev075   test runs of `combined` (and `centered` for the lower-fidelity sets) with the
               dictionaries / SAE sets of `scripts/build_controls_saes.py`
    --config   the chosen configuration C (default: docs/results/<domain>/chosen_configuration.txt)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from hf_fga import bundled
from hf_fga.evaluation.configuration import REFERENCE, EvaluationConfiguration
from hf_fga.evaluation.figures import difference_figure
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
    split_units,
    superiority_family,
)
from hf_fga.evaluation.statistics import GROUP_COLUMNS, METRICS
from hf_fga.evaluation.storage import RESULTS_FOLDER, read_parts
from hf_fga.evaluation.summary import read_chosen_configuration

COLUMNS = ["image_id", "preset", "fill", "config", "label", "saco", "faithfulness_correlation", "pixel_flipping"]
H3 = {"H3a": "0.90", "H3b": "0.75"}  # the fidelity hypotheses and their SAE sets (plan §2)
SUBJECTS = {
    "chest_xray": "chest X-rays",
    "breast_ultrasound": "breast ultrasound images",
    "cifar10": "CIFAR-10 images",
}  # the report's title


def class_names(domain: str) -> dict[int, str]:
    """The true classes of a bundled domain's model, `{label: name}` (its `config.json`'s `id2label`)."""
    labels = json.loads((bundled.model_dir(domain) / "config.json").read_text())["id2label"]
    return {int(label): name for label, name in sorted(labels.items(), key=lambda item: int(item[0]))}


def load(
    folder: Path, tag: str | None, needed: list[str], keep_reference: bool = False, produced_by: str = ""
) -> pd.DataFrame:
    """
    Per-image results of a run, configuration keys prefixed with `tag/` when given; TransMM (which every run scores)
    is kept from the protocol's test run only (`keep_reference`). `produced_by`: the command that makes the run.
    """
    if not (folder / RESULTS_FOLDER).is_dir():
        raise SystemExit(f"{folder / RESULTS_FOLDER} does not exist: run {produced_by} first.")
    frame = read_parts(folder / RESULTS_FOLDER, columns=COLUMNS)
    missing = sorted(set(needed) - set(frame["config"]))
    if missing:
        raise SystemExit(f"{folder} lacks the configurations {missing}: its run is not finished.")
    if not keep_reference:
        frame = frame[frame["config"] != REFERENCE.key]
    return frame if tag is None else frame.assign(config=tag + "/" + frame["config"])


def comparison_points(
    results: pd.DataFrame, pairs: list[tuple[str, str, str]], units: dict, options: dict
) -> pd.DataFrame:
    """
    The points of a difference figure: per (x label, config, reference) of `pairs`, the mean per-image difference
    config − reference and its bootstrap 95 % CI (resampling patients where the dataset has them), per preset and
    metric (columns preset, metric, x, mean, ci_low, ci_high, config, reference).
    """
    frames = [patient_comparison(results, a, b, units, **options).assign(x=x) for x, a, b in pairs]
    # the image-level mean difference: the estimand of the (patient-cluster) bootstrap CI drawn around it; on a
    # dataset without patient ids every image is its own unit and it is also the unit-level mean
    frame = pd.concat(frames, ignore_index=True).drop(columns="mean")
    frame = frame.rename(columns={"mean_difference": "mean"})
    return frame[["preset", "metric", "x", "mean", "ci_low", "ci_high", "config", "reference"]]


def predicted_classes(folder: Path) -> pd.Series | None:
    """Each image's predicted class in a run (`prediction`, the same in every row of an image); None without one."""
    frame = read_parts(folder / RESULTS_FOLDER)
    if "prediction" not in frame.columns or frame.empty:
        return None
    return frame.drop_duplicates("image_id").set_index("image_id")["prediction"].astype(int)


def key(variant: str, chosen: EvaluationConfiguration) -> str:
    return EvaluationConfiguration("fga", variant, chosen.layers, chosen.kappa, chosen.cmax).key


def unit_columns(columns: dict[str, str], unit: str) -> dict[str, str]:
    """
    The report's column headers with the unit of the tests (`patients` or `images`) in place of `patients`. With
    images as the unit the per-unit and the per-image mean difference are one number: its second column is dropped.
    """
    if unit == "images":
        columns = {name: header for name, header in columns.items() if name != "mean_difference"}
    return {name: header.replace("patients", unit) for name, header in columns.items()}


SUPERIORITY_COLUMNS = {
    "hypothesis": "hypothesis",
    "preset": "preset",
    "metric": "metric",
    "config": "A",
    "reference": "B",
    "n_patients": "patients",
    "patient_mean_difference": "A − B (patients)",
    "mean_difference": "A − B (images)",  # the estimand of the CI: the image-level mean, patients resampled
    "ci_low": "CI low (images)",
    "ci_high": "CI high (images)",
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default=bundled.DEFAULT_DOMAIN, choices=sorted(SUBJECTS))
    parser.add_argument("--issue7", type=Path, default=None, help="default docs/results/<domain>/test")
    parser.add_argument("--controls", type=Path, default=None, help="default docs/results/<domain>_controls/test")
    for name in ("pca", "random", "ev090", "ev075"):
        where = f"default docs/results/<domain>_controls/test_{name}"
        parser.add_argument(f"--{name}", type=Path, default=None, help=where)
    parser.add_argument("--config", default=None, help="the chosen configuration C (default: the domain's file)")
    parser.add_argument("--gamma", required=True, help="γ* of transmm-power, chosen on validation")
    parser.add_argument("--m", required=True, help="m* of selective, chosen on validation")
    parser.add_argument("--data", default=None, help="the dataset folder (default /work/shared/data/<its name>)")
    parser.add_argument("--output_dir", type=Path, default=None, help="default docs/results/<domain>_controls/test")
    parser.add_argument("--n_resamples", type=int, default=10_000)
    parser.add_argument(
        "--provisional",
        action="store_true",
        help="report before the lower-fidelity test runs are finished (no summary.csv): H3a/H3b are left out, their "
        "tests enter Holm's correction as p = 1 (every Holm p an upper bound of the final one), and the report "
        "says so",
    )
    args = parser.parse_args(argv)
    protocol, root = Path("docs/results") / args.domain, Path("docs/results") / f"{args.domain}_controls"
    args.issue7 = args.issue7 or protocol / "test"
    args.controls = args.controls or root / "test"
    for name in ("pca", "random", "ev090", "ev075"):
        setattr(args, name, getattr(args, name) or root / f"test_{name}")
    args.config = args.config or read_chosen_configuration(protocol / "chosen_configuration.txt")
    args.data = args.data or f"/work/shared/data/{bundled.domain(args.domain).dataset}"
    args.output_dir = args.output_dir or root / "test"
    reproduce = f"scripts/reproduce.sh --dataset {args.domain} (its test stage)"
    controls = f"scripts/reproduce_controls.sh --dataset {args.domain} (the test stages)"

    # the lower-fidelity runs (H3); a provisional report leaves out those not finished
    fidelity = {"0.90": args.ev090, "0.75": args.ev075}
    unfinished = [level for level, folder in fidelity.items() if not (folder / "summary.csv").is_file()]
    pending = unfinished if args.provisional else []
    fidelity = {level: folder for level, folder in fidelity.items() if level not in pending}

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
                produced_by=reproduce,
            ),
            load(args.controls, None, [power, random_gates, selective, *scaled], produced_by=controls),
            load(args.pca, "pca", [c], produced_by=controls),
            load(args.random, "random", [c], produced_by=controls),
            *[load(folder, f"ev{level}", [c, centered], produced_by=controls) for level, folder in fidelity.items()],
        ],
        ignore_index=True,
    )
    for level in fidelity:  # D_f − D_0.98 as (combined_f − centered_f + centered) − combined
        terms = {f"ev{level}/{c}": 1.0, f"ev{level}/{centered}": -1.0, centered: 1.0}
        derived = combine_configurations(results, f"D{level} − D0.98 + C", terms)
        results = pd.concat([results, derived], ignore_index=True)
    patients, by_patient = split_units(args.data)  # without patient ids, every image is its own unit
    unit = "patients" if by_patient else "images"
    options = dict(n_resamples=args.n_resamples, seed=0)

    superiority = [
        Comparison("H1", c, centered),
        Comparison("H2a", c, f"pca/{c}"),
        Comparison("H2b", c, f"random/{c}"),
        *[Comparison(name, f"D{level} − D0.98 + C", c, TWO_SIDED) for name, level in H3.items() if level in fidelity],
        Comparison("H4a", c, power),
        Comparison("H4b", c, random_gates),
        Comparison("H5", selective, centered),
    ]
    cells = len(results[list(GROUP_COLUMNS)].drop_duplicates()) * len(METRICS)  # rows per comparison
    family = superiority_family(results, superiority, patients, pending=cells * len(pending), **options)
    margins = gain_margins(results, c, REFERENCE.key, patients)
    equivalence = equivalence_family(results, superiority[:3], patients, margins)
    per_class = []
    for label, name in class_names(args.domain).items():
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

    # exploratory, by predicted class (the audit of issue 15 saw FC fall on images predicted NORMAL): C and
    # `centered` against TransMM and C against `centered`, uncorrected
    predicted = predicted_classes(args.issue7)
    by_prediction = pd.DataFrame()
    if predicted is not None:
        frames = []
        for label, name in class_names(args.domain).items():
            subset = results[results["image_id"].map(predicted) == label]
            if subset.empty:
                continue
            for a, b in ((c, REFERENCE.key), (centered, REFERENCE.key), (c, centered)):
                table = patient_comparison(subset, a, b, patients, **options)
                frames.append(table.assign(hypothesis=f"predicted {name}"))
        by_prediction = pd.concat(frames, ignore_index=True) if frames else by_prediction

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("superiority", family),
        ("equivalence", equivalence),
        ("per_class", secondary),
        ("exploratory", exploratory),
        ("by_prediction", by_prediction),
    ):
        table.to_csv(out / f"hypotheses_{name}.csv", index=False)
    # figures (plan §7 and issue 15: the λ dose–response, the trained SAE against its matched dictionaries and the
    # other controls, and combined − centered as the SAE's fidelity falls)
    dose = comparison_points(
        results,
        [
            ("λ 0 (centered)", centered, REFERENCE.key),
            ("λ 0.5", scaled[0], REFERENCE.key),
            ("λ 1 (combined)", c, REFERENCE.key),
            ("λ 2", scaled[1], REFERENCE.key),
            ("λ 4", scaled[2], REFERENCE.key),
            ("error only", scaled[3], REFERENCE.key),
        ],
        patients,
        options,
    )
    controls_points = comparison_points(
        results,
        [
            ("FGA (trained SAE)", c, REFERENCE.key),
            ("PCA dictionary", f"pca/{c}", REFERENCE.key),
            ("random dictionary", f"random/{c}", REFERENCE.key),
            ("centered (no SAE)", centered, REFERENCE.key),
            (f"selective m={args.m}", selective, REFERENCE.key),
            (f"transmm-power γ={args.gamma}", power, REFERENCE.key),
            ("random-gates", random_gates, REFERENCE.key),
        ],
        patients,
        options,
    )
    fidelity_points = comparison_points(
        results,
        [("bundled SAE", c, centered)]
        + [(f"ev{level} set", f"ev{level}/{c}", f"ev{level}/{centered}") for level in fidelity],
        patients,
        options,
    )
    per = "image, patient-cluster bootstrap CI" if by_patient else "image, bootstrap CI"
    difference_figure(
        dose, out / "dose_response.png", "Error dose–response: gate score g·(x − b_dec) − λ·g·e, minus TransMM",
        x_label="λ", y_label=f"mean difference vs TransMM (per {per})",
    )  # fmt: skip
    difference_figure(
        controls_points, out / "controls.png", "Each gate against TransMM: the trained SAE, its matched dictionaries "
        "and the controls", y_label=f"mean difference vs TransMM (per {per})", connect=False,
    )  # fmt: skip
    difference_figure(
        fidelity_points, out / "fidelity.png", "combined − centered as the SAE's fidelity falls",
        x_label="SAE set of the gated blocks", y_label=f"mean difference (per {per})",
    )  # fmt: skip
    pd.concat(
        [
            dose.assign(figure="dose_response"),
            controls_points.assign(figure="controls"),
            fidelity_points.assign(figure="fidelity"),
        ]
    ).to_csv(out / "hypotheses_figures.csv", index=False)
    verdicts = family.groupby("hypothesis", sort=False)["holds"].agg(["sum", "count"])
    level = (
        "Patient-level two-sided Wilcoxon tests on per-patient mean differences ('A − B (patients)': the mean of "
        "the per-patient means, what the test and the hypotheses' directions read); beside it the image-level mean "
        "difference 'A − B (images)' with its patient-cluster bootstrap 95 % CI (plan §3: the CI is of the "
        "image-level mean, so it need not contain the per-patient mean)"
        if by_patient
        else "Image-level two-sided Wilcoxon tests on per-image differences (the dataset has no patient ids, so every "
        "image is its own unit: the columns headed 'images' count images, the bootstrap resamples images)"
    )
    superiority_columns = unit_columns(SUPERIORITY_COLUMNS, unit)
    not_scored = [f"| {name} | not scored yet |" for name, level in H3.items() if level in pending]
    provisional = (
        f"\n\n**Provisional**: the lower-fidelity test runs of {', '.join(f'ev{level}' for level in pending)} are "
        f"not finished, so {', '.join(n for n, level in H3.items() if level in pending)} are left out; their "
        f"{cells * len(pending)} tests enter Holm's correction as p = 1, so every Holm p of the superiority family "
        "is an upper bound of the final one (a cell that holds here holds in the final analysis; one that does not "
        "may still change)."
        if pending
        else ""
    )
    lines = [
        f"# Controls of method.md §10 on {SUBJECTS[args.domain]}: the pre-registered tests",
        "",
        f"Plan: `docs/results/{args.domain}_controls/plan.md`. C = `{c}`, γ* = {args.gamma}, m* = {args.m}. "
        f"{level}; Holm within each family.{provisional}",
        "",
        "| hypothesis | cells that hold (Holm p < 0.05, hypothesised direction) |",
        "| --- | --- |",
        *[f"| {h} | {int(r['sum'])} of {int(r['count'])} |" for h, r in verdicts.iterrows()],
        *not_scored,
        "",
        f"## Superiority family ({len(family) + cells * len(pending)} tests"
        + (f", {cells * len(pending)} not scored yet)" if pending else ")"),
        "",
        comparison_markdown(family, superiority_columns),
        "",
        f"## Equivalence family ({len(equivalence)} TOSTs)",
        "",
        comparison_markdown(equivalence, unit_columns(EQUIVALENCE_COLUMNS, unit)),
        "",
        f"## Secondary family: per class ({len(secondary)} tests)",
        "",
        comparison_markdown(secondary, superiority_columns),
        "",
        "## Exploratory (uncorrected)",
        "",
        comparison_markdown(exploratory.assign(holm_p=float("nan"), holds=False), superiority_columns),
        "",
        "## Exploratory: by predicted class (uncorrected)",
        "",
        "The audit of issue 15 saw Faithfulness Correlation fall on chest X-rays predicted NORMAL: C and `centered` "
        f"against TransMM, and C against `centered`, within the {unit} of each predicted class "
        "(the unit's images of that class; a unit with images of both classes counts in both).",
        "",
        comparison_markdown(by_prediction.assign(holm_p=float("nan"), holds=False), superiority_columns)
        if not by_prediction.empty
        else "(the protocol's run stores no predictions)",
        "",
        "## Figures",
        "",
        f"Mean per-{per} differences with their bootstrap 95 % CIs ({args.n_resamples:,} resamples of {unit}); the "
        "points are in `hypotheses_figures.csv`.",
        "",
        "![Each gate against TransMM](controls.png)",
        "",
        "*Each gate against TransMM: FGA with the trained SAE, with the PCA and random dictionaries of matched "
        "fidelity, `centered` (no SAE), `selective`, a sharpened TransMM (`transmm-power`) and FGA's gates permuted "
        "over the patches (`random-gates`).*",
        "",
        "![The error dose–response](dose_response.png)",
        "",
        "*The error dose–response (exploratory): λ scales the SAE's reconstruction error e out of the centred "
        "residual (λ = 0: `centered`, λ = 1: `combined`); `error only` gates with g·e alone.*",
        "",
        "![combined − centered as fidelity falls](fidelity.png)",
        "",
        "*combined − centered (the quantity of H3) with the bundled SAEs and the lower-fidelity sets.*",
    ]
    (out / "hypotheses.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'hypotheses.md'} ({unit} as the unit of the tests)")


if __name__ == "__main__":
    main()
