"""scripts/controls_analysis.py end to end on synthetic runs with planted effects (plan.md's families)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hf_fga.evaluation.storage import RESULTS_FOLDER, write_part

ROOT = Path(__file__).resolve().parents[2]
C = "fga|combined|0,1,2|0.5|10"
METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")


def v(name: str) -> str:
    return f"fga|{name}|0,1,2|0.5|10"


def _write(folder: Path, shifts: dict[str, float], base: dict[str, np.ndarray], rng) -> None:
    """One run: per configuration, every image's scores = base + shift (+ small noise); PF moves the other way."""
    rows = []
    for config, shift in shifts.items():
        for i, image in enumerate(base["image_id"]):
            row = {"image_id": image, "preset": "papers", "fill": "mean", "config": config, "label": i % 2}
            for metric in METRICS:
                sign = -1.0 if metric == "pixel_flipping" else 1.0
                row[metric] = float(base[metric][i] + sign * shift + rng.normal(0, 1e-4))
            rows.append(row)
    write_part(folder / RESULTS_FOLDER, rows, 0, 0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    rng = np.random.default_rng(0)
    images = [f"IM-{i:04d}-0001.jpeg" for i in range(60)]
    base = {"image_id": images, **{m: rng.uniform(0.3, 0.7, len(images)) for m in METRICS}}
    data = root / "data" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"file_name": images, "patient_id": [f"p{i // 2}" for i in range(60)]}).to_parquet(
        data / "test-00000-of-00001.parquet"
    )
    _write(
        root / "issue7",
        {"transmm||||": 0.0, C: 0.05, v("centered"): 0.05, v("mean-centered"): 0.05, v("no-sae"): 0.05},
        base,
        rng,
    )
    controls = {
        v("transmm-power@2"): 0.01,
        v("random-gates"): -0.02,
        v("selective@64"): 0.05,
        v("error-scaled@0.5"): 0.05,
        v("error-scaled@2"): 0.05,
        v("error-scaled@4"): 0.05,
        v("error-only"): 0.0,
    }
    _write(root / "test", {"transmm||||": 0.0, **controls}, base, rng)
    _write(root / "test_pca", {"transmm||||": 0.0, C: 0.05}, base, rng)
    _write(root / "test_random", {"transmm||||": 0.0, C: 0.0}, base, rng)  # the random dictionary loses the gain
    _write(root / "test_ev090", {"transmm||||": 0.0, C: 0.05, v("centered"): 0.05}, base, rng)
    _write(root / "test_ev075", {"transmm||||": 0.0, C: 0.03, v("centered"): 0.05}, base, rng)  # separates
    return root


def test_the_pre_registered_families_on_planted_effects(runs, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    import controls_analysis

    args = [
        "controls_analysis.py",
        "--gamma",
        "2",
        "--m",
        "64",
        "--issue7",
        str(runs / "issue7"),
        "--controls",
        str(runs / "test"),
        "--data",
        str(runs / "data"),
        "--output_dir",
        str(runs / "out"),
        "--n_resamples",
        "200",
    ]
    for name in ("pca", "random", "ev090", "ev075"):
        args += [f"--{name}", str(runs / f"test_{name}")]
    monkeypatch.setattr(sys, "argv", args)
    controls_analysis.main()
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
    report = (runs / "out" / "hypotheses.md").read_text()
    assert "| H2b | 3 of 3 |" in report and "random: FGA combined [0,1,2]" in report


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
