"""
The report of issue 13's method comparison, as pre-registered in `docs/results/methods/plan.md`: every method on the
chest X-ray test split, both presets, patient-level statistics (method.md §10).

    python scripts/methods_report.py --data ../shared/data/chest_xray_pneumonia \
        --runs docs/results/methods/test docs/results/methods/test_reused \
        --reused docs/results/chest_xray/test --output docs/results/methods

Inputs (output folders of `scripts/evaluate_faithfulness.py`), merged by the plan's rule:
    --runs TEST [TEST_REUSED]   TEST: the new configurations and TransMM, scored (SaCo, FC, PF, completeness,
                                seconds per image); TEST_REUSED: the reused configurations run with
                                `--metrics completeness` (their completeness error and seconds per image only)
    --reused                    issue 7's test run: the faithfulness scores of FGA `combined`, its `mean-centered`
                                control, rollout and raw attention (and TransMM's, for the reproducibility check)

Every table is restricted to the images that every configuration has, cut to the longest prefix of the seeded order
(`--seed`, the order `--limit N --seed 0` scores in). Outputs: the Markdown report (`--report`), CSV tables under
`--output`, figures under `--output/figures` (a bar chart per metric; with the bundled model, every method's map of
the first image of the order: `--no_maps_figure` skips it). `--allow_missing` reports on what exists (a smoke test,
a run in progress): missing configurations and inputs are left out and listed as departures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.hypothesis_tests import (
    TWO_SIDED,
    Comparison,
    cluster_bootstrap_ci,
    directional_holds,
    patient_keys,
    superiority_family,
)
from hf_fga.evaluation.statistics import LOWER_IS_BETTER, METRIC_NAMES
from hf_fga.evaluation.storage import RESULTS_FOLDER, read_parts, upgrade_columns

SCORES = ("saco", "faithfulness_correlation", "pixel_flipping")
COMPLETENESS, SECONDS = "completeness", "attribution_seconds"
KEYS = ["image_id", "config", "preset", "fill"]
PRESETS = ("papers", "thesis")
ALPHA = 0.05
TRANSMM = "transmm||||"
# the SaCo paper's ImageNet SaCo (plan.md), keyed by our configuration where we have the method
PAPER_SACO = {
    "Transformer-MM": ("transmm||||", 0.456),
    "Transformer Attribution": (None, 0.390),
    "rollout": ("rollout||||", 0.245),
    "raw attention": ("raw-attention||||", 0.184),
    "IG": ("integrated-gradients||||", 0.165),
    "Grad-CAM": ("grad-cam||||", 0.114),
    "LRP": ("cp-lrp||||", 0.012),  # the paper's plain LRP (Chefer et al.); CP-LRP is our nearest
}
CHOSEN_FILE = "chosen_parameters.txt"  # written by scripts/compare_methods.sh's validation stage
MINIMUM_IMAGES = 300  # plan.md: at least the first 300 images of the order
LIBRAGRAD_METHODS = ("transmm", "fga", "gradient-x-input", "integrated-gradients", "grad-cam")
VERDICTS = ("beats", "is worse", "not distinguishable")


def key(method: str, variant: str = "", chosen: EvaluationConfiguration | None = None) -> str:
    """The configuration key of `method` (FGA: with the chosen blocks, κ and c_max), e.g. `grad-cam|libragrad|||`."""
    if method == "fga":
        return EvaluationConfiguration("fga", variant, chosen.layers, chosen.kappa, chosen.cmax).key
    return EvaluationConfiguration(method, variant).key


def planned(chosen: EvaluationConfiguration, caap: str | None) -> tuple[list[str], list[str]]:
    """(the configurations scored in the test run, those whose scores are reused from issue 7) of plan.md."""
    scored = [TRANSMM, key("fga", f"{chosen.variant}+libragrad", chosen)]
    scored += [key(m, "libragrad") for m in LIBRAGRAD_METHODS if m != "fga"]
    scored += [key(m) for m in ("gradient-x-input", "integrated-gradients", "grad-cam", "cp-lrp", "attnlrp")]
    scored += [caap] if caap else []
    reused = [chosen.key, key("fga", "mean-centered", chosen), key("rollout"), key("raw-attention")]
    return scored, reused


def chosen_caap(path: Path) -> str | None:
    """CAAP's configuration key from the validation stage's `chosen on validation: caap@block_range=a-b` line."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        spec = line.partition(":")[2].strip()
        if spec.startswith("caap@"):
            return EvaluationConfiguration("caap", spec.partition("@")[2]).key
    return None


