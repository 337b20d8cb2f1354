"""The batched engine against a naive float64 reference, hand-derived toy cases, properties and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_fga.faithfulness import (
    ResponseCache,
    evaluate_faithfulness,
    evaluate_presets,
    faithfulness_records,
    forward_passes_per_image,
    make_runner,
)
from hf_fga.faithfulness.fills import fill_source, patch_grid
from tests.faithfulness.naive import naive_scores
from tests.helpers import PATCH, pixel_batch, tiny_clip, tiny_vit

ALL = ("saco", "faithfulness_correlation", "pixel_flipping", "insertion", "deletion")


class PatchLinear:
    """A toy "model": logit 0 = Σ_p w_p · mean(patch p), logit 1 = a constant. Patch p contributes c_p = w_p m_p."""

    def __init__(self, weights: torch.Tensor, patch: int, other_logit: float = 0.0) -> None:
        self.weights, self.patch, self.other = weights.double().flatten(), patch, other_logit

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        means = torch.nn.functional.avg_pool2d(pixel_values.double().mean(dim=1, keepdim=True), self.patch)
        logit = means.flatten(1) @ self.weights
        return torch.stack([logit, torch.full_like(logit, self.other)], dim=1)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.fixture(scope="module")
def vit64():
    return tiny_vit().double()


# ---------------------------------------------------------------- naive reference


@pytest.mark.parametrize("preset", ["papers", "thesis"])
def test_engine_matches_naive_reference(vit64, preset):
    pixels = pixel_batch(2, seed=1).double()
    attributions = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    thesis = preset == "thesis"
    runs, trials = (20, 3) if thesis else (30, 1)
    engine = evaluate_faithfulness(
        vit64, pixels, attributions, preset=preset, batch_size=16, fc_subset_size=5, fc_runs=runs, progress=False
    )
    naive = naive_scores(
        lambda x: vit64(pixel_values=x).logits,
        pixels,
        attributions,
        PATCH,
        thesis=thesis,
        fc_runs=runs,
        fc_subset=5,
        fc_trials=trials,
        saco_groups=10,
    )
    for metric in ("saco", "faithfulness_correlation", "pixel_flipping"):
        np.testing.assert_allclose(engine[metric], naive[metric], atol=1e-6, err_msg=metric)


def test_engine_matches_naive_with_zero_fill(vit64):
    pixels = pixel_batch(2, seed=2).double()
    attributions = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    engine = evaluate_faithfulness(
        vit64, pixels, attributions, fill="zero", fc_subset_size=4, fc_runs=10, saco_num_groups=5, progress=False
    )
    naive = naive_scores(
        lambda x: vit64(pixel_values=x).logits,
        pixels,
        attributions,
        PATCH,
        thesis=False,
        fill="zero",
        fc_runs=10,
        fc_subset=4,
        fc_trials=1,
        saco_groups=5,
    )
    for metric in ("saco", "faithfulness_correlation", "pixel_flipping"):
        np.testing.assert_allclose(engine[metric], naive[metric], atol=1e-6, err_msg=metric)


# ---------------------------------------------------------------- hand-computed toy cases


def toy(other_logit: float = 0.0):
    """2×2 grid of 2-pixel patches, all-ones image: patch contributions c = (1, 3, 2, 0.5), clean logit 6.5."""
    contributions = torch.tensor([[1.0, 3.0], [2.0, 0.5]])
    return PatchLinear(contributions, 2, other_logit), torch.ones(1, 3, 4, 4, dtype=torch.float64)


def test_saco_hand_computed():
    model, pixels = toy()
    scores = evaluate_faithfulness(
        model,
        pixels,
        torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]),
        metrics=("saco",),
        fill="zero",
        patch_size=2,
        saco_num_groups=4,
        progress=False,
    )
    # Pairs (s diff, agrees): (1,-) (2,-) (3,+) (1,+) (2,+) (1,+): Σw = 4, Σ|w| = 10.
    assert scores["saco"][0] == pytest.approx(0.4, abs=1e-12)


def test_pixel_flipping_insertion_deletion_hand_computed():
    model, pixels = toy()
    attributions = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    scores = evaluate_faithfulness(
        model,
        pixels,
        attributions,
        metrics=("pixel_flipping", "insertion", "deletion"),
        fill="zero",
        patch_size=2,
        progress=False,
    )
    removed = [sigmoid(z) for z in (6.5, 5.5, 2.5, 0.5, 0.0)]
    inserted = [sigmoid(z) for z in (0.0, 1.0, 4.0, 6.0, 6.5)]
    auc = lambda s: sum((s[k - 1] + s[k]) / 2 for k in range(1, 5)) / 4  # noqa: E731
    assert scores["pixel_flipping"][0] == pytest.approx(auc(removed), abs=1e-12)
    assert scores["deletion"][0] == pytest.approx(auc(removed), abs=1e-12)
    assert scores["insertion"][0] == pytest.approx(auc(inserted), abs=1e-12)
    thesis = evaluate_faithfulness(
        model,
        pixels,
        attributions,
        metrics=("pixel_flipping",),
        preset="thesis",
        fill="zero",
        patch_size=2,
        progress=False,
    )
    assert thesis["pixel_flipping"][0] == pytest.approx(4 * auc(removed), abs=1e-12)


def test_faithfulness_correlation_hand_computed():
    model, pixels = toy()
    exact = torch.tensor([[[1.0, 3.0], [2.0, 0.5]]])
    common = dict(
        metrics=("faithfulness_correlation",), fill="zero", patch_size=2, fc_subset_size=2, fc_runs=6, progress=False
    )
    records = faithfulness_records(model, pixels, exact, **common)["faithfulness_correlation"]
    np.testing.assert_allclose(records.drops, records.attribution_sums, atol=1e-12)  # linear: Δ = Σ c exactly
    for correlation in ("pearson", "spearman"):
        scores = evaluate_faithfulness(model, pixels, exact, fc_correlation=correlation, **common)
        assert scores["faithfulness_correlation"][0] == pytest.approx(1.0, abs=1e-9)


def test_thesis_saco_uses_the_perturbed_argmax():
    model, pixels = toy(other_logit=4.0)  # perturbing patch 1 (c = 3) drops logit 0 to 3.5 < 4: the argmax flips
    attributions = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    common = dict(metrics=("saco",), fill="zero", patch_size=2, saco_num_groups=4, progress=False)
    papers = faithfulness_records(model, pixels, attributions, **common)["saco"]
    thesis = faithfulness_records(model, pixels, attributions, preset="thesis", **common)["saco"]
    clean = sigmoid(2.5)
    assert papers.drops[0, 1] == pytest.approx(clean - sigmoid(-0.5), abs=1e-12)
    assert thesis.drops[0, 1] == pytest.approx(clean - sigmoid(0.5), abs=1e-12)
    assert thesis.drops[0, 0] == pytest.approx(clean - sigmoid(1.5), abs=1e-12)  # no flip: same as papers
    assert papers.drops[0, 0] == pytest.approx(thesis.drops[0, 0], abs=1e-12)


@pytest.mark.parametrize(("side", "groups", "subset"), [(7, 13, 10), (14, 49, 20)])
def test_thesis_group_counts_follow_array_split(side, groups, subset):
    model = PatchLinear(torch.ones(side, side), 2)
    pixels = torch.rand(1, 3, 2 * side, 2 * side, generator=torch.Generator().manual_seed(0))
    patch = 32 if side == 7 else 16  # the thesis subset size follows the patch size (B/32 vs B/16)
    records = faithfulness_records(
        model, pixels, torch.rand(1, side, side), metrics=("saco",), preset="thesis", patch_size=2, progress=False
    )["saco"]
    assert records.saliences.shape == (1, groups)
    sizes = np.bincount(records.groups[0])
    assert sorted(sizes.tolist(), reverse=True) == [len(g) for g in np.array_split(np.arange(side * side), groups)]
    from hf_fga.faithfulness import resolve_preset

    assert resolve_preset("thesis").subset_size(patch) == subset


def test_thesis_pixel_flipping_recomputes_the_scalar_mean():
    model = PatchLinear(torch.tensor([[1.0, -2.0], [0.5, 3.0]]), 2)
    pixels = torch.arange(48, dtype=torch.float64).reshape(1, 3, 4, 4) / 10
    attributions = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    records = faithfulness_records(
        model, pixels, attributions, metrics=("pixel_flipping",), preset="thesis", patch_size=2, progress=False
    )["pixel_flipping"]
    current, curve = pixels[0].clone(), [torch.softmax(model(pixels)[0], 0)[0].item()]
    for p in (1, 2, 3, 0):
        rows, cols = divmod(p, 2)
        current[:, 2 * rows : 2 * rows + 2, 2 * cols : 2 * cols + 2] = current.mean()
        curve.append(torch.softmax(model(current[None])[0], 0)[0].item())
    np.testing.assert_allclose(records.curves[0], curve, atol=1e-12)


# ---------------------------------------------------------------- properties


def linear_population(num_images: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(4, 4, generator=gen)
    pixels = torch.rand(num_images, 3, 8, 8, generator=gen, dtype=torch.float64) + 0.5
    means = torch.nn.functional.avg_pool2d(pixels.mean(dim=1, keepdim=True), 2)[:, 0]
    return PatchLinear(weights, 2), pixels, (weights * means)  # exact single-patch logit drops (zero fill)


def test_saco_is_one_for_true_drops_and_minus_one_reversed():
    model, pixels, contributions = linear_population(6)
    common = dict(metrics=("saco",), fill="zero", patch_size=2, targets=[0] * 6, saco_num_groups=4, progress=False)
    # Groups of 4 patches: with a linear logit the group drop is the sum of its patch contributions.
    assert np.allclose(evaluate_faithfulness(model, pixels, contributions, **common)["saco"], 1.0)
    assert np.allclose(evaluate_faithfulness(model, pixels, -contributions, **common)["saco"], -1.0)


def test_random_attributions_average_near_zero():
    model, pixels, _ = linear_population(300, seed=1)
    random = torch.rand(300, 4, 4, generator=torch.Generator().manual_seed(9))
    scores = evaluate_faithfulness(
        model,
        pixels,
        random,
        fill="zero",
        patch_size=2,
        targets=[0] * 300,
        fc_subset_size=4,
        fc_runs=20,
        saco_num_groups=4,
        metrics=("saco", "faithfulness_correlation"),
        batch_size=512,
        progress=False,
    )
    for metric, values in scores.items():
        assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values)) + 0.02, metric


def test_pixel_flipping_of_the_exact_order_beats_random_orders():
    model, pixels, contributions = linear_population(8, seed=2)
    common = dict(metrics=("pixel_flipping",), fill="zero", patch_size=2, targets=[0] * 8, progress=False)
    best = evaluate_faithfulness(model, pixels, contributions, **common)["pixel_flipping"]
    for seed in range(5):
        random = torch.rand(8, 4, 4, generator=torch.Generator().manual_seed(seed))
        assert (best <= evaluate_faithfulness(model, pixels, random, **common)["pixel_flipping"] + 1e-12).all()


def test_scores_are_invariant_to_positive_scaling(vit64):
    pixels = pixel_batch(2, seed=5).double()
    attributions = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    common = dict(metrics=ALL, fc_subset_size=5, fc_runs=12, progress=False)
    base = evaluate_faithfulness(vit64, pixels, attributions, **common)
    scaled = evaluate_faithfulness(vit64, pixels, 3.7 * attributions, **common)
    for metric in ALL:
        np.testing.assert_allclose(base[metric], scaled[metric], atol=1e-12, err_msg=metric)


# ---------------------------------------------------------------- batching, seeding, forward counts


def test_scores_do_not_depend_on_batch_size():
    model = tiny_vit()
    pixels, attributions = pixel_batch(2, seed=6), torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(6))
    results = [
        evaluate_faithfulness(
            model,
            pixels,
            attributions,
            metrics=ALL,
            fc_subset_size=5,
            fc_runs=10,
            batch_size=size,
            fill="uniform",
            progress=False,
        )
        for size in (1, 7, 64)
    ]
    for other in results[1:]:
        for metric in ALL:
            np.testing.assert_allclose(results[0][metric], other[metric], atol=1e-5, err_msg=metric)


def test_scores_at_two_thread_counts_agree_to_float32_rounding():
    """What the evaluation tool's docstring states: the same thread count reproduces the scores bitwise; another
    thread count may change float32 sums in their last bits, never more than rounding."""
    model, pixels = tiny_vit(), pixel_batch(2, seed=6)
    attributions = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    before, runs = torch.get_num_threads(), {}
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            scores = evaluate_faithfulness(
                model, pixels, attributions, metrics=ALL, fc_subset_size=5, fc_runs=10, progress=False
            )
            if threads in runs:
                for name in ALL:
                    np.testing.assert_array_equal(scores[name], runs[threads][name])
            runs[threads] = scores
    finally:
        torch.set_num_threads(before)
    for name in ALL:
        np.testing.assert_allclose(runs[1][name], runs[2][name], rtol=0, atol=1e-5)


def test_seeding_is_per_image_not_per_batch():
    model = tiny_vit()
    pixels, attributions = pixel_batch(4, seed=7), torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(7))
    common = dict(
        metrics=("faithfulness_correlation", "saco"),
        fc_subset_size=5,
        fc_runs=10,
        fill="uniform",
        seed=3,
        progress=False,
    )
    whole = evaluate_faithfulness(model, pixels, attributions, **common)
    part = evaluate_faithfulness(model, pixels[2:], attributions[2:], image_ids=[2, 3], **common)
    for metric in whole:
        np.testing.assert_allclose(whole[metric][2:], part[metric], atol=1e-5, err_msg=metric)
    other_seed = evaluate_faithfulness(model, pixels, attributions, **{**common, "seed": 4})
    assert not np.allclose(whole["faithfulness_correlation"], other_seed["faithfulness_correlation"])


@pytest.mark.parametrize("preset", ["papers", "thesis"])
@pytest.mark.parametrize("metric", ["saco", "faithfulness_correlation", "pixel_flipping"])
def test_forward_passes_are_the_minimum(preset, metric):
    model = tiny_vit()
    pixels, attributions = pixel_batch(2, seed=8), torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(8))
    cache = ResponseCache()
    record = faithfulness_records(
        model, pixels, attributions, metrics=(metric,), preset=preset, fc_subset_size=5, cache=cache, progress=False
    )[metric]
    expected = forward_passes_per_image(preset, 16, PATCH, fc_subset_size=5)
    if metric == "faithfulness_correlation":
        # 100 draws of 5 of 16 patches repeat a subset now and then: a repeated input is run once.
        distinct = sum(len({tuple(sorted(s)) for s in image.reshape(-1, 5).tolist()}) for image in record.subsets)
        assert distinct <= 2 * expected[metric]
        assert len(cache) == 2 + distinct
    else:
        assert len(cache) == 2 * (expected[metric] + 1)
    assert expected["saco"] == (10 if preset == "papers" else 4)
    assert expected["faithfulness_correlation"] == (100 if preset == "papers" else 60)
    assert expected["pixel_flipping"] == 16


def test_presets_share_responses_where_inputs_coincide():
    gen = torch.Generator().manual_seed(9)
    model = PatchLinear(torch.randn(8, 8, generator=gen), 2)  # N = 64: random 20-patch subsets never repeat
    pixels, attributions = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 8, 8, generator=gen)
    common = dict(fill="zero", patch_size=2, metrics=("faithfulness_correlation", "pixel_flipping"))
    cache = ResponseCache()
    both = evaluate_presets(model, pixels, attributions, cache=cache, progress=False, **common)
    # Shared: clean, the whole Pixel Flipping curve and the 20 subsets of thesis trial 0 (papers' first 20 runs).
    assert len(cache) == 2 * (1 + 64 + 100 + 40)
    for preset in ("papers", "thesis"):
        alone = evaluate_faithfulness(model, pixels, attributions, preset=preset, progress=False, **common)
        for metric in alone:
            np.testing.assert_allclose(both[preset][metric], alone[metric], atol=1e-12)
    runner_cache = ResponseCache()
    evaluate_faithfulness(model, pixels, attributions, preset="papers", cache=runner_cache, progress=False, **common)
    before = len(runner_cache)
    evaluate_faithfulness(model, pixels, attributions, preset="thesis", cache=runner_cache, progress=False, **common)
    assert len(runner_cache) - before == 2 * 40
    other = PatchLinear(torch.randn(8, 8, generator=gen), 2)
    with pytest.raises(ValueError, match="another model"):
        evaluate_faithfulness(other, pixels, attributions, cache=runner_cache, progress=False, **common)


# ---------------------------------------------------------------- fills, CLIP, edge cases


def test_fills_are_patch_aligned():
    pixels = pixel_batch(2, seed=10)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    common = dict(image_mean=mean, image_std=std)
    black = fill_source(pixels, "black", **common)
    assert torch.allclose(black[0, :, 0, 0], -torch.tensor(mean) / torch.tensor(std))
    channel = fill_source(pixels, "mean", **common)
    assert torch.allclose(channel[1, 2], pixels[1, 2].mean().expand(32, 32))
    scalar = fill_source(pixels, "mean", mean_fill="scalar", **common)
    assert torch.allclose(scalar[0], pixels[0].mean().expand(3, 32, 32))
    blur = fill_source(pixels, "blur", blur_sigma=2.0, **common)
    assert blur.shape == pixels.shape and blur.std() < pixels.std()
    uniform = fill_source(pixels, "uniform", seed=1, image_ids=[5, 6], **common)
    again = fill_source(pixels[1:], "uniform", seed=1, image_ids=[6], **common)
    assert torch.equal(uniform[1], again[0])
    low = (0 - torch.tensor(mean)) / torch.tensor(std)
    assert (uniform >= low.view(1, 3, 1, 1) - 1e-6).all()
    runner = make_runner(tiny_vit(), pixels, progress=False)
    key = runner.fill_key("blur")
    mask = np.zeros(16, dtype=bool)
    mask[5] = True
    perturbed = runner._materialise([runner.request(0, key, mask)])[0]
    changed = (perturbed != pixels[0]).any(dim=0)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = True
    assert torch.equal(changed.reshape(4, 8, 4, 8).any(dim=(1, 3)), expected)
    assert torch.equal(changed.reshape(4, 8, 4, 8)[1, :, 1, :], torch.ones(8, 8, dtype=torch.bool))


def test_every_fill_runs():
    model = tiny_vit()
    pixels, attributions = pixel_batch(2, seed=11), torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(11))
    for fill in ("mean", "zero", "black", "blur", "uniform"):
        scores = evaluate_faithfulness(
            model, pixels, attributions, metrics=ALL, fill=fill, fc_subset_size=5, fc_runs=10, progress=False
        )
        assert all(np.isfinite(v).all() and v.shape == (2,) for v in scores.values()), fill


def test_clip_with_text_embeds():
    model = tiny_clip()
    text = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    pixels, attributions = pixel_batch(2, seed=12), torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(12))
    scores = evaluate_faithfulness(model, pixels, attributions, text_embeds=text, fc_subset_size=5, progress=False)
    assert all(np.isfinite(v).all() and v.shape == (2,) for v in scores.values())
    with pytest.raises(ValueError, match="candidate_labels"):
        evaluate_faithfulness(model, pixels, attributions, fc_subset_size=5, progress=False)


def test_constant_attributions_give_defined_scores(vit64):
    pixels = pixel_batch(2, seed=13).double()
    constant = torch.full((2, 4, 4), 0.25, dtype=torch.float64)
    scores = evaluate_faithfulness(
        vit64, pixels, constant, metrics=ALL, saco_num_groups=4, fc_subset_size=5, fc_runs=10, progress=False
    )
    assert np.array_equal(scores["saco"], [0.0, 0.0])  # equal group saliences: Σ|w| = 0, defined as 0
    assert np.array_equal(scores["faithfulness_correlation"], [0.0, 0.0])  # constant subset sums
    uneven = evaluate_faithfulness(vit64, pixels, constant, metrics=("saco",), progress=False)
    assert np.array_equal(uneven["saco"], [0.0, 0.0])  # K = 10 groups of 2 or 1 patches: still no ranking, 0


@pytest.mark.parametrize("preset, num_groups", [("papers", 10), ("papers", 3), ("thesis", None)])
def test_constant_map_saco_is_zero_for_every_patch_order(preset, num_groups):
    """N = 16 patches in K groups of unequal size: permuting the patches moves content between the larger and the
    smaller groups, which changed a constant map's SaCo (±1/12 steps) before its saliences were made equal."""
    weights = torch.linspace(-3.0, 4.0, 16, dtype=torch.float64)
    model = PatchLinear(weights, patch=8)
    pixels = pixel_batch(1, seed=2).double()
    constant = torch.full((1, 4, 4), 0.7, dtype=torch.float64)
    overrides = {} if num_groups is None else {"saco_num_groups": num_groups}
    raw_saliences = []
    for seed in range(4):
        order = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        patches = pixels.reshape(1, 3, 4, 8, 4, 8).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 16, 8, 8)[:, :, order]
        permuted = patches.reshape(1, 3, 4, 4, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 32, 32)
        scores = evaluate_faithfulness(
            model, permuted, constant, metrics=("saco",), preset=preset, patch_size=8, progress=False, **overrides
        )
        assert scores["saco"][0] == 0.0
        record = faithfulness_records(
            model, permuted, constant, metrics=("saco",), preset=preset, patch_size=8, progress=False, **overrides
        )["saco"]
        assert np.ptp(record.saliences) == 0.0
        raw_saliences.append(record.saliences)
    assert np.allclose(np.concatenate(raw_saliences), 0.7 * 16 / record.saliences.shape[1])


