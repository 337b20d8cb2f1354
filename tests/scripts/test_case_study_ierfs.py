"""The pure pieces of scripts/case_study_ierfs.py (distances, aggregation, the report section) on synthetic inputs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "case_study_ierfs.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("case_study_ierfs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chebyshev_and_peak(script):
    assert script.chebyshev((2, 3), (2, 3)) == 0
    assert script.chebyshev((0, 0), (1, 1)) == 1  # a diagonal neighbour is inside the 3 × 3 neighbourhood
    assert script.chebyshev((5, 1), (2, 3)) == 3
    values = np.zeros((3, 4))
    values[2, 1] = 5.0
    values[0, 3] = 5.0  # a tie: the first in row-major order wins
    assert script.peak_patch(values) == (0, 3)
    assert script.peak_patch(-np.ones((2, 2))) == (0, 0)


def test_mass_distance_against_a_loop(script):
    rng = np.random.default_rng(0)
    ierf = rng.normal(size=(5, 6))
    q = (1, 4)
    weighted = total = 0.0
    for r in range(5):
        for c in range(6):
            if ierf[r, c] > 0:
                weighted += ierf[r, c] * max(abs(r - q[0]), abs(c - q[1]))
                total += ierf[r, c]
    assert script.mass_distance(ierf, q) == pytest.approx(weighted / total, rel=1e-12)
    one = np.zeros((4, 4))
    one[3, 0] = 2.0
    one[0, 0] = -7.0  # negative mass does not count
    assert script.mass_distance(one, (0, 0)) == 3.0
    assert math.isnan(script.mass_distance(-np.ones((3, 3)), (1, 1)))  # no positive mass: undefined, no 0/0


def test_describe_patch_and_cls(script):
    ierf = np.zeros((4, 4))
    ierf[3, 3] = 1.0
    activation = np.zeros((4, 4))
    activation[0, 2] = 1.0
    record = script.describe(ierf, activation, position=1 + 4 * 1 + 1)  # token of patch (1, 1)
    assert (record["q_row"], record["q_col"]) == (1, 1)
    assert (record["ierf_peak_row"], record["ierf_peak_col"]) == (3, 3)
    assert record["ierf_peak_distance"] == 2 and record["mass_distance"] == 2.0
    assert (record["activation_peak_row"], record["activation_peak_col"]) == (0, 2)
    assert record["activation_peak_distance"] == 1
    cls = script.describe(ierf, activation, position=0)
    assert cls["q_row"] == -1 and math.isnan(cls["ierf_peak_distance"]) and math.isnan(cls["mass_distance"])
    assert (cls["ierf_peak_row"], cls["ierf_peak_col"]) == (3, 3)  # the peaks are still reported


def test_frequent_features_order_and_threshold(script):
    cases = pd.DataFrame({"block": [1, 2, 2, 1, 1, 0, 2, 0], "feature": [5, 9, 9, 5, 7, 3, 9, 3]})
    out = script.frequent_features(cases)
    assert out.to_dict("list") == {"block": [2, 0, 1], "feature": [9, 3, 5], "rows": [3, 2, 2]}
    assert len(script.frequent_features(cases, minimum=4)) == 0


def _record(at="case-study patch", skipped="", at_cls=False, share=0.5, peak=0, mass=0.5, act=2, z=1.0, z_peak=2.0):
    return {
        "at": at,
        "skipped": skipped,
        "at_cls": at_cls,
        "share": share,
        "non_local": at_cls or (share == share and share < 0.25),
        "ierf_peak_distance": peak,
        "mass_distance": mass,
        "activation_peak_distance": act,
        "z_at_patch": z,
        "z_peak": z_peak,
    }


def test_summarise_counts_skips_cls_and_undetermined(script):
    nan = float("nan")
    records = pd.DataFrame(
        [
            _record(share=0.9, peak=0, mass=0.2, act=4),
            _record(share=0.1, peak=5, mass=4.0, act=2, z=0.5),
            _record(share=nan, peak=3, mass=nan, act=6),  # no positive mass
            _record(at_cls=True, share=nan, peak=nan, mass=nan, act=nan),
            {**_record(z=0.0), "skipped": "z = 0", "share": nan, "ierf_peak_distance": nan, "mass_distance": nan},
        ]
    )
    out = script.summarise(records)
    assert out["rows"] == 5 and out["explained"] == 4 and out["at_cls"] == 1 and out["patch"] == 3
    assert out["non_local"] == 1 and out["local"] == 1 and out["undetermined"] == 1
    assert out["non_local_rate"] == pytest.approx(1 / 3)
    assert out["median_share"] == pytest.approx(0.5)  # of 0.9 and 0.1 (the undefined share left out)
    assert out["ierf_peak_within_1"] == 1
    assert out["median_ierf_peak_distance"] == 3.0 and out["median_mass_distance"] == pytest.approx(2.1)
    assert out["median_activation_peak_distance"] == 4.0
    assert out["median_z_ratio"] == pytest.approx(0.5)  # ratios 0.5, 0.25, 0.5, 0.5, 0: median 0.5
    empty = script.summarise(records.iloc[4:])  # only a skipped row: nothing to divide by
    assert empty["patch"] == 0 and math.isnan(empty["non_local_rate"]) and math.isnan(empty["median_share"])


def test_summary_table_markdown_and_sentences(script):
    rows = []
    for block, feature, share in ((2, 578, 0.8), (2, 578, 0.1), (1, 7, 0.6)):
        for backend in ("attnlrp", "gradient-x-input"):
            for at in (script.AT_PATCH, script.AT_PEAK):
                rows.append({"block": block, "feature": feature, "backend": backend, **_record(at=at, share=share)})
    records = pd.DataFrame(rows)
    features = pd.DataFrame({"block": [2], "feature": [578], "rows": [2]})
    summary = script.summary_table(records, features)
    assert list(summary["group"].unique()) == ["block 2 feature 578", "all rows"]
    assert len(summary) == 2 * 2 * 2
    first = summary.iloc[0]
    assert (first["backend"], first["at"], first["patch"], first["non_local"]) == ("attnlrp", script.AT_PATCH, 2, 1)
    every = summary[(summary["group"] == "all rows") & (summary["backend"] == "attnlrp")].iloc[0]
    assert every["patch"] == 3 and every["local"] == 2
    table = script.markdown_table(summary).splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| block 2 feature 578 | 2 | attnlrp | 1 of 2 | 1 of 2 |")
    said = script.sentences(summary)
    assert len(said) == 2
    assert "with attnlrp, in 1 of 2 at the case-study patch and 1 of 2 at the feature's peak" in said[0]
    assert "in 2 of 3 at the case-study patch" in said[1]


def test_replace_section_appends_replaces_and_keeps_the_rest(script):
    heading = "## 7. New"
    before = "# Title\n\n## 6. Old\n\ntext\n"
    once = script.replace_section(before, heading, "first body")
    assert once == before + "\n" + heading + "\n\nfirst body\n"
    assert script.replace_section(once, heading, "first body") == once  # idempotent
    later = once + "\n## 8. Later\n\nkept\n"
    again = script.replace_section(later, heading, "second body\n\n### sub\n\nmore")
    assert again.startswith(before) and again.endswith("## 8. Later\n\nkept\n")
    assert "first body" not in again and "### sub" in again
    assert script.replace_section(again, heading, "second body\n\n### sub\n\nmore") == again
