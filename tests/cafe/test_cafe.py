"""
CaFE (method.md §9): iERFs of SAE features against float64 references written here from the definitions (hidden states
from transformers' own forward, the SAE encoder written out, autograd per image), insertion AUC against a naive loop,
CLS features, errors, batch invariance, restoration.
"""

from __future__ import annotations

import evaluate
import pytest
import torch

from hf_fga.cafe import explain as cafe_explain
from hf_fga.cafe import explain_feature, feature_insertion, neighbourhood_share, random_ranking
from hf_fga.cafe.explain import patch_convolution
from hf_fga.faithfulness.fills import patch_grid
from hf_fga.metrics import metric_path
from tests.attribution.test_restore import assert_same, snapshot, unusual_vit
from tests.helpers import PATCH, pixel_batch, tiny_clip, tiny_sae, tiny_vit

GRID = 4  # 32 px images, 8 px patches


# ------------------------------------------------------------------------------------------------ references
def hidden(model, x, block, point):
    """The residual stream (B, T, d) at the SAE's hook point, from transformers' own hidden states."""
    tower = model.vision_model if hasattr(model, "vision_model") else model
    states = tower(pixel_values=x, output_hidden_states=True).hidden_states
    return states[block if point == "resid_pre" else block + 1]


def z_reference(sae, x, feature):
    """ReLU(W_enc (x_n − b_dec) + b_enc)_k at every token (B, T), the SAE's normalisation written out, no Top-K."""
    mode = sae.config.normalize_activations
    if mode == "constant_scale":
        x = x * sae.config.norm_scaling_factor
    elif mode == "layer_norm":
        centred = x - x.mean(dim=-1, keepdim=True)
        x = centred / (centred.std(dim=-1, keepdim=True) + 1e-5)
    return torch.relu((x - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature])


def patch_sums(pixel_map):
    """(C, H, W) -> (h, w): the sum over each patch's channels and pixels."""
    return pixel_map.sum(0).reshape(GRID, PATCH, GRID, PATCH).sum(dim=(1, 3))


def reference(model, sae, pixels, feature, position=None, times_input=True):
    """Per image: (iERF (h, w), activation map (h, w), z, q) by autograd through transformers' forward, float64."""
    results = []
    block, point = sae.config.hook_layer, sae.config.hook_point
    for b in range(len(pixels)):
        x = pixels[b : b + 1].clone().requires_grad_(True)
        z = z_reference(sae, hidden(model, x, block, point), feature)[0]
        q = int(z.argmax()) if position is None else position
        (grad,) = torch.autograd.grad(z[q], x)
        ierf = patch_sums((x * grad if times_input else grad)[0].detach())
        results.append((ierf, z[1:].detach().reshape(GRID, GRID), z[q].item(), q))
    return results


def models():
    return {"vit": tiny_vit(num_layers=3).double(), "clip": tiny_clip(num_layers=3).double()}


