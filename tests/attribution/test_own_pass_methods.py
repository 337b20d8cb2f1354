"""
Gradient × Input, Integrated Gradients, Grad-CAM and CAAP (method.md §8) against the direct float64 implementations
of `direct_methods.py`; batch invariance, CLIP targets, the model restored, bad input.
"""

from __future__ import annotations

import pytest
import torch

import hf_fga.introspection as introspection
from hf_fga.attribution import Attributor, get_method, list_methods
from hf_fga.attribution.methods import check_integer
from hf_fga.introspection import vision_layers
from tests.attribution import direct_methods as direct
from tests.attribution.test_restore import assert_same, snapshot, unusual_vit
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import PATCH, pixel_batch, tiny_clip, tiny_vit

GRID = (4, 4)
METHODS = ("gradient-x-input", "integrated-gradients", "grad-cam", "caap")


def attribute(model, pixel_values, method, target=None, text_embeds=None, linear_backend="auto", **options):
    """The registered method's map `(B, h, w)` in the model's dtype (the engine's output is float32)."""
    attributor = Attributor(model, linear_backend=linear_backend)
    impl = get_method(method)
    options = impl.check_options(attributor, **options)
    if impl.uses_capture:
        capture = attributor.capture(pixel_values, target, text_embeds)
        return impl.explain(attributor, capture, options).attribution
    return impl.attribute(attributor, pixel_values, target, text_embeds, options).attribution


