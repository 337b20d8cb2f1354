import numpy as np
import pandas as pd
import pytest
import torch

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.evaluation.case_studies import TRANSMM_CONFIG, changed_patches, patch_feature, select_improved_images
from tests.helpers import pixel_batch, tiny_sae, tiny_vit

FGA = "fga|combined|1|0.5|10"


def _results(rows):
    frame = []
    for image, (tm, fga) in rows.items():
        for config, (saco, fc, pf) in ((TRANSMM_CONFIG, tm), (FGA, fga)):
            frame.append({"image_id": image, "index": int(image[1:]), "config": config, "preset": "papers",
                          "saco": saco, "faithfulness_correlation": fc, "pixel_flipping": pf})
    return pd.DataFrame(frame)


def test_select_improved_images_puts_all_improved_first_by_mean_rank():
    results = _results({
        "i0": ((0.5, 0.2, 0.5), (0.9, 0.6, 0.1)),  # best on every metric
        "i1": ((0.5, 0.2, 0.5), (0.6, 0.3, 0.4)),  # improves all three, a little
        "i2": ((0.5, 0.2, 0.5), (1.0, 0.9, 0.6)),  # large SaCo/FC gains but Pixel Flipping worse
        "i3": ((0.5, 0.2, 0.5), (0.4, 0.1, 0.6)),  # worse everywhere
    })
    chosen = select_improved_images(results, FGA, count=3)
    assert list(chosen.index) == ["i0", "i1", "i2"]
    assert list(chosen["all_improved"]) == [True, True, False]
    assert chosen.loc["i0", "d_pixel_flipping"] == pytest.approx(0.4)  # oriented: larger is better
    assert list(chosen["index"]) == [0, 1, 2]
    assert chosen["rank_score"].between(0, 1).all()


def test_select_improved_images_errors_name_the_problem():
    results = _results({"i0": ((0.5, 0.2, 0.5), (0.9, 0.6, 0.1))})
    with pytest.raises(ValueError, match="has no results for preset 'thesis'"):
        select_improved_images(results, FGA, preset="thesis")
    with pytest.raises(ValueError, match="unknown metric"):
        select_improved_images(results, FGA, metrics=("accuracy",))


def test_changed_patches_compares_min_max_scaled_maps():
    base = np.array([[0.0, 1.0], [2.0, 4.0]])
    fga = 10 * np.array([[0.0, 3.0], [2.0, 4.0]])  # the scale must not matter, only the shape of the map
    top = changed_patches(fga, base, top=2)
    assert top == [(1, pytest.approx(0.5)), (0, pytest.approx(0.0))]
    with pytest.raises(ValueError, match="different shapes"):
        changed_patches(fga, base[:1], top=1)


def test_patch_feature_picks_the_feature_pushing_the_gate_its_way():
    model = tiny_vit(num_layers=4)
    saes = {1: tiny_sae(layer=1, seed=1), 2: tiny_sae(layer=2, seed=2)}
    output = FeatureGradientAttribution(model, saes).attribute(
        pixel_batch(2), layers=[1, 2], return_contributions=True, num_contributions=8)
    num_patches = output.attribution[0].numel()
    for image in range(2):
        for patch in range(num_patches):
            found = patch_feature(output, image, patch)
            logs = {b: float(np.log(output.gates[b][image].reshape(-1)[patch])) for b in (1, 2)}
            block = max(logs, key=lambda b: abs(logs[b]))
            assert found.block == block and found.gate == pytest.approx(np.exp(logs[block]), rel=1e-5)
            values, indices = output.contributions[block]
            c = values[image, patch].double().numpy()
            direction = np.sign(logs[block])
            j = int(np.argmax(c * direction)) if (c * direction).max() > 0 else int(np.argmax(np.abs(c)))
            assert found.feature == int(indices[image, patch, j])
            assert found.role == ("amplifier" if c[j] > 0 else "suppressor")
            # with every active feature kept (k = 8), the contributions add up to the patch's combined score
            score = float(output.scores[block][image].reshape(-1)[patch])
            assert c.sum() == pytest.approx(score, rel=1e-4, abs=1e-6)


def test_patch_feature_without_contributions_is_none():
    output = FeatureGradientAttribution(tiny_vit(), {1: tiny_sae()}).attribute(pixel_batch(1), layers=[1])
    assert patch_feature(output, 0, 0) is None
    assert isinstance(output.attribution, torch.Tensor)
