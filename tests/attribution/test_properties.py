"""Identities and invariances of method.md §1–3 that hold whatever the weights."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from hf_fga.attribution import VARIANTS, FeatureGradientAttribution
from hf_fga.attribution.capture import run_capture
from hf_fga.attribution.methods.fga import FeatureCodes, block_scores, gates_from_scores
from hf_fga.introspection import prepared_model
from tests.attribution.reference import relative_error
from tests.attribution.tiny_models import clip_label_inputs
from tests.helpers import pixel_batch, tiny_clip, tiny_sae, tiny_vit


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_layers=4)


@pytest.fixture(scope="module")
def saes():
    return {
        0: tiny_sae(layer=0, hook_point="resid_post", seed=1),
        1: tiny_sae(layer=1, activation="relu", hook_point="resid_pre", seed=2),
        2: tiny_sae(layer=2, hook_point="resid_pre", seed=3),
    }


def gate_error_bound(scores: torch.Tensor, score_error: float, kappa: float = 0.5, cmax: float = 10.0) -> float:
    """
    How far the gates of one image `(h, w)` may move, relative to their largest value, when its raw scores move by a
    relative error `score_error` δ (max-normalised), to first order (method.md §3).

    ŝ = (s − m) / (1.4826 · MAD), w = exp(ln c · tanh(κ ŝ)). With |Δs_t| ≤ δS (S = max|s|), the median moves by ≤ δS
    and the MAD by ≤ 2δS, so |Δŝ_t| ≤ 2δS / (1.4826 MAD) + |ŝ_t| · 2δS / MAD, and with u·sech²(u) ≤ 0.45,
    |Δ ln w_t| = ln c · κ sech²(κŝ_t) |Δŝ_t| ≤ ln c · (2κ / 1.4826 + 0.9) · δS / MAD. The robust normalisation divides
    by the spread of the scores, so gates amplify score rounding by S / MAD: gates are not bounded by the 1e-5 of
    method.md §1 (which bounds attributions), their score-derived bound is.
    """
    flat = scores.double().reshape(-1)
    mad = (flat - flat.median()).abs().median()
    return math.log(cmax) * (2 * kappa / 1.4826 + 0.9) * score_error * float(flat.abs().max() / mad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_of_five_equals_five_singles(vit, saes, variant):
    """
    method.md §1: attributions of a batch equal the per-image ones to 1e-5. The gradients of a batch differ from the
    per-image ones at float32 rounding (~1e-7): torch.matmul in the eager attention folds (B, H) into one batch
    dimension, a view for B = 1 but a copy for B > 1, so the q·kᵀ backward runs the same bmm on differently laid out
    operands (with either linear_backend). Scores are held to 1e-5 too; gates, which amplify score rounding by
    max|s| / MAD, to the bound that follows from it (`gate_error_bound`).
    """
    means = {block: torch.randn(32, generator=torch.Generator().manual_seed(block)) for block in saes}
    attr = FeatureGradientAttribution(vit, saes, mean_residuals=means)
    pixels = pixel_batch(5, seed=11)
    batch = attr.attribute(pixels, variant=variant, return_diagnostics=True)
    for i in range(5):
        single = attr.attribute(pixels[i : i + 1], variant=variant, return_diagnostics=True)
        assert relative_error(batch.attribution[i], single.attribution[0]) < 1e-5
        assert relative_error(batch.baseline[i], single.baseline[0]) < 1e-5
        for block in saes:
            scores = single.scores[block][0]
            assert relative_error(batch.scores[block][i], scores) < 1e-5
            bound = max(1e-5, gate_error_bound(scores, score_error=1e-5))
            assert relative_error(batch.gates[block][i], single.gates[block][0]) < bound
            for key, value in single.diagnostics[block].items():
                assert relative_error(batch.diagnostics[block][key][i], value[0]) < 1e-5


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_sparse_identity_equals_dense_formula(activation):
    """s = g·(D f) through the active set equals Σ_k f_k (Dᵀg)_k with the dense features, to float32 rounding."""
    sae = tiny_sae(d_in=48, d_sae=1024, k=24, activation=activation, seed=4)
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(600, 48, generator=gen), torch.randn(600, 48, generator=gen)
    codes = FeatureCodes.encode(sae, x)
    if activation == "topk":
        assert codes.dense is None and codes.values.shape == (600, 24)
    with torch.no_grad():
        dense = (sae.encode(x) * (g @ sae.W_dec.T)).sum(-1)
    identity = block_scores("combined", x, g, sae, codes)
    torch.testing.assert_close(identity, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())


def test_cmax_to_one_reproduces_transmm(vit, saes):
    out = FeatureGradientAttribution(vit, saes).attribute(pixel_batch(3), cmax=1 + 1e-9, kappa=1.0)
    torch.testing.assert_close(out.attribution, out.baseline, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        out.attribution, FeatureGradientAttribution(vit).attribute(pixel_batch(3), method="transmm").attribution
    )


def test_all_equal_scores_give_gates_of_one(vit):
    gates, mad = gates_from_scores(torch.full((2, 16), 3.25), kappa=1.0, cmax=10.0)
    assert torch.equal(gates, torch.ones(2, 16)) and torch.equal(mad, torch.zeros(2))
    # through the API: a ReLU SAE that never fires gives activation scores of 0 everywhere
    dead = tiny_sae(layer=1, activation="relu", seed=5)
    with torch.no_grad():
        dead.b_enc.fill_(-1e4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = FeatureGradientAttribution(vit, {1: dead}).attribute(pixel_batch(2), variant="activation")
    assert torch.equal(out.gates[1], torch.ones(2, 4, 4))
    torch.testing.assert_close(out.attribution, out.baseline, rtol=0, atol=0)


def test_gates_lie_in_range_and_median_patch_is_neutral(vit, saes):
    out = FeatureGradientAttribution(vit, saes).attribute(pixel_batch(2), kappa=3.0, cmax=4.0)
    for block, gates in out.gates.items():
        assert gates.min() >= 1 / 4 - 1e-6 and gates.max() <= 4 + 1e-6
        flat_scores = out.scores[block].reshape(2, -1)
        median_index = (flat_scores == flat_scores.median(dim=-1, keepdim=True).values).float().argmax(-1)
        for b in range(2):
            assert gates.reshape(2, -1)[b, median_index[b]] == pytest.approx(1.0)


def _capture(model, pixels, block, hook_point):
    with prepared_model(model) as handles:
        capture = run_capture(model, handles, pixels, None, {block: hook_point})
    return capture.residuals[(block, hook_point)][:, -16:], capture.residual_grads[(block, hook_point)][:, -16:]


@pytest.mark.parametrize("normalize", ["none", "constant_scale"])
def test_combined_equals_centered_minus_error_term(vit, normalize):
    sae = tiny_sae(layer=1, hook_point="resid_post", seed=6, normalize_activations=normalize, norm_scaling_factor=3.0)
    pixels = pixel_batch(3, seed=2)
    attr = FeatureGradientAttribution(vit, {1: sae})
    combined = attr.attribute(pixels, variant="combined").scores[1]
    centered = attr.attribute(pixels, variant="centered").scores[1]
    x, g = _capture(vit, pixels, 1, "resid_post")
    with torch.no_grad():
        error_term = (g * (x - sae(x).reconstruction)).sum(-1).reshape(3, 4, 4)
    scale = (g.norm(dim=-1) * x.norm(dim=-1)).max()
    torch.testing.assert_close(combined, centered - error_term, rtol=0, atol=1e-5 * scale.item())


def test_mean_centered_with_b_dec_equals_centered(vit):
    sae = tiny_sae(layer=2, hook_point="resid_pre", seed=7, normalize_activations="constant_scale")
    attr = FeatureGradientAttribution(vit, {2: sae}, mean_residuals={2: sae.decoder_bias_in_residual_space().detach()})
    pixels = pixel_batch(2, seed=4)
    centered = attr.attribute(pixels, variant="centered")
    mean_centered = attr.attribute(pixels, variant="mean-centered")
    torch.testing.assert_close(mean_centered.scores[2], centered.scores[2], rtol=0, atol=0)
    torch.testing.assert_close(mean_centered.attribution, centered.attribution, rtol=0, atol=0)


def test_mean_centered_needs_no_sae(vit):
    means = {1: torch.randn(32), 2: torch.randn(32)}
    out = FeatureGradientAttribution(vit, mean_residuals=means).attribute(pixel_batch(2), variant="mean-centered")
    assert sorted(out.gates) == [1, 2]
    no_sae = FeatureGradientAttribution(vit).attribute(pixel_batch(2), variant="no-sae", layers=[1])
    assert sorted(no_sae.gates) == [1]


def test_diagnostics_without_sae_report_only_g_dot_x(vit):
    out = FeatureGradientAttribution(vit, mean_residuals={1: torch.zeros(32)}).attribute(
        pixel_batch(2), variant="mean-centered", return_diagnostics=True, return_contributions=True
    )
    assert out.diagnostics[1]["g_dot_x"].isfinite().all()
    assert out.diagnostics[1]["g_dot_centered"].isnan().all() and out.diagnostics[1]["g_dot_error"].isnan().all()
    assert out.contributions == {}


def test_degenerate_last_block_warns_once_and_gates_one(vit):
    sae = tiny_sae(layer=3, hook_point="resid_post", seed=8)
    with pytest.warns(UserWarning, match=r"block 3 .*last block") as record:
        out = FeatureGradientAttribution(vit, {3: sae}).attribute(pixel_batch(2), variant="combined")
    assert sum("block 3" in str(w.message) for w in record) == 1
    assert torch.equal(out.gates[3], torch.ones(2, 4, 4))
    torch.testing.assert_close(out.attribution, out.baseline, rtol=0, atol=0)


def test_no_sae_at_block_l_minus_2_is_degenerate(vit):
    with pytest.warns(UserWarning, match=r"block 2 .*LayerNorm"):
        out = FeatureGradientAttribution(vit).attribute(pixel_batch(2), variant="no-sae", layers=[2])
    assert torch.equal(out.gates[2], torch.ones(2, 4, 4))


def test_train_mode_model_gives_eval_attributions(saes):
    model = tiny_vit(num_layers=4)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    expected = FeatureGradientAttribution(model, saes).attribute(pixel_batch(2)).attribution
    model.train()
    torch.testing.assert_close(FeatureGradientAttribution(model, saes).attribute(pixel_batch(2)).attribution, expected)


def test_clip_target_is_image_text_logit_of_candidate_label():
    model = tiny_clip()
    input_ids, text_embeds = clip_label_inputs(model, num_labels=5)
    pixels = pixel_batch(3, seed=9)
    out = FeatureGradientAttribution(model).attribute(
        pixels, method="transmm", target=[4, 0, 2], text_embeds=text_embeds
    )
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-4)
    assert out.target.tolist() == [4, 0, 2]
    torch.testing.assert_close(out.probabilities.sum(-1), torch.ones(3))
    default = FeatureGradientAttribution(model).attribute(pixels, method="transmm", text_embeds=text_embeds)
    assert torch.equal(default.target, expected.argmax(-1))


def test_target_forms_are_equivalent(vit):
    attr = FeatureGradientAttribution(vit)
    pixels = pixel_batch(2)
    reference = attr.attribute(pixels, method="transmm", target=[1, 1]).attribution
    for target in (1, torch.tensor([1, 1]), (1, 1), torch.tensor(1)):
        torch.testing.assert_close(attr.attribute(pixels, method="transmm", target=target).attribution, reference)
    argmax = attr.attribute(pixels, method="transmm")
    assert torch.equal(argmax.target, argmax.logits.argmax(-1))


def test_outputs_are_float32_cpu_and_detached(vit, saes):
    out = FeatureGradientAttribution(vit, saes).attribute(
        pixel_batch(2), return_diagnostics=True, return_contributions=True, num_contributions=3
    )
    tensors = [out.attribution, out.baseline, out.logits, out.probabilities, *out.scores.values(), *out.gates.values()]
    tensors += [v for d in out.diagnostics.values() for v in d.values()]
    tensors += [v for v, _ in out.contributions.values()]
    for tensor in tensors:
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and not tensor.requires_grad
    assert out.target.dtype == torch.long
    assert all(i.dtype == torch.long and i.shape == (2, 16, 3) for _, i in out.contributions.values())
