"""The Space's helpers against direct implementations: feature findings (method.md §7), prototypes, quick metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.faithfulness import evaluate_faithfulness

from ..helpers import pixel_batch, tiny_sae, tiny_vit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "spaces"))

from fga_space.features import changed_patches, feature_findings, score_scale  # noqa: E402
from fga_space.prototypes import (  # noqa: E402
    NO_PATCH,
    PrototypeIndex,
    compute_prototypes,
    sae_fingerprint,
    write_thumbnails,
)
from fga_space.quick_metrics import curve_steps, quick_faithfulness, sampled_auc  # noqa: E402


# ------------------------------------------------------------------------------------------------ feature findings
def fake_output(attribution, baseline, scores, contributions):
    """An `AttributionOutput` stand-in holding only what `feature_findings` reads (batch of one)."""
    return SimpleNamespace(
        attribution=torch.tensor(attribution, dtype=torch.float32)[None],
        baseline=torch.tensor(baseline, dtype=torch.float32)[None],
        scores={b: torch.tensor(s, dtype=torch.float32)[None] for b, s in scores.items()},
        contributions={
            b: (torch.tensor(v, dtype=torch.float32)[None], torch.tensor(i)[None])
            for b, (v, i) in contributions.items()
        },
    )


def test_changed_patches_rank_the_min_max_scaled_difference():
    baseline = np.array([[0.0, 1.0], [2.0, 3.0]])
    attribution = np.array([[0.0, 10.0], [30.0, 20.0]])  # scaled: [0, 1/3, 1, 2/3] vs [0, 1/3, 2/3, 1]
    assert changed_patches(attribution, baseline, 2) == [2, 3]
    assert changed_patches(attribution, baseline, 10) == [2, 3, 0, 1]  # ties keep patch order
    assert changed_patches(attribution, baseline, 0) == []


def test_score_scale_uses_the_lower_median():
    scores = torch.tensor([0.0, 1.0, 2.0, 10.0])  # lower median 1; |s - 1| = [1, 0, 1, 9]: lower median 1
    assert score_scale(scores) == pytest.approx(1.4826 * (1.0 + 1e-8))


def test_findings_compare_blocks_on_the_normalised_scores_and_group_by_feature_and_sign():
    # 4 patches; the FGA map changes patches 0 and 3 most (patch 1 and 2 unchanged).
    baseline = [[1.0, 2.0], [3.0, 4.0]]
    attribution = [[4.0, 2.0], [3.0, 1.0]]
    # Block 5's scores spread 10x more than block 2's, so a raw contribution of 3 there is a push of ~0.3 units.
    scores = {2: [[0.0, 1.0], [2.0, 3.0]], 5: [[0.0, 10.0], [20.0, 30.0]]}
    contributions = {
        2: ([[1.0, -0.5], [0.2, 0.1], [0.0, 0.0], [-2.0, 0.3]], [[7, 8], [7, 8], [7, 8], [9, 7]]),
        5: ([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-5.0, 1.0]], [[4, 1], [4, 1], [4, 1], [4, 1]]),
    }
    out = fake_output(attribution, baseline, scores, contributions)
    found = feature_findings(out, 0, num_patches=2)
    s2, s5 = score_scale(torch.tensor(scores[2])), score_scale(torch.tensor(scores[5]))
    assert 1.0 / s2 > 3.0 / s5 and 2.0 / s2 > 5.0 / s5  # block 2 wins both patches despite smaller raw values
    expected = [(2, 9, "suppressor", (3,)), (2, 7, "amplifier", (0,))]
    assert [(f.block, f.index, f.sign, f.patches) for f in found] == expected
    assert found[0].contribution == pytest.approx(-2.0 / s2) and found[1].contribution == pytest.approx(1.0 / s2)
    # the same feature amplifying one patch and suppressing another is listed once per sign
    contributions[2] = ([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-1.5, 0.0]], [[7, 8]] * 4)
    found = feature_findings(fake_output(attribution, baseline, scores, contributions), 0, num_patches=2)
    assert {(f.index, f.sign) for f in found} == {(7, "amplifier"), (7, "suppressor")}


def test_findings_are_empty_without_contributions():
    out = fake_output([[1.0]], [[1.0]], {}, {})
    assert feature_findings(out) == []


def test_findings_on_a_tiny_model_match_a_direct_search():
    model = tiny_vit(num_layers=3)
    saes = {0: tiny_sae(layer=0, seed=1), 1: tiny_sae(layer=1, seed=2)}
    out = FeatureGradientAttribution(model, saes).attribute(
        pixel_batch(2), layers=[0, 1], return_contributions=True, num_contributions=8
    )
    for b in range(2):
        found = feature_findings(out, b, num_patches=5)
        assert found
        top = changed_patches(out.attribution[b].numpy(), out.baseline[b].numpy(), 5)
        covered = sorted(p for f in found for p in f.patches)
        for patch in top:  # each explained patch: the (block, feature) with the largest normalised |c| in float64
            best = max(
                (
                    (abs(float(v) / score_scale(out.scores[blk][b])), blk, int(k))
                    for blk, (values, indices) in out.contributions.items()
                    for v, k in zip(values[b, patch].double(), indices[b, patch], strict=True)
                ),
            )
            if best[0] > 0:
                assert any(f.block == best[1] and f.index == best[2] and patch in f.patches for f in found)
        assert set(covered) <= set(top) and len(covered) == len(set(covered))
        assert [abs(f.contribution) for f in found] == sorted((abs(f.contribution) for f in found), reverse=True)


# ------------------------------------------------------------------------------------------------------ prototypes
def direct_prototypes(model, sae, pixels, block, top, marks):
    """Top images per feature by peak patch activation, from `output_hidden_states` (an independent residual path)."""
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        x = hidden[block] if sae.config.hook_point == "resid_pre" else hidden[block + 1]
        acts = sae.encode(x[:, 1:]).double()  # (B, N, K), patch tokens only
    peak = acts.max(dim=1).values  # (B, K)
    images = peak.T.argsort(dim=1, descending=True)[:, :top]
    values = peak.T.gather(1, images)
    return acts, images, values


@pytest.mark.parametrize("hook_point", ["resid_post", "resid_pre"])
def test_prototypes_match_a_direct_search(hook_point):
    model = tiny_vit(num_layers=3)
    sae = tiny_sae(layer=1, seed=3, hook_point=hook_point)
    pixels = pixel_batch(7, seed=4)
    tables = compute_prototypes(model, {1: sae}, [pixels[:3], pixels[3:5], pixels[5:]], (4, 4), top=4,
                                patches_per_image=3)
    acts, images, values = direct_prototypes(model, sae, pixels, 1, top=4, marks=3)
    table = tables[1]
    fired = values > 0
    fired, images, values = fired.numpy(), images.numpy(), values.numpy()
    np.testing.assert_array_equal(np.where(fired, table.images, -1), np.where(fired, images, -1))
    np.testing.assert_allclose(table.values[fired], values[fired], rtol=1e-4, atol=1e-5)
    assert (table.images[~fired] == -1).all()
    for k, n in zip(*np.nonzero(fired), strict=True):
        image = int(images[k, n])
        column = acts[image, :, k]
        expected = [int(p) for p in column.argsort(descending=True)[:3] if column[p] >= 0.5 * column.max()]
        assert [int(p) for p in table.patches[k, n] if p != NO_PATCH] == expected
    again = compute_prototypes(model, {1: sae}, [pixels], (4, 4), top=4, patches_per_image=3)[1]
    np.testing.assert_array_equal(again.images, table.images)


def test_prototype_index_round_trip_and_strip(tmp_path):
    from PIL import Image

    model, sae = tiny_vit(num_layers=3), tiny_sae(layer=2, seed=5)
    pixels = pixel_batch(5, seed=6)
    tables = compute_prototypes(model, {2: sae}, [pixels], (4, 4), top=3)
    files = write_thumbnails([Image.new("RGB", (40, 30), (i * 40, 100, 200)) for i in range(5)], tmp_path, size=32)
    meta = {"model": "tiny", "grid": [4, 4], "thumbnail_size": 32, "top": 3, "d_sae": {"2": 128},
            "images": [{"file": f, "label": "x"} for f in files]}
    PrototypeIndex(tmp_path, meta, tables).save()
    index = PrototypeIndex.load(tmp_path)
    assert index.matches({2: sae}) and not index.matches({1: sae})
    meta["sae_fingerprints"] = {"2": sae_fingerprint(sae)}
    index = PrototypeIndex(tmp_path, meta, tables)
    assert index.matches({2: sae}) and not index.matches({2: tiny_sae(layer=2, seed=6)})
    feature = int(np.argmax(tables[2].values[:, 0]))
    found = index.prototypes(2, feature)
    assert [p[0] for p in found] == [i for i in tables[2].images[feature] if i >= 0]
    strip = index.strip(2, feature, columns=2)
    assert strip.size == (2 * 32, -(-len(found) // 2) * 32)
    assert index.prototypes(2, 10_000) == [] and index.strip(7, 0) is None
    with pytest.raises(FileNotFoundError, match="build_space_assets"):
        PrototypeIndex.load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------- quick metrics
def small_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=48,
                       patch_size=8, num_labels=3, attn_implementation="eager")  # 6 x 6 = 36 patches
    return ViTForImageClassification(config).eval()


def test_sampled_pixel_flipping_is_the_papers_auc_on_the_full_curve():
    steps = curve_steps(196)
    assert steps[0] == 0 and steps[-1] == 196 and len(steps) == 15
    assert sampled_auc(1 - steps / 196, steps, 196) == pytest.approx(0.5)
    np.testing.assert_array_equal(curve_steps(10, 100), np.arange(11))


def test_quick_metrics_equal_evaluate_faithfulness_with_the_same_settings():
    model = small_vit()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 48, 48, generator=gen)
    maps = {"TransMM": torch.rand(6, 6, generator=gen), "FGA": torch.rand(6, 6, generator=gen)}
    quick = quick_faithfulness(model, pixels, maps, fc_runs=12, pf_points=37)
    reference = evaluate_faithfulness(
        model, pixels.expand(2, -1, -1, -1), torch.stack(list(maps.values())), preset="papers", fc_runs=12,
        image_ids=[0, 0], progress=False,
    )
    for n, name in enumerate(maps):
        for metric in ("saco", "faithfulness_correlation", "pixel_flipping"):
            assert quick[name][metric] == pytest.approx(float(reference[metric][n]), abs=1e-9), (name, metric)
    coarse = quick_faithfulness(model, pixels, maps, fc_runs=12, pf_points=7)
    assert coarse["FGA"]["pixel_flipping"] == pytest.approx(quick["FGA"]["pixel_flipping"], abs=0.1)