def order_key(config: str) -> tuple:
    return EvaluationConfiguration.from_key(config).sort_key


def label(config: str) -> str:
    return EvaluationConfiguration.from_key(config).label


def load_run(folder: Path, what: str) -> pd.DataFrame:
    """Per-image rows of an evaluation folder (a clear error when it holds none)."""
    frame = read_parts(folder / RESULTS_FOLDER) if (folder / RESULTS_FOLDER).is_dir() else pd.DataFrame()
    if frame.empty:
        raise FileNotFoundError(
            f"{folder / RESULTS_FOLDER} holds no results ({what}): run scripts/compare_methods.sh (STAGES=test) "
            "first, or pass --allow_missing to report on what exists."
        )
    frame = upgrade_columns(frame)
    if "fill" not in frame.columns:  # runs older than the fill column scored with the `mean` fill (plan.md)
        frame = frame.assign(fill="mean")
    return frame


def dataset_order(data: str, seed: int) -> tuple[list[tuple[int, str]], dict[str, str], object]:
    """
    The test split's seeded order `[(row, file_name)]` (`select_images`, as `--limit N --seed SEED` scores it), the
    patient of every file name, and the split (its `image` column is decoded only for the maps figure).
    """
    import datasets

    from hf_fga.evaluation.arguments import DataArguments
    from hf_fga.evaluation.selection import select_images

    split = datasets.load_dataset(data, split="test")
    columns = split.select_columns(["patient_id", "file_name"])
    names = list(columns["file_name"])
    patients = dict(zip(names, patient_keys(list(columns["patient_id"]), names), strict=True))
    order = select_images(columns, DataArguments(dataset=data, id_column="file_name", limit=len(names), seed=seed))
    return order, patients, split


def merge(
    test: pd.DataFrame | None,
    test_reused: pd.DataFrame | None,
    reused: pd.DataFrame | None,
    scored: Sequence[str],
    reused_keys: Sequence[str],
    fill: str,
) -> tuple[pd.DataFrame, list[tuple[str, str, set[str]]]]:
    """
    The per-image rows of plan.md's merge rule, and, per (source, configuration), the images it has (an image every
    source has for every planned configuration is in the report). Missing sources or configurations are skipped.
    """
    columns = [*KEYS, *SCORES, COMPLETENESS, SECONDS]
    frames, coverage = [], []

    def rows(frame: pd.DataFrame | None, keys: Sequence[str], wanted: Sequence[str]) -> pd.DataFrame:
        if frame is None:
            return pd.DataFrame(columns=[*KEYS, *wanted])
        frame = frame[(frame["fill"] == fill) & frame["config"].isin(keys)]
        return frame.reindex(columns=[*KEYS, *wanted])

    new = rows(test, scored, [*SCORES, COMPLETENESS, SECONDS])
    frames.append(new)
    old = rows(reused, reused_keys, SCORES)
    extra = rows(test_reused, reused_keys, [COMPLETENESS, SECONDS])
    frames.append(old.merge(extra, on=KEYS, how="left"))
    for source, frame in (("test", new), ("reused", old), ("test_reused", extra)):
        for config, group in frame.groupby("config"):
            for preset in sorted(set(frame["preset"])):
                coverage.append((source, f"{config} {preset}", set(group.loc[group["preset"] == preset, "image_id"])))
    merged = pd.concat([f for f in frames if len(f)], ignore_index=True).reindex(columns=columns)
    return merged, coverage


def prefix(order: Sequence[tuple[int, str]], common: set[str]) -> list[str]:
    """The longest prefix of the seeded order whose images are all in `common`."""
    out = []
    for _, name in order:
        if name not in common:
            break
        out.append(name)
    return out


def reproducibility(test: pd.DataFrame, reused: pd.DataFrame, fill: str) -> pd.DataFrame:
    """Max |Δ| per preset and metric between TransMM's scores in the test run and in issue 7's run, common images."""
    rows = []
    for preset in PRESETS:
        ours, theirs = (
            f[(f["config"] == TRANSMM) & (f["preset"] == preset) & (f["fill"] == fill)].set_index("image_id")
            for f in (test, reused)
        )
        common = ours.index.intersection(theirs.index)
        for metric in SCORES:
            delta = (ours.loc[common, metric].astype(float) - theirs.loc[common, metric].astype(float)).abs()
            rows.append(
                {"preset": preset, "metric": metric, "n_images": len(common), "max_abs_difference": delta.max()}
            )
    return pd.DataFrame(rows)