def randomise_biases(model, seed: int = 1):
    """Random biases, LayerNorm β, position embeddings and extra tokens (the tiny models start many at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or any(k in name for k in ("token", "position_embedding", "class_embedding")):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model


def models64():
    vit = randomise_biases(tiny_vit(num_layers=4).double())
    deit = randomise_biases(tiny_deit(num_layers=4).double())
    clip = randomise_biases(tiny_clip(num_layers=4).double())
    return [("vit", vit, None), ("deit", deit, None), ("clip", clip, clip_label_inputs(clip)[1].double())]


MODELS64 = models64()


# captum multiplies the gradients by its quadrature weights cast to float32 (`torch.tensor(step_sizes).float()`), so
# its float64 Integrated Gradients agree with the direct sum to ~1e-8 relative, not to float64 rounding.
TOLERANCE = {"integrated-gradients": dict(rtol=1e-6, atol=1e-9)}


def reference(name, model, image, target, text_embeds, **options):
    if name == "gradient-x-input":
        return direct.gradient_x_input(model, image, target, PATCH, text_embeds)
    if name == "integrated-gradients":
        return direct.integrated_gradients(model, image, target, PATCH, options.get("steps", 32), text_embeds)
    if name == "grad-cam":
        return direct.grad_cam(model, image, target, GRID, text_embeds)
    layers = vision_layers(model)
    block_range = options.get("block_range", (1, len(layers) // 2))
    return direct.caap(model, layers, image, target, GRID, block_range, text_embeds)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", range(len(MODELS64)), ids=[m[0] for m in MODELS64])
def test_matches_direct_float64(method, kind):
    _, model, text_embeds = MODELS64[kind]
    pixels = pixel_batch(2, seed=3).double()
    num_classes = 3 if text_embeds is None else text_embeds.shape[0]
    target = torch.tensor([1, num_classes - 1])
    options = {"steps": 8} if method == "integrated-gradients" else {}
    if method == "caap":
        options = {"block_range": (1, 2), "batch_size": 5}
    got = attribute(model, pixels, method, target, text_embeds, **options)
    assert got.shape == (2, *GRID)
    for b in range(2):
        expected = reference(method, model, pixels[b], int(target[b]), text_embeds, **options)
        torch.testing.assert_close(got[b].double(), expected, **TOLERANCE.get(method, dict(rtol=1e-9, atol=1e-12)))
    assert got.abs().max() > 0


@pytest.mark.parametrize("kind", range(len(MODELS64)), ids=[m[0] for m in MODELS64])
def test_integrated_gradients_completeness_improves_with_steps(kind):
    """
    |Σ_p A(p) − (y(x) − y(x̄))| shrinks as the steps grow, down to the floor of captum's float32 quadrature weights
    (~1e-8 relative): a tiny model reaches it by 32 steps, so 128 steps must stay there.
    """
    _, model, text_embeds = MODELS64[kind]
    pixels = 4 * pixel_batch(2, seed=4).double()  # large inputs: a curved path, so few steps are visibly inexact
    target = torch.tensor([0, 1])
    with torch.no_grad():
        change = torch.stack(
            [
                direct.target_score(model, pixels[b], int(target[b]), text_embeds)
                - direct.target_score(model, direct.mean_fill(pixels[b]), int(target[b]), text_embeds)
                for b in range(2)
            ]
        )
    gaps = []
    for steps in (1, 4, 32, 128):
        attribution = attribute(model, pixels, "integrated-gradients", target, text_embeds, steps=steps)
        gaps.append((attribution.sum(dim=(1, 2)) - change).abs().max().item())
    assert gaps[0] > gaps[1] > 1e3 * gaps[2]
    assert gaps[3] < 1e-6 * change.abs().max().item()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("linear_backend", ["auto", "default"])
def test_batch_invariance_float32(method, linear_backend):
    model = tiny_vit(num_layers=3)
    pixels = pixel_batch(3, seed=5)
    options = {"linear_backend": linear_backend}
    if method == "caap":
        options["batch_size"] = 7
    batch = attribute(model, pixels, method, **options)
    for b in range(3):
        single = attribute(model, pixels[b : b + 1], method, **options)[0]
        scale = batch[b].abs().max()
        assert ((batch[b] - single).abs().max() / scale) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_clip_targets(method):
    """Each candidate label gets its own map, equal to the direct one for that label."""
    model = randomise_biases(tiny_clip(num_layers=3).double())
    _, text_embeds = clip_label_inputs(model)
    text_embeds = text_embeds.double()
    pixels = pixel_batch(1, seed=6).double()
    options = {"steps": 4} if method == "integrated-gradients" else {}
    maps = []
    for label in range(text_embeds.shape[0]):
        got = attribute(model, pixels, method, torch.tensor([label]), text_embeds, **options)[0]
        expected = reference(method, model, pixels[0], label, text_embeds, **options)
        torch.testing.assert_close(got.double(), expected, **TOLERANCE.get(method, dict(rtol=1e-9, atol=1e-12)))
        maps.append(got)
    assert not torch.allclose(maps[0], maps[1])


def public(model, pixel_values, method, linear_backend="auto", **kwargs):
    """`Attributor(model).attribute(..., method=method)`: the public path, float32 output."""
    return Attributor(model, linear_backend=linear_backend).attribute(pixel_values, method=method, **kwargs)


def test_registered_and_public_path():
    """Every method is registered and `Attributor.attribute` returns its map, logits and target."""
    assert set(METHODS) <= set(list_methods())
    model = tiny_vit(num_layers=3)
    pixels = pixel_batch(2, seed=7)
    logits = model(pixel_values=pixels).logits.detach()
    for method in METHODS:
        options = {"steps": 4} if method == "integrated-gradients" else {}
        out = public(model, pixels, method, **options)
        assert out.attribution.shape == (2, *GRID) and out.attribution.dtype == torch.float32
        torch.testing.assert_close(out.attribution, attribute(model, pixels, method, **options).float())
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-6)
        assert out.target.tolist() == logits.argmax(-1).tolist()
        assert (out.baseline is None) == (method != "grad-cam")
        explicit = public(model, pixels, method, target=[2, 0], **options)
        assert explicit.target.tolist() == [2, 0]
    ig = public(model, pixels, "integrated-gradients", steps=8)
    assert ig.diagnostics["convergence_delta"].shape == (2,)
    caap = public(model, pixels, "caap")
    assert caap.diagnostics["neutral_scores"].shape == (2,)


@pytest.mark.parametrize("method", METHODS)
def test_model_restored_after_success(method):
    model = unusual_vit()
    before = snapshot(model)
    options = {"steps": 4} if method == "integrated-gradients" else {}
    public(model, pixel_batch(2), method, **options)
    assert_same(before, snapshot(model))
    assert vision_layers(model) is model.vit.layers and len(model.vit.layers) == 3


@pytest.mark.parametrize("method, fail_at", [("gradient-x-input", 2), ("integrated-gradients", 4), ("caap", 4)])
def test_model_restored_after_exception(method, fail_at, monkeypatch):
    """
    A failure inside the passes leaves the model as it was: a block fails on its `fail_at`-th call (the 2nd block of
    the gradient pass; the first block of captum's first pass; the first patched run of CAAP).
    """
    model = unusual_vit()
    before = snapshot(model)
    calls = {"n": 0}
    original = type(model.vit.layers[2]).forward

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise RuntimeError("boom")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.vit.layers[2]), "forward", failing)
    options = {"steps": 4} if method == "integrated-gradients" else {}
    with pytest.raises(RuntimeError, match="boom"):
        public(model, pixel_batch(2), method, linear_backend="default", **options)
    monkeypatch.undo()
    assert_same(before, snapshot(model))
    assert len(model.vit.layers) == 3


def test_caap_restores_blocks_when_a_patched_run_fails(monkeypatch):
    model = tiny_vit(num_layers=3)
    before = snapshot(model)

    def failing(*args, **kwargs):
        raise RuntimeError("patched run failed")

    monkeypatch.setattr(introspection, "model_logits", failing)
    with pytest.raises(RuntimeError, match="patched run failed"):
        public(model, pixel_batch(1), "caap")
    monkeypatch.undo()
    assert_same(before, snapshot(model))
    assert len(model.vit.layers) == 3


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option(method):
    with pytest.raises(TypeError, match="unknown option"):
        public(tiny_vit(), pixel_batch(1), method, step=4)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "32"])
def test_integrated_gradients_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="integer >= 1"):
        public(tiny_vit(), pixel_batch(1), "integrated-gradients", steps=steps)


def test_integrated_gradients_internal_batch_size():
    model = tiny_vit(num_layers=2)
    pixels = pixel_batch(3, seed=8)
    whole = attribute(model, pixels, "integrated-gradients", steps=8, internal_batch_size=None)
    for size in (1, 5, 12):
        part = attribute(model, pixels, "integrated-gradients", steps=8, internal_batch_size=size)
        torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-6)
    for size in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="internal_batch_size"):
            public(model, pixels, "integrated-gradients", internal_batch_size=size)


def test_check_integer_accepts_and_explains():
    assert check_integer("steps", 3) == 3 and check_integer("seed", 0, minimum=0) == 0
    assert check_integer("internal_batch_size", None, none_means="all at once") is None
    with pytest.raises(ValueError, match=r"^seed=-1: expected an integer >= 0\.$"):
        check_integer("seed", -1, minimum=0)
    with pytest.raises(ValueError, match=r"^size=0: expected None \(all at once\) or an integer >= 1 \(inputs\)\.$"):
        check_integer("size", 0, meaning="inputs", none_means="all at once")
    for value in (None, True, 2.0, "2"):
        with pytest.raises(ValueError, match="batch_size"):
            check_integer("batch_size", value)


@pytest.mark.parametrize("block_range", [(0, 3), (-1, 1), (2, 1), (1,), (1.0, 2), "12", (True, 1), 1])
def test_caap_rejects_bad_block_ranges(block_range):
    with pytest.raises(ValueError, match=r"0 <= a <= b <= 2"):
        public(tiny_vit(num_layers=3), pixel_batch(1), "caap", block_range=block_range)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_caap_rejects_bad_batch_sizes(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        public(tiny_vit(), pixel_batch(1), "caap", batch_size=batch_size)


def test_caap_defaults_and_block_ranges():
    """Default (1, ⌊L/2⌋); a = 0 and b = L−1 are valid; the result does not depend on the batch size."""
    model = tiny_vit(num_layers=4).double()
    pixels = pixel_batch(2, seed=9).double()
    default = attribute(model, pixels, "caap", batch_size=3)
    explicit = attribute(model, pixels, "caap", block_range=(1, 2), batch_size=32)
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-12)
    target = int(direct.logits(model, pixels[:1])[0][0].argmax())
    for block_range in ((0, 0), (0, 3), (3, 3), [1, 3]):
        got = attribute(model, pixels, "caap", block_range=block_range)
        expected = direct.caap(model, vision_layers(model), pixels[0], target, GRID, tuple(block_range))
        torch.testing.assert_close(got[0], expected, rtol=1e-9, atol=1e-12)


def test_generic_objectives_for_feature_explanations():
    """
    The cores take any objective (CaFE explains an SAE feature at a token): here z = v · x_q, the residual after
    block 1 at token q (per image), against direct float64 computations.
    """
    from hf_fga.attribution.methods.caap import caap
    from hf_fga.attribution.methods.gradient_x_input import gradient_x_input
    from hf_fga.attribution.methods.integrated_gradients import integrated_gradients
    from hf_fga.faithfulness.fills import patch_grid
    from hf_fga.introspection import prepared_model, residual_hooks

    model = randomise_biases(tiny_vit(num_layers=3).double())
    pixels = pixel_batch(2, seed=13).double()
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens = torch.tensor([3, 9])  # q per image
    grid = patch_grid(model, pixels)

    def residual(x):
        with residual_hooks(model, {1: "resid_post"}, lambda b, p, h: seen.__setitem__(b, h)):
            model(pixel_values=x)
        return seen[1]

    seen = {}

    def feature(x, rows):
        return residual(x)[torch.arange(len(rows)), tokens[rows]] @ direction

    with prepared_model(model):
        got, scores = gradient_x_input(feature, pixels, grid)
        fills = torch.stack([direct.mean_fill(p) for p in pixels])
        integrated, delta = integrated_gradients(feature, pixels, fills, grid, steps=16)
    for b in range(2):
        x = pixels[b : b + 1].clone().requires_grad_(True)
        z = residual(x)[0, tokens[b]] @ direction
        (grad,) = torch.autograd.grad(z, x)
        torch.testing.assert_close(got[b], direct.patch_sums((x * grad)[0].detach(), PATCH), rtol=1e-9, atol=1e-12)
        assert scores[b].item() == pytest.approx(z.item(), rel=1e-12)
        fill = direct.mean_fill(pixels[b])
        with torch.no_grad():
            change = z - residual(fill[None])[0, tokens[b]] @ direction
        gap = integrated[b].sum() - change
        assert gap.item() == pytest.approx(delta[b].item(), abs=1e-12)  # captum's delta is this completeness gap
        assert abs(gap.item()) < 1e-3 * abs(change.item())

    # CAAP core: blocks a = 1 .. 1, the feature read at the output of block 1 (no head needed)
    layers = vision_layers(model)
    with prepared_model(model), torch.no_grad():
        with residual_hooks(model, {1: "resid_pre"}) as start:
            model(pixel_values=fills)
        start_residual = start[1]
        source = {1: residual(pixels)}
        neutral = residual(fills)[torch.arange(2), tokens] @ direction

        def feature_from_block(hidden, rows):
            out = layers[1](hidden)
            return out[torch.arange(len(rows)), tokens[rows]] @ direction

        got = caap(feature_from_block, layers, start_residual, source, neutral, GRID, batch_size=5)
    for b in range(2):
        for p in range(16):
            token = 1 + p
            with torch.no_grad():
                out = layers[1](start_residual[b : b + 1]).clone()
                out[0, token] = source[1][b, token]
                expected = out[0, tokens[b]] @ direction - neutral[b]
            assert got[b].flatten()[p].item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", range(len(MODELS64)), ids=[m[0] for m in MODELS64])
def test_libragrad_gradient_x_input_is_fullgrad_complete(kind):
    """
    Under LibraGrad's rules, Σ_p A(p) of gradient × input is the input term of FullGrad completeness:
    y = Σ_p A(p) + Σ_b b·∂y/∂b to float64 rounding; plain gradients are far from it.
    """
    from hf_fga.attribution.completeness import model_completeness_terms
    from hf_fga.attribution.rules import backward_rules

    _, model, text_embeds = MODELS64[kind]
    pixels = pixel_batch(2, seed=14).double()
    target = torch.tensor([0, 1])
    attributor = Attributor(model)
    maps = {
        libragrad: attributor.attribute(pixels, "gradient-x-input", target, text_embeds, libragrad=libragrad)
        for libragrad in (False, True)
    }
    impl = get_method("gradient-x-input")
    with backward_rules("libragrad")(model):  # the float64 map (the engine's output is float32)
        exact = impl.attribute(attributor, pixels, target, text_embeds, {}).attribution
    terms = model_completeness_terms(model, pixels, target, text_embeds, backward_rules("libragrad"))
    torch.testing.assert_close(exact.sum(dim=(1, 2)), terms["input_terms"], rtol=1e-10, atol=1e-12)
    residual = terms["scores"] - exact.sum(dim=(1, 2)) - terms["bias_terms"]
    assert (residual.abs() < 1e-8 * terms["scores"].abs()).all()
    assert terms["errors"].max() < 1e-8
    torch.testing.assert_close(maps[True].attribution, exact.float())
    assert not torch.allclose(maps[True].attribution, maps[False].attribution)


@pytest.mark.parametrize("method", ["gradient-x-input", "integrated-gradients"])
def test_libragrad_with_onednn_linears_matches_stock_kernels(method):
    model = tiny_vit(num_layers=3)
    pixels = pixel_batch(2, seed=15)
    options = {"steps": 4} if method == "integrated-gradients" else {}
    fast = public(model, pixels, method, linear_backend="auto", libragrad=True, **options).attribution
    stock = public(model, pixels, method, linear_backend="default", libragrad=True, **options).attribution
    plain = public(model, pixels, method, linear_backend="default", **options).attribution
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-6 * stock.abs().max().item())
    assert not torch.allclose(stock, plain)


def test_libragrad_refused_for_caap():
    with pytest.raises(ValueError, match="libragrad"):
        public(tiny_vit(), pixel_batch(1), "caap", libragrad=True)
