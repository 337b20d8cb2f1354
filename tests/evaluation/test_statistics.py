import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hf_fga.evaluation.statistics import (
    beats_fraction,
    paired_comparison,
    paired_tests,
    percent_change,
    rank_configurations,
    sem,
    stars,
    summarize,
    welch_p,
)

A = np.array([0.61, 0.42, 0.55, 0.70, 0.38, 0.66, 0.59, 0.47])
B = np.array([0.52, 0.40, 0.49, 0.61, 0.41, 0.58, 0.50, 0.44])


def test_sem_matches_numpy():
    assert sem(A) == pytest.approx(np.std(A, ddof=1) / np.sqrt(len(A)), rel=1e-12)
    assert math.isnan(sem([1.0]))


def test_percent_change_by_hand():
    assert percent_change(0.55, 0.5) == pytest.approx(10.0)
    assert percent_change(-0.3, -0.6) == pytest.approx(50.0)  # relative to |reference|: -0.3 is better than -0.6
    assert math.isnan(percent_change(1.0, 0.0))


def test_welch_matches_scipy_and_the_formula():
    expected = stats.ttest_ind(A, B, equal_var=False).pvalue
    assert welch_p(A, B) == pytest.approx(expected, rel=1e-12)
    va, vb = A.var(ddof=1) / len(A), B.var(ddof=1) / len(B)
    t = (A.mean() - B.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(A) - 1) + vb**2 / (len(B) - 1))
    assert welch_p(A, B) == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-10)


def test_paired_tests_match_scipy():
    wilcoxon, paired_t = paired_tests(A - B)
    assert wilcoxon == pytest.approx(stats.wilcoxon(A, B).pvalue, rel=1e-12)
    assert paired_t == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12)
    assert paired_tests(np.zeros(5)) == (1.0, 1.0)
    assert all(math.isnan(p) for p in paired_tests([0.1]))


def test_beats_fraction_is_direction_aware():
    differences = np.array([0.1, -0.2, 0.0, 0.3])
    assert beats_fraction(differences, "saco") == 0.5
    assert beats_fraction(differences, "pixel_flipping") == 0.25  # lower is better: only -0.2 beats


def test_stars_thresholds():
    assert [stars(p) for p in (0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.2, float("nan"))] == [
        "***",
        "**",
        "**",
        "*",
        "*",
        "",
        "",
        "",
    ]


def _results() -> pd.DataFrame:
    rows = []
    for i, (a, b) in enumerate(zip(A, B, strict=True)):
        common = {"image_id": f"im{i}", "preset": "papers", "fill": "mean"}
        rows.append(
            {
                **common,
                "config": "transmm||||",
                "method": "transmm",
                "variant": "",
                "layers": "",
                "kappa": 0.0,
                "cmax": 0.0,
                "saco": b,
                "pixel_flipping": 1 - b,
            }
        )
        rows.append(
            {
                **common,
                "config": "fga|combined|4|0.5|10",
                "method": "fga",
                "variant": "combined",
                "layers": "4",
                "kappa": 0.5,
                "cmax": 10.0,
                "saco": a,
                "pixel_flipping": 1 - a,
            }
        )
    return pd.DataFrame(rows)


