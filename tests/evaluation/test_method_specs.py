"""
Method specs in an evaluation (issue 13): `name+libragrad` and `name@option=value`, their maps, the completeness
metric and the per-configuration attribution seconds, end to end through the evaluation tool.
"""

import numpy as np
import pytest
import torch

from hf_fga.attribution import Attributor
from hf_fga.evaluation.attribution_grid import attribute_configurations
from hf_fga.evaluation.configuration import EvaluationConfiguration, expand_grid, parse_method_spec
from hf_fga.faithfulness import evaluate_faithfulness
from tests.attribution import direct_methods as direct
from tests.evaluation.fixtures import write_dataset, write_model
from tests.evaluation.test_runner import _results, _run
from tests.helpers import pixel_batch, tiny_sae, tiny_vit


def test_specs_parse_into_keys_labels_and_options():
    assert parse_method_spec("caap@block_range=1-2;batch_size=16") == (
        "caap",
        False,
        {"block_range": (1, 2), "batch_size": 16},
        "block_range=1-2;batch_size=16",
    )
    assert parse_method_spec(" gradient-x-input+libragrad ") == ("gradient-x-input", True, {}, "")
    specs = ["fga+libragrad", "integrated-gradients+libragrad@steps=4", "caap@block_range=1-2", "fga"]
    grid = expand_grid(specs, ["combined"], [(0,)])
    keys = [c.key for c in grid]
    assert keys == [
        "transmm||||",
        "integrated-gradients|steps=4+libragrad|||",
        "caap|block_range=1-2|||",
        "fga|combined+libragrad|0|0.5|10",
        "fga|combined|0|0.5|10",
    ]
    by_key = {c.key: c for c in grid}
    ig = by_key["integrated-gradients|steps=4+libragrad|||"]
    assert ig.libragrad and ig.options == {"steps": 4}
    assert ig.label == "Integrated Gradients (steps=4) + LibraGrad"
    assert by_key["fga|combined+libragrad|0|0.5|10"].label == "FGA combined [0] κ=0.5 c=10 + LibraGrad"
    assert not by_key["caap|block_range=1-2|||"].libragrad
    # keys round-trip, and the plain methods keep the keys of earlier results
    assert all(EvaluationConfiguration.from_key(key).key == key for key in keys)
    assert EvaluationConfiguration("rollout").key == "rollout||||"
    # plain methods before their LibraGrad runs in report order
    ordered = sorted(grid, key=lambda c: c.sort_key)
    assert ordered.index(by_key["fga|combined|0|0.5|10"]) < ordered.index(by_key["fga|combined+libragrad|0|0.5|10"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("occlusion", r"Unknown method 'occlusion'.*'caap'"),
        ("rollout+libragrad", r"'rollout' reads none; it applies to .*gradient-x-input"),
        ("caap@blocks=1-2", r"'blocks=1-2' is not an option of 'caap'.*block_range, batch_size"),
        ("caap@block_range", r"is not an option of 'caap' \(write option=value"),
        ("fga@kappa=2", r"FGA's settings come from --variants"),
    ],
)
def test_bad_specs_say_what_to_write(spec, message):
    with pytest.raises(ValueError, match=message):
        expand_grid([spec])


def test_libragrad_and_option_maps_equal_their_own_attribute_calls():
    model = tiny_vit(num_layers=4)
    attr = Attributor(model, {0: tiny_sae(layer=0)})
    pixel_values = pixel_batch(3, seed=4)
    specs = ["transmm+libragrad", "fga", "fga+libragrad", "gradient-x-input+libragrad", "caap@block_range=1-2"]
    grid = expand_grid(specs, ["combined"], [(0,)])
    out = attribute_configurations(attr, pixel_values, grid)
    assert set(out.seconds) == set(out.maps) and all(s > 0 for s in out.seconds.values())
    for c in grid:
        options = dict(variant="combined", layers=[0], kappa=0.5, cmax=10.0) if c.is_gated else c.options
        expected = attr.attribute(pixel_values, method=c.method, libragrad=c.libragrad, **options).attribution
        torch.testing.assert_close(out.maps[c.key], expected, rtol=0, atol=0)
    # LibraGrad changes the gradient maps (so the comparison can tell them apart)
    assert not torch.allclose(out.maps["transmm||||"], out.maps["transmm|libragrad|||"])


def test_completeness_metric_matches_float64_reference_and_libragrad_closes_it():
    model = tiny_vit(num_layers=2).double()
    pixel_values = pixel_batch(2, seed=5).double()
    targets = [1, 0]
    maps = torch.rand(2, 4, 4)
    names = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    names += ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings"]
    plain = evaluate_faithfulness(model, pixel_values, maps, metrics=("completeness",), targets=targets)
    for b in range(2):
        y, input_term, bias_term = direct.completeness_terms(model, pixel_values[b], targets[b], names)
        assert plain["completeness"][b] == pytest.approx(abs(y - input_term - bias_term) / abs(y), rel=1e-9)
    assert (plain["completeness"] > 1e-3).all()
    libragrad = evaluate_faithfulness(
        model, pixel_values, maps, metrics=("completeness",), targets=targets, libragrad=True
    )
    assert (libragrad["completeness"] < 1e-8).all()
    with pytest.raises(TypeError, match="needs the model itself"):
        evaluate_faithfulness(lambda x: x.mean(dim=(2, 3)), pixel_values, maps, metrics=("completeness",))


def test_evaluation_tool_records_completeness_and_seconds(tmp_path):
    model, _ = write_model(tmp_path)
    setup = {"dataset": str(write_dataset(tmp_path, 2)), "model": str(model), "sae": "none"}
    methods = "transmm,rollout,gradient-x-input,gradient-x-input+libragrad,caap@block_range=0-1"
    _run(setup, tmp_path / "out", methods=methods, presets="papers", sae="none", metrics="saco,completeness")
    results = _results(tmp_path / "out").set_index(["config", "image_id"])
    assert results["attribution_seconds"].gt(0).all()
    assert results.loc["rollout||||", "completeness"].isna().all()
    assert results.loc["caap|block_range=0-1|||", "completeness"].isna().all()
    plain = results.loc["gradient-x-input||||", "completeness"]
    np.testing.assert_array_equal(plain, results.loc["transmm||||", "completeness"])
    assert plain.gt(1e-3).all() and results.loc["gradient-x-input|libragrad|||", "completeness"].lt(1e-4).all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Gradient × Input + LibraGrad" in report and "Completeness error ↓" in report


def test_skip_reference_scores_only_what_is_new(tmp_path):
    model, _ = write_model(tmp_path)
    setup = {"dataset": str(write_dataset(tmp_path, 2)), "model": str(model), "sae": "none"}
    _run(setup, tmp_path / "out", methods="rollout", presets="papers", sae="none", skip_reference="true")
    assert set(_results(tmp_path / "out")["config"]) == {"rollout||||"}
    assert (tmp_path / "out" / "report.md").is_file()
    # naming TransMM keeps it
    _run(setup, tmp_path / "named", methods="transmm,rollout", presets="papers", sae="none", skip_reference="true")
    assert set(_results(tmp_path / "named")["config"]) == {"transmm||||", "rollout||||"}
