"""μ_ℓ: the mean patch residual over a reference set, and its safetensors round trip."""

from __future__ import annotations

import pytest
import torch

from hf_fga.attribution import compute_mean_residuals, load_mean_residuals, save_mean_residuals
from tests.attribution.tiny_models import tiny_deit
from tests.helpers import pixel_batch, tiny_clip, tiny_vit


def direct_means(hidden_states, layers, hook_point, num_extra):
    offset = 0 if hook_point == "resid_pre" else 1
    return {block: hidden_states[block + offset][:, num_extra:].double().mean(dim=(0, 1)) for block in layers}


@pytest.mark.parametrize("hook_point", ["resid_pre", "resid_post"])
def test_mean_over_images_and_patch_tokens_only(hook_point):
    model = tiny_deit(num_layers=3)  # CLS + distillation token: both excluded
    batches = [pixel_batch(2, seed=0), pixel_batch(3, seed=1)]
    means = compute_mean_residuals(model, iter(batches), layers=[0, 2], hook_point=hook_point, progress=False)
    with torch.no_grad():
        hidden = model(pixel_values=torch.cat(batches), output_hidden_states=True).hidden_states
    expected = direct_means(hidden, [0, 2], hook_point, num_extra=2)
    assert sorted(means) == [0, 2]
    for block, value in expected.items():
        assert means[block].dtype == torch.float32 and means[block].shape == (32,)
        torch.testing.assert_close(means[block].double(), value, rtol=1e-5, atol=1e-6)


def test_clip_vision_tower_means():
    model = tiny_clip()
    means = compute_mean_residuals(model, [pixel_batch(2)], layers=[1], progress=False)
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixel_batch(2), output_hidden_states=True).hidden_states
    torch.testing.assert_close(means[1].double(), direct_means(hidden, [1], "resid_post", 1)[1], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = tiny_vit()
    means = compute_mean_residuals(model, [pixel_batch(2)], layers=[0, 1], progress=False)
    path = tmp_path / "mean_residuals.safetensors"
    save_mean_residuals(means, path, hook_point="resid_post", model_name="org/tiny-vit")
    loaded, metadata = load_mean_residuals(path, return_metadata=True)
    assert metadata == {"hook_point": "resid_post", "model_name": "org/tiny-vit"}
    assert list(loaded) == [0, 1]
    for block in means:
        assert torch.equal(loaded[block], means[block])
    assert list(load_mean_residuals(path)) == [0, 1]


def test_errors(tmp_path):
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"0\.\.2"):
        compute_mean_residuals(model, [pixel_batch(1)], layers=[3], progress=False)
    with pytest.raises(ValueError, match="hook_point"):
        compute_mean_residuals(model, [pixel_batch(1)], layers=[0], hook_point="mlp_out", progress=False)
    with pytest.raises(ValueError, match="empty"):
        compute_mean_residuals(model, [], layers=[0], progress=False)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a mean-residual file"):
        load_mean_residuals(other)
