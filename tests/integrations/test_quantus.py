"""The Quantus adapter: patch-level Quantus metrics reproduce hf_fga's, explain_func shapes, wrappers leave the model
alone. Skipped when Quantus is not installed (`pip install hf_fga[quantus]`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.faithfulness import evaluate_faithfulness
from tests.helpers import PATCH, pixel_batch, tiny_sae, tiny_vit

try:
    import quantus  # noqa: F401
except (ImportError, RuntimeError) as error:  # absent, or installed but broken (e.g. a torchvision mismatch)
    pytest.skip(f"Quantus is not importable: {error}", allow_module_level=True)

from hf_fga.integrations.quantus import (  # noqa: E402
    PatchMaskModel,
    QuantusModel,
    explain_func,
    patch_curve,
    patch_metrics,
    pixel_flipping_auc,
    pixel_metrics,
)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def setup():
    model = tiny_vit(seed=3)
    pixels = pixel_batch(3, seed=2)
    wrapped = PatchMaskModel(model, pixels)
    return model, pixels, wrapped


def test_patch_level_pixel_flipping_is_ours(setup):
    model, pixels, wrapped = setup
    x, y = wrapped.indicators(), wrapped.predictions()
    maps = explain_func(wrapped, x, y, method="transmm")
    _, pf = patch_metrics()
    curves = pf(model=wrapped, x_batch=x, y_batch=y, a_batch=maps, softmax=True, batch_size=len(x), device="cpu")
    ours = evaluate_faithfulness(
        model, pixels, torch.as_tensor(maps[:, 0]), metrics=("pixel_flipping",), progress=False
    )
    np.testing.assert_allclose(pixel_flipping_auc(curves, wrapped.probabilities(y)), ours["pixel_flipping"], atol=1e-6)


def test_patch_level_faithfulness_correlation_runs_on_patches(setup):
    _, _, wrapped = setup
    x, y = wrapped.indicators(), wrapped.predictions()
    maps = explain_func(wrapped, x, y, method="transmm")
    fc, _ = patch_metrics(nr_runs=10, subset_size=4)
    np.random.seed(0)
    scores = np.asarray(
        fc(model=wrapped, x_batch=x, y_batch=y, a_batch=maps, softmax=False, batch_size=len(x), device="cpu")
    )
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1 + 1e-9)


def test_indicators_replace_whole_patches_by_the_channel_mean(setup):
    _, pixels, wrapped = setup
    indicators = torch.ones(3, 1, 4, 4)
    indicators[1, 0, 2, 3] = 0
    images = wrapped.images(indicators)
    expected = pixels.clone()
    expected[1, :, 2 * PATCH : 3 * PATCH, 3 * PATCH :] = pixels[1].mean(dim=(1, 2))[:, None, None]
    torch.testing.assert_close(images, expected)
    with pytest.raises(ValueError, match="batch_size=len\\(pixel_values\\)"):
        wrapped.images(torch.ones(2, 1, 4, 4))


def test_explain_func_gives_the_attributor_maps():
    model, pixels = tiny_vit(num_layers=4, seed=1), pixel_batch(2, seed=1)
    saes = {0: tiny_sae(layer=0), 1: tiny_sae(layer=1, seed=1)}
    target = np.array([0, 2])
    expected = Attributor(model, saes).attribute(pixels, target=torch.as_tensor(target), method="fga").attribution
    pixel_maps = explain_func(QuantusModel(model), pixels.numpy(), target, method="fga", saes=saes)
    assert pixel_maps.shape == (2, 1, 32, 32) and pixel_maps.dtype == np.float32
    torch.testing.assert_close(torch.as_tensor(pixel_maps[:, 0, ::PATCH, ::PATCH]), expected)
    assert np.all(pixel_maps[:, :, :PATCH, :PATCH] == pixel_maps[:, :, :1, :1])  # constant on each patch
    patch_maps = explain_func(PatchMaskModel(model, pixels), None, target, method="fga", saes=saes)
    torch.testing.assert_close(torch.as_tensor(patch_maps[:, 0]), expected)


def test_pixel_level_metrics_run_and_flip_whole_patches(setup):
    model, pixels, wrapped = setup
    q = QuantusModel(model)
    y = wrapped.predictions()
    maps = explain_func(q, pixels.numpy(), y)
    fc, pf = pixel_metrics(PATCH, nr_runs=5, subset_patches=4)
    curves = np.asarray(
        pf(model=q, x_batch=pixels.numpy(), y_batch=y, a_batch=maps, softmax=True, batch_size=3, device="cpu")
    )
    assert curves.shape == (3, 3 * 16) and patch_curve(curves).shape == (3, 16)
    scores = fc(model=q, x_batch=pixels.numpy(), y_batch=y, a_batch=maps, softmax=False, batch_size=3, device="cpu")
    assert np.all(np.isfinite(scores))


def test_pixel_flipping_auc_by_hand():
    # N = 2: s = (1.0, 0.5, 0.0) -> (1/2) * ((1 + 0.5)/2 + (0.5 + 0)/2) = 0.5
    np.testing.assert_allclose(pixel_flipping_auc([[0.5, 0.0]], np.array([1.0])), [0.5])


def test_wrappers_leave_the_model_alone_and_take_bfloat16(setup):
    model, pixels, _ = setup
    model.train()
    try:
        wrapped = PatchMaskModel(model, pixels, precision="bfloat16")
        assert not wrapped.training and model.training and all(m.training for m in model.modules())
        bf16 = wrapped(torch.ones(3, 1, 4, 4))
    finally:
        model.eval()
    fp32 = PatchMaskModel(model, pixels)(torch.ones(3, 1, 4, 4))
    assert bf16.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="precision="):
        QuantusModel(model, precision="half")