def test_non_finite_inputs_name_the_input_that_is_wrong():
    weights = torch.linspace(-1.0, 1.0, 16)
    pixels = pixel_batch(3, seed=4)
    pixels[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"pixel_values of image\(s\) \[2\] contain NaN or infinite values"):
        evaluate_faithfulness(
            PatchLinear(weights, patch=8), pixels, torch.rand(3, 4, 4), patch_size=8, fc_subset_size=5, progress=False
        )

    def broken(x):
        scores = PatchLinear(weights, patch=8)(x)
        scores[x[:, 0, 0, 0] > 0.5] = float("inf")
        return scores

    pixels = pixel_batch(3, seed=4)
    pixels[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    expected = r"model returned NaN or infinite scores for the clean image of image\(s\) \[1\]"
    with pytest.raises(ValueError, match=expected):
        evaluate_faithfulness(broken, pixels, torch.rand(3, 4, 4), patch_size=8, fc_subset_size=5, progress=False)


def test_invalid_inputs_raise_clear_errors():
    model = tiny_vit()
    pixels = pixel_batch(2)
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 4, 4\)"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 3, 3), progress=False)
    nan = torch.rand(2, 4, 4)
    nan[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\].*NaN"):
        evaluate_faithfulness(model, pixels, nan, progress=False)
    with pytest.raises(ValueError, match="fc_subset_size"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 4, 4), progress=False)
    with pytest.raises(ValueError, match="fill='gray' is unknown"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 4, 4), fill="gray", progress=False)
    with pytest.raises(ValueError, match="unknown preset override"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 4, 4), fc_run=3, progress=False)
    with pytest.raises(ValueError, match="preset"):
        evaluate_faithfulness(model, pixels, torch.rand(2, 4, 4), preset="paper", progress=False)
    with pytest.raises(ValueError, match="16×16"):
        patch_grid(model, torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="patch_size"):
        patch_grid(lambda x: x, torch.rand(1, 3, 16, 16))


