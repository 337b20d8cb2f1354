"""`hf_fga.onednn.cached_linears` / `model_linears`: one set of packs per model, retaken when stale."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch

from hf_fga.onednn import cached_linears, model_linears, onednn_available
from tests.helpers import pixel_batch, tiny_vit

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linears")


def test_packs_are_shared_and_retaken_when_stale():
    model = tiny_vit(num_layers=2)
    forward = cached_linears(model)
    assert cached_linears(model) is forward and not forward.backward
    both = cached_linears(model, backward=True)
    assert both is not forward and both.backward
    assert cached_linears(model) is both  # backward packs serve forwards too
    with torch.no_grad():
        model.vit.layers[0].mlp.fc1.weight.mul_(2)
    assert cached_linears(model) is not both


def test_model_linears_matches_stock_forward_and_restores():
    model = tiny_vit(num_layers=2)
    pixels = pixel_batch(2)
    with torch.no_grad():
        stock = model(pixel_values=pixels).logits
        with model_linears(model, "auto", lambda: model(pixel_values=pixels[:1]).logits):
            assert any("forward" in m.__dict__ for m in model.modules())
            fast = model(pixel_values=pixels).logits
    assert not any("forward" in m.__dict__ for m in model.modules())
    torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-6)


def test_model_linears_backends():
    model = tiny_vit(num_layers=2)
    assert isinstance(model_linears(model, "default", lambda: None), contextlib.nullcontext)
    with pytest.raises(ValueError, match="float32 on CPU"):
        model_linears(model.double(), "onednn", lambda: None)
    assert isinstance(model_linears(model, "auto", lambda: None), contextlib.nullcontext)  # float64: stock kernels
    with pytest.raises(ValueError, match="linear_backend"):
        model_linears(model, "fast", lambda: None)


def test_cache_does_not_keep_models_alive():
    model = tiny_vit(num_layers=2)
    cached_linears(model, backward=True)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