def headline(results: pd.DataFrame, patients: dict[str, str], n_resamples: int) -> pd.DataFrame:
    """
    Per preset and configuration: per metric the mean, its patient-cluster bootstrap 95 % CI and the rank (1 = best);
    the median completeness error and seconds per image.
    """
    rows = []
    for (preset, config), group in results.groupby(["preset", "config"], sort=False):
        row = {"preset": preset, "config": config, "label": label(config), "n_images": group["image_id"].nunique()}
        owners = [patients[i] for i in group["image_id"]]
        for metric in SCORES:
            values = group[metric].astype(float).to_numpy()
            low, high = cluster_bootstrap_ci(values, owners, n_resamples=n_resamples, seed=0)
            row.update({metric: np.nanmean(values), f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row[f"{COMPLETENESS}_median"] = group[COMPLETENESS].astype(float).median()
        row[f"{SECONDS}_median"] = group[SECONDS].astype(float).median()
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric in SCORES:
        ascending = metric in LOWER_IS_BETTER
        table[f"{metric}_rank"] = table.groupby("preset")[metric].rank(ascending=ascending, method="min").astype(int)
    return table


def with_verdicts(family: pd.DataFrame) -> pd.DataFrame:
    """`verdict`: beats / is worse (Holm p < α; the sign of the per-patient mean difference) / not distinguishable."""
    better = directional_holds(family, ALPHA)
    worse = (family["holm_p"] < ALPHA) & ~better
    verdict = np.where(better, VERDICTS[0], np.where(worse, VERDICTS[1], VERDICTS[2]))
    return family.assign(verdict=verdict)


def kendall(table: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The paper's SaCo ordering beside ours (papers preset), and Kendall's τ without and with CP-LRP as "LRP"."""
    ours = table[table["preset"] == "papers"].set_index("config")["saco"]
    rows = [
        {"method": name, "config": config, "paper_saco": value, "our_saco": ours.get(config, np.nan)}
        for name, (config, value) in PAPER_SACO.items()
    ]
    ranking = pd.DataFrame(rows)
    taus = []
    for with_lrp in (False, True):
        shared = ranking.dropna(subset=["our_saco"])
        shared = shared if with_lrp else shared[shared["method"] != "LRP"]
        tau, p = stats.kendalltau(shared["paper_saco"], shared["our_saco"]) if len(shared) > 1 else (np.nan, np.nan)
        taus.append({"with_lrp": with_lrp, "methods": list(shared["method"]), "tau": float(tau), "p": float(p)})
    shared = ranking.dropna(subset=["our_saco"])
    ranking["paper_rank"] = shared["paper_saco"].rank(ascending=False, method="min")
    ranking["our_rank"] = shared["our_saco"].rank(ascending=False, method="min")
    return ranking, taus


def bar_figures(table: pd.DataFrame, folder: Path) -> list[Path]:
    """
    One bar chart per metric: every configuration, one panel per preset (the presets' scales differ: Pixel Flipping
    is a fraction in `papers` and a sum over steps in `thesis`), patient-level 95 % CI.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    configs = list(dict.fromkeys(table["config"]))
    presets = [p for p in PRESETS if (table["preset"] == p).any()]
    colors = ["tab:red" if c == TRANSMM else "tab:blue" for c in configs]
    paths = []
    for metric in SCORES:
        width = max(6.0, 0.5 * len(configs) + 2)
        figure, axes = plt.subplots(len(presets), 1, figsize=(width, 1.2 + 2.6 * len(presets)), sharex=True)
        for axis, preset in zip(np.atleast_1d(axes), presets, strict=True):
            rows = table[table["preset"] == preset].set_index("config").reindex(configs)
            errors = np.stack([rows[metric] - rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"] - rows[metric]])
            axis.bar(range(len(configs)), rows[metric], yerr=np.nan_to_num(errors), capsize=2, color=colors)
            axis.axhline(0, color="black", linewidth=0.5)
            axis.set_ylabel(f"preset {preset}")
        axis.set_xticks(range(len(configs)), [label(c) for c in configs], rotation=60, ha="right", fontsize=7)
        arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
        figure.suptitle(f"{METRIC_NAMES[metric]} {arrow}: mean, patient-cluster 95 % CI (TransMM in red)")
        figure.tight_layout()
        path = folder / f"{metric}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths


def maps_figure(split, row: int, name: str, configs: Sequence[str], folder: Path) -> dict:
    """
    Every configuration's map of one image (recomputed with the bundled model, SAEs and mean residuals, through the
    evaluation's own `attribute_configurations`), overlaid side by side; returns what the caption states.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from transformers import AutoImageProcessor

    from hf_fga import bundled
    from hf_fga.attribution import Attributor, load_mean_residuals
    from hf_fga.evaluation import attribute_configurations
    from hf_fga.images import load_image
    from hf_fga.introspection import load_vision_model
    from hf_fga.sae import load_saes
    from hf_fga.viz import fit_within, overlay

    torch.manual_seed(0)
    model = load_vision_model(str(bundled.model_dir())).eval()
    processor = AutoImageProcessor.from_pretrained(bundled.model_dir())
    attr = Attributor(
        model, load_saes([str(bundled.sae_dir())]), mean_residuals=load_mean_residuals(bundled.mean_residuals_path())
    )
    image = load_image(split[row]["image"])
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
    configurations = [EvaluationConfiguration.from_key(c) for c in configs]
    grid = attribute_configurations(attr, pixel_values, configurations)
    shown = fit_within(image.convert("RGB"), 256)
    columns = 6
    panels = [("image", shown)] + [(label(c), overlay(shown, grid.maps[c][0].numpy())) for c in configs]
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.7 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (title, picture) in zip(axes.flat, panels, strict=False):
        axis.imshow(picture)
        axis.set_title(textwrap.fill(title, 26), fontsize=7)
    target = int(grid.target[0])
    names = model.config.id2label
    figure.suptitle(f"{name}: every method's map of the explained class {names.get(target, target)}", fontsize=9)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "maps.png", dpi=110)
    plt.close(figure)
    caption = {"image_id": name, "target": target, "explained_class": str(names.get(target, target))}
    caption["configs"] = list(configs)
    (folder / "maps.json").write_text(json.dumps(caption, indent=1))
    return caption


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
    ]


def number(value: float, digits: int = 4) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def p_text(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.2g}"


def family_lines(family: pd.DataFrame) -> list[str]:
    header = ["preset", "metric", "A", "B", "A − B (patients)", "95 % CI", "Wilcoxon p", "Holm p", "verdict"]
    rows = [
        (
            r.preset,
            METRIC_NAMES[r.metric],
            label(r.config),
            label(r.reference),
            f"{r.patient_mean_difference:+.4g}",
            f"[{number(r.ci_low)}, {number(r.ci_high)}]",
            p_text(r.wilcoxon_p),
            p_text(r.holm_p),
            f"**{r.verdict}**" if r.verdict != VERDICTS[2] else r.verdict,
        )
        for r in family.itertuples()
    ]
    return markdown_table(header, rows)


def ranking_lines(rows: pd.DataFrame) -> list[str]:
    """One preset's configurations ordered per metric (best first), with mean and patient-level 95 % CI."""
    columns = []
    for metric in SCORES:
        ordered = rows.sort_values([f"{metric}_rank", "label"], kind="stable")
        columns.append(
            [
                f"{r.label}: {number(getattr(r, metric))} [{number(getattr(r, f'{metric}_ci_low'))}, "
                f"{number(getattr(r, f'{metric}_ci_high'))}]"
                for r in ordered.itertuples()
            ]
        )
    header = ["#", *(f"{METRIC_NAMES[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in SCORES)]
    return markdown_table(header, [(n + 1, *cells) for n, cells in enumerate(zip(*columns, strict=True))])


def counts(family: pd.DataFrame) -> str:
    tally = family["verdict"].value_counts()
    return ", ".join(f"{int(tally.get(v, 0))} {v}" for v in VERDICTS)


def write_report(
    path: Path,
    output: Path,
    facts: dict,
    table: pd.DataFrame,
    families: dict[str, pd.DataFrame],
    ranking: pd.DataFrame,
    taus: list[dict],
    repro: pd.DataFrame | None,
    maps: dict | None,
) -> None:
    link = lambda target: os.path.relpath(target, path.parent)  # noqa: E731
    lines = [
        "# Every method on one harness: the chest X-ray test split (issue 13)",
        "",
        f"Plan (pre-registered, binding): [`plan.md`]({link(output / 'plan.md')}). Built by "
        "`scripts/methods_report.py` from the stored per-image results; every number below is recomputed on each run.",
        "",
        f"- Images: the first **{facts['n_images']}** images of the seeded test order (seed {facts['seed']}) that "
        f"every configuration has, from **{facts['n_patients']}** patients; first image: `{facts['first_image']}`.",
        f"- Configurations: {len(facts['configs'])}; CAAP's block range: {facts['caap'] or 'none (missing)'}. Scores "
        "of FGA `combined`, `mean-centered`, rollout and raw attention reused from issue 7's test run; their "
        "completeness error and seconds per image from the `test_reused` run; everything else from the `test` run.",
        "- Statistics: mean over images with a patient-cluster bootstrap 95 % CI "
        f"({facts['n_resamples']:,} resamples, seed 0); tests on per-patient mean differences (Wilcoxon signed-rank, "
        "two-sided), Holm within each family, α = 0.05. Completeness error and seconds per image: medians over images "
        "(— where a method reads no gradients).",
    ]
    if facts["departures"]:
        lines += ["", "**Departures from the plan / missing inputs:**", "", *(f"- {d}" for d in facts["departures"])]
    for preset in PRESETS:
        rows = table[table["preset"] == preset]
        if rows.empty:
            continue
        header = ["configuration", *(f"{METRIC_NAMES[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in SCORES)]
        header += ["completeness error (median)", "s / image (median)"]
        body = []
        for r in rows.itertuples():
            cells = [r.label]
            for metric in SCORES:
                low, high = getattr(r, f"{metric}_ci_low"), getattr(r, f"{metric}_ci_high")
                rank = getattr(r, f"{metric}_rank")
                cells.append(f"{number(getattr(r, metric))} [{number(low)}, {number(high)}] (#{rank})")
            cells += [number(getattr(r, f"{COMPLETENESS}_median"), 3), number(getattr(r, f"{SECONDS}_median"), 3)]
            body.append(cells)
        lines += ["", f"## Headline: preset `{preset}`", "", "Mean [95 % CI] (#rank, 1 = best).", ""]
        lines += markdown_table(header, body)
    for preset in PRESETS:
        rows = table[table["preset"] == preset]
        if len(rows):
            lines += ["", f"## Ranking: preset `{preset}`", "", "Best first; mean [patient-level 95 % CI].", ""]
            lines += ranking_lines(rows)
    titles = {
        "A": "Family A: does the method beat TransMM?",
        "B": "Family B: does LibraGrad change the method?",
    }
    for name, family in families.items():
        lines += ["", f"## {titles[name]} ({len(family)} tests, Holm across the family)", ""]
        lines += [f"Verdicts: {counts(family)}. Differences are A − B; Pixel Flipping: lower is better.", ""]
        lines += family_lines(family)
    lines += ["", "## Ranking against the SaCo paper's ImageNet ordering (SaCo, papers preset)", ""]
    lines += markdown_table(
        ["paper's method", "our configuration", "paper SaCo", "paper rank", "our SaCo", "our rank"],
        [
            (
                r.method,
                label(r.config) if isinstance(r.config, str) else "not implemented here",
                r.paper_saco,
                number(r.paper_rank, 2),
                number(r.our_saco),
                number(r.our_rank, 2),
            )
            for r in ranking.itertuples()
        ],
    )
    lines += [""]
    for tau in taus:
        which = "with CP-LRP as the paper's LRP" if tau["with_lrp"] else "without LRP"
        lines.append(
            f"- Kendall's τ {which} ({len(tau['methods'])} methods): {number(tau['tau'], 3)} (p {p_text(tau['p'])})."
        )
    if repro is not None:
        lines += ["", "## Reproducibility: TransMM scored again", ""]
        lines += ["Max |Δ| between this run's TransMM scores and issue 7's, on the images both have.", ""]
        lines += markdown_table(
            ["preset", "metric", "images", "max \\|Δ\\|"],
            [
                (r.preset, METRIC_NAMES[r.metric], r.n_images, f"{r.max_abs_difference:.3g}")
                for r in repro.itertuples()
            ],
        )
    lines += ["", "## Figures", ""]
    for metric in SCORES:
        lines.append(f"![{METRIC_NAMES[metric]}]({link(output / 'figures' / f'{metric}.png')})")
    if maps:
        lines += [
            "",
            f"![every method's map]({link(output / 'figures' / 'maps.png')})",
            "",
            f"Every method's map of `{maps['image_id']}`, the first image of the seeded order (not chosen for looks), "
            f"for the explained (predicted) class {maps['explained_class']}; maps min–max scaled per panel, "
            "recomputed with the bundled model, SAEs and mean residuals.",
        ]
    lines += ["", "## What this says", "", "<!-- conclusions -->", ""]
    lines += [f"- {fact}" for fact in facts["summary"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def summary_facts(table: pd.DataFrame, families: dict[str, pd.DataFrame], taus: list[dict]) -> list[str]:
    """Facts read off the tables, no claims: the first-ranked configuration per metric and preset, verdict counts."""
    facts = []
    for preset in PRESETS:
        rows = table[table["preset"] == preset]
        for metric in SCORES:
            first = rows[rows[f"{metric}_rank"] == 1]
            if len(first):
                names = ", ".join(first["label"])
                facts.append(f"`{preset}`, {METRIC_NAMES[metric]}: ranked first: {names}.")
    for name, family in families.items():
        facts.append(f"Family {name}: {counts(family)} (of {len(family)}).")
    for tau in taus:
        which = "with" if tau["with_lrp"] else "without"
        facts.append(f"Kendall's τ with the SaCo paper's ordering ({which} LRP): {number(tau['tau'], 3)}.")
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the chest X-ray dataset folder (its test split)")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="TEST [TEST_REUSED] run folders")
    parser.add_argument("--reused", type=Path, default=Path("docs/results/chest_xray/test"))
    parser.add_argument("--output", type=Path, default=Path("docs/results/methods"))
    parser.add_argument("--report", type=Path, default=Path("docs/results/methods.md"))
    parser.add_argument("--config", default="fga|combined|0,1,2|0.5|10", help="the chosen FGA configuration")
    parser.add_argument("--caap", default=None, help="CAAP's key when the test run holds several block ranges")
    parser.add_argument("--fill", default="mean")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the test order (--limit N --seed SEED)")
    parser.add_argument("--n_resamples", type=int, default=10_000)
    parser.add_argument("--no_maps_figure", action="store_true", help="skip recomputing every method's map")
    parser.add_argument("--allow_missing", action="store_true", help="report on what exists, listing what is not")
    args = parser.parse_args(argv)
    if len(args.runs) > 2:
        parser.error("--runs takes TEST and, optionally, TEST_REUSED.")
    departures: list[str] = []

    def load(folder: Path | None, what: str) -> pd.DataFrame | None:
        try:
            if folder is None:
                raise FileNotFoundError(f"{what}: no folder given (--runs TEST TEST_REUSED)")
            return load_run(folder, what)
        except FileNotFoundError as error:
            if not args.allow_missing:
                raise SystemExit(str(error)) from None
            departures.append(f"missing input: {error}")
            return None

    test = load(args.runs[0], "the test run")
    test_reused = load(args.runs[1] if len(args.runs) > 1 else None, "the test_reused run")
    reused = load(args.reused, "issue 7's test run")
    if test is None:
        raise SystemExit("the test run (--runs TEST) holds no results: nothing to report.")

    chosen = EvaluationConfiguration.from_key(args.config)
    caaps = sorted({c for c in test["config"] if c.startswith("caap|")})
    caap = args.caap or chosen_caap(args.output / CHOSEN_FILE)
    if caap is None and len(caaps) > 1:
        raise SystemExit(
            f"the test run holds several CAAP configurations {caaps}: name the chosen one with --caap (or keep "
            f"{args.output / CHOSEN_FILE} of the validation stage)."
        )
    caap = caap or (caaps[0] if caaps else None)
    scored, reused_keys = planned(chosen, caap)
    if caap is None:
        departures.append("CAAP: the test run holds no `caap` configuration.")
    merged, coverage = merge(test, test_reused, reused, scored, reused_keys, args.fill)
    missing = []
    for source, frame, keys in (
        ("test", test, scored),
        ("test_reused", test_reused, reused_keys),
        ("reused", reused, reused_keys),
    ):
        if frame is not None:
            stored = set(frame.loc[frame["fill"] == args.fill, "config"])
            missing += [f"{source}: `{config}`" for config in keys if config not in stored]
    if missing:
        message = f"configurations missing from their run: {', '.join(missing)}"
        if not args.allow_missing:
            raise SystemExit(message + " (the run is not finished; --allow_missing reports without them).")
        departures.append(message + " (what that run supplies for them is left out; without scores, the whole row).")
    extra = sorted(set(test["config"]) - set(scored) - set(reused_keys))
    if extra:
        departures.append(f"not in the plan, left out: {', '.join(f'`{c}`' for c in extra)}.")

    order, patients, split = dataset_order(args.data, args.seed)
    sets = [images for _, _, images in coverage]
    common = set.intersection(*sets) if sets else set()
    images = prefix(order, common)
    if len(images) < 2:
        raise SystemExit(f"only {len(images)} image(s) are scored by every configuration: too few to report on.")
    if len(images) < MINIMUM_IMAGES:
        departures.append(f"{len(images)} images: fewer than the plan's minimum of {MINIMUM_IMAGES}.")
    beyond = len(common) - len(images)
    if beyond:
        departures.append(
            f"{beyond} image(s) every configuration has lie beyond the first gap of the order: left out."
        )
    results = merged[merged["image_id"].isin(images)]
    configs = sorted(set(results["config"]), key=order_key)
    results = results.assign(_order=results["config"].map(configs.index)).sort_values(["_order", "preset", "image_id"])
    results = results.drop(columns="_order")
    n_patients = len({patients[i] for i in images})

    table = headline(results, patients, args.n_resamples)
    present = set(configs)
    family_a = [Comparison("A", c, TRANSMM, TWO_SIDED) for c in configs if c != TRANSMM]
    family_b = []
    for method in LIBRAGRAD_METHODS:
        plain = chosen.key if method == "fga" else key(method)
        modified = key("fga", f"{chosen.variant}+libragrad", chosen) if method == "fga" else key(method, "libragrad")
        if {plain, modified} <= present:
            family_b.append(Comparison("B", modified, plain, TWO_SIDED))
        else:
            departures.append(f"family B: {method} is not tested ({plain} or {modified} missing).")
    options = dict(metrics=list(SCORES), alpha=ALPHA, n_resamples=args.n_resamples, seed=0)
    if TRANSMM not in present:
        raise SystemExit("TransMM, the reference of every comparison, is not in the test run.")
    families = {
        name: with_verdicts(superiority_family(results, comparisons, patients, **options))
        for name, comparisons in (("A", family_a), ("B", family_b))
        if comparisons
    }
    ranking, taus = kendall(table)
    repro = reproducibility(test, reused, args.fill) if reused is not None else None

    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "headline.csv", index=False)
    for name, family in families.items():
        family.to_csv(output / f"family_{name.lower()}.csv", index=False)
    ranking.to_csv(output / "ranking_saco_paper.csv", index=False)
    if repro is not None:
        repro.to_csv(output / "reproducibility.csv", index=False)
    figures = output / "figures"
    bar_figures(table, figures)
    maps = None
    if not args.no_maps_figure:
        row = next(r for r, name in order if name == images[0])
        maps = maps_figure(split, row, images[0], configs, figures)
        stored = test.loc[test["image_id"] == images[0], "prediction"] if "prediction" in test else []
        if len(stored) and int(stored.iloc[0]) != maps["target"]:
            departures.append(
                f"the maps figure explains class {maps['target']} of {images[0]}, but the run predicted "
                f"{int(stored.iloc[0])}: the bundled model is not the one the run scored."
            )
    elif (figures / "maps.json").is_file():  # kept from an earlier run when it shows the same image
        stored = json.loads((figures / "maps.json").read_text())
        maps = stored if stored.get("image_id") == images[0] and stored.get("configs") == configs else None
    facts = {
        "n_images": len(images),
        "n_patients": n_patients,
        "seed": args.seed,
        "first_image": images[0],
        "configs": configs,
        "caap": caap and label(caap),
        "n_resamples": args.n_resamples,
        "departures": departures,
        "summary": summary_facts(table, families, taus),
    }
    write_report(args.report, output, facts, table, families, ranking, taus, repro, maps)
    print(f"wrote {args.report} ({len(images)} images, {n_patients} patients, {len(configs)} configurations)")
    for name, family in families.items():
        print(f"family {name}: {len(family)} tests: {counts(family)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
