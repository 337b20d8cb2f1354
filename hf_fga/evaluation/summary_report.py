"""
The cross-domain summary page (issue 16): `summary`'s tables as Markdown, in the form of the thesis's Table 7.3
beside the thesis's own rows, the claim × domain verdict table, a bar chart of the % change against TransMM, and
what the attributions reveal about each domain's model (`findings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .configuration import EvaluationConfiguration
from .figures import change_bars_figure, metric_title
from .findings import FINDINGS_FILE, not_run_text, read_key_findings
from .statistics import METRICS
from .summary import (
    SUMMARY_VARIANTS,
    Domain,
    DomainRun,
    DomainVerdict,
    load_domain,
    results_table,
    thesis_table,
    verdict_table,
)

ROLE_LABELS = {
    "transmm": "TransMM",
    "combined": "FGA combined",
    "shuffled": "FGA shuffled decoder",
    "centered": "`centered`",
    "mean-centered": "`mean-centered`",
}
DOMAIN_REPORTS = ("claims.md", "patient_level.md", "report.md")  # a run's own reports, linked when present


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "not in the run"
    text = f"{row['mean']:.4g} ± {row['sem']:.2g}"
    if row["role"] != "transmm":
        paired = row["paired_stars"] or "n.s."
        text += f" ({row['pct_change']:+.1f} %{row['welch_stars']}; paired {paired})"
    return text


def _configuration_text(layers: str, kappa: float, cmax: float) -> str:
    return f"[{layers}], κ = {kappa:g}, c_max = {cmax:g}"


def _domain_description(run: DomainRun) -> str:
    n_images = run.results["image_id"].nunique()
    if run.patients is None:
        return f"{run.domain.title}: {n_images} images, no patient ids (image-level tests only)"
    patients = {run.patients[i] for i in run.results["image_id"].unique() if i in run.patients}
    return f"{run.domain.title}: {n_images} images of {len(patients)} patients"


def _units_note(runs: Mapping[str, DomainRun]) -> str:
    with_ids = [r.domain.title for r in runs.values() if r.patients is not None]
    without = [r.domain.title for r in runs.values() if r.patients is None]
    parts = []
    if with_ids:
        parts.append(f"{', '.join(with_ids)}: images share patients, so §2's confirmatory tests are per patient")
    if without:
        parts.append(f"{', '.join(without)}: no patient ids, image-level tests only")
    return "Unit of the tests. " + "; ".join(parts) + "." if parts else ""


def _link(path: str, output_dir: Path) -> str:
    return f"[{Path(path).name}]({os.path.relpath(Path(path).resolve(), Path(output_dir).resolve())})"


def _not_run_text(domain: Domain, output_dir: Path) -> str:
    why = f"; why: {_link(domain.pending, output_dir)}" if domain.pending else ""
    return f"**not run yet**: {domain.command}{why}"


def table_markdown(
    domains: Sequence[Domain], runs: Mapping[str, DomainRun], table: pd.DataFrame, output_dir: Path
) -> str:
    """Our rows in the Table 7.3 form (one per domain, preset, fill, role), with a row per domain not run yet."""
    header = " | ".join(metric_title(m) for m in METRICS)
    lines = [f"| dataset | preset | method | {header} |", "|" + " --- |" * (3 + len(METRICS))]
    for domain in domains:
        if domain.name not in runs:
            title = f"{domain.title} ({domain.note})" if domain.note else domain.title
            lines.append(f"| {title} | | {_not_run_text(domain, output_dir)} |" + " |" * len(METRICS))
            continue
        run = runs[domain.name]
        rows = table[table["domain"] == domain.name]
        chosen = EvaluationConfiguration.from_key(run.config)
        fills = rows["fill"].nunique()
        first = True
        for (preset, fill), group in rows.groupby(["preset", "fill"], sort=True):
            for role in [r for r in ("transmm", *SUMMARY_VARIANTS) if r in set(group["role"])]:
                cells = group[group["role"] == role].set_index("metric")
                name = ROLE_LABELS.get(role, role)
                if role == "combined":
                    name += " " + _configuration_text(chosen.layers_text, chosen.kappa, chosen.cmax)
                dataset = _domain_description(run) if first else ""
                preset_text = f"{preset}" + (f" ({fill} fill)" if fills > 1 else "")
                metrics = " | ".join(_cell(cells.loc[m] if m in cells.index else None) for m in METRICS)
                lines.append(f"| {dataset} | {preset_text} | {name} | {metrics} |")
                first = False
    return "\n".join(lines)


def thesis_markdown() -> str:
    """The thesis's Table 7.3 (its `thesis` preset), with the % change against its TransMM computed from its means."""
    header = " | ".join(metric_title(m) for m in METRICS)
    lines = [f"| dataset (thesis) | method | {header} |", "|" + " --- |" * (2 + len(METRICS))]
    for (dataset, role), rows in thesis_table().groupby(["dataset", "role"], sort=False):
        first = rows.iloc[0]
        cells = []
        for row in rows.set_index("metric").loc[list(METRICS)].itertuples():
            cell = f"{row.mean:.{row.decimals}f} ± {row.sem:.{row.decimals}f}"
            cells.append(cell if role == "transmm" else f"{cell} ({row.pct_change:+.1f} %{row.welch_stars})")
        if role == "transmm":
            name, label = ROLE_LABELS[role], f"{dataset}, {first.model}"
        else:
            name, label = f"{ROLE_LABELS[role]} {_configuration_text(first.layers, first.kappa, first.cmax)}", ""
        lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts_markdown(domains: Sequence[Domain], runs: Mapping[str, DomainRun], verdicts: pd.DataFrame) -> str:
    """The verdict table: claim × domain (`images / confirmatory (unit)`), then in how many domains each holds."""
    titles = " | ".join(d.title for d in domains)
    lines = [
        f"| claim | {titles} | held in (images) | held in (confirmatory) |",
        "|" + " --- |" * (3 + len(domains)),
    ]
    for _, row in verdicts.iterrows():
        cells = []
        for domain in domains:
            value = row[domain.name]
            if isinstance(value, DomainVerdict):
                unit = runs[domain.name].unit
                n = value.comparisons
                cells.append(
                    f"{value.images} ({value.images_held}/{n}) / {value.confirmatory} ({value.confirmatory_held}/{n}; "
                    f"{unit}, Holm)"
                )
            else:
                cells.append(value)
        source = "" if row["kind"] == "thesis" else " *(control)*"
        run = int(row["domains_run"])
        lines.append(
            f"| {row['statement']}{source} | " + " | ".join(cells) + f" | {int(row['held_images'])} of {run} | "
            f"{int(row['held_confirmatory'])} of {run} |"
        )
    return "\n".join(lines)