def test_deprecated_baseline_keyword_still_works_with_a_warning():
    model, pixels = toy()
    common = dict(metrics=("pixel_flipping",), patch_size=2, targets=[0], progress=False)
    expected = evaluate_faithfulness(model, pixels, torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]), fill="zero", **common)
    for call in (evaluate_faithfulness, evaluate_presets, faithfulness_records):
        with pytest.warns(FutureWarning, match="`baseline=` is deprecated.*pass `fill=`"):
            result = call(model, pixels, torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]), baseline="zero", **common)
        if call is evaluate_faithfulness:
            np.testing.assert_array_equal(result["pixel_flipping"], expected["pixel_flipping"])


def test_curves_can_track_a_raw_score():
    model, pixels = toy()  # e.g. an SAE feature activation returned by a callable: tracked as is, no softmax
    scores = evaluate_faithfulness(
        model,
        pixels,
        torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]),
        metrics=("insertion", "deletion"),
        fill="zero",
        patch_size=2,
        targets=[0],
        curve_quantity="score",
        progress=False,
    )
    auc = lambda s: sum((s[k - 1] + s[k]) / 2 for k in range(1, 5)) / 4  # noqa: E731
    assert scores["deletion"][0] == pytest.approx(auc([6.5, 5.5, 2.5, 0.5, 0.0]), abs=1e-12)
    assert scores["insertion"][0] == pytest.approx(auc([0.0, 1.0, 4.0, 6.0, 6.5]), abs=1e-12)


def test_evaluate_faithfulness_docstring_example():
    import doctest

    from hf_fga.faithfulness import evaluation

    test = doctest.DocTestFinder().find(evaluation.evaluate_faithfulness, "evaluate_faithfulness")[0]
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert test.examples and runner.summarize(verbose=False).failed == 0
