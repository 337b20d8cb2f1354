"""Every map, score and gate against the naive float64 reference of method.md (tests/attribution/reference.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_fga.attribution import VARIANTS, FeatureGradientAttribution
from tests.attribution.reference import (
    decoder_and_bias,
    reference_capture,
    reference_fga,
    reference_rollout,
    reference_transmm,
    relative_error,
    token_score,
)
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import pixel_batch, tiny_clip, tiny_sae

N = 16  # 4 x 4 patches
TOL = 1e-4
LAYERS = [0, 1, 2]


def sae_set(kind: str) -> dict:
    """SAEs on blocks 0-2 of a 4-block model, mixing hook points; block 2 of the Top-K set has a constant scale."""
    if kind == "topk":
        return {
            0: tiny_sae(layer=0, hook_point="resid_pre", seed=1),
            1: tiny_sae(layer=1, hook_point="resid_post", seed=2),
            2: tiny_sae(
                layer=2,
                hook_point="resid_pre",
                seed=3,
                normalize_activations="constant_scale",
                norm_scaling_factor=2.5,
            ),
        }
    return {
        0: tiny_sae(layer=0, activation="relu", hook_point="resid_post", seed=4),
        1: tiny_sae(layer=1, activation="relu", hook_point="resid_pre", seed=5),
        2: tiny_sae(layer=2, activation="relu", hook_point="resid_pre", seed=6),
    }


@pytest.fixture(scope="module")
def means():
    gen = torch.Generator().manual_seed(7)
    return {block: torch.randn(32, generator=gen) for block in LAYERS}


@pytest.mark.parametrize("method", ["transmm", "rollout", "raw-attention"])
def test_baselines_match_reference(vit, pixels, vit_reference, method):
    out = FeatureGradientAttribution(vit).attribute(pixels, method=method)
    expected = {
        "transmm": reference_transmm(vit_reference, N),
        "rollout": reference_rollout(vit_reference, N),
        "raw-attention": vit_reference.attentions[-1].double().mean(dim=1)[:, 0, -N:],
    }[method]
    assert out.attribution.shape == (2, 4, 4) and out.grid == (4, 4)
    assert relative_error(out.attribution, expected) < TOL
    assert relative_error(out.baseline, reference_transmm(vit_reference, N)) < TOL
    assert torch.equal(out.target, vit_reference.target)
    assert relative_error(out.logits, vit_reference.logits) < TOL
    torch.testing.assert_close(out.probabilities, out.logits.softmax(-1))
    assert out.scores == {} and out.gates == {}


@pytest.mark.parametrize("kind", ["topk", "relu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fga_variants_match_reference(vit, pixels, vit_reference, means, kind, variant):
    saes = sae_set(kind)
    attr = FeatureGradientAttribution(vit, saes, mean_residuals=means)
    out = attr.attribute(pixels, variant=variant, layers=LAYERS, kappa=0.7, cmax=5.0)
    expected, scores, gates = reference_fga(vit_reference, saes, LAYERS, variant, N, kappa=0.7, cmax=5.0, means=means)
    assert sorted(out.gates) == LAYERS
    for block in LAYERS:
        assert relative_error(out.scores[block], scores[block]) < TOL, block
        assert relative_error(out.gates[block], gates[block]) < TOL, block
    assert relative_error(out.attribution, expected) < TOL
    assert not torch.allclose(out.attribution, out.baseline), "the gates should change the map"


@pytest.mark.parametrize("variant", ["combined", "no-sae", "centered"])
def test_explicit_target_and_kappa_match_reference(vit, pixels, variant):
    saes = {1: tiny_sae(layer=1, hook_point="resid_post", seed=2)}
    cap = reference_capture(vit, pixels, target=[2, 0])
    out = FeatureGradientAttribution(vit, saes).attribute(pixels, target=[2, 0], variant=variant, kappa=2.0, cmax=50)
    expected, _, _ = reference_fga(cap, saes, [1], variant, N, kappa=2.0, cmax=50.0)
    assert out.target.tolist() == [2, 0]
    assert relative_error(out.attribution, expected) < TOL


def test_clip_matches_reference():
    model = tiny_clip(num_layers=3)
    _, text_embeds = clip_label_inputs(model)
    pixels = pixel_batch(2, seed=5)
    saes = {
        0: tiny_sae(layer=0, hook_point="resid_post", seed=8),
        1: tiny_sae(layer=1, hook_point="resid_pre", seed=9),
    }
    cap = reference_capture(model, pixels, text_embeds=text_embeds)
    attr = FeatureGradientAttribution(model, saes)
    for variant in ("combined", "shuffled", "no-sae"):
        out = attr.attribute(pixels, variant=variant, layers=[0, 1], text_embeds=text_embeds)
        expected, _, _ = reference_fga(cap, saes, [0, 1], variant, N)
        assert relative_error(out.attribution, expected) < TOL, variant
        assert relative_error(out.baseline, reference_transmm(cap, N)) < TOL
    assert relative_error(out.logits, cap.logits) < TOL


def test_deit_with_distillation_token_matches_reference():
    model = tiny_deit(num_layers=3)
    pixels = pixel_batch(2, seed=6)
    saes = {0: tiny_sae(layer=0, hook_point="resid_post", seed=10)}
    cap = reference_capture(model, pixels)
    assert cap.attentions[0].shape[-1] == N + 2
    out = FeatureGradientAttribution(model, saes).attribute(pixels, variant="combined")
    expected, _, gates = reference_fga(cap, saes, [0], "combined", N)
    assert relative_error(out.attribution, expected) < TOL
    assert relative_error(out.gates[0], gates[0]) < TOL
    assert relative_error(out.baseline, reference_transmm(cap, N)) < TOL


def test_layer_norm_sae_projects_raw_gradient_on_raw_decoder(vit, pixels, vit_reference):
    saes = {1: tiny_sae(layer=1, hook_point="resid_post", seed=11, normalize_activations="layer_norm")}
    for variant in ("combined", "gradient", "centered"):
        out = FeatureGradientAttribution(vit, saes).attribute(pixels, variant=variant)
        expected, scores, _ = reference_fga(vit_reference, saes, [1], variant, N)
        assert relative_error(out.scores[1], scores[1]) < TOL, variant
        assert relative_error(out.attribution, expected) < TOL, variant


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_diagnostics_match_reference(vit, pixels, vit_reference, kind):
    saes = sae_set(kind)
    out = FeatureGradientAttribution(vit, saes).attribute(pixels, layers=LAYERS, return_diagnostics=True)
    for block in LAYERS:
        sae64 = copy.deepcopy(saes[block]).double()
        x_all, g_all = vit_reference.residual(block, saes[block].config.hook_point)
        _, bias = decoder_and_bias(sae64)
        for b in range(2):
            x, g = x_all[b, -N:], g_all[b, -N:]
            with torch.no_grad():
                error = x - sae64(x).reconstruction
            expected = {
                "g_dot_centered": (g * (x - bias)).sum(-1).abs().mean(),
                "g_dot_error": (g * error).sum(-1).abs().mean(),
                "g_dot_x": (g * x).sum(-1).abs().mean(),
            }
            for key, value in expected.items():
                assert relative_error(out.diagnostics[block][key][b], value) < TOL, (block, key)


@pytest.mark.parametrize("kind", ["topk", "relu"])
@pytest.mark.parametrize("variant", ["combined", "shuffled"])
def test_contributions_match_reference(vit, pixels, vit_reference, kind, variant):
    saes = sae_set(kind)
    out = FeatureGradientAttribution(vit, saes).attribute(
        pixels, variant=variant, layers=[1], return_contributions=True, num_contributions=5
    )
    values, indices = out.contributions[1]
    assert values.shape == indices.shape == (2, N, 5)
    sae64 = copy.deepcopy(saes[1]).double()
    decoder, _ = decoder_and_bias(sae64)
    permutation = None
    if variant == "shuffled":
        permutation = torch.randperm(sae64.config.d_sae, generator=torch.Generator().manual_seed(12345))
        decoder = decoder[permutation]
    x_all, g_all = vit_reference.residual(1, saes[1].config.hook_point)
    for b in range(2):
        for t in range(N):
            x, g = x_all[b, -N + t], g_all[b, -N + t]
            with torch.no_grad():
                f = sae64.encode(x[None])[0]
            contrib = f * (decoder @ g)
            assert relative_error(values[b, t], contrib[indices[b, t]]) < TOL
            assert values[b, t].abs().min() >= contrib.abs().sort(descending=True).values[4] * (1 - 1e-4)
            # all contributions together are the token's score
            assert abs(float(contrib.sum()) - token_score(variant, x, g, sae64, permutation=permutation)) < 1e-9
