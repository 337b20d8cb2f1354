"""
Confirmatory statistics for the controls of method.md §10: tests at the patient level (images of one patient are not
independent), a patient-cluster bootstrap, Holm's correction across a declared family of tests, and the paired TOST
equivalence test that a "no difference" claim needs.

Every function takes per-image paired differences `d_i = score(A, image i) − score(B, image i)` and the patient of
each image; the tests run on the per-patient mean differences, so a patient with ten images weighs as much as a
patient with one (the unit of replication is the patient).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .configuration import key_label
from .statistics import GROUP_COLUMNS, LOWER_IS_BETTER, METRIC_NAMES, METRICS, beats_fraction, paired_tests, sem

CATCH_ALL_PATIENT = "NORMAL2-IM"


def patient_keys(patient_ids: Sequence[str], file_names: Sequence[str]) -> list[str]:
    """
    One key per patient of the chest X-ray dataset: its `patient_id`, except for the catch-all id `NORMAL2-IM`.

    The dataset gives every `NORMAL2-IM-NNNN-…` file the single `patient_id` "NORMAL2-IM" (743 train, 162 test
    images); their patient number is the `NNNN` (as for `IM-NNNN`), so the key is `NORMAL2-IM-NNNN`. This is the key
    `hf_fga/bundled/splits.json` carves the validation patients by.

    Example:
    ```python
    >>> patient_keys(["person1", "NORMAL2-IM"], ["person1_virus_6.jpeg", "NORMAL2-IM-0012-0001.jpeg"])
    ['person1', 'NORMAL2-IM-0012']

    ```
    """
    keys = []
    for pid, name in zip(patient_ids, file_names, strict=True):
        match = re.match(r"NORMAL2-IM-\d+", name) if pid == CATCH_ALL_PATIENT else None
        keys.append(match.group(0) if match else pid)
    return keys


def _split_files(data_dir: str | Path, split: str) -> list[Path]:
    files = sorted((Path(data_dir) / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no {split} split under {Path(data_dir) / 'data'} (expected {split}-*.parquet files of a Hub-style "
            "dataset folder): pass the dataset's folder, e.g. /work/shared/data/chest_xray_pneumonia."
        )
    return files


def split_patients(data_dir: str | Path, split: str = "test") -> dict[str, str]:
    """
    The patient key ([`patient_keys`]) of every image of a split of the chest X-ray dataset, by file name, read from
    the split's parquet files `<data_dir>/data/<split>-*.parquet` (columns `patient_id` and `file_name` only).
    """
    import pyarrow.parquet as pq

    frame = pq.read_table(_split_files(data_dir, split), columns=["patient_id", "file_name"]).to_pandas()
    return dict(zip(frame["file_name"], patient_keys(frame["patient_id"], frame["file_name"]), strict=True))


def split_units(data_dir: str | Path, split: str = "test") -> tuple[dict[str, str], bool]:
    """
    The unit of the confirmatory tests of every image of a split, by file name: its patient key ([`split_patients`])
    where the split's parquet files have a `patient_id` column, else the file name itself (without a `file_name`
    column, as in CIFAR-10, the row index as a string: the evaluation tool's default image id). A dataset without
    patient ids (breast ultrasound, CIFAR-10) is thereby tested per image: every function of this module then works on
    the per-image differences (each "patient" holds one image, the cluster bootstrap is the ordinary bootstrap).

    Returns:
        `tuple[dict[str, str], bool]`: (file name → unit key, whether the units are patients).
    """
    import pyarrow.parquet as pq

    files = _split_files(data_dir, split)
    columns = pq.read_schema(files[0]).names
    if "patient_id" in columns:
        return split_patients(data_dir, split), True
    if "file_name" not in columns:  # CIFAR-10: the evaluation tool's default ids, the row index as a string
        rows = sum(pq.read_metadata(path).num_rows for path in files)
        return {str(i): str(i) for i in range(rows)}, False
    names = pq.read_table(files, columns=["file_name"]).column("file_name").to_pylist()
    return {name: name for name in names}, False


def comparison_markdown(table: pd.DataFrame, columns: Mapping[str, str]) -> str:
    """
    A comparison table (one row per test, as [`superiority_family`] or [`equivalence_family`] return) as Markdown.

    Args:
        table (`pd.DataFrame`): the rows.
        columns (`Mapping[str, str]`): the columns shown, `{column: header}`, in order. Metric names are spelled out
            (`METRIC_NAMES`), `config` and `reference` keys labelled ([`key_label`]), booleans written yes / no,
            p-values (`*_p`, `p_lower`, `p_upper`) with 3 significant digits, other floats signed with 5.

    Returns:
        `str`: the header, the separator and one line per row.
    """
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + " --- |" * len(columns)]
    for row in table.itertuples(index=False):
        cells = []
        for name in columns:
            value = getattr(row, name)
            if name == "metric":
                value = METRIC_NAMES.get(value, value)
            elif name in ("config", "reference"):
                value = key_label(value)
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            elif isinstance(value, float):
                value = f"{value:.3g}" if name.endswith("_p") or name in ("p_lower", "p_upper") else f"{value:+.5g}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired(values: Sequence[float], patients: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    patients = np.asarray(patients, dtype=object)
    if values.ndim != 1 or patients.shape != values.shape:
        raise ValueError(
            f"values and patients must be 1-D and of equal length (one patient per image); got shapes "
            f"{values.shape} and {patients.shape}."
        )
    keep = ~np.isnan(values)
    return values[keep], patients[keep]


def per_patient_means(values: Sequence[float], patients: Sequence[object]) -> pd.Series:
    """
    The mean of `values` over each patient's images, NaN values left out.

    Args:
        values (`Sequence[float]` of length n): one value per image (e.g. a paired difference).
        patients (`Sequence` of length n): the patient of each image (any hashable key).

    Returns:
        `pd.Series` indexed by patient (sorted), one mean per patient that has at least one non-NaN value.

    Example:
    ```python
    >>> per_patient_means([1.0, 3.0, 10.0], ["a", "a", "b"]).to_dict()
    {'a': 2.0, 'b': 10.0}

    ```
    """
    values, patients = _paired(values, patients)
    return pd.Series(values).groupby(pd.Series(patients, dtype=object)).mean().sort_index()


def patient_paired_tests(differences: Sequence[float], patients: Sequence[object]) -> tuple[float, float]:
    """
    Two-sided (Wilcoxon signed-rank p, paired t p) on the per-patient mean differences (see [`per_patient_means`]);
    the conventions of [`hf_fga.evaluation.statistics.paired_tests`] (all-zero → 1, fewer than two patients → NaN).
    """
    return paired_tests(per_patient_means(differences, patients).to_numpy())


def cluster_bootstrap_ci(
    differences: Sequence[float],
    patients: Sequence[object],
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """
    Percentile bootstrap confidence interval of the mean per-image difference, resampling whole patients.

    Each resample draws as many patients as there are, with replacement, and takes the mean over all the images of the
    drawn patients (a patient drawn twice counts twice). Images of one patient stay together, so a correlation within
    patients widens the interval where an image-level bootstrap would not.

    Args:
        differences (`Sequence[float]` of length n): per-image paired differences; NaN ones are left out.
        patients (`Sequence` of length n): the patient of each image.
        n_resamples (`int`, *optional*, defaults to 10000): bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.95): coverage of the interval, in (0, 1).
        seed (`int`, *optional*, defaults to 0): seed of the `numpy` generator (the interval is reproducible).

    Returns:
        `tuple[float, float]`: (low, high); NaN for fewer than two patients.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples!r}.")
    values, patients = _paired(differences, patients)
    frame = pd.DataFrame({"v": values, "p": patients}).groupby("p")["v"].agg(["sum", "count"])
    if len(frame) < 2:
        return float("nan"), float("nan")
    sums, counts = frame["sum"].to_numpy(), frame["count"].to_numpy()
    draws = np.random.default_rng(seed).integers(0, len(frame), size=(n_resamples, len(frame)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm(p_values: Sequence[float], pending: int = 0) -> np.ndarray:
    """
    Holm's step-down adjusted p-values of a family of tests (Holm 1979), in the order given.

    Sort the m p-values ascending, p_(1) ≤ … ≤ p_(m); the adjusted p_(i) is max_{j ≤ i} min(1, (m − j + 1) p_(j)).
    Rejecting where the adjusted p < α controls the family-wise error rate at α. A NaN p-value (a test that could not
    run) is an error: the family must be declared in full before it is tested.

    `pending` declared tests of the family whose data are not complete yet enter as p = 1 (m counts them): each
    adjusted p returned is then an upper bound of the one the complete family will give (a pending test with p ≤ 1
    can only take a rank before a given test with a multiplier no larger than that test's), so a rejection stays a
    rejection; a non-rejection may still change.

    Example:
    ```python
    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]

    ```
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a 1-D sequence; got shape {p.shape}.")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(
            f"p_values must all lie in [0, 1]; got {p.tolist()}: a NaN means a test of the family could not run "
            "(too few pairs), fix that before correcting."
        )
    if pending < 0:
        raise ValueError(f"pending must be >= 0 (tests of the family not computed yet); got {pending!r}.")
    given = len(p)
    p = np.concatenate([p, np.ones(pending)])
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out[:given]


def equivalence_margin(reference_gain: float, fraction: float = 0.1) -> float:
    """
    The TOST margin δ = fraction · |reference_gain| (method.md §10: ±10 % of FGA's gain over TransMM).

    `reference_gain` is the mean per-image difference (FGA − TransMM) of the same metric and preset; a zero or NaN
    gain gives no margin to test against and is an error.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), e.g. 0.1 for ±10 %; got {fraction!r}.")
    if not np.isfinite(reference_gain) or reference_gain == 0:
        raise ValueError(
            f"reference_gain {reference_gain!r} gives no equivalence margin: the margin is a fraction of FGA's gain "
            "over TransMM, which must be a finite non-zero mean difference."
        )
    return float(fraction * abs(reference_gain))


@dataclass(frozen=True)
class EquivalenceResult:
    """
    A paired TOST (two one-sided t-tests) on per-patient mean differences.

    Args:
        mean (`float`): mean of the per-patient differences.
        margin (`float`): δ > 0; equivalence means the true mean difference lies in (−δ, δ).
        p_lower (`float`): p of H0 "mean ≤ −δ" against "mean > −δ".
        p_upper (`float`): p of H0 "mean ≥ δ" against "mean < δ".
        p_value (`float`): max(p_lower, p_upper), the TOST p-value.
        n_patients (`int`): number of patients.
    """

    mean: float
    margin: float
    p_lower: float
    p_upper: float
    p_value: float
    n_patients: int

    def equivalent(self, alpha: float = 0.05) -> bool:
        """Whether both one-sided nulls are rejected at `alpha` (the (1 − 2α) CI lies inside ±δ)."""
        return bool(self.p_value < alpha)


def tost_paired(differences: Sequence[float], patients: Sequence[object], margin: float) -> EquivalenceResult:
    """
    Paired TOST equivalence test (Schuirmann 1987) on the per-patient mean differences, margin ±`margin`.

    With d̄ the mean and s the standard error of the P per-patient means, t_lower = (d̄ + δ) / s and
    t_upper = (d̄ − δ) / s on P − 1 degrees of freedom; p_lower = P(T ≥ t_lower), p_upper = P(T ≤ t_upper). Fewer than
    two patients give NaN p-values; zero spread gives p = 0 when |d̄| < δ and 1 otherwise.
    """
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0 (see equivalence_margin); got {margin!r}.")
    means = per_patient_means(differences, patients).to_numpy()
    n = len(means)
    mean = float(means.mean()) if n else float("nan")
    if n < 2:
        return EquivalenceResult(mean, margin, float("nan"), float("nan"), float("nan"), n)
    se = sem(means)
    if se == 0:
        p_lower, p_upper = float(mean <= -margin), float(mean >= margin)
    else:
        p_lower = float(stats.t.sf((mean + margin) / se, n - 1))
        p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))
    return EquivalenceResult(mean, margin, p_lower, p_upper, max(p_lower, p_upper), n)


