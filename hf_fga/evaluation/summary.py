"""
The cross-domain summary of issue 16 (method.md §6, §10): the test results of every domain in the form of the
thesis's Table 7.3 beside the thesis's own rows, and which claims and control verdicts hold in how many domains.

Everything is read from stored results (`storage.read_parts` of each domain's test run); nothing runs a model. A
domain whose run is missing or empty is listed as "not run yet" with the command that produces it.

Two verdicts per claim and domain:

- **images** (the thesis's level, `claims.thesis_claims` / `claims.control_claims`): a comparison "A beats B" holds
  when A's mean is better and the paired Wilcoxon test over images gives p < α, without correction;
- **confirmatory** (method.md §10): the same comparisons on the per-unit mean differences (`hypothesis_tests.
  patient_comparison`), the unit being the patient where the dataset has patient ids and the image otherwise, Holm's
  correction across every comparison of the domain's verdict table (one family per domain).

"No difference" is a claim only through the equivalence rows (paired TOST, margin ±10 % of FGA's gain over TransMM,
`hypothesis_tests.gain_margins` / `equivalence_family`). The Markdown page and its figure: `summary_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .claims import HELD, Claim, control_claims, thesis_claims, verdict
from .configuration import REFERENCE, EvaluationConfiguration
from .hypothesis_tests import (
    Comparison,
    directional_holds,
    equivalence_family,
    gain_margins,
    holm,
    patient_comparison,
    patient_keys,
)
from .statistics import METRICS, percent_change, summarize
from .storage import RESULTS_FOLDER, RUN_FILE, read_parts

CHOSEN_CONFIGURATION_FILE = "chosen_configuration.txt"
CHOSEN_PREFIX = "chosen configuration:"
SUMMARY_VARIANTS = ("combined", "shuffled", "centered", "mean-centered")
NOT_RUN = "not run"
NOT_TESTED = "—"
PATIENTS, IMAGES = "patients", "images"
RESULT_COLUMNS = ["image_id", "config", "preset", "fill", "method", "variant", "layers", "kappa", "cmax", *METRICS]

# The thesis's test results (its Table 7.3, hyperparameters of its Table 7.4; method.md §6), its `thesis` preset:
# mean ± SEM and the stars of the two-sided Welch t-test against TransMM, as printed there.
THESIS_SETTINGS = {
    "COVID-QU-Ex": ("ViT-B/16", "2,3,4", 1.0, 50.0),
    "HyperKvasir": ("ViT-B/16", "4,5,6", 0.1, 50.0),
    "ImageNet (10k)": ("CLIP ViT-B/32", "5,6,10", 0.5, 10.0),
}
THESIS_DECIMALS = (3, 3, 2)  # as printed there: SaCo, Faithfulness Correlation, Pixel Flipping
THESIS_TABLE = {  # dataset → role → (SaCo, Faithfulness Correlation, Pixel Flipping) as (mean, SEM, Welch stars)
    "COVID-QU-Ex": {
        "transmm": ((0.459, 0.004, ""), (0.309, 0.002, ""), (93.17, 0.68, "")),
        "combined": ((0.507, 0.004, "***"), (0.442, 0.002, "***"), (83.06, 0.67, "***")),
        "shuffled": ((0.434, 0.004, "***"), (0.319, 0.002, "**"), (96.66, 0.70, "***")),
    },
    "HyperKvasir": {
        "transmm": ((0.504, 0.016, ""), (0.479, 0.009, ""), (94.50, 2.41, "")),
        "combined": ((0.727, 0.015, "***"), (0.550, 0.008, "***"), (93.31, 2.38, "")),
        "shuffled": ((0.616, 0.019, "***"), (0.446, 0.009, "*"), (97.87, 2.36, "")),
    },
    "ImageNet (10k)": {
        "transmm": ((0.250, 0.004, ""), (0.314, 0.003, ""), (8.83, 0.09, "")),
        "combined": ((0.337, 0.004, "***"), (0.358, 0.002, "***"), (8.52, 0.09, "*")),
        "shuffled": ((0.242, 0.004, ""), (0.250, 0.003, "***"), (9.70, 0.09, "***")),
    },
}


@dataclass(frozen=True)
class Domain:
    """
    One domain of the summary: where its test run lies and how to produce it.

    Args:
        name (`str`): short name, e.g. `chest_xray`.
        title (`str`): what the tables call it, e.g. `Chest X-ray (paediatric pneumonia)`.
        run_dir (`Path`): the test run folder (with `results/` and `run.json`), e.g. `docs/results/chest_xray/test`.
        chosen_configuration (`Path`): the file `scripts/reproduce.sh` writes (`chosen configuration: <key>`).
        command (`str`): the command that produces the run (Markdown), shown while it is not run yet.
        pending (`str`, *optional*, defaults to `""`): a path (relative to the working directory) of a document that
            says why the domain is not run yet; linked from the summary while it is not.
        note (`str`, *optional*, defaults to `""`): shown after the title while the domain is not run yet (e.g. that
            its dataset has no patient ids, so its tests will be image-level only).
    """

    name: str
    title: str
    run_dir: Path
    chosen_configuration: Path
    command: str
    pending: str = ""
    note: str = ""


@dataclass
class DomainRun:
    """
    A domain's finished test run: its per-image `results` (rows of `RESULT_COLUMNS`), the chosen FGA `combined`
    configuration key `config`, and `patients` (image id → patient key), `None` when the dataset has no patient ids.
    """

    domain: Domain
    results: pd.DataFrame
    config: str
    patients: dict[str, str] | None

    @property
    def unit(self) -> str:
        """The unit of the confirmatory tests: `patients` where the dataset has patient ids, else `images`."""
        return PATIENTS if self.patients is not None else IMAGES

    def units(self) -> dict[str, str]:
        """Image id → unit key: the patient, or the image itself for a dataset without patient ids."""
        return self.patients if self.patients is not None else {i: i for i in self.results["image_id"].unique()}

    def key(self, role: str) -> str:
        """The configuration key of a role: TransMM (`transmm`) or a variant of the chosen configuration."""
        if role == "transmm":
            return REFERENCE.key
        return dataclasses.replace(EvaluationConfiguration.from_key(self.config), variant=role).key


def parse_domain(spec: str, results_root: Path = Path("docs/results")) -> tuple[str, Path, Path]:
    """
    A domain given on the command line: `name`, `name=run_dir` or `name=run_dir:chosen_configuration_file`.

    By convention (the layout `scripts/reproduce.sh` writes) the run is `<results_root>/<name>/test` and the chosen
    configuration `chosen_configuration.txt` in the run folder's parent.

    Example:
    ```python
    >>> [str(p) for p in parse_domain("chest_xray")[1:]]
    ['docs/results/chest_xray/test', 'docs/results/chest_xray/chosen_configuration.txt']
    >>> [str(p) for p in parse_domain("busi=runs/busi/test:runs/busi.txt")[1:]]
    ['runs/busi/test', 'runs/busi.txt']

    ```
    """
    name, _, where = spec.partition("=")
    if not name or (spec.count("=") and not where):
        raise ValueError(f"domain {spec!r}: expected `name`, `name=run_dir` or `name=run_dir:chosen_file`.")
    run_text, _, chosen_text = where.partition(":")
    run_dir = Path(run_text) if run_text else results_root / name / "test"
    chosen = Path(chosen_text) if chosen_text else run_dir.parent / CHOSEN_CONFIGURATION_FILE
    return name, run_dir, chosen


def read_chosen_configuration(path: str | os.PathLike) -> str:
    """
    The FGA `combined` configuration key of a `chosen_configuration.txt` (`chosen configuration: fga|combined|…`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the domain has test results but no chosen configuration. It is written by "
            "`bash scripts/reproduce.sh --dataset <name>` after the validation stages; pass it as "
            "`name=run_dir:chosen_file` if it lies elsewhere."
        )
    text = path.read_text().strip()
    key = text[len(CHOSEN_PREFIX) :].strip() if text.startswith(CHOSEN_PREFIX) else text
    if EvaluationConfiguration.from_key(key).variant != "combined":
        raise ValueError(f"{path} names {key!r}, not an FGA 'combined' configuration.")
    return key