def percent_changes(table: pd.DataFrame, runs: Mapping[str, DomainRun]) -> pd.DataFrame:
    """
    The % change against TransMM of every method but TransMM, as rows (preset, metric, group, series, pct_change):
    one group per domain run, plus the thesis's three datasets in the `thesis` preset (its numbers).
    """
    ours = table[table["role"] != "transmm"] if len(table) else table
    ours = pd.DataFrame(
        {
            "preset": ours.get("preset", []),
            "metric": ours.get("metric", []),
            "group": [runs[d].domain.title for d in ours.get("domain", [])],
            "series": [ROLE_LABELS[r].replace("`", "") for r in ours.get("role", [])],
            "pct_change": ours.get("pct_change", []),
        }
    )
    thesis = thesis_table()
    thesis = thesis[thesis["role"] != "transmm"]
    theirs = pd.DataFrame(
        {
            "preset": "thesis",
            "metric": thesis["metric"],
            "group": "thesis: " + thesis["dataset"],
            "series": [ROLE_LABELS[r].replace("`", "") for r in thesis["role"]],
            "pct_change": thesis["pct_change"],
        }
    )
    return pd.concat([ours, theirs], ignore_index=True)


# the pre-registered hypotheses of the controls' plans (docs/results/<domain>_controls/plan.md), in words
CONTROL_HYPOTHESES = {
    "H1": "the features add something beyond centring (FGA beats `centered`)",
    "H2a": "a trained SAE beats a PCA dictionary of matched fidelity",
    "H2b": "a trained SAE beats a random orthonormal dictionary of matched fidelity",
    "H3a": "combined − centered changes when the SAE's explained variance falls to ≈ 0.90 (two-sided)",
    "H3b": "the same at the lowest fidelity of the plan (two-sided)",
    "H4a": "FGA beats a sharpened TransMM (`transmm-power` γ*)",
    "H4b": "FGA beats its own gates permuted over the patches (`random-gates`)",
    "H5": "a feature-selective use (`selective` m*) beats `centered`",
}
SUPERIORITY_FILE, EQUIVALENCE_FILE = "hypotheses_superiority.csv", "hypotheses_equivalence.csv"


