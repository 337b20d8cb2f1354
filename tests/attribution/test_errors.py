"""Bad input gets a clear error (or, for an SAE of another model, a warning) naming what was wrong."""

from __future__ import annotations

import warnings

import pytest
import torch

from hf_fga.attribution import FeatureGradientAttribution
from tests.helpers import pixel_batch, tiny_clip, tiny_sae, tiny_vit


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_layers=3)


@pytest.fixture(scope="module")
def attr(vit):
    return FeatureGradientAttribution(vit, {1: tiny_sae(layer=1)})


def test_sae_width_mismatch_names_block_and_sizes(vit):
    with pytest.raises(ValueError, match=r"block 1 expects d_in=48 .* hidden size is 32"):
        FeatureGradientAttribution(vit, {1: tiny_sae(d_in=48, layer=1)})


def test_sae_block_out_of_range(vit):
    with pytest.raises(ValueError, match=r"Block 3 in saes is out of range.*0\.\.2"):
        FeatureGradientAttribution(vit, {3: tiny_sae(layer=3)})


def test_gated_block_out_of_range(attr):
    with pytest.raises(ValueError, match=r"Block 5 in layers is out of range.*0\.\.2"):
        attr.attribute(pixel_batch(1), layers=[5])
    with pytest.raises(ValueError, match=r"Block -1 in layers"):
        attr.attribute(pixel_batch(1), variant="no-sae", layers=[-1])


def test_not_an_sae(vit):
    with pytest.raises(TypeError, match="SparseAutoencoder"):
        FeatureGradientAttribution(vit, {1: torch.nn.Linear(32, 32)})


def test_sae_of_another_model_warns_with_both_names():
    model = tiny_vit(num_layers=3)
    model.config._name_or_path = "org/vit-chest"
    sae = tiny_sae(layer=1, base_model_name_or_path="org/vit-imagenet")
    with pytest.warns(UserWarning, match=r"org/vit-imagenet.*org/vit-chest"):
        FeatureGradientAttribution(model, {1: sae})
    same = tiny_sae(layer=1, base_model_name_or_path="org/vit-chest")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureGradientAttribution(model, {1: same})


def test_sae_of_another_block_warns(vit):
    with pytest.warns(UserWarning, match=r"trained on block 2"):
        FeatureGradientAttribution(vit, {1: tiny_sae(layer=2)})


@pytest.mark.parametrize("kappa", [0, -1, float("nan"), float("inf")])
def test_kappa_must_be_positive(attr, kappa):
    with pytest.raises(ValueError, match="kappa must be a finite number > 0"):
        attr.attribute(pixel_batch(1), kappa=kappa)


@pytest.mark.parametrize("cmax", [1, 0.5, -3, float("inf")])
def test_cmax_must_exceed_one(attr, cmax):
    with pytest.raises(ValueError, match="cmax must be a finite number > 1"):
        attr.attribute(pixel_batch(1), cmax=cmax)


@pytest.mark.parametrize("target", [3, -1, [0, 7]])
def test_target_out_of_range(attr, target):
    with pytest.raises(ValueError, match=r"out of range.*3 classes.*0\.\.2"):
        attr.attribute(pixel_batch(2), target=target)


@pytest.mark.parametrize("target", [[0, 1, 2], torch.zeros(2, 2, dtype=torch.long)])
def test_target_wrong_length(attr, target):
    with pytest.raises(ValueError, match="one index per image"):
        attr.attribute(pixel_batch(2), target=target)


@pytest.mark.parametrize("target", [1.5, torch.tensor([0.0, 1.0]), True])
def test_target_must_be_integer(attr, target):
    with pytest.raises(TypeError, match="target"):
        attr.attribute(pixel_batch(2), target=target)


def test_clip_without_text_embeds():
    attr = FeatureGradientAttribution(tiny_clip())
    with pytest.raises(ValueError, match="text_embeds"):
        attr.attribute(pixel_batch(1), method="transmm")
    with pytest.raises(ValueError, match=r"text_embeds must have shape \(C, 16\)"):
        attr.attribute(pixel_batch(1), method="transmm", text_embeds=torch.randn(3, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels(attr, bad):
    pixels = pixel_batch(2)
    pixels[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        attr.attribute(pixels)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (0, 3, 32, 32)])
def test_wrong_pixel_shape(attr, shape):
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(B, 3, H, W\)"):
        attr.attribute(torch.zeros(shape))


def test_pixels_must_be_a_tensor(attr):
    with pytest.raises(TypeError, match="torch.Tensor"):
        attr.attribute(pixel_batch(1).numpy())


def test_unknown_method_and_variant(attr):
    with pytest.raises(ValueError, match=r"Unknown method 'gradcam'.*transmm"):
        attr.attribute(pixel_batch(1), method="gradcam")
    with pytest.raises(ValueError, match=r"Unknown FGA variant 'sparse'.*combined"):
        attr.attribute(pixel_batch(1), variant="sparse")


@pytest.mark.parametrize("variant", ["combined", "activation", "gradient", "shuffled", "centered"])
def test_variant_needs_an_sae_for_each_gated_block(attr, variant):
    with pytest.raises(ValueError, match=rf"'{variant}' needs an SAE for block 0.*\[1\]"):
        attr.attribute(pixel_batch(1), variant=variant, layers=[0, 1])


def test_mean_centered_needs_mu(vit, attr):
    with pytest.raises(ValueError, match=r"mean residual μ of block 1"):
        attr.attribute(pixel_batch(1), variant="mean-centered", layers=[1])
    with pytest.raises(ValueError, match="mean_residuals"):
        attr.attribute(pixel_batch(1), variant="mean-centered")
    with pytest.raises(ValueError, match=r"mean_residuals\[1\] must be a finite vector of shape \(32,\)"):
        FeatureGradientAttribution(vit, mean_residuals={1: torch.zeros(16)})


def test_fga_without_any_gated_block(vit):
    with pytest.raises(ValueError, match="no block to gate"):
        FeatureGradientAttribution(vit).attribute(pixel_batch(1))


def test_num_contributions_must_be_positive(attr):
    with pytest.raises(ValueError, match="num_contributions"):
        attr.attribute(pixel_batch(1), return_contributions=True, num_contributions=0)


def test_unknown_hook_point(vit):
    with pytest.raises(ValueError, match="hook_point"):
        FeatureGradientAttribution(vit, hook_point="resid_mid")
