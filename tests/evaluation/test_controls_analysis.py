"""scripts/controls_analysis.py end to end on synthetic runs with planted effects (plan.md's families)."""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hf_fga.evaluation.storage import RESULTS_FOLDER, read_parts, write_part

ROOT = Path(__file__).resolve().parents[2]
C = "fga|combined|0,1,2|0.5|10"
METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")


def v(name: str) -> str:
    return f"fga|{name}|0,1,2|0.5|10"


def _write(folder: Path, shifts: dict[str, float], base: dict[str, np.ndarray], rng, classes: int = 2) -> None:
    """One run: per configuration, every image's scores = base + shift (+ small noise); PF moves the other way."""
    rows = []
    for config, shift in shifts.items():
        for i, image in enumerate(base["image_id"]):
            row = {"image_id": image, "preset": "papers", "fill": "mean", "config": config, "label": i % classes}
            row["prediction"] = (i // 3) % classes  # not the label: the by-prediction table groups by this
            for metric in METRICS:
                sign = -1.0 if metric == "pixel_flipping" else 1.0
                row[metric] = float(base[metric][i] + sign * shift + rng.normal(0, 1e-4))
            rows.append(row)
    write_part(folder / RESULTS_FOLDER, rows, 0, 0)


def _make_runs(root: Path, patient_ids: bool, classes: int) -> Path:
    """
    Synthetic runs of 60 images with planted effects; the dataset's test split has patient ids (two images each) or,
    like breast ultrasound, none; labels cycle over `classes`.
    """
    rng = np.random.default_rng(0)
    images = [f"IM-{i:04d}-0001.jpeg" for i in range(60)]
    base = {"image_id": images, **{m: rng.uniform(0.3, 0.7, len(images)) for m in METRICS}}
    data = root / "data" / "data"
    data.mkdir(parents=True)
    split = pd.DataFrame({"file_name": images, "label": [i % classes for i in range(60)]})
    if patient_ids:
        split["patient_id"] = [f"p{i // 2}" for i in range(60)]
    split.to_parquet(data / "test-00000-of-00001.parquet")
    write = partial(_write, base=base, rng=rng, classes=classes)
    protocol = {"transmm||||": 0.0, C: 0.05, v("centered"): 0.05, v("mean-centered"): 0.05, v("no-sae"): 0.05}
    write(root / "issue7", protocol)
    controls = {
        v("transmm-power@2"): 0.01,
        v("random-gates"): -0.02,
        v("selective@64"): 0.05,
        v("error-scaled@0.5"): 0.05,
        v("error-scaled@2"): 0.05,
        v("error-scaled@4"): 0.05,
        v("error-only"): 0.0,
    }
    write(root / "test", {"transmm||||": 0.0, **controls})
    write(root / "test_pca", {"transmm||||": 0.0, C: 0.05})
    write(root / "test_random", {"transmm||||": 0.0, C: 0.0})  # the random dictionary loses the gain
    write(root / "test_ev090", {"transmm||||": 0.0, C: 0.05, v("centered"): 0.05})
    write(root / "test_ev075", {"transmm||||": 0.0, C: 0.03, v("centered"): 0.05})  # separates
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _make_runs(tmp_path_factory.mktemp("controls"), patient_ids=True, classes=2)


def _analyse(runs: Path, monkeypatch, *extra: str, out: str = "out") -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import controls_analysis

    args = ["controls_analysis.py", "--gamma", "2", "--m", "64", "--issue7", str(runs / "issue7")]
    args += ["--controls", str(runs / "test"), "--data", str(runs / "data"), "--output_dir", str(runs / out)]
    args += ["--n_resamples", "200", "--config", C, *extra]
    for name in ("pca", "random", "ev090", "ev075"):
        args += [f"--{name}", str(runs / f"test_{name}")]
    monkeypatch.setattr(sys, "argv", args)
    controls_analysis.main()


def test_the_pre_registered_families_on_planted_effects(runs, monkeypatch):
    _analyse(runs, monkeypatch)
    family = pd.read_csv(runs / "out" / "hypotheses_superiority.csv")
    assert len(family) == 8 * 3  # one preset here: 8 comparisons × 3 metrics
    holds = family.groupby("hypothesis")["holds"].all()
    assert not holds["H1"] and not holds["H2a"]  # no planted difference
    assert holds["H2b"] and holds["H4a"] and holds["H4b"] and holds["H3b"]
    assert not family[family["hypothesis"] == "H3a"]["holds"].any()
    equivalence = pd.read_csv(runs / "out" / "hypotheses_equivalence.csv")
    assert equivalence[equivalence["hypothesis"] == "H1"]["equivalent"].all()
    assert not equivalence[equivalence["hypothesis"] == "H2b"]["equivalent"].any()
    assert len(pd.read_csv(runs / "out" / "hypotheses_per_class.csv")) == 2 * 2 * 3
    assert (family["n_patients"] == 30).all()  # two images per patient
    report = (runs / "out" / "hypotheses.md").read_text()
    assert "| H2b | 3 of 3 |" in report and "random: FGA combined [0,1,2]" in report
    assert "Patient-level" in report and "| patients |" in report and "on chest X-rays" in report
    # the CI is of the image-level mean (plan §3), so that mean stands beside it, apart from the per-patient mean
    assert "| patients | A − B (patients) | A − B (images) | CI low (images) | CI high (images) |" in report
    h1 = family[family["hypothesis"] == "H1"].iloc[0]
    assert h1["ci_low"] <= h1["mean_difference"] <= h1["ci_high"]
    # the figures' points: planted shifts come back as the mean differences (noise 1e-4 per image)
    points = pd.read_csv(runs / "out" / "hypotheses_figures.csv")
    saco = points[points["metric"] == "saco"].set_index(["figure", "x"])["mean"]
    assert saco[("controls", "FGA (trained SAE)")] == pytest.approx(0.05, abs=1e-3)
    assert saco[("controls", "random dictionary")] == pytest.approx(0.0, abs=1e-3)
    assert saco[("controls", "random-gates")] == pytest.approx(-0.02, abs=1e-3)
    assert saco[("dose_response", "error only")] == pytest.approx(0.0, abs=1e-3)
    assert saco[("fidelity", "bundled SAE")] == pytest.approx(0.0, abs=1e-3)
    assert saco[("fidelity", "ev0.75 set")] == pytest.approx(-0.02, abs=1e-3)  # 0.03 − 0.05
    pixel_flipping = points[points["metric"] == "pixel_flipping"].set_index(["figure", "x"])["mean"]
    assert pixel_flipping[("fidelity", "ev0.75 set")] == pytest.approx(0.02, abs=1e-3)  # PF moves the other way
    assert (points["ci_low"] <= points["mean"] + 1e-12).all() and (points["mean"] <= points["ci_high"] + 1e-12).all()
    by_prediction = pd.read_csv(runs / "out" / "hypotheses_by_prediction.csv")
    assert len(by_prediction) == 2 * 3 * 3  # predicted classes × comparisons × metrics
    assert set(by_prediction["hypothesis"]) == {"predicted NORMAL", "predicted PNEUMONIA"}
    gain = by_prediction[(by_prediction["reference"] == "transmm||||") & (by_prediction["metric"] == "saco")]
    assert np.allclose(gain[gain["config"] == C]["patient_mean_difference"], 0.05, atol=1e-3)
    assert (by_prediction["n_images"] == 30).all()  # images 0-2 predicted 0, 3-5 predicted 1, ...
    assert "## Exploratory: by predicted class (uncorrected)" in report and "predicted NORMAL" in report
    for name in ("controls", "dose_response", "fidelity"):
        assert (runs / "out" / f"{name}.png").stat().st_size > 10_000 and f"({name}.png)" in report


def test_a_dataset_without_patient_ids_is_tested_per_image_and_says_so(tmp_path, monkeypatch):
    """Breast ultrasound: no patient ids, three classes; every image is its own unit, and the report says so."""
    runs = _make_runs(tmp_path, patient_ids=False, classes=3)
    _analyse(runs, monkeypatch, "--domain", "breast_ultrasound")
    family = pd.read_csv(runs / "out" / "hypotheses_superiority.csv")
    assert len(family) == 8 * 3 and (family["n_patients"] == 60).all() and (family["n_images"] == 60).all()
    # per image, the tests are on the image differences themselves (float64 reference, not the library's grouping)
    results = read_parts(runs / "issue7" / RESULTS_FOLDER)
    ours = results[results["config"] == C].set_index("image_id")["saco"]
    theirs = results[results["config"] == v("centered")].set_index("image_id")["saco"]
    differences = (ours - theirs).to_numpy(np.float64)
    h1 = family[(family["hypothesis"] == "H1") & (family["metric"] == "saco")].iloc[0]
    assert h1["patient_mean_difference"] == pytest.approx(differences.mean(), abs=1e-12)
    assert h1["wilcoxon_p"] == pytest.approx(stats.wilcoxon(differences).pvalue, rel=1e-9)
    holds = family.groupby("hypothesis")["holds"].all()
    assert holds["H2b"] and holds["H4b"] and not holds["H1"]
    per_class = pd.read_csv(runs / "out" / "hypotheses_per_class.csv")
    assert len(per_class) == 2 * 3 * 3 and set(per_class["n_patients"]) == {20}  # 3 classes of 20 images
    assert {"H6 benign (H1)", "H6 malignant (H5)", "H6 normal (H1)"} <= set(per_class["hypothesis"])
    report = (runs / "out" / "hypotheses.md").read_text()
    assert "on breast ultrasound images" in report and "breast_ultrasound_controls/plan.md" in report
    assert "Image-level" in report and "no patient ids" in report
    assert "| images | A − B (images) |" in report and "patients" not in report.split("## Superiority")[1]
    assert "## Secondary family: per class (18 tests)" in report


def test_a_provisional_report_leaves_out_unfinished_fidelity_runs_and_bounds_holm_from_above(tmp_path, monkeypatch):
    runs = _make_runs(tmp_path, patient_ids=True, classes=2)
    _analyse(runs, monkeypatch, out="complete")
    (runs / "test_ev090" / "summary.csv").write_text("finished\n")  # ev0.75's run is still going
    _analyse(runs, monkeypatch, "--provisional", out="provisional")
    complete = pd.read_csv(runs / "complete" / "hypotheses_superiority.csv")
    provisional = pd.read_csv(runs / "provisional" / "hypotheses_superiority.csv")
    assert len(complete) == 8 * 3 and len(provisional) == 7 * 3 and "H3b" not in set(provisional["hypothesis"])
    both = provisional.merge(complete, on=["hypothesis", "preset", "metric"], suffixes=("", "_complete"))
    assert len(both) == 7 * 3
    assert np.allclose(both["wilcoxon_p"], both["wilcoxon_p_complete"])  # the tests themselves do not change
    assert (both["holm_p"] >= both["holm_p_complete"] - 1e-12).all()  # H3b enters as p = 1: an upper bound
    assert (both["holds_complete"] | ~both["holds"]).all()  # what holds now holds in the final analysis
    report = (runs / "provisional" / "hypotheses.md").read_text()
    assert "**Provisional**" in report and "| H3b | not scored yet |" in report
    assert "## Superiority family (24 tests, 3 not scored yet)" in report
    without_flag = runs / "without_flag"
    _analyse(runs, monkeypatch, out="without_flag")  # without --provisional every run is read as it is
    assert len(pd.read_csv(without_flag / "hypotheses_superiority.csv")) == 8 * 3


def test_a_missing_run_is_named(runs, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    import controls_analysis

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "controls_analysis.py",
            "--gamma",
            "3",
            "--m",
            "64",
            "--issue7",
            str(runs / "issue7"),
            "--controls",
            str(runs / "test"),
        ],
    )
    with pytest.raises(SystemExit, match="lacks the configurations"):
        controls_analysis.main()
