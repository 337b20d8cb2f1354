"""The control variants of method.md §10 in the evaluation tool: `name@value` keys, options, the grid, a full run."""

import json

import pandas as pd
import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.attribution.feature_selection import compute_feature_importance, save_feature_importance
from hf_fga.attribution.methods.fga import parse_variant
from hf_fga.evaluation import read_parts
from hf_fga.evaluation.attribution_grid import attribute_configurations, method_options
from hf_fga.evaluation.configuration import EvaluationConfiguration, expand_grid
from hf_fga.evaluation.statistics import rank_configurations
from hf_fga.evaluation.storage import RESULTS_FOLDER
from tests.evaluation.fixtures import write_dataset, write_model
from tests.evaluation.test_runner import _run
from tests.helpers import pixel_batch, tiny_sae, tiny_vit

CONTROLS = ["error-scaled@0.5", "error-scaled@2", "error-only", "transmm-power@2", "random-gates", "selective@32"]


def test_parse_variant_and_its_errors():
    assert parse_variant("transmm-power@1.5") == ("transmm-power", {"gamma": 1.5})
    assert parse_variant("random-gates") == ("random-gates", {})
    with pytest.raises(ValueError, match="takes no parameter"):
        parse_variant("combined@2")
    with pytest.raises(ValueError, match="must be an integer"):
        parse_variant("selective@1.5")
    with pytest.raises(ValueError, match="must be a number"):
        parse_variant("error-scaled@big")


def test_expand_grid_accepts_and_orders_control_keys():
    grid = expand_grid(["fga"], ["selective@64", "error-scaled@2", "combined", "error-scaled@0.5"], [(0, 1)])
    ordered = [c.variant for c in sorted(grid[1:], key=lambda c: c.sort_key)]
    assert ordered == ["combined", "error-scaled@0.5", "error-scaled@2", "selective@64"]
    assert grid[2].key == "fga|error-scaled@2|0,1|0.5|10"
    with pytest.raises(ValueError, match="Unknown variant"):
        expand_grid(["fga"], ["bogus@1"])


def test_method_options_pass_run_options_only_to_their_variant():
    importance = {0: torch.ones(4)}
    selective = EvaluationConfiguration("fga", "selective@16", (0,), 0.5, 10.0)
    combined = EvaluationConfiguration("fga", "combined", (0,), 0.5, 10.0)
    options = method_options(selective, variant_options={"feature_importance": importance})
    assert options["variant"] == "selective" and options["num_features"] == 16
    assert options["feature_importance"] is importance
    assert "feature_importance" not in method_options(combined, variant_options={"feature_importance": importance})


def _attributor():
    model = tiny_vit(num_layers=4)  # blocks 0, 1 are not degenerate (not L-2 or L-1)
    return Attributor(model, {0: tiny_sae(layer=0), 1: tiny_sae(layer=1, seed=1, activation="relu")})


def test_control_configurations_equal_their_own_attribute_calls():
    attr = _attributor()
    pixel_values = pixel_batch(3)
    importance = compute_feature_importance(attr, [pixel_values], [0, 1], progress=False)
    grid = expand_grid(["fga"], ["combined", *CONTROLS], [(0, 1)], [0.5], [10.0])
    out = attribute_configurations(attr, pixel_values, grid, variant_options={"feature_importance": importance})
    for configuration in grid[1:]:
        variant, parameter = parse_variant(configuration.variant)
        extra = {"feature_importance": importance} if variant == "selective" else {}
        expected = attr.attribute(pixel_values, variant=variant, layers=[0, 1], **parameter, **extra)
        torch.testing.assert_close(out.maps[configuration.key], expected.attribution, rtol=0, atol=0)


def test_rank_configurations_selects_a_control_parameter():
    rows = [
        {
            "preset": "papers",
            "fill": "mean",
            "config": f"fga|transmm-power@{g}|0|0.5|10",
            "method": "fga",
            "variant": f"transmm-power@{g}",
            "layers": "0",
            "kappa": 0.5,
            "cmax": 10.0,
            "metric": metric,
            "pct_improvement": value,
        }
        for g, value in (("2", 1.0), ("3", 4.0))
        for metric in ("saco", "faithfulness_correlation", "pixel_flipping")
    ]
    rows += [{**rows[0], "config": "fga|combined|0|0.5|10", "variant": "combined", "pct_improvement": 9.0}]
    ranked = rank_configurations(pd.DataFrame(rows), variant="transmm-power")
    assert list(ranked.index) == ["fga|transmm-power@3|0|0.5|10", "fga|transmm-power@2|0|0.5|10"]


def test_the_evaluation_tool_runs_the_controls(tmp_path):
    model_dir, sae_dir = write_model(tmp_path)
    setup = {"dataset": str(write_dataset(tmp_path, 3)), "model": str(model_dir), "sae": str(sae_dir)}
    from transformers import AutoModelForImageClassification

    from hf_fga.sae import load_saes

    attr = Attributor(AutoModelForImageClassification.from_pretrained(model_dir), load_saes(sae_dir))
    importance = compute_feature_importance(attr, [pixel_batch(2)], [0, 1], progress=False)
    path = tmp_path / "importance.safetensors"
    save_feature_importance(importance, path, {0: "resid_post", 1: "resid_post"})
    out = tmp_path / "controls"
    _run(setup, out, variants=",".join(CONTROLS), layer_sets="0,1", presets="papers", feature_importance=str(path))
    results = read_parts(out / RESULTS_FOLDER)
    assert set(results["variant"]) == {"", *CONTROLS} and len(results) == 3 * (1 + len(CONTROLS))
    assert (out / "feature_importance.safetensors").is_file()
    assert json.loads((out / "run.json").read_text())["feature_importance"] == str(path)
    with pytest.raises(ValueError, match="feature_importance"):
        _run(setup, tmp_path / "missing", variants="selective@32", layer_sets="0,1", presets="papers")
