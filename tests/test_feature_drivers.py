"""The §7 rule (which patches changed most, which feature drove each gate) against direct float64 implementations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.feature_drivers import (
    changed_patches,
    feature_drivers,
    patch_change,
    patch_driver,
    patch_drivers,
    score_scale,
)
from tests.helpers import pixel_batch, tiny_sae, tiny_vit


def fake_output(attribution, baseline, scores, contributions):
    """An `AttributionOutput` stand-in holding only the four fields the rule reads (batch of one)."""
    return SimpleNamespace(
        attribution=torch.tensor(attribution, dtype=torch.float32)[None],
        baseline=torch.tensor(baseline, dtype=torch.float32)[None],
        scores={b: torch.tensor(s, dtype=torch.float32)[None] for b, s in scores.items()},
        contributions={
            b: (torch.tensor(v, dtype=torch.float32)[None], torch.tensor(i)[None])
            for b, (v, i) in contributions.items()
        },
    )


def minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)


def lower_median(x: np.ndarray) -> float:
    return float(np.sort(x)[(len(x) - 1) // 2])


def direct_scale(scores: np.ndarray) -> float:
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = lower_median(s)
    return 1.4826 * (lower_median(np.abs(s - m)) + 1e-8)


# ---------------------------------------------------------------------------------------------- changed patches
def test_changed_patches_rank_the_min_max_scaled_difference():
    baseline = np.array([[0.0, 1.0], [2.0, 3.0]])
    attribution = np.array([[0.0, 10.0], [30.0, 20.0]])  # scaled: [0, 1/3, 1, 2/3] vs [0, 1/3, 2/3, 1]
    assert [p for p, _ in changed_patches(attribution, baseline, 2)] == [2, 3]
    assert [p for p, _ in changed_patches(attribution, baseline)] == [2, 3, 0, 1]  # ties keep patch order
    assert changed_patches(attribution, baseline, 0) == []
    (p, change), _ = changed_patches(attribution, baseline, 2)
    assert change == pytest.approx(1 / 3)


def test_changed_patches_ignore_the_overall_scale_and_check_shapes():
    base = np.array([[0.0, 1.0], [2.0, 4.0]])
    fga = 10 * np.array([[0.0, 3.0], [2.0, 4.0]])
    assert changed_patches(fga, base, 2) == [(1, pytest.approx(0.5)), (0, pytest.approx(0.0))]
    np.testing.assert_allclose(patch_change(fga, base), minmax(fga) - minmax(base))
    with pytest.raises(ValueError, match="different shapes"):
        changed_patches(fga, base[:1], 1)


def test_score_scale_uses_the_lower_median():
    scores = torch.tensor([0.0, 1.0, 2.0, 10.0])  # lower median 1; |s - 1| = [1, 0, 1, 9]: lower median 1
    assert score_scale(scores) == pytest.approx(1.4826 * (1.0 + 1e-8))


# ------------------------------------------------------------------------------------------------------ drivers
def two_block_output():
    # 4 patches; the FGA map changes patches 0 and 3 most (patches 1 and 2 unchanged).
    baseline = [[1.0, 2.0], [3.0, 4.0]]
    attribution = [[4.0, 2.0], [3.0, 1.0]]
    # Block 5's scores spread 10x more than block 2's, so a raw contribution of 3 there is a push of ~0.3 units.
    scores = {2: [[0.0, 1.0], [2.0, 3.0]], 5: [[0.0, 10.0], [20.0, 30.0]]}
    contributions = {
        2: ([[1.0, -0.5], [0.2, 0.1], [0.0, 0.0], [-2.0, 0.3]], [[7, 8], [7, 8], [7, 8], [9, 7]]),
        5: ([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-5.0, 1.0]], [[4, 1], [4, 1], [4, 1], [4, 1]]),
    }
    return attribution, baseline, scores, contributions


def test_drivers_compare_blocks_on_the_normalised_scores_and_group_by_feature_and_sign():
    attribution, baseline, scores, contributions = two_block_output()
    out = fake_output(attribution, baseline, scores, contributions)
    s2, s5 = direct_scale(scores[2]), direct_scale(scores[5])
    assert 1.0 / s2 > 3.0 / s5 and 2.0 / s2 > 5.0 / s5  # block 2 wins both patches despite smaller raw values
    found = feature_drivers(out, 0, num_patches=2)
    expected = [(2, 9, "suppressor", (3,)), (2, 7, "amplifier", (0,))]
    assert [(f.block, f.index, f.sign, f.patches) for f in found] == expected
    assert found[0].contribution == pytest.approx(-2.0 / s2) and found[1].contribution == pytest.approx(1.0 / s2)
    driver = patch_driver(out, 0, 3)
    assert (driver.block, driver.feature, driver.sign) == (2, 9, "suppressor")
    assert driver.push == pytest.approx(-2.0 / s2) and driver.change == pytest.approx(-1.0)
    assert [d.patch for d in patch_drivers(out, 0, 2)] == [0, 3]
    # the same feature amplifying one patch and suppressing another is listed once per sign
    contributions[2] = ([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-1.5, 0.0]], [[7, 8]] * 4)
    found = feature_drivers(fake_output(attribution, baseline, scores, contributions), 0, num_patches=2)
    assert {(f.index, f.sign) for f in found} == {(7, "amplifier"), (7, "suppressor")}


def test_max_features_stops_before_a_new_feature():
    attribution, baseline, scores, contributions = two_block_output()
    out = fake_output(attribution, baseline, scores, contributions)
    # walk: patch 0 (feature 7 +), patch 3 (feature 9 -), patch 1 (feature 7 +), patch 2 (no push)
    everything = feature_drivers(out, 0)
    assert [(f.index, f.sign, f.patches) for f in everything] == [(9, "suppressor", (3,)), (7, "amplifier", (0, 1))]
    assert [(f.index, f.patches) for f in feature_drivers(out, 0, max_features=1)] == [(7, (0,))]
    assert feature_drivers(out, 0, max_features=2) == everything


def test_no_contributions_no_drivers():
    out = fake_output([[1.0]], [[1.0]], {}, {})
    assert feature_drivers(out) == [] and patch_drivers(out) == [] and patch_driver(out, 0, 0) is None
    attribution, baseline, scores, contributions = two_block_output()
    zeros = {b: ([[0.0, 0.0]] * 4, i) for b, (_, i) in contributions.items()}
    assert feature_drivers(fake_output(attribution, baseline, scores, zeros)) == []  # all pushes 0: no driver


def test_drivers_on_a_tiny_model_match_a_direct_float64_search():
    model = tiny_vit(num_layers=4)
    saes = {1: tiny_sae(layer=1, seed=1), 2: tiny_sae(layer=2, seed=2)}
    out = FeatureGradientAttribution(model, saes).attribute(
        pixel_batch(2), layers=[1, 2], return_contributions=True, num_contributions=8
    )
    for b in range(2):
        fga, base = out.attribution[b].double().numpy(), out.baseline[b].double().numpy()
        change = (minmax(fga) - minmax(base)).ravel()
        order = sorted(range(change.size), key=lambda p: (-abs(change[p]), p))
        expected = []
        for patch in order[:5]:
            pushes = [
                (float(v) / direct_scale(out.scores[blk][b].numpy()), blk, int(k))
                for blk, (values, indices) in out.contributions.items()
                for v, k in zip(values[b, patch].double(), indices[b, patch], strict=True)
            ]
            push, block, feature = max(pushes, key=lambda x: abs(x[0]))
            if push != 0:
                expected.append((patch, block, feature, push))
        found = patch_drivers(out, b, 5)
        assert [(d.patch, d.block, d.feature) for d in found] == [e[:3] for e in expected]
        for d, e in zip(found, expected, strict=True):
            assert d.push == pytest.approx(e[3], rel=1e-6)
            assert d.sign == ("amplifier" if e[3] > 0 else "suppressor")
        grouped = feature_drivers(out, b, num_patches=5)
        covered = sorted(p for f in grouped for p in f.patches)
        assert covered == sorted(e[0] for e in expected)
        assert [abs(f.contribution) for f in grouped] == sorted((abs(f.contribution) for f in grouped), reverse=True)
        # with every active feature kept (k = 8), a patch's contributions add up to its combined score
        for block, (values, _) in out.contributions.items():
            total, score = values[b].double().sum(-1).numpy(), out.scores[block][b].double().numpy().ravel()
            np.testing.assert_allclose(total, score, rtol=1e-4, atol=1e-6)