def test_summarize_against_scipy_on_fixed_numbers():
    summary = summarize(_results(), ["saco", "pixel_flipping"])
    assert list(summary["config"]) == ["transmm||||"] * 2 + ["fga|combined|4|0.5|10"] * 2
    reference = summary[summary["config"] == "transmm||||"].set_index("metric")
    assert reference.loc["saco", "mean"] == pytest.approx(B.mean())
    assert math.isnan(reference.loc["saco", "welch_p"])
    fga = summary[summary["config"] != "transmm||||"].set_index("metric")
    saco = fga.loc["saco"]
    assert saco["n"] == len(A) and saco["n_paired"] == len(A)
    assert saco["mean"] == pytest.approx(A.mean())
    assert saco["sem"] == pytest.approx(stats.sem(A))
    assert saco["pct_change"] == pytest.approx(100 * (A.mean() - B.mean()) / B.mean())
    assert saco["welch_p"] == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue)
    assert saco["wilcoxon_p"] == pytest.approx(stats.wilcoxon(A - B).pvalue)
    assert saco["paired_t_p"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    assert saco["paired_stars"] == stars(saco["wilcoxon_p"])
    assert saco["beats_fraction"] == pytest.approx(np.mean(A > B))
    flipping = fga.loc["pixel_flipping"]
    assert flipping["pct_improvement"] == pytest.approx(-flipping["pct_change"])
    assert flipping["beats_fraction"] == pytest.approx(np.mean(1 - A < 1 - B))


def test_summarize_pairs_by_image_and_drops_nan():
    results = _results()
    results.loc[(results["image_id"] == "im0") & (results["method"] == "fga"), "saco"] = np.nan
    results = results[~((results["image_id"] == "im1") & (results["method"] == "transmm"))]
    saco = summarize(results, ["saco"]).set_index("config").loc["fga|combined|4|0.5|10"]
    assert saco["n"] == len(A) - 1 and saco["n_paired"] == len(A) - 2
    keep = np.arange(2, len(A))
    assert saco["wilcoxon_p"] == pytest.approx(stats.wilcoxon(A[keep] - B[keep]).pvalue)


def _summary_rows(config, variant, improvements):
    return [
        {
            "preset": "papers",
            "fill": "mean",
            "config": config,
            "method": "fga",
            "variant": variant,
            "layers": "1",
            "kappa": 0.5,
            "cmax": 10.0,
            "metric": metric,
            "pct_improvement": value,
        }
        for metric, value in improvements.items()
    ]


def test_rank_configurations_averages_oriented_improvements():
    rows = [
        {
            "preset": "papers",
            "fill": "mean",
            "config": "transmm||||",
            "method": "transmm",
            "variant": "",
            "layers": "",
            "kappa": 0.0,
            "cmax": 0.0,
            "metric": "saco",
            "pct_improvement": np.nan,
        }
    ]
    rows += _summary_rows("a", "combined", {"saco": 3.0, "faithfulness_correlation": -6.0, "pixel_flipping": 6.0})
    rows += _summary_rows("b", "combined", {"saco": 1.0, "faithfulness_correlation": 2.0, "pixel_flipping": 3.0})
    rows += _summary_rows("c", "gradient", {"saco": 9.0, "faithfulness_correlation": 9.0, "pixel_flipping": 9.0})
    summary = pd.DataFrame(rows)
    ranked = rank_configurations(summary, variant="combined")
    assert list(ranked.index) == ["b", "a"]
    assert ranked.loc["b", "score"] == pytest.approx(2.0) and ranked.loc["a", "score"] == pytest.approx(1.0)
    assert list(rank_configurations(summary).index) == ["c", "b", "a"]
    with pytest.raises(ValueError, match="no FGA configuration of variant 'shuffled'"):
        rank_configurations(summary, variant="shuffled")
    with pytest.raises(ValueError, match="insertion"):
        rank_configurations(summary, metrics=("saco", "insertion"))


def test_paired_comparison_by_hand():
    rows = []
    for i, (a, b) in enumerate(zip(A, B, strict=True)):
        for config, value in (("x", a), ("y", b)):
            rows.append(
                {
                    "preset": "papers",
                    "fill": "mean",
                    "config": config,
                    "image_id": f"i{i}",
                    "saco": value,
                    "pixel_flipping": value,
                }
            )
    rows.append(
        {"preset": "papers", "fill": "mean", "config": "x", "image_id": "only-x", "saco": 9.0, "pixel_flipping": 9.0}
    )  # unpaired: left out
    table = paired_comparison(pd.DataFrame(rows), "x", "y").set_index("metric")
    d = A - B
    assert table.loc["saco", "n_paired"] == len(A)
    assert table.loc["saco", "mean_difference"] == pytest.approx(d.mean())
    assert table.loc["saco", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert table.loc["saco", "paired_t_p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert table.loc["saco", "better_fraction"] == pytest.approx((d > 0).mean())
    assert table.loc["pixel_flipping", "better_fraction"] == pytest.approx((d < 0).mean())  # lower is better
    with pytest.raises(ValueError, match="'z' is not in the results"):
        paired_comparison(pd.DataFrame(rows), "z", "y")
