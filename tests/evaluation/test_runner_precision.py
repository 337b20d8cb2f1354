"""The evaluation tool's --precision and --precision_check: the report says which precision produced it and records
the per-image bfloat16-vs-float32 agreement."""

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from hf_fga.evaluation.arguments import DataArguments, EvaluationArguments, ModelArguments
from hf_fga.evaluation.precision_check import PRECISION_CHECK_FILE
from hf_fga.evaluation.runner import run_evaluation
from tests.evaluation.fixtures import write_dataset, write_model


def _run(setup: dict, output_dir: Path, **overrides):
    from transformers import HfArgumentParser

    values = {
        "dataset": setup["dataset"],
        "model": setup["model"],
        "sae": setup["sae"],
        "methods": "transmm,fga",
        "variants": "combined",
        "layer_sets": "0",
        "presets": "papers",
        "preset_overrides": json.dumps({"fc_runs": 5, "fc_subset_size": 4}),
        "batch_size": "2",
        "id_column": "file_name",
        "output_dir": str(output_dir),
        "progress": "False",
    }
    values.update(overrides)
    args = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    parser = HfArgumentParser((DataArguments, ModelArguments, EvaluationArguments))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_evaluation(*parser.parse_args_into_dataclasses(args=args))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    model, sae = write_model(root)
    return {"dataset": str(write_dataset(root, 3)), "model": str(model), "sae": str(sae)}


def test_bfloat16_run_with_precision_check(setup, tmp_path):
    out = tmp_path / "bf16"
    summary = _run(setup, out, precision="bfloat16", precision_check="2")
    report = Path(summary.report).read_text()
    assert "perturbation forwards: `bfloat16`" in report
    assert json.loads((out / "run.json").read_text())["precision"] == "bfloat16"
    check = pd.read_csv(out / PRECISION_CHECK_FILE)
    assert len(check) == 2 * 2 * 3  # images x configurations x metrics (one preset)
    assert check["configuration"].nunique() == 2 and check["image_id"].nunique() == 2
    assert ((check["bfloat16"] - check["float32"]).abs() - check["abs_diff"]).abs().max() < 1e-12
    assert check.loc[check.metric == "pixel_flipping", "abs_diff"].max() < 0.02
    assert "## Precision check: bfloat16 against float32" in report and "ranking_identical" in report
    # the run's own (bfloat16) scores are the check's bfloat16 column
    results = pd.concat(pd.read_parquet(path) for path in (out / "results").glob("*.parquet"))
    long = results.melt(
        id_vars=["image_id", "config"],
        value_vars=["saco", "faithfulness_correlation", "pixel_flipping"],
        var_name="metric",
    )
    merged = check.merge(
        long, left_on=["image_id", "configuration", "metric"], right_on=["image_id", "config", "metric"]
    )
    assert len(merged) == len(check)
    assert (merged["bfloat16"] - merged["value"]).abs().max() < 1e-6


def test_float32_report_and_resume_rules(setup, tmp_path):
    out = tmp_path / "fp32"
    summary = _run(setup, out, limit="1")
    assert "perturbation forwards: `float32`" in Path(summary.report).read_text()
    assert "precision" not in json.loads((out / "run.json").read_text())  # runs stored before the option resume
    with pytest.raises(ValueError, match="new --output_dir"):
        _run(setup, out, limit="1", precision="bfloat16")
    with pytest.raises(ValueError, match="precision="):
        _run(setup, tmp_path / "bad", precision="fp16")