def _by_image(group: pd.DataFrame, config: str, preset: str, fill: str) -> pd.DataFrame:
    frame = group[group["config"] == config].set_index("image_id")
    if frame.index.has_duplicates:
        raise ValueError(
            f"configuration {config!r} has several rows for one image in preset {preset!r}, fill {fill!r} "
            f"(e.g. {frame.index[frame.index.duplicated()][0]!r}): results of two runs were concatenated; keep one."
        )
    return frame


def patient_comparison(
    results: pd.DataFrame,
    config: str,
    reference: str,
    patients: Mapping[str, object],
    metrics: Sequence[str] | None = None,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """
    Patient-level paired statistics of two configurations scored on the same images (per-image results of
    [`hf_fga.evaluation.run_evaluation`]): per (preset, fill, metric), n images and patients, both means, the mean
    per-image and per-patient difference (config − reference), the Wilcoxon and paired-t p on per-patient means, the
    patient-cluster bootstrap 95 % CI, and the fraction of patients where `config` is better (lower for Pixel
    Flipping). Images with a NaN score on either side are left out.

    Args:
        patients (`Mapping[str, object]`): image id → patient key; an image of the results missing from it is an
            error (its patient is unknown, so it cannot be tested at the patient level).
    """
    metrics = [m for m in (metrics or METRICS) if m in results.columns]
    known = set(results["config"])
    for needed in (config, reference):
        if needed not in known:
            raise ValueError(f"configuration {needed!r} is not in the results; they hold {sorted(known)}.")
    unknown = sorted(set(results["image_id"]) - set(patients))
    if unknown:
        raise ValueError(
            f"{len(unknown)} image(s) have no patient (e.g. {unknown[:3]}): pass the patient key of every image "
            "(hf_fga.evaluation.hypothesis_tests.patient_keys on the dataset's patient_id and file_name columns)."
        )
    rows = []
    for (preset, fill), group in results.groupby(list(GROUP_COLUMNS), sort=True):
        ours, theirs = (_by_image(group, key, preset, fill) for key in (config, reference))
        for metric in metrics:
            pairs = pd.concat([ours[metric], theirs[metric]], axis=1, join="inner").astype(float).dropna()
            differences = (pairs.iloc[:, 0] - pairs.iloc[:, 1]).to_numpy()
            owners = [patients[i] for i in pairs.index]
            per_patient = per_patient_means(differences, owners)
            wilcoxon, paired_t = paired_tests(per_patient.to_numpy())
            low, high = cluster_bootstrap_ci(differences, owners, n_resamples=n_resamples, seed=seed)
            rows.append(
                {
                    "preset": preset,
                    "fill": fill,
                    "config": config,
                    "reference": reference,
                    "metric": metric,
                    "n_images": len(differences),
                    "n_patients": len(per_patient),
                    "mean": float(pairs.iloc[:, 0].mean()) if len(pairs) else float("nan"),
                    "reference_mean": float(pairs.iloc[:, 1].mean()) if len(pairs) else float("nan"),
                    "mean_difference": float(differences.mean()) if len(differences) else float("nan"),
                    "patient_mean_difference": float(per_patient.mean()) if len(per_patient) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "wilcoxon_p": wilcoxon,
                    "paired_t_p": paired_t,
                    "better_fraction": beats_fraction(per_patient.to_numpy(), metric),
                }
            )
    return pd.DataFrame(rows)


def directional_holds(table: pd.DataFrame, alpha: float = 0.05, p_column: str = "holm_p") -> pd.Series:
    """
    Whether "config beats reference" holds per row of a [`patient_comparison`] table: the per-patient mean
    difference points the better way (higher, lower for Pixel Flipping) and `p_column` < `alpha`.
    """
    lower = table["metric"].isin(LOWER_IS_BETTER)
    better = (table["patient_mean_difference"] < 0).where(lower, table["patient_mean_difference"] > 0)
    return better & (table[p_column] < alpha)


TWO_SIDED, BETTER = "two-sided", "better"


@dataclass(frozen=True)
class Comparison:
    """
    One declared comparison of a test family: `config` against `reference` (configuration keys of the results).

    Args:
        hypothesis (`str`): the label it is reported under (e.g. `"H1"`).
        config (`str`), reference (`str`): the two configurations; differences are config − reference.
        direction (`str`, *optional*, defaults to `"better"`): `"better"` (the comparison holds when `config` is
            better: higher, lower for Pixel Flipping) or `"two-sided"` (it holds on a significant difference either
            way).
    """

    hypothesis: str
    config: str
    reference: str
    direction: str = BETTER


def combine_configurations(results: pd.DataFrame, name: str, terms: Mapping[str, float]) -> pd.DataFrame:
    """
    Per-image rows of a derived configuration `name` whose scores are the linear combination Σ coefficient · score of
    the configurations in `terms` (e.g. a difference in differences), per (image, preset, fill); images missing a
    term are left out. The rows carry `image_id`, the group columns, `label` when present, `config` and the metrics.
    """
    metrics = [m for m in METRICS if m in results.columns]
    keys = ["image_id", *GROUP_COLUMNS]
    missing = sorted(set(terms) - set(results["config"]))
    if missing:
        raise ValueError(f"combine_configurations: {missing} are not in the results ({sorted(set(results.config))}).")
    frames = [results[results["config"] == c].set_index(keys)[metrics].astype(float) * w for c, w in terms.items()]
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    combined = sum(frame.loc[common] for frame in frames)
    out = combined.reset_index().assign(config=name)
    if "label" in results.columns:
        labels = results.drop_duplicates("image_id").set_index("image_id")["label"]
        out["label"] = out["image_id"].map(labels)
    return out


def superiority_family(
    results: pd.DataFrame,
    comparisons: Sequence[Comparison],
    patients: Mapping[str, object],
    metrics: Sequence[str] | None = None,
    *,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: int = 0,
    pending: int = 0,
) -> pd.DataFrame:
    """
    Every comparison of a declared family at the patient level ([`patient_comparison`], one row per preset, fill
    and metric), Holm-corrected across all its rows together: `holm_p`, and `holds` (`holm_p < alpha`, in the
    better direction for `"better"` comparisons). A comparison whose configurations are missing is an error: a family
    is tested in full or not at all, except for a provisional report: `pending` rows of the declared family that
    are not computed yet enter Holm's correction as p = 1 ([`holm`]), so every `holm_p` is an upper bound of the
    complete family's and a cell that holds keeps holding.
    """
    tables = []
    for comparison in comparisons:
        if comparison.direction not in (BETTER, TWO_SIDED):
            raise ValueError(f"direction must be {BETTER!r} or {TWO_SIDED!r}; got {comparison.direction!r}.")
        table = patient_comparison(
            results, comparison.config, comparison.reference, patients, metrics, n_resamples=n_resamples, seed=seed
        )
        tables.append(table.assign(hypothesis=comparison.hypothesis, direction=comparison.direction))
    family = pd.concat(tables, ignore_index=True)
    family["holm_p"] = holm(family["wilcoxon_p"].to_numpy(), pending=pending)
    significant = family["holm_p"] < alpha
    family["holds"] = directional_holds(family, alpha).where(family["direction"] == BETTER, significant)
    return family


def gain_margins(
    results: pd.DataFrame,
    config: str,
    reference: str,
    patients: Mapping[str, object],
    fraction: float = 0.1,
    metrics: Sequence[str] | None = None,
) -> dict[tuple[str, str, str], float]:
    """
    Equivalence margins δ per (preset, fill, metric): `fraction` of |the per-patient mean difference config −
    reference| (method.md §10: ±10 % of FGA's gain over TransMM).
    """
    table = patient_comparison(results, config, reference, patients, metrics, n_resamples=1)
    return {
        (r.preset, r.fill, r.metric): equivalence_margin(r.patient_mean_difference, fraction)
        for r in table.itertuples()
    }


def equivalence_family(
    results: pd.DataFrame,
    comparisons: Sequence[Comparison],
    patients: Mapping[str, object],
    margins: Mapping[tuple[str, str, str], float],
    metrics: Sequence[str] | None = None,
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """
    Paired TOST ([`tost_paired`]) of every comparison per (preset, fill, metric) with the margin of that cell
    (`margins`, e.g. from [`gain_margins`]), Holm-corrected across the family: `holm_p`, and `equivalent`
    (`holm_p < alpha`).
    """
    metrics = [m for m in (metrics or METRICS) if m in results.columns]
    rows = []
    for comparison in comparisons:
        for (preset, fill), group in results.groupby(list(GROUP_COLUMNS), sort=True):
            pair = (comparison.config, comparison.reference)
            ours, theirs = (_by_image(group, key, preset, fill) for key in pair)
            if ours.empty or theirs.empty:
                raise ValueError(f"{comparison} has no results in preset {preset!r}, fill {fill!r}.")
            for metric in metrics:
                if (preset, fill, metric) not in margins:
                    raise ValueError(f"no equivalence margin for {(preset, fill, metric)}: give every cell one.")
                pairs = pd.concat([ours[metric], theirs[metric]], axis=1, join="inner").astype(float).dropna()
                differences = (pairs.iloc[:, 0] - pairs.iloc[:, 1]).to_numpy()
                owners = [patients[i] for i in pairs.index]
                result = tost_paired(differences, owners, margins[(preset, fill, metric)])
                rows.append(
                    {
                        "hypothesis": comparison.hypothesis,
                        "preset": preset,
                        "fill": fill,
                        "config": comparison.config,
                        "reference": comparison.reference,
                        "metric": metric,
                        "n_patients": result.n_patients,
                        "patient_mean_difference": result.mean,
                        "margin": result.margin,
                        "p_lower": result.p_lower,
                        "p_upper": result.p_upper,
                        "tost_p": result.p_value,
                    }
                )
    family = pd.DataFrame(rows)
    family["holm_p"] = holm(family["tost_p"].to_numpy())
    family["equivalent"] = family["holm_p"] < alpha
    return family