# ------------------------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("family", ["vit", "clip"])
@pytest.mark.parametrize(
    "sae_kwargs",
    [{"activation": "relu"}, {"activation": "topk", "k": 4, "normalize_activations": "layer_norm"}],
)
@pytest.mark.parametrize("method", ["gradient-x-input", "gradient"])
def test_gradient_maps_match_float64_reference(family, sae_kwargs, method):
    model = models()[family]
    sae = tiny_sae(layer=1, **sae_kwargs).double()
    pixels = pixel_batch(2, seed=3).double()
    features = [3, 17, 40]
    out = explain_feature(model, sae, pixels, features, method=method)
    assert out.ierf.shape == (2, 3, GRID, GRID) and out.activation_map.shape == (2, 3, GRID, GRID)
    for f, feature in enumerate(features):
        for b, (ierf, activation, z, q) in enumerate(
            reference(model, sae, pixels, feature, times_input=method == "gradient-x-input")
        ):
            assert int(out.position[b, f]) == q
            assert out.value[b, f].item() == pytest.approx(z, rel=1e-6)
            torch.testing.assert_close(out.activation_map[b, f].double(), activation, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(out.ierf[b, f].double(), ierf, rtol=1e-5, atol=1e-7 * ierf.abs().max())


@pytest.mark.parametrize("family", ["vit", "clip"])
@pytest.mark.parametrize("method", ["gradient-x-input", "gradient", "attnlrp"])
def test_patch_embedding_shortcut_equals_the_pixel_gradient(family, method, monkeypatch):
    """Gradients at the patch convolution's output contracted with W x (or Σ W) = the pixel gradient's patch sums."""
    model = models()[family]
    sae = tiny_sae(layer=2, activation="relu").double()
    pixels = pixel_batch(2, seed=4).double()
    grid = patch_grid(model, pixels)
    assert patch_convolution(model, grid, 3) is not None  # ViT's and CLIP's stems take the shortcut
    shortcut = explain_feature(model, sae, pixels, [3, 17, 40], method=method)
    with torch.no_grad():  # a caller's no_grad context changes nothing
        quiet = explain_feature(model, sae, pixels, [3, 17, 40], method=method)
    torch.testing.assert_close(quiet.ierf, shortcut.ierf, rtol=0, atol=0)
    monkeypatch.setattr(cafe_explain, "patch_convolution", lambda *args: None)  # a stem that is no plain conv
    pixel_route = explain_feature(model, sae, pixels, [3, 17, 40], method=method)
    torch.testing.assert_close(shortcut.ierf, pixel_route.ierf, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(shortcut.value, pixel_route.value, rtol=0, atol=0)


def test_patch_embedding_leaf_only_for_one_convolution_of_the_pixels():
    conv = torch.nn.Conv2d(3, 4, PATCH, PATCH)
    pixels = pixel_batch(1)
    with cafe_explain.patch_embedding_leaf(conv, pixels) as seen:
        out = conv(pixels)
    assert out is seen["leaf"] and out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(seen["linear"], out.detach() - conv.bias[:, None, None])
    with cafe_explain.patch_embedding_leaf(conv, pixels) as seen:
        conv(pixels.clone())  # not the pixels themselves: the pixels' own gradient is the way
    assert seen["leaf"] is None and not seen["replaced"]
    with cafe_explain.patch_embedding_leaf(conv, pixels) as seen:
        conv(pixels), conv(pixels)  # twice: the first output was cut off, the forward must run again
    assert seen["leaf"] is None and seen["replaced"]
    assert not conv._forward_hooks
    overlapping = tiny_vit()
    stem = overlapping.vit.embeddings.patch_embeddings.projection
    overlapping.vit.embeddings.patch_embeddings.projection = torch.nn.Conv2d(3, stem.out_channels, PATCH, PATCH // 2)
    assert patch_convolution(overlapping, patch_grid(tiny_vit(), pixels), 3) is None


def test_single_feature_drops_the_axis_and_equals_the_list_call():
    model, sae = tiny_vit().double(), tiny_sae(activation="relu").double()
    pixels = pixel_batch(2, seed=1).double()
    one = explain_feature(model, sae, pixels, 40)
    many = explain_feature(model, sae, pixels, [3, 40])
    assert one.ierf.shape == (2, GRID, GRID) and one.value.shape == (2,) and one.position.shape == (2,)
    torch.testing.assert_close(one.ierf, many.ierf[:, 1])
    torch.testing.assert_close(one.value, many.value[:, 1])


def test_explicit_positions_and_the_other_backends():
    model, sae = tiny_vit().double(), tiny_sae(activation="relu").double()
    pixels = pixel_batch(2, seed=1).double()
    position = torch.tensor([5, 9])
    out = explain_feature(model, sae, pixels, 40, position=position)
    for b, (ierf, _, z, q) in enumerate(reference(model, sae, pixels, 40, position=int(position[0]))):
        if b == 0:
            assert q == 5 and out.value[0].item() == pytest.approx(z, rel=1e-6)
            torch.testing.assert_close(out.ierf[0].double(), ierf, rtol=1e-5, atol=1e-9)
    # CP-LRP's rules are LibraGrad's (lrp branch): the same gradient × input
    cp = explain_feature(model, sae, pixels, 40, method="cp-lrp")
    libra = explain_feature(model, sae, pixels, 40, method="gradient-x-input", libragrad=True)
    torch.testing.assert_close(cp.ierf, libra.ierf)
    attn = explain_feature(model, sae, pixels, 40, method="attnlrp")
    assert torch.isfinite(attn.ierf).all() and not torch.allclose(attn.ierf, cp.ierf)


def test_integrated_gradients_completeness_on_the_feature():
    model, sae = tiny_vit().double(), tiny_sae(activation="relu").double()
    pixels = pixel_batch(2, seed=2).double()
    out = explain_feature(model, sae, pixels, [3, 40], method="integrated-gradients", steps=64)
    for f, feature in enumerate([3, 40]):
        for b in range(2):
            x = pixels[b : b + 1]
            fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            with torch.no_grad():
                q = int(out.position[b, f])
                change = (
                    z_reference(sae, hidden(model, x, 1, "resid_post"), feature)[0, q]
                    - z_reference(sae, hidden(model, fill, 1, "resid_post"), feature)[0, q]
                )
            # captum's delta is exactly the completeness gap of z(x) − z(x̄) (the ReLU's kink on the path keeps the
            # quadrature from converging fast, so the gap itself is only small)
            gap = out.ierf[b, f].double().sum().item() - change.item()
            assert gap == pytest.approx(out.diagnostics["convergence_delta"][b, f].item(), abs=1e-5)
            assert abs(gap) < 0.05 * abs(change.item())


def test_kernel_shap_is_seeded_and_efficient():
    model, sae = tiny_vit().double(), tiny_sae(activation="relu").double()
    pixels = pixel_batch(1, seed=2).double()
    first = explain_feature(model, sae, pixels, 40, method="kernel-shap", n_samples=200, seed=3)
    again = explain_feature(model, sae, pixels, 40, method="kernel-shap", n_samples=200, seed=3)
    torch.testing.assert_close(first.ierf, again.ierf)
    # Shapley efficiency: the values sum to z(x) − z(x̄)
    x = pixels
    fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    with torch.no_grad():
        q = int(first.position[0])
        change = (
            z_reference(sae, hidden(model, x, 1, "resid_post"), 40)[0, q]
            - z_reference(sae, hidden(model, fill, 1, "resid_post"), 40)[0, q]
        )
    assert first.ierf.double().sum().item() == pytest.approx(change.item(), rel=1e-3, abs=1e-6)


def cls_only_sae(model, pixels):
    """A ReLU SAE whose feature 0 fires only at the CLS token of one image: z = +1 at CLS, −1 before the ReLU at
    every patch (17 tokens, 33 unknowns: solved exactly)."""
    sae = tiny_sae(activation="relu").double()
    with torch.no_grad():
        x = hidden(model, pixels, 1, "resid_post")[0] - sae.b_dec
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        wanted = torch.full((len(x),), -1.0, dtype=x.dtype)
        wanted[0] = 1.0
        solution = torch.linalg.pinv(design) @ wanted
        sae.W_enc[:, 0], sae.b_enc[0] = solution[:-1], solution[-1]
        torch.testing.assert_close(x @ sae.W_enc[:, 0] + sae.b_enc[0], wanted)
    return sae


def test_feature_active_only_at_cls():
    model = tiny_vit().double()
    pixels = pixel_batch(1, seed=5).double()
    sae = cls_only_sae(model, pixels)
    out = explain_feature(model, sae, pixels, 0)
    assert out.position.tolist() == [0]
    assert (out.activation_map == 0).all() and (out.cls_activation > 0).all()
    assert out.locality.at_cls.all() and out.locality.non_local.all() and torch.isnan(out.locality.share).all()
    explicit = explain_feature(model, sae, pixels, 0, position=0)
    torch.testing.assert_close(explicit.ierf, out.ierf)
    for b, (ierf, _, z, q) in enumerate(reference(model, sae, pixels, 0)):
        assert q == 0 and out.value[b].item() == pytest.approx(z, rel=1e-6)
        torch.testing.assert_close(out.ierf[b].double(), ierf, rtol=1e-5, atol=1e-9)
    scores = feature_insertion(model, sae, pixels, 0, 0, {"ierf": out.ierf})
    assert torch.isfinite(scores.auc["ierf"]).all()


# ------------------------------------------------------------------------------------------------ insertion
def naive_insertion(model, sae, image, feature, q, scores):
    """Insert patches one at a time into the per-channel mean image; z_j by the reference; AUC over z_N."""
    order = torch.argsort(-scores.flatten(), stable=True)
    current = image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    with torch.no_grad():
        curve = [z_reference(sae, hidden(model, current[None], 1, "resid_post"), feature)[0, q].item()]
        for patch in order.tolist():
            r, c = divmod(patch, GRID)
            rows, cols = slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH)
            current[:, rows, cols] = image[:, rows, cols]
            curve.append(z_reference(sae, hidden(model, current[None], 1, "resid_post"), feature)[0, q].item())
    curve = torch.tensor(curve, dtype=torch.float64)
    auc = ((curve[:-1] + curve[1:]) / 2).sum() / (len(curve) - 1) / curve[-1]
    return curve, auc.item()


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_insertion_auc_matches_a_naive_loop(family):
    model = models()[family]
    sae = tiny_sae(activation="relu").double()
    pixels = pixel_batch(2, seed=4).double()
    features = [3, 40]
    explained = explain_feature(model, sae, pixels, features)
    rankings = {
        "ierf": explained.ierf,
        "activation": explained.activation_map,
        "random": random_ranking((2, 2, GRID, GRID), seed=0),
    }
    out = feature_insertion(model, sae, pixels, features, explained.position, rankings, batch_size=7)
    for name, ranking in rankings.items():
        for b in range(2):
            for f, feature in enumerate(features):
                q = int(explained.position[b, f])
                curve, auc = naive_insertion(model, sae, pixels[b], feature, q, ranking[b, f])
                torch.testing.assert_close(out.curves[name][b, f], curve, rtol=1e-9, atol=1e-12)
                assert out.auc[name][b, f].item() == pytest.approx(auc, rel=1e-9)
    # shared inputs run once: x̄ and the clean image of each image, and 16 - 1 inner steps per ranking and pair
    assert out.num_forwards <= 2 * 2 + 3 * 2 * 2 * (GRID * GRID - 1)
    # the evaluate module gives the same AUC from the curves
    metric = evaluate.load(metric_path("feature_insertion"))
    per_image = metric.compute(curves=out.curves["ierf"].reshape(4, -1).tolist(), return_per_image=True)
    assert per_image["feature_insertion_per_image"] == pytest.approx(out.auc["ierf"].flatten().tolist(), rel=1e-12)


def test_feature_insertion_module_refuses_a_zero_clean_activation():
    metric = evaluate.load(metric_path("feature_insertion"))
    with pytest.raises(ValueError, match="z_N"):
        metric.compute(curves=[[0.0, 0.5, 0.0]])
    assert metric.compute(curves=[[0.0, 1.0, 2.0]])["feature_insertion"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ locality
def test_neighbourhood_share_by_hand():
    ierf = torch.zeros(2, 4, 4)
    ierf[:, 0, 0], ierf[:, 1, 1], ierf[:, 3, 3], ierf[:, 2, 0] = 1.0, 1.0, 6.0, -5.0
    locality = neighbourhood_share(ierf, torch.tensor([1, 16]))  # q = patch (0, 0) and patch (3, 3)
    torch.testing.assert_close(locality.share, torch.tensor([2 / 8, 6 / 8]))
    assert locality.non_local.tolist() == [False, False]
    locality = neighbourhood_share(ierf, torch.tensor([3, 0]))  # patch (0, 2): 1 of 8; CLS
    assert locality.share[0].item() == pytest.approx(1 / 8) and locality.non_local.tolist() == [True, True]
    assert torch.isnan(locality.share[1]) and locality.at_cls.tolist() == [False, True]
    empty = neighbourhood_share(-torch.ones(1, 4, 4), torch.tensor([1]))  # no positive mass: undefined, not 0/0
    assert torch.isnan(empty.share).all() and not empty.non_local.any()


# ------------------------------------------------------------------------------------------------ batch, errors
@pytest.mark.parametrize(
    ("method", "options"),
    [("gradient-x-input", {}), ("integrated-gradients", {"steps": 8}), ("kernel-shap", {"n_samples": 40})],
)
def test_batch_invariance(method, options):
    model, sae = tiny_vit(), tiny_sae(activation="relu")
    pixels = pixel_batch(3, seed=6)
    batch = explain_feature(model, sae, pixels, [3, 40], method=method, **options)
    for b in range(3):
        alone = explain_feature(model, sae, pixels[b : b + 1], [3, 40], method=method, **options)
        torch.testing.assert_close(batch.ierf[b], alone.ierf[0], rtol=1e-5, atol=1e-6 * alone.ierf.abs().max())
        torch.testing.assert_close(batch.value[b], alone.value[0], rtol=1e-5, atol=1e-7)
        assert batch.position[b].tolist() == alone.position[0].tolist()


def test_errors():
    model, sae = tiny_vit(), tiny_sae(activation="relu")
    pixels = pixel_batch(2)
    with pytest.raises(ValueError, match="d_sae=128"):
        explain_feature(model, sae, pixels, 128)
    with pytest.raises(ValueError, match="d_sae=128"):
        explain_feature(model, sae, pixels, [1, -1])
    with pytest.raises(ValueError, match=r"valid positions are 0\.\.16"):
        explain_feature(model, sae, pixels, 1, position=17)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        explain_feature(model, sae, pixels, [1, 2], position=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="model has 3 blocks"):
        explain_feature(model, tiny_sae(activation="relu", layer=5), pixels, 1)
    with pytest.raises(ValueError, match="hidden size"):
        explain_feature(model, tiny_sae(d_in=16, activation="relu"), pixels, 1)
    dead = tiny_sae(activation="relu")
    with torch.no_grad():
        dead.b_enc[7] = -1e4
    with pytest.raises(ValueError, match="0 at every token of image 0"):
        explain_feature(model, dead, pixels, [1, 7])
    with pytest.raises(ValueError, match="0 at every token"):
        feature_insertion(model, dead, pixels, 7, None, {"r": random_ranking((2, GRID, GRID))})
    with pytest.raises(ValueError, match="Unknown CaFE back-end"):
        explain_feature(model, sae, pixels, 1, method="fga")
    with pytest.raises(ValueError, match="libragrad"):
        explain_feature(model, sae, pixels, 1, method="attnlrp", libragrad=True)
    with pytest.raises(TypeError, match="steps"):
        explain_feature(model, sae, pixels, 1, method="gradient", steps=3)
    with pytest.raises(TypeError, match="unknown option"):
        explain_feature(model, sae, pixels, 1, method="integrated-gradients", step=3)
    with pytest.raises(ValueError, match="patch grid"):
        feature_insertion(model, sae, pixels, 1, None, {"r": torch.zeros(2, 3, 3)})


def test_zero_at_an_explicit_position_warns_and_insertion_refuses():
    model = tiny_vit().double()
    pixels = pixel_batch(1, seed=5).double()
    sae = cls_only_sae(model, pixels)
    with pytest.warns(UserWarning, match="0 at the requested position 3"):
        out = explain_feature(model, sae, pixels, 0, position=3)
    assert (out.ierf == 0).all()
    with pytest.raises(ValueError, match="divided by this clean activation"):
        feature_insertion(model, sae, pixels, 0, 3, {"r": random_ranking((1, GRID, GRID))})


def test_model_restored_after_success_and_exceptions():
    model = unusual_vit()
    sae = tiny_sae(activation="relu")
    pixels = pixel_batch(2)
    before = snapshot(model)
    for method in ("gradient-x-input", "attnlrp", "integrated-gradients"):
        explain_feature(model, sae, pixels, [1, 2], method=method, **({"steps": 4} if "integ" in method else {}))
        assert_same(before, snapshot(model))
    feature_insertion(model, sae, pixels, 1, None, {"r": random_ranking((2, GRID, GRID))})
    assert_same(before, snapshot(model))
    dead = tiny_sae(activation="relu")
    with torch.no_grad():
        dead.b_enc[7] = -1e4
    with pytest.raises(ValueError):
        explain_feature(model, dead, pixels, 7, method="cp-lrp")
    assert_same(before, snapshot(model))


# ------------------------------------------------------------------------------------------------ the new public hooks
@pytest.mark.parametrize("normalize", ["none", "constant_scale", "layer_norm"])
def test_sae_feature_activations_have_no_topk_mask(normalize):
    kwargs = {"norm_scaling_factor": 0.5} if normalize == "constant_scale" else {}
    sae = tiny_sae(activation="topk", k=4, normalize_activations=normalize, **kwargs).double()
    x = torch.randn(5, 7, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = sae.feature_activations(x)
    features = torch.tensor([3, 100, 5])
    torch.testing.assert_close(dense, torch.stack([z_reference(sae, x, k) for k in range(128)], dim=-1))
    torch.testing.assert_close(sae.feature_activations(x, features), dense[..., features])
    assert ((dense > 0).sum(-1) > 4).any()  # more than k features active: Top-K is not applied
    topk = sae.encode(x)
    assert torch.equal(topk[topk > 0], dense[topk > 0])


def test_kernel_shap_registered_method_is_batch_invariant():
    from hf_fga.attribution import Attributor, list_methods

    assert "kernel-shap" in list_methods()
    model = tiny_vit()
    pixels = pixel_batch(2, seed=8)
    attributor = Attributor(model)
    batch = attributor.attribute(pixels, method="kernel-shap", n_samples=60, seed=1)
    for b in range(2):
        alone = attributor.attribute(
            pixels[b : b + 1], method="kernel-shap", n_samples=60, seed=1, target=batch.target[b]
        )
        torch.testing.assert_close(batch.attribution[b], alone.attribution[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="n_samples"):
        attributor.attribute(pixels, method="kernel-shap", n_samples=0)