def _control_cell(superiority: pd.DataFrame, equivalence: pd.DataFrame | None, hypothesis: str) -> str:
    rows = superiority[superiority["hypothesis"] == hypothesis]
    if rows.empty:
        return "not scored yet"  # a provisional analysis (controls_analysis.py --provisional) leaves it out
    cell = f"{int(rows['holds'].astype(bool).sum())} of {len(rows)}"
    if equivalence is not None:
        same = equivalence[equivalence["hypothesis"] == hypothesis]
        if len(same):
            cell += f" (equivalent in {int(same['equivalent'].astype(bool).sum())} of {len(same)})"
    return cell


def controls_markdown(domains: Sequence[Domain], controls_root: Path, output_dir: Path) -> str:
    """
    The controls section: per pre-registered hypothesis of method.md §10 and per domain, in how many of its metric ×
    preset cells it holds after Holm (and, for H1, H2a and H2b, in how many "no difference" is shown by the TOSTs),
    from `<controls_root>/<name>_controls/test/hypotheses_*.csv` (`scripts/controls_analysis.py`); a domain without
    them is "not scored yet" (with its status page when there is one) or "no plan".
    """
    header = "| hypothesis | " + " | ".join(d.title for d in domains) + " |"
    lines = [
        "Per pre-registered hypothesis of each domain's controls plan (`docs/results/<domain>_controls/plan.md`, "
        "method.md §10): in how many of its 6 metric × preset cells it holds (Holm within the domain's family, "
        "patient-level where the dataset has patient ids, image-level otherwise); for H1, H2a and H2b, in brackets, "
        "in how many cells a paired TOST shows equivalence within ±10 % of FGA's gain over TransMM (Holm). A cell "
        "that neither holds nor is shown equivalent is inconclusive, not evidence of no difference.",
        "",
        header,
        "|" + " --- |" * (len(domains) + 1),
    ]
    cells: dict[str, list[str]] = {h: [] for h in CONTROL_HYPOTHESES}
    notes = []
    for domain in domains:
        folder = Path(controls_root) / f"{domain.name}_controls"
        superiority_path = folder / "test" / SUPERIORITY_FILE
        if superiority_path.is_file():
            superiority = pd.read_csv(superiority_path)
            equivalence_path = folder / "test" / EQUIVALENCE_FILE
            equivalence = pd.read_csv(equivalence_path) if equivalence_path.is_file() else None
            for hypothesis in CONTROL_HYPOTHESES:
                cells[hypothesis].append(_control_cell(superiority, equivalence, hypothesis))
            report = Path(controls_root) / f"{domain.name}_controls.md"
            where = report if report.is_file() else folder / "test" / "hypotheses.md"
            notes.append(f"{domain.title}: {_link(str(where), output_dir)}")
            continue
        status = "not scored yet" if (folder / "plan.md").is_file() else "no plan"
        for hypothesis in CONTROL_HYPOTHESES:
            cells[hypothesis].append(status)
        if (folder / "README.md").is_file():
            notes.append(f"{domain.title} ({status}): {_link(str(folder / 'README.md'), output_dir)}")
    for hypothesis, statement in CONTROL_HYPOTHESES.items():
        lines.append(f"| {hypothesis}: {statement} | " + " | ".join(cells[hypothesis]) + " |")
    if notes:
        lines += ["", "Reports: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def findings_markdown(domains: Sequence[Domain], findings_root: Path, output_dir: Path) -> str:
    """
    The "what the attributions reveal" section: per domain the key lines and first figure of its findings folder
    `<findings_root>/<name>` (`scripts/attribution_findings.py`), or "not run yet" with the command.
    """
    lines = [
        "Where TransMM and the chosen FGA configuration put their positive attribution on each domain's test "
        "images: the share on the outer patch ring (where burned-in letters, markers, scale bars and text sit) and on "
        "the most near-white patches, by rules fixed beforehand (`hf_fga/evaluation/findings.py`). A hint of "
        "shortcut cues, not proof: each domain's page says what the numbers do and do not show.",
        "",
    ]
    for domain in domains:
        folder = Path(findings_root) / domain.name
        found = read_key_findings(folder)
        lines += [f"### {domain.title}", ""]
        if found is None:
            lines += [not_run_text(domain.name, os.path.relpath(folder, Path.cwd())), ""]
            continue
        lines += [f"- {line}" for line in found.lines]
        lines += [f"- The whole page: {_link(str(folder / FINDINGS_FILE), output_dir)}.", ""]
        for name, caption in found.figures:
            target = os.path.relpath((folder / name).resolve(), Path(output_dir).resolve())
            lines += [f"![{caption}]({target})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def summary_markdown(
    domains: Sequence[Domain],
    runs: Mapping[str, DomainRun],
    table: pd.DataFrame,
    verdicts: pd.DataFrame,
    output_dir: Path,
    *,
    alpha: float = 0.05,
    figure: str | None = None,
    command: str = "",
    findings_root: Path | None = None,
    reading: str | None = None,
    controls_root: Path | None = None,
) -> str:
    """
    The whole summary page (see the module docstring) from `results_table` and `verdict_table` of the `runs`;
    `output_dir` is where the page lies (for its links), `figure` the figure's file name next to it, if any,
    `findings_root` the folder of the domains' attribution findings (the section is left out when `None`),
    `reading` a hand-written reading of the numbers (Markdown, shown first under its own heading; none when `None`),
    `controls_root` the folder of the domains' `<name>_controls` folders (the controls section is left out when
    `None`).
    """
    run_domains = [d for d in domains if d.name in runs]
    pending = [d for d in domains if d.name not in runs]
    lines = ["# FGA across domains: the thesis's Table 7.3 and its claims, per domain", ""]
    if pending:
        links = "; ".join(
            f"{d.title}" + (f" (why: {_link(d.pending, output_dir)})" if d.pending else "") for d in pending
        )
        lines += [
            f"**Interim summary: {len(run_domains)} of {len(domains)} domains have a finished test run** "
            f"({', '.join(d.title for d in run_domains) or 'none'}). Pending: {links}. Verdict counts are over the "
            "domains run.",
            "",
        ]
    if command:
        lines += [f"Regenerated from the stored results only (no model runs): `{command}`", ""]
    if reading and reading.strip():
        lines += [
            "## What the numbers say",
            "",
            "*Hand-written after reading the tables below (the `<page>_reading.md` file next to this page: the "
            "script embeds it and never overwrites it; the tables are regenerated).*",
            "",
            reading.strip(),
            "",
        ]
    lines += [
        "## 1. Test results in the form of the thesis's Table 7.3",
        "",
        "Each domain's test split with the FGA configuration chosen on its validation split (blocks, κ, c_max; the "
        "shuffled decoder and the controls use the same). "
        "Mean ± SEM over images; in brackets the % change against TransMM with the stars of the two-sided Welch "
        "t-test, as the thesis reported them (`***` p < 0.001, `**` p < 0.01, `*` p < 0.05), then the stars of the "
        "paired Wilcoxon signed-rank test over images (n.s.: p ≥ 0.05). SaCo and Faithfulness Correlation: higher is "
        "better; Pixel Flipping: lower is better. Preset `papers`: normalised Pixel Flipping AUC (0–1); preset "
        "`thesis`: the thesis's metric settings, un-normalised trapezoid Pixel Flipping AUC (method.md §5).",
        "",
        table_markdown(domains, runs, table, output_dir),
        "",
        _units_note(runs),
        "",
        "**The thesis's own numbers** (its Table 7.3 and 7.4, method.md §6: its `thesis` preset, so Pixel Flipping is "
        "the un-normalised trapezoid AUC; ViT-B/16 with 12 blocks, CLIP ViT-B/32; stars: Welch against TransMM; "
        "the % change is computed here from its means). These are not our runs.",
        "",
        thesis_markdown(),
        "",
        "## 2. Which claims hold in how many domains",
        "",
        "Each cell: the verdict at the thesis's level (paired Wilcoxon over images, p < "
        f"{alpha:g}, no correction: `hf_fga.evaluation.claims`) / the confirmatory verdict (method.md §10: paired "
        "Wilcoxon on per-patient mean differences where the dataset has patient ids, per image otherwise, Holm "
        "across every comparison of the domain's table; the equivalence rows: paired TOST with margin ±10 % of "
        "FGA's gain over TransMM per metric and preset, Holm across that family). A claim of several comparisons "
        "(metrics × presets) is `held` when all of them hold, `not held` when none does, `mixed` otherwise; in "
        "brackets how many of its comparisons hold. *(control)*: a verdict of the controls (`hf_fga.evaluation.claims."
        "control_claims`, `hf_fga.evaluation.hypothesis_tests.equivalence_family`), not a claim of the thesis. The "
        "count columns: in how many of the domains that tested the claim it is `held` (—: the run lacks the claim's "
        "configurations). Each domain's own reports hold the comparisons themselves; their Holm families differ "
        "from these, so a borderline comparison may differ.",
        "",
        verdicts_markdown(domains, runs, verdicts),
        "",
    ]
    families = verdicts.attrs.get("families", {})
    if families:
        lines += [
            "Holm families of the confirmatory verdicts: "
            + "; ".join(f"{runs[name].domain.title}: {' and '.join(sizes)}" for name, sizes in families.items())
            + ".",
            "",
        ]
    reports = [
        f"{run.domain.title}: " + ", ".join(_link(str(path), output_dir) for path in found)
        for run in runs.values()
        if (
            found := [
                Path(run.domain.run_dir) / name for name in DOMAIN_REPORTS if (run.domain.run_dir / name).is_file()
            ]
        )
    ]
    if reports:
        lines += ["The comparisons in detail: " + "; ".join(reports) + ".", ""]
    section = 3
    if figure:
        lines += [f"## {section}. % change against TransMM per domain", "", f"![% change against TransMM]({figure})"]
        lines.append("")
        section += 1
    if controls_root is not None:
        lines += [f"## {section}. The controls: what the SAE's features add", ""]
        lines += [controls_markdown(domains, controls_root, output_dir), ""]
        section += 1
    if findings_root is not None:
        lines += [f"## {section}. What the attributions reveal", ""]
        lines.append(findings_markdown(domains, findings_root, output_dir))
    return "\n".join(lines)


@dataclass
class Summary:
    """What `write_summary` wrote: the `runs` found, their `results_table`, the `verdict_table` and the Markdown."""

    runs: dict[str, DomainRun]
    table: pd.DataFrame
    verdicts: pd.DataFrame
    markdown: str


def write_summary(
    domains: Sequence[Domain],
    output: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    alpha: float = 0.05,
    figure: bool = True,
    command: str = "",
    findings_root: str | os.PathLike | None = None,
) -> Summary:
    """
    Write the summary Markdown to `output` (and, with `figure`, `<output stem>_change.png` next to it) from the
    stored runs of `domains` (`load_domain`; `data_root` for the patient ids), with the attribution findings of
    `findings_root` (default: the `findings` folder next to `output`) and, when `<output stem>_reading.md` exists
    next to `output`, that hand-written reading of the numbers first.
    """
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError(f"domain names must be unique; got {names}.")
    output = Path(output)
    runs = {d.name: run for d in domains if (run := load_domain(d, data_root)) is not None}
    table = results_table([runs[d.name] for d in domains if d.name in runs])
    verdicts = verdict_table(domains, runs, alpha)
    figure_name = None
    if figure and runs:
        path = output.with_name(f"{output.stem}_change.png")
        change_bars_figure(percent_changes(table, runs), path, "% change against TransMM per domain")
        figure_name = path.name
    output.parent.mkdir(parents=True, exist_ok=True)
    findings_root = Path(findings_root) if findings_root is not None else output.parent / "findings"
    reading = output.with_name(f"{output.stem}_reading.md")
    text = summary_markdown(
        domains,
        runs,
        table,
        verdicts,
        output.parent,
        alpha=alpha,
        figure=figure_name,
        command=command,
        findings_root=findings_root,
        reading=reading.read_text() if reading.is_file() else None,
        controls_root=output.parent,
    )
    output.write_text(text)
    return Summary(runs, table, verdicts, text)


__all__ = [
    "CONTROL_HYPOTHESES",
    "Summary",
    "controls_markdown",
    "findings_markdown",
    "percent_changes",
    "summary_markdown",
    "table_markdown",
    "thesis_markdown",
    "write_summary",
]
