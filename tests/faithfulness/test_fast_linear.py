"""The oneDNN linear path of the perturbation engine: same outputs, model left untouched, clear fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_fga import onednn
from hf_fga.faithfulness import evaluate_faithfulness
from hf_fga.faithfulness.fast_linear import OneDNNLinears, fast_forward, onednn_available, supports_onednn
from tests.helpers import pixel_batch, tiny_clip, tiny_vit

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear ops")


def _logits(model):
    return lambda x: model(pixel_values=x).logits


@needs_onednn
def test_onednn_linears_match_the_stock_forward_and_leave_the_model_as_it_was():
    model = tiny_vit(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = pixel_batch(5, seed=2)
    packs = OneDNNLinears(model)
    with torch.inference_mode():
        stock = model(pixel_values=pixels).logits
        with packs.applied():
            fast = model(pixel_values=pixels).logits
            singles = torch.cat([model(pixel_values=pixels[i : i + 1]).logits for i in range(5)])
        with pytest.raises(RuntimeError, match="boom"), packs.applied():
            raise RuntimeError("boom")
    torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(singles, fast, rtol=1e-5, atol=1e-6)  # batch composition does not matter
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@needs_onednn
def test_a_forward_the_model_already_overrides_is_restored():
    model = tiny_vit()
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    custom = linear.forward  # a bound method stored on the instance, as some hooks libraries do
    linear.forward = custom
    with torch.inference_mode(), OneDNNLinears(model).applied():
        model(pixel_values=pixel_batch(1))
    assert linear.__dict__["forward"] is custom


@needs_onednn
def test_clip_scores_agree_between_backends():
    model = tiny_clip()
    pixels, attributions = pixel_batch(2, seed=4), torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(4))
    text = torch.nn.functional.normalize(torch.randn(3, model.config.projection_dim), dim=-1)
    scores = [
        evaluate_faithfulness(
            model,
            pixels,
            attributions,
            fc_runs=10,
            fc_subset_size=5,
            text_embeds=text,
            linear_backend=backend,
            progress=False,
        )
        for backend in ("default", "onednn")
    ]
    for metric, values in scores[0].items():
        np.testing.assert_allclose(scores[1][metric], values, atol=1e-5, err_msg=metric)


def test_backend_choice_and_errors():
    model = tiny_vit()
    stock = _logits(model)
    assert fast_forward(model, stock, "default") is stock
    assert fast_forward(model.double(), stock, "auto") is stock  # float64: not supported, stock forward kept
    assert not supports_onednn(model)
    with pytest.raises(ValueError, match="linear_backend='fast'"):
        fast_forward(model, stock, "fast")
    with pytest.raises(ValueError, match="float32 on CPU"):
        fast_forward(model, stock, "onednn")


@needs_onednn
def test_a_model_that_fails_the_check_keeps_the_stock_forward(monkeypatch):
    model = tiny_vit(seed=5)
    monkeypatch.setattr(onednn, "TOLERANCE", -1.0)  # nothing passes
    monkeypatch.setattr(onednn, "prefers_onednn", lambda weight: True)  # "auto" chooses oneDNN on any CPU
    pixels = pixel_batch(2, seed=5)
    with torch.inference_mode():
        stock = model(pixel_values=pixels).logits
        run = fast_forward(model, _logits(model), "auto")
        with pytest.warns(UserWarning, match="disagree with the stock forward"):
            first = run(pixels)
        assert torch.equal(first, stock) and torch.equal(run(pixels), stock)
        other = tiny_vit(seed=6)
        with pytest.raises(RuntimeError, match="disagree"):
            fast_forward(other, _logits(other), "onednn")(pixels)


@needs_onednn
@pytest.mark.parametrize("faster", [True, False])
def test_auto_follows_the_speed_check_of_this_cpu(monkeypatch, faster):
    model = tiny_vit(seed=4)
    stock = _logits(model)
    monkeypatch.setattr(onednn, "prefers_onednn", lambda weight: faster)
    assert onednn.use_onednn(model, "auto") is faster
    assert (fast_forward(model, stock, "auto") is stock) is not faster
    assert onednn.use_onednn(model, "onednn") and not onednn.use_onednn(model, "default")


@needs_onednn
def test_auto_decides_by_a_fixed_rule_of_the_cpu():
    """The same decision on every call (no timing: processes and resumes of a run must use the same kernels)."""
    decisions = {onednn.prefers_onednn(torch.randn(24, 16)) for _ in range(3)}
    assert len(decisions) == 1
    assert onednn.onednn_speedup((24, 16), repeats=1) > 0
