"""The method registry: names, descriptions, duplicates, unknown names and options, and a method added by a test."""

from __future__ import annotations

import pytest
import torch

import hf_fga
from hf_fga.attribution import (
    AttributionMethod,
    Attributor,
    FeatureGradientAttribution,
    MethodResult,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from hf_fga.introspection import model_logits, vision_config
from tests.helpers import pixel_batch, tiny_sae, tiny_vit

BUILT_IN = {"fga", "raw-attention", "rollout", "transmm"}


@pytest.fixture(scope="module")
def attr():
    return Attributor(tiny_vit(num_layers=4), {1: tiny_sae(layer=1)})


def test_list_methods_names_and_describes_every_method():
    methods = hf_fga.list_methods()
    assert methods == list_methods() and BUILT_IN <= set(methods)
    for name, description in methods.items():
        assert isinstance(description, str) and description and "\n" not in description
        assert get_method(name).name == name


def test_feature_gradient_attribution_is_the_attributor():
    assert FeatureGradientAttribution is Attributor is hf_fga.Attributor


def test_duplicate_registration_is_refused():
    class AnotherTransMM(AttributionMethod):
        name = "transmm"
        description = "a second method of the same name"
        uses_capture = True

    with pytest.raises(ValueError, match=r"'transmm' is already registered \(TransMM\)"):
        register_method(AnotherTransMM)
    assert type(get_method("transmm")).__name__ == "TransMM"


def test_unknown_method_lists_the_registered_names(attr):
    with pytest.raises(ValueError, match=r"Unknown method 'lrp'.*'fga'.*'transmm'"):
        attr.attribute(pixel_batch(1), method="lrp")
    with pytest.raises(ValueError, match="Unknown method 'lrp'"):
        get_method("lrp")


def test_unknown_option_lists_the_accepted_ones(attr):
    with pytest.raises(TypeError, match=r"'fga' got unknown option\(s\) 'kapa'; it accepts: variant, layers, kappa"):
        attr.attribute(pixel_batch(1), method="fga", kapa=1.0)
    with pytest.raises(TypeError, match=r"'rollout' got unknown option\(s\) 'kappa'; it accepts: none"):
        attr.attribute(pixel_batch(1), method="rollout", kappa=1.0)


class _CenterPatch(AttributionMethod):
    """A toy capture-based method: ∂y/∂A of the last block, CLS row, head mean (reads the shared capture)."""

    name = "test-last-attention-gradient"
    description = "test only: the last block's CLS attention gradient"
    uses_capture = True
    options = {"scale": 1.0}

    def explain(self, attributor, capture, options):
        h, w = capture.grid
        grad = capture.attention_grads[-1].mean(dim=1)[:, 0, -h * w :]
        return MethodResult(attribution=options["scale"] * grad.reshape(-1, h, w))


class _Occlusion(AttributionMethod):
    """A toy method with its own passes: the drop of the target logit when one patch is set to 0."""

    name = "test-occlusion"
    description = "test only: patch occlusion"
    uses_capture = False

    def attribute(self, attributor, pixel_values, target, text_embeds, options):
        patch = vision_config(attributor.model).patch_size
        h, w = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        with torch.no_grad():
            full = model_logits(attributor.model, pixel_values).gather(1, target[:, None])[:, 0]
            drops = []
            for n in range(h * w):
                occluded = pixel_values.clone()
                r, c = divmod(n, w)
                occluded[:, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 0
                drops.append(full - model_logits(attributor.model, occluded).gather(1, target[:, None])[:, 0])
        return MethodResult(attribution=torch.stack(drops, dim=-1).reshape(-1, h, w))


@pytest.fixture
def toy_methods():
    for cls in (_CenterPatch, _Occlusion):
        register_method(cls)
    yield
    for cls in (_CenterPatch, _Occlusion):
        unregister_method(cls.name)


def test_a_registered_capture_method_runs_through_attribute(attr, toy_methods):
    assert "test-last-attention-gradient" in hf_fga.list_methods()
    pixels = pixel_batch(2)
    out = attr.attribute(pixels, method="test-last-attention-gradient", scale=2.0)
    capture = attr.capture(pixels)
    expected = 2.0 * capture.attention_grads[-1].mean(dim=1)[:, 0, -16:].reshape(2, 4, 4)
    torch.testing.assert_close(out.attribution, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.baseline, attr.attribute(pixels, method="transmm").attribution, rtol=0, atol=0)
    assert out.gates == {} and out.diagnostics is None


def test_a_registered_method_with_its_own_passes_runs_through_attribute(attr, toy_methods):
    pixels, target = pixel_batch(2), torch.tensor([1, 2])
    out = attr.attribute(pixels, method="test-occlusion", target=target)
    assert out.baseline is None and out.attribution.shape == (2, 4, 4) and out.grid == (4, 4)
    assert torch.equal(out.target, target)
    with torch.no_grad():
        logits = attr.model(pixel_values=pixels).logits
    torch.testing.assert_close(out.logits, logits)
    occluded = pixels.clone()
    occluded[:, :, :8, 8:16] = 0
    with torch.no_grad():
        drop = (
            logits.gather(1, target[:, None])[:, 0]
            - attr.model(pixel_values=occluded).logits.gather(1, target[:, None])[:, 0]
        )
    torch.testing.assert_close(out.attribution[:, 0, 1], drop)
    with pytest.raises(ValueError, match="runs its own forward/backward passes"):
        attr.explain(attr.capture(pixels), method="test-occlusion")


def test_unregistered_names_are_gone(toy_methods):
    unregister_method("test-occlusion")
    assert "test-occlusion" not in list_methods()
    register_method(_Occlusion)  # the fixture removes it again
