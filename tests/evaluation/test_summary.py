"""The cross-domain summary (hf_fga.evaluation.summary, summary_report, scripts/domain_summary.py) on two domains."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.storage import RESULTS_FOLDER, write_part
from hf_fga.evaluation.summary import (
    Domain,
    DomainVerdict,
    load_domain,
    parse_domain,
    read_chosen_configuration,
    run_patients,
)
from hf_fga.evaluation.summary_report import Summary, percent_changes, write_summary

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "domain_summary.py"
METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")
COMBINED = "fga|combined|1,2|0.5|10"
TRANSMM = "transmm||||"
NUM_IMAGES = 30


def key(variant: str) -> str:
    return COMBINED.replace("combined", variant)


def results(shifts: dict[str, float], seed: int) -> pd.DataFrame:
    """
    Per-image rows of both presets: TransMM's score plus the configuration's shift and noise (Pixel Flipping moves
    the other way, so a positive shift is better everywhere); `centered` is `combined` made better by exactly 0.001 on
    every image, so `combined` never beats it and the two are equivalent.
    """
    rng = np.random.default_rng(seed)
    sign = np.array([1.0, 1.0, -1.0])
    rows = []
    for image in range(NUM_IMAGES):
        base = rng.uniform(0.3, 0.6, size=3)
        scores = {c: base + sign * (s + rng.normal(0.0, 0.01, size=3) * (s != 0)) for c, s in shifts.items()}
        scores[key("centered")] = scores[COMBINED] + sign * 0.001
        for config, values in scores.items():
            for preset in ("papers", "thesis"):
                rows.append(
                    {
                        "image_id": f"img-{image:03d}.png",
                        "preset": preset,
                        "fill": "mean",
                        **EvaluationConfiguration.from_key(config).columns(),
                        **dict(zip(METRICS, values, strict=True)),
                    }
                )
    return pd.DataFrame(rows)


# A: 3 patients of 10 images each, with activation / gradient; B: no patient ids, a shuffled decoder that beats
# TransMM, no activation / gradient runs.
SHIFTS_A = {TRANSMM: 0.0, COMBINED: 0.1, key("shuffled"): -0.05, key("mean-centered"): 0.05, key("activation"): 0.02,
            key("gradient"): 0.03}  # fmt: skip
SHIFTS_B = {TRANSMM: 0.0, COMBINED: 0.1, key("shuffled"): 0.05, key("mean-centered"): 0.15}


def write_domain(root: Path, name: str, frame: pd.DataFrame, patients: bool) -> Domain:
    """A run folder as `scripts/reproduce.sh` leaves it: results parts, run.json, chosen_configuration.txt, data."""
    run_dir = root / name / "test"
    half = frame["image_id"].isin(sorted(frame["image_id"].unique())[: NUM_IMAGES // 2])
    for chunk, part in enumerate((frame[half], frame[~half])):
        write_part(run_dir / RESULTS_FOLDER, part.to_dict("records"), rank=0, chunk=chunk)
    data = root / "data" / f"{name}_data"
    (data / "data").mkdir(parents=True)
    files = sorted(frame["image_id"].unique())
    columns = {"file_name": files, "label": [0] * len(files)}
    if patients:
        columns["patient_id"] = [f"patient-{i % 3}" for i in range(len(files))]
    pq.write_table(pa.table(columns), data / "data" / "test-00000-of-00001.parquet")
    (run_dir / "run.json").write_text(json.dumps({"dataset": str(data), "split": "test", "id_column": "file_name"}))
    (root / name / "chosen_configuration.txt").write_text(f"chosen configuration: {COMBINED}\n")
    return Domain(name, f"Domain {name}", run_dir, root / name / "chosen_configuration.txt", f"`make {name}`")


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[list[Domain], Path]:
    root = tmp_path_factory.mktemp("domains")
    a = write_domain(root, "a", results(SHIFTS_A, seed=0), patients=True)
    b = write_domain(root, "b", results(SHIFTS_B, seed=1), patients=False)
    (root / "why_c.md").write_text("pending\n")
    missing = Domain(
        "c", "Domain c", root / "c" / "test", root / "c" / "chosen.txt", "`make c`", str(root / "why_c.md")
    )
    return [a, b, missing], root


@pytest.fixture(scope="module")
def summary(domains) -> Summary:
    listed, root = domains
    return write_summary(listed, root / "out" / "summary.md", command="python scripts/domain_summary.py")


def welch_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Welch p written from its formula (Welch–Satterthwaite degrees of freedom)."""
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def stars_reference(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def test_table_numbers_match_a_float64_computation(summary):
    runs, table = list(summary.runs.values()), summary.table
    assert set(table["role"]) == {"transmm", "combined", "shuffled", "centered", "mean-centered"}
    assert "activation" not in set(table["role"])  # the table shows the thesis's rows and the controls only
    for run in runs:
        frame = run.results
        for preset in ("papers", "thesis"):
            for role, config in (("combined", COMBINED), ("shuffled", key("shuffled"))):
                for metric in METRICS:
                    pick = (frame["preset"] == preset) & (frame["config"] == config)
                    ours = frame.loc[pick, metric].to_numpy(np.float64)
                    ref = frame.loc[(frame["preset"] == preset) & (frame["config"] == TRANSMM), metric].to_numpy()
                    row = table[
                        (table["domain"] == run.domain.name)
                        & (table["preset"] == preset)
                        & (table["role"] == role)
                        & (table["metric"] == metric)
                    ].iloc[0]
                    p = welch_reference(ours, ref.astype(np.float64))
                    assert row["n"] == NUM_IMAGES
                    assert row["mean"] == pytest.approx(ours.mean(), rel=1e-12)
                    assert row["sem"] == pytest.approx(ours.std(ddof=1) / math.sqrt(len(ours)), rel=1e-12)
                    assert row["pct_change"] == pytest.approx(100 * (ours.mean() - ref.mean()) / abs(ref.mean()))
                    assert row["welch_p"] == pytest.approx(p, rel=1e-6)
                    assert row["welch_stars"] == stars_reference(p)


def test_verdict_counts_patients_and_not_run(summary):
    runs = summary.runs
    assert set(runs) == {"a", "b"}  # c has no run folder: not run, not dropped
    assert runs["a"].unit == "patients" and runs["b"].unit == "images"
    table = summary.verdicts.set_index("statement")

    def row(prefix: str) -> pd.Series:
        matches = [s for s in table.index if s.startswith(prefix)]
        assert len(matches) == 1, (prefix, list(table.index))
        found = table.loc[matches[0]]
        return found.map(lambda v: (v.images, v.confirmatory) if isinstance(v, DomainVerdict) else v)

    # FGA beats TransMM everywhere per image; with 3 patients no per-patient Wilcoxon reaches p < 0.05 (its smallest
    # two-sided p is 0.25), so the confirmatory verdict holds only in b, where images are the unit
    saco = row("FGA beats TransMM on SaCo")
    assert saco["a"] == ("held", "not held") and saco["b"] == ("held", "held") and saco["c"] == "not run"
    assert (saco["held_images"], saco["held_confirmatory"], saco["domains_run"]) == (2, 1, 2)
    both = row("Both the activation and the gradient are needed")
    assert both["a"] == ("held", "not held") and both["b"] == "—"  # b has no activation / gradient runs
    assert (both["held_images"], both["held_confirmatory"], both["domains_run"]) == (1, 0, 1)
    # a: shuffled loses per image; per patient "combined beats shuffled" fails, "shuffled does not beat" holds;
    # b: shuffled beats TransMM
    shuffled = row("A shuffled decoder loses the gain")
    assert shuffled["a"] == ("held", "mixed") and shuffled["b"] == ("mixed", "mixed")
    exact = table.loc[[s for s in table.index if s.startswith("A shuffled")][0], "a"]
    assert exact == DomainVerdict("held", "mixed", 12, 6, 12)  # 2 requirements × 3 metrics × 2 presets
    features = row("The features add something beyond centring")
    assert features["a"] == ("mixed", "not held") and features["b"] == ("not held", "not held")
    centered = row("`centered` (no SAE feature) beats TransMM on Pixel Flipping")
    assert (centered["held_images"], centered["held_confirmatory"]) == (2, 1)
    same = row("`combined` is equivalent to `centered`")
    assert same["a"] == ("held", "held") and same["b"] == ("held", "held") and same["held_confirmatory"] == 2
    different = row("`combined` is equivalent to `mean-centered`")
    assert different["a"] == ("not held", "not held") and different["held_images"] == 0


def test_markdown_rows_not_run_and_figure(domains, summary):
    _, root = domains
    text = (root / "out" / "summary.md").read_text()
    assert text == summary.markdown
    assert "Interim summary: 2 of 3 domains have a finished test run" in text
    assert "| Domain c | | **not run yet**: `make c`; why: [why_c.md](../why_c.md) |" in text
    assert "Domain a: 30 images of 3 patients" in text
    assert "Domain b: 30 images, no patient ids (image-level tests only)" in text
    table = summary.table
    row = table[(table["domain"] == "b") & (table["preset"] == "thesis") & (table["role"] == "shuffled")]
    row = row[row["metric"] == "pixel_flipping"].iloc[0]
    cell = (
        f"{row['mean']:.4g} ± {row['sem']:.2g} ({row['pct_change']:+.1f} %{row['welch_stars']}; "
        f"paired {row['paired_stars'] or 'n.s.'})"
    )
    assert cell in text
    assert (
        "| FGA beats TransMM on SaCo | held (2/2) / not held (0/2; patients, Holm) | held (2/2) / held (2/2; images, "
        "Holm) | not run |" in text
    )
    assert "| 2 of 2 | 1 of 2 |" in text
    # a: 9 pairs (combined vs 6 others, shuffled / centered / mean-centered vs TransMM) × 3 metrics × 2 presets
    assert "Domain a: 54 superiority tests and 12 equivalence tests; Domain b: 42 superiority tests" in text
    # the thesis's rows, with its % change computed from its means: COVID-QU-Ex FGA SaCo 0.507 vs 0.459
    assert "0.507 ± 0.004 (+10.5 %***)" in text and "un-normalised trapezoid" in text
    assert "| 94.50 ± 2.41 |" in text and "9.70 ± 0.09 (+9.9 %***)" in text  # printed as the thesis printed them
    assert (root / "out" / "summary_change.png").stat().st_size > 10_000
    changes = percent_changes(summary.table, summary.runs)  # the figure's bars
    theirs = changes[changes["group"].str.startswith("thesis: ")]
    assert len(theirs) == 3 * 2 * 3 and set(theirs["preset"]) == {"thesis"}  # datasets × (FGA, shuffled) × metrics
    ours = changes[changes["group"] == "Domain b"].set_index(["preset", "metric", "series"])["pct_change"]
    assert ours[("thesis", "pixel_flipping", "FGA shuffled decoder")] == row["pct_change"]


def test_domain_specs_and_errors(tmp_path):
    assert parse_domain("x", Path("r")) == ("x", Path("r/x/test"), Path("r/x/chosen_configuration.txt"))
    assert parse_domain("x=runs/x")[1:] == (Path("runs/x"), Path("runs/chosen_configuration.txt"))
    assert parse_domain("x=runs/x:c.txt")[1:] == (Path("runs/x"), Path("c.txt"))
    with pytest.raises(ValueError, match="expected `name`"):
        parse_domain("x=")
    (tmp_path / "chosen.txt").write_text("chosen configuration: fga|centered|1,2|0.5|10\n")
    with pytest.raises(ValueError, match="not an FGA 'combined'"):
        read_chosen_configuration(tmp_path / "chosen.txt")
    run_dir = tmp_path / "d" / "test"
    write_part(run_dir / RESULTS_FOLDER, results({TRANSMM: 0.0, COMBINED: 0.1}, 0).head(4).to_dict("records"), 0, 0)
    with pytest.raises(FileNotFoundError, match="no chosen configuration"):
        load_domain(Domain("d", "D", run_dir, tmp_path / "missing.txt", "`make d`"))
    (tmp_path / "other.txt").write_text("chosen configuration: fga|combined|3|0.5|10\n")
    with pytest.raises(ValueError, match="is not in"):
        load_domain(Domain("d", "D", run_dir, tmp_path / "other.txt", "`make d`"))


def test_run_without_its_description_and_docstring_examples(domains, tmp_path):
    import doctest

    from hf_fga.evaluation import summary as module

    listed, _ = domains
    with pytest.raises(FileNotFoundError, match="run.json does not exist"):
        run_patients(tmp_path)
    with pytest.raises(FileNotFoundError, match="--data_root"):
        run_patients(listed[0].run_dir, data_root=tmp_path)  # the dataset is not under that folder
    assert run_patients(listed[1].run_dir) is None  # no patient_id column
    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0


def test_script_writes_the_summary(domains, tmp_path):
    listed, root = domains
    spec = importlib.util.spec_from_file_location("domain_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "summary.md"
    b = listed[1]
    argv = [
        "--domains",
        f"b={b.run_dir}",
        "breast_ultrasound",
        "--results_root",
        str(tmp_path / "none"),
        "--output",
        str(output),
        "--no_figure",
    ]
    assert module.main(argv) == 0
    text = output.read_text()
    assert "1 of 2 domains" in text and "breast_ultrasound_classifier.md" in text
    assert (
        "| Breast ultrasound (BUSI) (no patient ids: image-level tests only) | | **not run yet**: `bash scripts/"
        in text
    )
    assert not (tmp_path / "summary_change.png").exists()


def test_hand_written_reading_is_embedded_first_and_kept(domains, tmp_path):
    listed, _ = domains
    output = tmp_path / "summary.md"
    without = write_summary(listed, output, figure=False)
    assert "## What the numbers say" not in without.markdown
    reading = tmp_path / "summary_reading.md"
    reading.write_text("FGA gains on SaCo in both domains; the controls match it.\n")
    with_reading = write_summary(listed, output, figure=False)
    text = output.read_text()
    assert text == with_reading.markdown
    section = text.index("## What the numbers say")
    assert section < text.index("## 1. Test results") < text.index("## 2. Which claims hold")
    assert "FGA gains on SaCo in both domains; the controls match it." in text[section:]
    assert reading.read_text() == "FGA gains on SaCo in both domains; the controls match it.\n"  # never rewritten
    assert with_reading.markdown.replace(text[section : text.index("## 1. Test results")], "") == without.markdown


def test_controls_section_counts_cells_per_hypothesis_and_domain(domains, tmp_path):
    listed, _ = domains
    output = tmp_path / "summary.md"
    folder = tmp_path / "a_controls" / "test"
    folder.mkdir(parents=True)
    rows = [
        {"hypothesis": h, "preset": p, "metric": m, "holds": h == "H4b" or (h == "H5" and m == "pixel_flipping")}
        for h in ("H1", "H2a", "H2b", "H3a", "H3b", "H4a", "H4b", "H5")
        for p in ("papers", "thesis")
        for m in ("saco", "faithfulness_correlation", "pixel_flipping")
    ]
    pd.DataFrame(rows).to_csv(folder / "hypotheses_superiority.csv", index=False)
    equivalent = [
        {"hypothesis": h, "preset": p, "metric": m, "equivalent": h == "H1" and m != "saco"}
        for h in ("H1", "H2a", "H2b")
        for p in ("papers", "thesis")
        for m in ("saco", "faithfulness_correlation", "pixel_flipping")
    ]
    pd.DataFrame(equivalent).to_csv(folder / "hypotheses_equivalence.csv", index=False)
    (tmp_path / "b_controls").mkdir()
    (tmp_path / "b_controls" / "plan.md").write_text("plan\n")
    text = write_summary(listed, output, figure=False).markdown
    section = text[text.index("The controls: what the SAE's features add") :]
    assert "| hypothesis | Domain a | Domain b | Domain c |" in section
    assert "| H1: the features add something beyond centring (FGA beats `centered`) | 0 of 6 (equivalent in 4 of 6) " \
        "| not scored yet | no plan |" in section  # fmt: skip
    assert "| H4b: FGA beats its own gates permuted over the patches (`random-gates`) | 6 of 6 |" in section
    assert "| H5: a feature-selective use (`selective` m*) beats `centered` | 2 of 6 |" in section
    assert "| H3a: combined − centered changes" in section and "| 0 of 6 | not scored yet | no plan |" in section
    assert "Domain a: [hypotheses.md](a_controls/test/hypotheses.md)" in section
    assert section.index("controls") < section.index("What the attributions reveal")
    # a provisional analysis (controls_analysis.py --provisional) leaves H3b out: that cell is not scored yet
    provisional = pd.DataFrame([r for r in rows if r["hypothesis"] != "H3b"])
    provisional.to_csv(folder / "hypotheses_superiority.csv", index=False)
    text = write_summary(listed, output, figure=False).markdown
    section = text[text.index("The controls: what the SAE's features add") :]
    assert "| H3b: the same at the lowest fidelity of the plan (two-sided) | not scored yet | not scored yet |" in (
        section
    )