def run_patients(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> dict[str, str] | None:
    """
    Image id → patient key of a run's test images (`patient_keys` on the dataset's `patient_id` and `file_name`), or
    `None` when the dataset has no `patient_id` column (BUSI, CIFAR-10).

    The dataset, split and id column are those of the run's `run.json`; with `data_root`, the dataset is looked up as
    `<data_root>/<its folder name>` (a run recorded `../shared/data/…` relative to the repository root).
    """
    import pyarrow.parquet as pq

    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run's dataset (for its patient ids) is recorded there by "
            "scripts/evaluate_faithfulness.py; was the folder copied without it?"
        )
    description = json.loads(path.read_text())
    dataset = Path(description["dataset"])
    if data_root is not None:
        dataset = Path(data_root) / dataset.name
    files = sorted((dataset / "data").glob(f"{description.get('split', 'test')}-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no {description.get('split', 'test')} split under {dataset / 'data'} (the dataset of {run_dir}): pass "
            "--data_root with the folder that holds it (e.g. /work/shared/data); the patient ids come from there."
        )
    names = pq.read_schema(files[0]).names
    if "patient_id" not in names:
        return None
    id_column = description.get("id_column", "file_name")
    frame = pq.read_table(files, columns=sorted({"patient_id", "file_name", id_column})).to_pandas()
    keys = patient_keys(frame["patient_id"].astype(str), frame["file_name"].astype(str))
    return dict(zip(frame[id_column].astype(str), keys, strict=True))


def load_domain(domain: Domain, data_root: str | os.PathLike | None = None) -> DomainRun | None:
    """A domain's finished run (`DomainRun`), or `None` when its run folder is missing or holds no results."""
    results = read_parts(Path(domain.run_dir) / RESULTS_FOLDER)
    if results.empty:
        return None
    config = read_chosen_configuration(domain.chosen_configuration)
    if config not in set(results["config"]):
        raise ValueError(
            f"the chosen configuration {config!r} ({domain.chosen_configuration}) is not in {domain.run_dir}: the run "
            "was made with another configuration; re-run its test stage."
        )
    results = results[[c for c in RESULT_COLUMNS if c in results.columns]]
    return DomainRun(domain, results, config, run_patients(domain.run_dir, data_root))


def results_table(runs: Sequence[DomainRun], roles: Sequence[str] = ("transmm", *SUMMARY_VARIANTS)) -> pd.DataFrame:
    """
    The rows of the Table 7.3 form: per domain, preset, fill, role and metric, the rows of `statistics.summarize`
    (n, mean, sem, pct_change, welch_p, welch_stars, wilcoxon_p, paired_stars, …) of that role's configuration, plus
    `domain` and `role`. A role the run lacks is left out.
    """
    frames = []
    for run in runs:
        keys = {run.key(role): role for role in roles}
        summary = summarize(run.results[run.results["config"].isin(keys)])
        frames.append(summary.assign(domain=run.domain.name, role=summary["config"].map(keys)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class DomainVerdict(NamedTuple):
    """One claim in one domain: both verdicts, how many of its `comparisons` hold at each level."""

    images: str
    confirmatory: str
    images_held: int
    confirmatory_held: int
    comparisons: int


def _confirm(claims: list[Claim], run: DomainRun, alpha: float) -> tuple[list[pd.Series], int]:
    """
    Per claim, whether each of its comparisons holds at the confirmatory level (per-unit Wilcoxon, Holm across the
    comparisons of all the claims), and the size of that family.
    """
    keys = ["preset", "fill", "config", "reference", "metric"]
    evidence = pd.concat([c.evidence.assign(claim=i) for i, c in enumerate(claims)], ignore_index=True)
    pairs = evidence[["config", "reference"]].drop_duplicates().itertuples(index=False)
    units = run.units()
    tests = pd.concat(
        [patient_comparison(run.results, a, b, units, n_resamples=1) for a, b in pairs], ignore_index=True
    )
    family = tests.merge(evidence[keys].drop_duplicates(), on=keys)
    family["holm_p"] = holm(family["wilcoxon_p"].to_numpy())
    family["beats"] = directional_holds(family, alpha)
    evidence = evidence.merge(family[[*keys, "beats"]], on=keys, how="left", validate="many_to_one")
    beats = evidence["beats"].astype(bool)
    holds = beats.where(evidence["requirement"] == "A beats B", ~beats)
    return [holds[evidence["claim"] == i] for i in range(len(claims))], len(family)


def _equivalence(run: DomainRun, alpha: float) -> tuple[list[tuple[str, pd.Series, pd.Series]], int]:
    """
    (statement, image-level holds, confirmatory holds) of `combined` ≡ each present control (paired TOST, margin
    ±10 % of FGA's gain over TransMM; image level uncorrected, confirmatory per unit with Holm), and the family size.
    """
    present = set(run.results["config"])
    controls = [v for v in ("centered", "mean-centered") if run.key(v) in present]
    if not controls:
        return [], 0
    comparisons = [Comparison(f"≡ {v}", run.config, run.key(v)) for v in controls]
    families = []
    for units in ({i: i for i in run.results["image_id"].unique()}, run.units()):
        margins = gain_margins(run.results, run.config, REFERENCE.key, units)
        families.append(equivalence_family(run.results, comparisons, units, margins, alpha=alpha))
    images, confirmatory = families
    rows = [
        (
            f"`combined` is equivalent to `{v}` (paired TOST, margin ±10 % of FGA's gain over TransMM)",
            images.loc[images["hypothesis"] == f"≡ {v}", "tost_p"] < alpha,
            confirmatory.loc[confirmatory["hypothesis"] == f"≡ {v}", "equivalent"],
        )
        for v in controls
    ]
    return rows, len(confirmatory)


def domain_verdicts(run: DomainRun, alpha: float = 0.05) -> pd.DataFrame:
    """
    Every claim of one domain with its two verdicts (module docstring): columns `statement`, `kind` (`thesis` for
    `thesis_claims`, `control` for `control_claims` and the equivalence rows), `verdict` (a `DomainVerdict`),
    `family` (the Holm family of the confirmatory verdict and its size), `domain`, `unit`.
    """
    claims = thesis_claims(run.results, run.config, alpha=alpha)
    controls = control_claims(run.results, run.config, alpha=alpha)
    confirmed, size = _confirm(claims + controls, run, alpha)
    kinds = ["thesis"] * len(claims) + ["control"] * len(controls)
    rows = [
        (c.statement, kind, c.evidence["holds"], holds, f"{size} superiority tests")
        for c, holds, kind in zip(claims + controls, confirmed, kinds, strict=True)
    ]
    equivalence, size = _equivalence(run, alpha)
    rows += [(s, "control", i, c, f"{size} equivalence tests") for s, i, c in equivalence]
    return pd.DataFrame(
        [
            {
                "statement": statement,
                "kind": kind,
                "verdict": DomainVerdict(
                    verdict(images), verdict(confirmed), int(images.sum()), int(confirmed.sum()), len(images)
                ),
                "family": family,
            }
            for statement, kind, images, confirmed, family in rows
        ]
    ).assign(domain=run.domain.name, unit=run.unit)


def verdict_table(domains: Sequence[Domain], runs: Mapping[str, DomainRun], alpha: float = 0.05) -> pd.DataFrame:
    """
    Claim × domain: one row per claim (in the order first met), a column `<domain>` per domain holding a
    `DomainVerdict`, `not run` (no run) or `—` (the run lacks the claim's configurations), and `held_images` /
    `held_confirmatory` / `domains_run`: in how many of the domains that tested the claim it is `held` at each level,
    and how many tested it. `attrs["families"]`: domain → the Holm families of its confirmatory verdicts.
    """
    per_domain = [domain_verdicts(runs[d.name], alpha) for d in domains if d.name in runs]
    long = pd.concat(per_domain, ignore_index=True) if per_domain else pd.DataFrame(columns=["statement", "kind"])
    table = long[["statement", "kind"]].drop_duplicates().reset_index(drop=True)
    for domain in domains:
        if domain.name not in runs:
            table[domain.name] = NOT_RUN
            continue
        cells = long[long["domain"] == domain.name].set_index("statement")["verdict"]
        table[domain.name] = [cells[s] if s in cells.index else NOT_TESTED for s in table["statement"]]
    tested = [[row[d.name] for d in domains if isinstance(row[d.name], DomainVerdict)] for _, row in table.iterrows()]
    table["held_images"] = [sum(v.images == HELD for v in row) for row in tested]
    table["held_confirmatory"] = [sum(v.confirmatory == HELD for v in row) for row in tested]
    table["domains_run"] = [len(row) for row in tested]
    table.attrs["families"] = {
        name: list(dict.fromkeys(frame["family"])) for name, frame in long.groupby("domain", sort=False)
    }
    return table


def thesis_table() -> pd.DataFrame:
    """
    The thesis's Table 7.3 as rows (dataset, model, layers, kappa, cmax, role, metric, mean, sem, welch_stars,
    pct_change, decimals): `pct_change` against the thesis's TransMM computed from its means (NaN for TransMM),
    `decimals` the places it printed.
    """
    rows = []
    for dataset, roles in THESIS_TABLE.items():
        model, layers, kappa, cmax = THESIS_SETTINGS[dataset]
        for role, values in roles.items():
            for metric, (mean, error, welch), (reference, _, _), places in zip(
                METRICS, values, roles["transmm"], THESIS_DECIMALS, strict=True
            ):
                change = percent_change(mean, reference) if role != "transmm" else float("nan")
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "layers": layers,
                        "kappa": kappa,
                        "cmax": cmax,
                        "role": role,
                        "metric": metric,
                        "mean": mean,
                        "sem": error,
                        "welch_stars": welch,
                        "pct_change": change,
                        "decimals": places,
                    }
                )
    return pd.DataFrame(rows)


__all__ = [
    "Domain",
    "DomainRun",
    "DomainVerdict",
    "domain_verdicts",
    "load_domain",
    "parse_domain",
    "read_chosen_configuration",
    "results_table",
    "run_patients",
    "thesis_table",
    "verdict_table",
]
