"""The methods with their own passes (gradient × input, Integrated Gradients, CAAP) and Grad-CAM in an evaluation."""

import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.evaluation.attribution_grid import attribute_configurations
from hf_fga.evaluation.configuration import EvaluationConfiguration, expand_grid
from tests.evaluation.fixtures import write_dataset, write_model
from tests.evaluation.test_runner import _results, _run
from tests.helpers import pixel_batch, tiny_vit

METHODS = ["gradient-x-input", "integrated-gradients", "grad-cam", "caap"]


def test_grid_accepts_registered_methods_and_labels_them():
    grid = expand_grid(METHODS)
    assert [c.method for c in grid] == ["transmm", *METHODS]
    assert [c.label for c in grid[1:]] == ["Gradient × Input", "Integrated Gradients", "Grad-CAM", "CAAP"]
    assert sorted(grid, key=lambda c: c.sort_key) == grid
    with pytest.raises(ValueError, match=r"Unknown method .occlusion.*.caap."):
        expand_grid(["occlusion"])


@pytest.mark.parametrize("target", [None, torch.tensor([2, 0, 1])])
def test_every_map_equals_its_own_attribute_call(target):
    attr = Attributor(tiny_vit(num_layers=4))
    pixel_values = pixel_batch(3, seed=2)
    grid = expand_grid(METHODS)
    out = attribute_configurations(attr, pixel_values, grid, target=target)
    for configuration in grid:
        expected = attr.attribute(pixel_values, method=configuration.method, target=target)
        torch.testing.assert_close(out.maps[configuration.key], expected.attribution, rtol=0, atol=0)
        assert torch.equal(out.target, expected.target)


def test_evaluation_tool_runs_the_methods(tmp_path):
    model, _ = write_model(tmp_path)
    setup = {"dataset": str(write_dataset(tmp_path, 2)), "model": str(model), "sae": "none"}
    summary = _run(setup, tmp_path / "out", methods="transmm," + ",".join(METHODS), presets="papers", sae="none")
    results = _results(tmp_path / "out")
    assert summary.rows_written == len(results) == 2 * (1 + len(METHODS))
    assert set(results["method"]) == {"transmm", *METHODS}
    assert results["saco"].between(-1, 1).all() and results["pixel_flipping"].between(0, 1).all()
    assert EvaluationConfiguration("caap").key in set(results["config"])
