"""
The control variants of method.md §10 (error-scaled, error-only, transmm-power, random-gates, selective) and the
feature importances of `selective`, against float64 references written here from the definitions, on the naive
capture of tests/attribution/reference.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.attribution.feature_selection import (
    compute_feature_importance,
    load_feature_importance,
    save_feature_importance,
    select_features,
)
from hf_fga.attribution.methods.fga import power_map
from tests.attribution.reference import (
    decoder_and_bias,
    gates,
    reference_transmm,
    relative_error,
    transmm_one,
)
from tests.attribution.test_reference import LAYERS, TOL, N, sae_set
from tests.helpers import tiny_sae


def token_terms(sae64, x, g) -> dict[str, float]:
    """g·(x − b_dec), g·e (e = x − x̂, x̂ by the float64 SAE's own forward) and the per-feature terms f_k (Dᵀg)_k."""
    decoder, bias = decoder_and_bias(sae64)
    with torch.no_grad():
        f = sae64.encode(x[None])[0]
        error = x - sae64(x[None]).reconstruction[0]
    return {
        "centered": float(torch.dot(g, x - bias)),
        "error": float(torch.dot(g, error)),
        "per_feature": f * (decoder @ g),
    }


def reference_gated(cap, saes, layers, score, kappa=0.5, cmax=10.0, permute=None):
    """Maps `(B, N)`, scores and gates per block from a per-token `score(block, sae64, x, g)`; `permute(block)` gives
    a patch permutation applied to the scores (random-gates)."""
    batch = cap.logits.shape[0]
    all_scores, all_gates = {}, {}
    for block in layers:
        sae64 = copy.deepcopy(saes[block]).double()
        x_all, g_all = cap.residual(block, sae64.config.hook_point)
        rows, gate_rows = [], []
        for b in range(batch):
            xs, gs = x_all[b, -N:], g_all[b, -N:]
            s = [score(block, sae64, xs[t], gs[t]) for t in range(N)]
            if permute is not None:
                order = permute(block)
                s = [s[int(order[t])] for t in range(N)]
            scale = max(float(gs[t].norm() * xs[t].norm()) for t in range(N))
            rows.append(s)
            gate_rows.append(gates(s, kappa, cmax, True, scale))
        all_scores[block] = torch.tensor(rows, dtype=torch.float64)
        all_gates[block] = torch.tensor(gate_rows, dtype=torch.float64)
    maps = torch.stack([transmm_one(cap, b, {k: v[b] for k, v in all_gates.items()}, N) for b in range(batch)])
    return maps, all_scores, all_gates


def check(out, expected):
    maps, scores, gate_values = expected
    for block in scores:
        assert relative_error(out.scores[block], scores[block]) < TOL, block
        assert relative_error(out.gates[block], gate_values[block]) < TOL, block
    assert relative_error(out.attribution, maps) < TOL


@pytest.mark.parametrize("kind", ["topk", "relu"])
@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_error_scaled_matches_reference(vit, pixels, vit_reference, kind, scale):
    saes = sae_set(kind)
    out = Attributor(vit, saes).attribute(pixels, variant="error-scaled", error_scale=scale, layers=LAYERS)

    def score(block, sae64, x, g):
        terms = token_terms(sae64, x, g)
        return terms["centered"] - scale * terms["error"]

    check(out, reference_gated(vit_reference, saes, LAYERS, score))


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_error_scaled_identities(vit, pixels, kind):
    attr = Attributor(vit, sae_set(kind))
    capture = attr.capture(pixels, hook_points={b: attr.hook_point_of(b) for b in LAYERS})
    for scale, variant in ((0.0, "centered"), (1.0, "combined")):
        scaled = attr.explain(capture, variant="error-scaled", error_scale=scale, layers=LAYERS)
        plain = attr.explain(capture, variant=variant, layers=LAYERS)
        for block in LAYERS:
            torch.testing.assert_close(scaled.scores[block], plain.scores[block], rtol=0, atol=0)
        torch.testing.assert_close(scaled.attribution, plain.attribution, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_error_only_matches_reference(vit, pixels, vit_reference, kind):
    saes = sae_set(kind)
    out = Attributor(vit, saes).attribute(pixels, variant="error-only", layers=LAYERS)

    def score(block, sae64, x, g):
        return -token_terms(sae64, x, g)["error"]

    check(out, reference_gated(vit_reference, saes, LAYERS, score))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_transmm_power_matches_reference(vit, pixels, vit_reference, gamma):
    out = Attributor(vit).attribute(pixels, method="fga", variant="transmm-power", gamma=gamma)
    transmm = reference_transmm(vit_reference, N)
    assert bool((transmm >= 0).all())  # TransMM's map is non-negative by construction
    assert relative_error(out.attribution, transmm**gamma) < TOL
    assert out.scores == {} and out.gates == {}
    if gamma == 1.0:
        torch.testing.assert_close(out.attribution, out.baseline, rtol=0, atol=0)


def test_power_map_is_sign_safe():
    values = torch.tensor([-4.0, -0.25, 0.0, 0.25, 9.0], dtype=torch.float64)
    expected = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(power_map(values, 0.5), expected)
    torch.testing.assert_close(
        power_map(values, 2.0), torch.tensor([-16.0, -0.0625, 0.0, 0.0625, 81.0], dtype=torch.float64)
    )
    order = power_map(values, 3.0).argsort()
    assert torch.equal(order, values.argsort())  # monotone: the ranking (and so Pixel Flipping) is unchanged


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_random_gates_match_reference_and_are_batch_invariant(vit, pixels, vit_reference, kind):
    saes = sae_set(kind)
    attr = Attributor(vit, saes)
    out = attr.attribute(pixels, variant="random-gates", gate_seed=3, layers=LAYERS)

    def permute(block):
        return torch.randperm(N, generator=torch.Generator().manual_seed(3 + block))

    combined = lambda block, sae64, x, g: float(token_terms(sae64, x, g)["per_feature"].sum())  # noqa: E731
    check(out, reference_gated(vit_reference, saes, LAYERS, combined, permute=permute))
    plain = attr.attribute(pixels, variant="combined", layers=LAYERS)
    for block in LAYERS:  # the same gates, moved to other patches
        torch.testing.assert_close(
            out.gates[block].flatten(1).sort(-1).values, plain.gates[block].flatten(1).sort(-1).values
        )
        assert not torch.equal(out.gates[block], plain.gates[block])
    single = attr.attribute(pixels[1:], variant="random-gates", gate_seed=3, layers=LAYERS)
    assert relative_error(single.attribution, out.attribution[1:]) < 1e-5


def importance_of(sae, seed: int = 0) -> torch.Tensor:
    return torch.rand(sae.config.d_sae, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["topk", "relu"])
@pytest.mark.parametrize("count", [32, 64])
def test_selective_matches_reference(vit, pixels, vit_reference, kind, count):
    saes = sae_set(kind)
    attr = Attributor(vit, saes)
    # S_ℓ from the features these images use, and enough of them (of 128) that most patches have one active: with
    # fewer, most scores are 0, the MAD is 0 and every gate is 1
    importance = compute_feature_importance(attr, [pixels], LAYERS, progress=False)
    out = attr.attribute(pixels, variant="selective", num_features=count, feature_importance=importance, layers=LAYERS)
    chosen = {b: set(importance[b].topk(count).indices.tolist()) for b in LAYERS}

    def score(block, sae64, x, g):
        per_feature = token_terms(sae64, x, g)["per_feature"]
        return sum(float(per_feature[k]) for k in chosen[block])

    check(out, reference_gated(vit_reference, saes, LAYERS, score))
    assert all(float(out.gates[b].std()) > 0.1 for b in LAYERS), "the selected features should move the gates"


def test_selective_with_every_feature_is_combined(vit, pixels):
    saes = sae_set("topk")
    attr = Attributor(vit, saes)
    importance = {b: importance_of(saes[b]) for b in LAYERS}
    everything = attr.attribute(
        pixels, variant="selective", num_features=saes[0].config.d_sae, feature_importance=importance, layers=LAYERS
    )
    combined = attr.attribute(pixels, variant="combined", layers=LAYERS)
    for block in LAYERS:
        assert relative_error(everything.scores[block], combined.scores[block]) < 1e-5
    assert relative_error(everything.attribution, combined.attribution) < 1e-5


def test_options_are_validated(vit, pixels):
    saes = sae_set("topk")
    attr = Attributor(vit, saes)
    importance = {b: importance_of(saes[b]) for b in LAYERS}
    cases = [
        (dict(variant="error-scaled"), "error_scale"),
        (dict(variant="error-scaled", error_scale=float("nan")), "error_scale must be a finite number"),
        (dict(variant="combined", error_scale=0.5), "error_scale applies only to variant 'error-scaled'"),
        (dict(variant="transmm-power"), "gamma"),
        (dict(variant="transmm-power", gamma=0), "gamma must be a finite number > 0"),
        (dict(variant="combined", gamma=2.0), "gamma applies only to variant 'transmm-power'"),
        (dict(variant="selective", feature_importance=importance), "num_features"),
        (dict(variant="selective", num_features=4), "feature_importance"),
        (dict(variant="selective", num_features=0, feature_importance=importance), "num_features must be"),
        (dict(variant="selective", num_features=10_000, feature_importance=importance), "num_features must be"),
        (
            dict(variant="selective", num_features=4, feature_importance={0: importance[0]}, layers=LAYERS),
            "no feature importance for block 1",
        ),
        (dict(variant="selective", num_features=4, feature_importance={b: torch.ones(3) for b in LAYERS}), "shape"),
        (dict(variant="combined", gate_seed=1), "gate_seed applies only to variant 'random-gates'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            attr.attribute(pixels, **options)
    norm = {1: tiny_sae(layer=1, hook_point="resid_post", seed=11, normalize_activations="layer_norm")}
    for variant in ("error-scaled", "error-only"):
        with pytest.raises(ValueError, match="layer norm"):
            Attributor(vit, norm).attribute(
                pixels, variant=variant, error_scale=0.5 if variant == "error-scaled" else None
            )


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_feature_importance_matches_reference(vit, pixels, vit_reference, kind, tmp_path):
    saes = sae_set(kind)
    attr = Attributor(vit, saes)
    importance = compute_feature_importance(attr, [pixels[:1], pixels[1:]], LAYERS, progress=False)
    for block in LAYERS:
        sae64 = copy.deepcopy(saes[block]).double()
        x_all, g_all = vit_reference.residual(block, sae64.config.hook_point)
        expected = torch.zeros(sae64.config.d_sae, dtype=torch.float64)
        for b in range(2):
            for t in range(N):
                expected += token_terms(sae64, x_all[b, -N + t], g_all[b, -N + t])["per_feature"].abs()
        assert relative_error(importance[block], expected / 2) < TOL, block
    path = tmp_path / "importance.safetensors"
    save_feature_importance(importance, path, {b: attr.hook_point_of(b) for b in LAYERS}, model_name="tiny")
    loaded, metadata = load_feature_importance(path, return_metadata=True)
    assert sorted(loaded) == LAYERS and metadata["model_name"] == "tiny"
    assert metadata["hook_points"] == {str(b): attr.hook_point_of(b) for b in LAYERS}
    for block in LAYERS:
        torch.testing.assert_close(loaded[block], importance[block])
    assert torch.equal(select_features(importance[0], 3), importance[0].topk(3).indices)
    with pytest.raises(ValueError, match="integer in"):
        select_features(importance[0], 0)
    with pytest.raises(ValueError, match="have none"):
        compute_feature_importance(attr, [pixels], [3], progress=False)


@pytest.mark.parametrize(
    "options",
    [
        dict(variant="error-scaled", error_scale=2.0),
        dict(variant="error-only"),
        dict(variant="transmm-power", gamma=2.0),
        dict(variant="selective", num_features=32),
    ],
    ids=lambda o: o["variant"],
)
def test_control_variants_are_batch_invariant(vit, pixels, options):
    saes = sae_set("topk")
    attr = Attributor(vit, saes)
    if options["variant"] == "selective":
        options = {**options, "feature_importance": compute_feature_importance(attr, [pixels], LAYERS, progress=False)}
    batch = attr.attribute(pixels, layers=LAYERS, **options)
    for b in range(pixels.shape[0]):
        single = attr.attribute(pixels[b : b + 1], layers=LAYERS, **options)
        assert relative_error(single.attribution, batch.attribution[b : b + 1]) < 1e-5
