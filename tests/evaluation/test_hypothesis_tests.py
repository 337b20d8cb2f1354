"""Known-answer tests of the patient-level statistics, Holm's correction and the TOST equivalence test."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hf_fga.evaluation.hypothesis_tests import (
    TWO_SIDED,
    Comparison,
    EquivalenceResult,
    cluster_bootstrap_ci,
    combine_configurations,
    comparison_markdown,
    directional_holds,
    equivalence_family,
    equivalence_margin,
    gain_margins,
    holm,
    patient_comparison,
    patient_keys,
    patient_paired_tests,
    per_patient_means,
    split_patients,
    split_units,
    superiority_family,
    tost_paired,
)


def test_per_patient_means_with_unequal_cluster_sizes_by_hand():
    values = [1.0, 2.0, 3.0, 10.0, 4.0, np.nan, 7.0]
    patients = ["b", "b", "b", "a", "c", "c", "c"]
    means = per_patient_means(values, patients)
    assert means.to_dict() == {"a": 10.0, "b": 2.0, "c": 5.5}  # the NaN of c is left out, not counted as 0
    with pytest.raises(ValueError, match="equal length"):
        per_patient_means([1.0, 2.0], ["a"])


def test_patient_tests_weigh_patients_not_images():
    # patient "big" has 20 images with a positive difference; the 6 others have one image each, all negative
    differences = [1.0] * 20 + [-0.5, -0.4, -0.6, -0.3, -0.7, -0.2]
    patients = ["big"] * 20 + [f"p{i}" for i in range(6)]
    per_patient = np.array([1.0, -0.5, -0.4, -0.6, -0.3, -0.7, -0.2])
    wilcoxon, paired_t = patient_paired_tests(differences, patients)
    assert wilcoxon == pytest.approx(stats.wilcoxon(per_patient).pvalue, rel=1e-12)
    assert paired_t == pytest.approx(stats.ttest_1samp(per_patient, 0.0).pvalue, rel=1e-12)
    assert np.mean(differences) > 0 > per_patient.mean()  # the image-level mean points the other way


def test_holm_against_a_hand_computed_example():
    # m = 5. sorted: 0.001 (×5 = 0.005), 0.01 (×4 = 0.04), 0.012 (×3 = 0.036 → max with 0.04 = 0.04),
    # 0.03 (×2 = 0.06), 0.2 (×1 = 0.2)
    p = [0.03, 0.001, 0.2, 0.012, 0.01]
    np.testing.assert_allclose(holm(p), [0.06, 0.005, 0.2, 0.04, 0.04], rtol=1e-12)
    assert list(holm(p) < 0.05) == [False, True, False, True, True]
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="NaN means a test of the family could not run"):
        holm([0.01, float("nan")])


def test_holm_with_pending_tests_bounds_the_complete_family_from_above():
    # m = 5 with two tests pending: 0.001 ×5, 0.01 ×4, 0.012 ×3 → 0.005, 0.04, 0.04
    np.testing.assert_allclose(holm([0.01, 0.001, 0.012], pending=2), [0.04, 0.005, 0.04], rtol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(200):
        known, later = rng.uniform(0, 0.1, 9) ** 2, rng.uniform(0, 1, 3) ** rng.uniform(1, 4)
        provisional = holm(known, pending=3)
        complete = holm(np.concatenate([known, later]))[:9]
        assert np.all(provisional >= complete - 1e-15)  # a rejection now stays a rejection
    np.testing.assert_allclose(holm([0.2, 0.01], pending=0), holm([0.2, 0.01]))
    with pytest.raises(ValueError, match="pending must be >= 0"):
        holm([0.1], pending=-1)


def test_holm_is_at_least_as_strict_as_unadjusted_and_at_most_bonferroni():
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    adjusted = holm(p)
    assert np.all(adjusted >= p) and np.all(adjusted <= np.minimum(1, 12 * p) + 1e-15)


def test_equivalence_margin():
    assert equivalence_margin(-0.044) == pytest.approx(0.0044)  # Pixel Flipping: the gain is a negative difference
    assert equivalence_margin(0.05, fraction=0.2) == pytest.approx(0.01)
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="gives no equivalence margin"):
            equivalence_margin(bad)
    with pytest.raises(ValueError, match="fraction"):
        equivalence_margin(0.1, fraction=1.5)


def _patients(n_patients: int, per_patient: int) -> list[str]:
    return [f"p{i}" for i in range(n_patients) for _ in range(per_patient)]


def test_tost_declares_equivalence_for_identical_samples_with_small_noise():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.9, 0.05, 400)
    other = scores + rng.normal(0.0, 0.002, 400)  # the same images, noise far inside the margin
    result = tost_paired(other - scores, _patients(200, 2), margin=0.01)
    assert isinstance(result, EquivalenceResult) and result.n_patients == 200
    assert result.equivalent() and result.p_value < 1e-10


def test_tost_refuses_equivalence_for_a_shifted_sample():
    rng = np.random.default_rng(2)
    differences = 0.012 + rng.normal(0.0, 0.002, 400)  # a real shift beyond the margin
    result = tost_paired(differences, _patients(200, 2), margin=0.01)
    assert not result.equivalent() and result.p_upper > 0.5
    assert result.p_lower < 1e-10  # far above −δ: only the upper one-sided test fails


def test_tost_against_the_formula():
    differences = np.array([0.01, -0.02, 0.005, 0.0, 0.015, -0.01, 0.02, -0.005])
    patients = list("abcdefgh")
    result = tost_paired(differences, patients, margin=0.03)
    se = differences.std(ddof=1) / math.sqrt(8)
    assert result.p_lower == pytest.approx(stats.t.sf((differences.mean() + 0.03) / se, 7), rel=1e-12)
    assert result.p_upper == pytest.approx(stats.t.cdf((differences.mean() - 0.03) / se, 7), rel=1e-12)
    # TOST at α equals "the (1 − 2α) t confidence interval lies inside ±δ"
    low, high = stats.t.interval(0.90, 7, loc=differences.mean(), scale=se)
    assert result.equivalent(0.05) == (-0.03 < low and high < 0.03)
    assert math.isnan(tost_paired([0.1], ["a"], margin=0.1).p_value)
    with pytest.raises(ValueError, match="margin must be"):
        tost_paired(differences, patients, margin=0.0)


def test_cluster_bootstrap_is_wider_than_naive_with_correlated_patients():
    rng = np.random.default_rng(3)
    n_patients, per_patient = 60, 8
    patient_effect = np.repeat(rng.normal(0.0, 1.0, n_patients), per_patient)  # images of a patient move together
    differences = 0.1 + patient_effect + rng.normal(0.0, 0.2, n_patients * per_patient)
    patients = _patients(n_patients, per_patient)
    low, high = cluster_bootstrap_ci(differences, patients, n_resamples=4000, seed=0)
    singletons = [f"i{i}" for i in range(len(differences))]  # every image its own cluster = the naive bootstrap
    naive_low, naive_high = cluster_bootstrap_ci(differences, singletons, n_resamples=4000, seed=0)
    assert low < differences.mean() < high and naive_low < differences.mean() < naive_high
    assert (high - low) > 2 * (naive_high - naive_low)  # design effect √(1 + (8 − 1)·0.96) ≈ 2.8
    # the cluster interval is about as wide as the t interval on the per-patient means
    means = per_patient_means(differences, patients).to_numpy()
    t_low, t_high = stats.t.interval(0.95, n_patients - 1, loc=means.mean(), scale=stats.sem(means))
    assert (high - low) == pytest.approx(t_high - t_low, rel=0.15)
    assert cluster_bootstrap_ci(differences, patients, n_resamples=500, seed=7) == cluster_bootstrap_ci(
        differences, patients, n_resamples=500, seed=7
    )


def test_cluster_bootstrap_weights_images_with_unequal_cluster_sizes():
    # with every patient drawn once, the statistic is the image-level mean; check one resample by hand
    differences = np.array([1.0, 1.0, 1.0, 4.0])
    patients = ["a", "a", "a", "b"]
    low, high = cluster_bootstrap_ci(differences, patients, n_resamples=2000, confidence=0.5, seed=0)
    # possible resamples: {a,a} → 1, {b,b} → 4, {a,b} → (3 + 4) / 4 = 1.75; the middle 50 % is 1.75
    assert low == pytest.approx(1.0) or low == pytest.approx(1.75)
    assert high == pytest.approx(1.75) or high == pytest.approx(4.0)
    assert math.isnan(cluster_bootstrap_ci([1.0, 2.0], ["a", "a"])[0])
    with pytest.raises(ValueError, match="confidence"):
        cluster_bootstrap_ci(differences, patients, confidence=95)


def test_patient_keys_split_the_catch_all_id():
    keys = patient_keys(
        ["NORMAL2-IM", "NORMAL2-IM", "IM-0001", "person3"],
        ["NORMAL2-IM-0012-0001.jpeg", "NORMAL2-IM-0012-0002.jpeg", "IM-0001-0001.jpeg", "person3_bacteria_10.jpeg"],
    )
    assert keys == ["NORMAL2-IM-0012", "NORMAL2-IM-0012", "IM-0001", "person3"]


def test_patient_comparison_and_directional_holds():
    rng = np.random.default_rng(4)
    rows, patients = [], {}
    for i in range(30):
        image, patient = f"im{i}", f"p{i // 3}"
        patients[image] = patient
        base = rng.uniform(0.3, 0.7)
        for config, shift in (("x", 0.05), ("y", 0.0)):
            rows.append(
                {
                    "preset": "papers",
                    "fill": "mean",
                    "config": config,
                    "image_id": image,
                    "saco": base + shift + rng.normal(0, 0.01),
                    "pixel_flipping": base + shift + rng.normal(0, 0.01),
                }
            )
    results = pd.DataFrame(rows)
    table = patient_comparison(results, "x", "y", patients, n_resamples=500).set_index("metric")
    saco = table.loc["saco"]
    frame = results.pivot(index="image_id", columns="config", values="saco")
    d = frame["x"] - frame["y"]
    per_patient = d.groupby(d.index.map(patients)).mean()
    assert saco["n_images"] == 30 and saco["n_patients"] == 10
    assert saco["mean_difference"] == pytest.approx(d.mean())
    assert saco["wilcoxon_p"] == pytest.approx(stats.wilcoxon(per_patient.to_numpy()).pvalue)
    assert saco["ci_low"] < d.mean() < saco["ci_high"]
    table = table.reset_index()
    table["holm_p"] = holm(table["wilcoxon_p"])
    # x is higher on both; higher SaCo is better, higher Pixel Flipping is worse
    assert directional_holds(table).tolist() == [True, False]
    with pytest.raises(ValueError, match="have no patient"):
        patient_comparison(results, "x", "y", {"im0": "p0"})


def _family_results(seed: int = 5) -> tuple[pd.DataFrame, dict[str, str]]:
    """30 images of 10 patients; `ref` is TransMM-like, `gain` = ref + 0.05, `same` = gain + tiny noise,
    `worse` = gain − 0.03 (pixel_flipping is the same numbers, where lower is better)."""
    rng = np.random.default_rng(seed)
    rows, patients = [], {}
    for i in range(30):
        image = f"im{i}"
        patients[image] = f"p{i // 3}"
        base = rng.uniform(0.3, 0.7)
        values = {"ref": base, "gain": base + 0.05 + rng.normal(0, 0.005)}
        values["same"] = values["gain"] + rng.normal(0, 0.0005)
        values["worse"] = values["gain"] - 0.03 + rng.normal(0, 0.005)
        for config, value in values.items():
            rows.append(
                {
                    "preset": "papers",
                    "fill": "mean",
                    "config": config,
                    "image_id": image,
                    "label": i % 2,
                    "saco": value,
                    "pixel_flipping": value,
                }
            )
    return pd.DataFrame(rows), patients


def test_superiority_family_holm_corrects_across_every_row():
    results, patients = _family_results()
    family = superiority_family(
        results,
        [
            Comparison("H1", "gain", "worse"),
            Comparison("H2", "gain", "same"),
            Comparison("H3", "worse", "gain", TWO_SIDED),
        ],
        patients,
        ["saco", "pixel_flipping"],
        n_resamples=200,
    )
    assert len(family) == 6
    np.testing.assert_allclose(family["holm_p"], holm(family["wilcoxon_p"]))
    holds = family.set_index(["hypothesis", "metric"])["holds"]
    assert holds[("H1", "saco")] and not holds[("H1", "pixel_flipping")]  # higher PF is worse
    assert not holds[("H2", "saco")]  # no real difference
    assert holds[("H3", "saco")] and holds[("H3", "pixel_flipping")]  # two-sided: either direction
    with pytest.raises(ValueError, match="direction must be"):
        superiority_family(results, [Comparison("H", "gain", "ref", "up")], patients)


def test_equivalence_family_and_gain_margins():
    results, patients = _family_results()
    margins = gain_margins(results, "gain", "ref", patients, metrics=["saco", "pixel_flipping"])
    gain = per_patient_means(
        (
            results[results.config == "gain"].set_index("image_id")["saco"]
            - results[results.config == "ref"].set_index("image_id")["saco"]
        ).to_numpy(),
        [patients[f"im{i}"] for i in range(30)],
    ).mean()
    assert margins[("papers", "mean", "saco")] == pytest.approx(0.1 * abs(gain))
    family = equivalence_family(
        results,
        [Comparison("H1", "same", "gain"), Comparison("H2", "worse", "gain")],
        patients,
        margins,
        ["saco", "pixel_flipping"],
    )
    equivalent = family.set_index(["hypothesis", "metric"])["equivalent"]
    assert equivalent[("H1", "saco")] and equivalent[("H1", "pixel_flipping")]
    assert not equivalent[("H2", "saco")]  # shifted by −0.03, far outside ±0.005
    np.testing.assert_allclose(family["holm_p"], holm(family["tost_p"]))
    with pytest.raises(ValueError, match="no equivalence margin"):
        equivalence_family(results, [Comparison("H1", "same", "gain")], patients, {}, ["saco"])


def test_combine_configurations_builds_a_difference_in_differences():
    results, _ = _family_results()
    derived = combine_configurations(results, "did", {"gain": 1.0, "same": -1.0, "ref": 1.0})
    frame = results.pivot(index="image_id", columns="config", values="saco")
    expected = frame["gain"] - frame["same"] + frame["ref"]
    got = derived.set_index("image_id")["saco"]
    np.testing.assert_allclose(got.loc[expected.index], expected, rtol=1e-12)
    assert set(derived["config"]) == {"did"} and "label" in derived.columns
    partial = combine_configurations(
        results[results.image_id != "im3"].pipe(
            lambda r: pd.concat([r, results[(results.image_id == "im3") & (results.config == "gain")]])
        ),
        "did",
        {"gain": 1.0, "ref": -1.0},
    )
    assert "im3" not in set(partial["image_id"])  # a missing term drops the image
    with pytest.raises(ValueError, match="not in the results"):
        combine_configurations(results, "x", {"nope": 1.0})


def test_split_patients_reads_the_split_files_only(tmp_path):
    (tmp_path / "data").mkdir()
    names = ["person1_virus_6.jpeg", "NORMAL2-IM-0012-0001.jpeg"]
    pd.DataFrame({"patient_id": ["person1", "NORMAL2-IM"], "file_name": names}).to_parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet"
    )
    pd.DataFrame({"patient_id": ["x"], "file_name": ["x.jpeg"]}).to_parquet(tmp_path / "data" / "train-0.parquet")
    assert split_patients(tmp_path) == dict(zip(names, ["person1", "NORMAL2-IM-0012"], strict=True))


def test_split_units_are_patients_where_the_dataset_has_them_and_images_otherwise(tmp_path):
    names = ["person1_virus_6.jpeg", "person1_virus_7.jpeg", "NORMAL2-IM-0012-0001.jpeg"]
    with_ids, without = tmp_path / "with", tmp_path / "without"
    for folder in (with_ids, without):
        (folder / "data").mkdir(parents=True)
    frame = pd.DataFrame({"patient_id": ["person1", "person1", "NORMAL2-IM"], "file_name": names, "label": [1, 1, 0]})
    frame.to_parquet(with_ids / "data" / "test-00000-of-00001.parquet")
    frame.drop(columns="patient_id").to_parquet(without / "data" / "test-00000-of-00001.parquet")
    assert split_units(with_ids) == (dict(zip(names, ["person1", "person1", "NORMAL2-IM-0012"], strict=True)), True)
    assert split_units(without) == ({name: name for name in names}, False)
    with pytest.raises(FileNotFoundError, match="no validation split"):
        split_units(without, "validation")
    # CIFAR-10: no file names; the evaluation tool names an image by its row index, over every file of the split
    rows = tmp_path / "rows" / "data"
    rows.mkdir(parents=True)
    pd.DataFrame({"label": [3, 8]}).to_parquet(rows / "test-00000-of-00002.parquet")
    pd.DataFrame({"label": [0]}).to_parquet(rows / "test-00001-of-00002.parquet")
    assert split_units(rows.parent) == ({"0": "0", "1": "1", "2": "2"}, False)


def test_comparison_markdown_formats_every_kind_of_cell():
    table = pd.DataFrame(
        {
            "metric": ["saco"],
            "config": ["issue7/fga|combined|4,5,6|0.5|10"],
            "reference": ["transmm||||"],
            "holds": [True],
            "holm_p": [0.012345],
            "patient_mean_difference": [0.0123456],
        }
    )
    columns = {name: name.upper() for name in table.columns}
    assert comparison_markdown(table, columns).splitlines() == [
        "| METRIC | CONFIG | REFERENCE | HOLDS | HOLM_P | PATIENT_MEAN_DIFFERENCE |",
        "| --- | --- | --- | --- | --- | --- |",
        "| SaCo | issue7: FGA combined [4,5,6] κ=0.5 c=10 | TransMM | yes | 0.0123 | +0.012346 |",
    ]
