"""scripts/chest_xray_patient_tables.py on a synthetic run with planted effects at the image and the patient level."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.storage import RESULTS_FOLDER, write_part

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import chest_xray_patient_tables as tables  # noqa: E402

METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")
REFERENCE = "transmm||||"


def v(name: str) -> str:
    return f"fga|{name}|0,1,2|0.5|10"


# per configuration: the shift of every image (PF moves the other way), or "one patient" (only patient p0's images)
SHIFTS = {REFERENCE: 0.0, v("combined"): 0.05, v("centered"): 0.0, v("mean-centered"): -0.05, v("no-sae"): "one"}
# 20 patients: p0 with 21 images, p1..p19 with one image each (40 images)
IMAGES = [f"IM-{i:04d}-0001.jpeg" for i in range(40)]
OWNERS = ["p0"] * 21 + [f"p{i}" for i in range(1, 20)]


def _rows(rng) -> list[dict]:
    base = {m: rng.uniform(0.3, 0.7, len(IMAGES)) for m in METRICS}
    rows = []
    for config, shift in SHIFTS.items():
        columns = EvaluationConfiguration.from_key(config).columns()
        for i, image in enumerate(IMAGES):
            row = {"image_id": image, "preset": "papers", "fill": "mean", **columns, "label": i % 2}
            amount = (0.1 if OWNERS[i] == "p0" else 0.0) if shift == "one" else shift
            for metric in METRICS:
                sign = -1.0 if metric == "pixel_flipping" else 1.0
                noise = 0.0 if config == REFERENCE else rng.normal(0, 1e-3)
                row[metric] = float(base[metric][i] + sign * amount + noise)
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patient_tables")
    write_part(root / "test" / RESULTS_FOLDER, _rows(np.random.default_rng(0)), 0, 0)
    data = root / "data" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"file_name": IMAGES, "patient_id": OWNERS}).to_parquet(data / "test-00000-of-00001.parquet")
    return root


def test_verdicts_follow_the_metric_direction_and_the_threshold():
    table = pd.DataFrame(
        {
            "metric": ["saco", "saco", "pixel_flipping", "pixel_flipping", "saco", "faithfulness_correlation"],
            "d": [0.1, -0.1, -0.1, 0.1, 0.1, 0.1],
            "p": [0.01, 0.01, 0.01, 0.01, 0.05, float("nan")],
        }
    )
    assert tables.verdicts(table, "d", "p").tolist() == [
        "better",
        "worse",
        "better",
        "worse",
        "no difference",  # p == alpha is not significant
        "no difference",  # a test that could not run
    ]


def _holm(p):
    """Holm's step-down adjustment, written from its definition."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_family_table_on_planted_effects(run):
    results = pd.concat(
        [pd.read_parquet(p) for p in sorted((run / "test" / RESULTS_FOLDER).glob("*.parquet"))], ignore_index=True
    )
    patients = dict(zip(IMAGES, OWNERS, strict=True))
    pairs = [(c, REFERENCE) for c in SHIFTS if c != REFERENCE]
    family = tables.family_table(results, pairs, patients, "vs TransMM", n_resamples=200)
    assert len(family) == len(pairs) * len(METRICS)
    np.testing.assert_allclose(family["holm_p"], _holm(family["wilcoxon_p"].tolist()), rtol=1e-12)

    by = family.set_index(["config", "metric"])
    for metric in METRICS:
        # references computed here: per-image and per-patient differences, scipy's Wilcoxon on each
        ours = results[results["config"] == v("no-sae")].set_index("image_id")[metric]
        theirs = results[results["config"] == REFERENCE].set_index("image_id")[metric]
        d = (ours - theirs).loc[IMAGES].to_numpy()
        per_patient = pd.Series(d).groupby(np.array(OWNERS)).mean().to_numpy()
        row = by.loc[(v("no-sae"), metric)]
        assert row["image_wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
        assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(per_patient).pvalue, rel=1e-12)
        assert row["patient_mean_difference"] == pytest.approx(per_patient.mean(), rel=1e-12)
        # one patient's 21 images carry the effect: significant over images, not over patients
        assert (row["image_verdict"], row["patient_verdict"], row["changed"]) == ("better", "no difference", True)
        assert tuple(by.loc[(v("combined"), metric), ["image_verdict", "patient_verdict"]]) == ("better", "better")
        assert by.loc[(v("mean-centered"), metric), "patient_verdict"] == "worse"
        assert by.loc[(v("centered"), metric), "patient_verdict"] == "no difference"
    assert family["n_patients"].eq(20).all() and family["n_images"].eq(40).all()


def test_main_writes_the_same_tables_twice(run, capsys):
    out = run / "out"
    argv = ["--run", str(run / "test"), "--data", str(run / "data"), "--n_resamples", "200", "--output_dir", str(out)]
    assert tables.main(argv) == 0
    first = (out / "patient_level.md").read_text()
    assert tables.main(argv) == 0
    assert (out / "patient_level.md").read_text() == first
    printed = capsys.readouterr().out
    assert "40 test images of 20 patients." in printed
    assert "Family 1: every configuration vs TransMM × 3 metrics × 1 preset (12 tests)" in first
    assert "Family 2: `combined` vs `centered` / `mean-centered` / `no-sae` × 3 metrics × 1 preset (9 tests)" in first
    assert "**better → no difference**" in first  # the no-sae rows, flagged
    assert "| FGA combined [0,1,2] κ=0.5 c=10 | 40 | " in first  # the mean ± SEM table
    controls = pd.read_csv(out / "patient_level_controls.csv")
    assert set(controls["reference"]) == {v("centered"), v("mean-centered"), v("no-sae")}
    assert len(pd.read_csv(out / "patient_level_vs_transmm.csv")) == 12
