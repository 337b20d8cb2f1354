"""`explain_features` of the feature-gradient-attribution pipeline: CaFE maps for the strongest top features."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil, pipeline

import hf_fga  # noqa: F401  (registers the task)
from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.cafe import explain_feature
from hf_fga.feature_drivers import feature_drivers
from tests.helpers import IMAGE_SIZE, tiny_sae, tiny_vit

BLOCKS = (1, 2)


@pytest.fixture(scope="module")
def explain(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    tiny_vit(num_layers=5).save_pretrained(path)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    saes = []
    for block in BLOCKS:
        sae_path = tmp_path_factory.mktemp(f"sae_block_{block}")
        tiny_sae(layer=block, seed=block).save_pretrained(sae_path)
        saes.append(str(sae_path))
    return pipeline("feature-gradient-attribution", model=str(path), sae=saes)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 36 + 3 * i, 3), dtype=np.uint8)) for i in range(3)]


def test_explain_features_adds_cafe_maps_to_the_strongest_top_features(explain, images):
    out = explain(images[0], top_k_features=4, explain_features=3)
    pixel_values = explain.image_processor(images=images[0], return_tensors="pt")["pixel_values"]
    direct = FeatureGradientAttribution(explain.model, explain.saes).attribute(pixel_values, return_contributions=True)
    strongest = [(d.block, d.index) for d in feature_drivers(direct, 0, max_features=3)]
    entries = {(block, f["index"]): f for block, fs in out["top_features"].items() for f in fs}
    assert len(entries) == 4
    for (block, index), entry in entries.items():
        if (block, index) not in strongest:
            assert "ierf" not in entry
            continue
        expected = explain_feature(explain.model, explain.saes[block], pixel_values, index)
        assert entry["ierf"].shape == (4, 4) and entry["ierf"].dtype == np.float32
        np.testing.assert_allclose(entry["ierf"], expected.ierf[0].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(entry["activation_map"], expected.activation_map[0].numpy(), rtol=1e-6)
        assert entry["position"] == int(expected.position[0]) and entry["activation"] > 0
        assert isinstance(entry["non_local"], bool) and isinstance(entry["locality_share"], float)


def test_explain_features_off_by_default_batches_and_errors(explain, images):
    plain = explain(images[1])
    assert all("ierf" not in f for fs in plain["top_features"].values() for f in fs)
    batch = explain(images, explain_features=2, cafe_method="gradient", batch_size=3)
    for image, out in zip(images, batch, strict=True):
        single = explain(image, explain_features=2, cafe_method="gradient")
        for block, features in single["top_features"].items():
            for a, b in zip(features, out["top_features"][block], strict=True):
                assert a["index"] == b["index"] and ("ierf" in a) == ("ierf" in b)
                if "ierf" in a:
                    np.testing.assert_allclose(a["ierf"], b["ierf"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cafe_method"):
        explain(images[0], explain_features=1, cafe_method="fga")
    with pytest.raises(ValueError, match="explain_features"):
        explain(images[0], explain_features=-1)
    assert torch.is_grad_enabled()
