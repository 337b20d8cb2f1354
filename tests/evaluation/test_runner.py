"""End to end: the evaluation tool on a tiny random ViT, SAE set and on-disk dataset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from hf_fga.evaluation import read_parts
from hf_fga.evaluation import runner as runner_module
from hf_fga.evaluation.arguments import DataArguments, EvaluationArguments, ModelArguments
from hf_fga.evaluation.runner import run_evaluation, select_images
from hf_fga.evaluation.storage import DIAGNOSTICS_FOLDER, RESULTS_FOLDER
from tests.evaluation.fixtures import write_dataset, write_model

ROOT = Path(__file__).resolve().parents[2]
NUM_IMAGES = 5
CONFIGURATIONS = 5  # TransMM + FGA {combined, centered} × {[0], [1]}
PRESETS = 2


def _arguments(setup: dict, output_dir: Path, **overrides) -> list[str]:
    values = {
        "dataset": setup["dataset"],
        "model": setup["model"],
        "sae": setup["sae"],
        "methods": "transmm,fga",
        "variants": "combined,centered",
        "layer_sets": "0;1",
        "kappas": "0.5",
        "cmaxes": "10",
        "presets": "both",
        "preset_overrides": json.dumps({"fc_runs": 5, "fc_subset_size": 4}),
        "batch_size": "2",
        "id_column": "file_name",
        "output_dir": str(output_dir),
        "progress": "False",
    }
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _run(setup: dict, output_dir: Path, **overrides):
    from transformers import HfArgumentParser

    parser = HfArgumentParser((DataArguments, ModelArguments, EvaluationArguments))
    return run_evaluation(*parser.parse_args_into_dataclasses(args=_arguments(setup, output_dir, **overrides)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    model, sae = write_model(root)
    setup = {"root": root, "dataset": str(write_dataset(root, NUM_IMAGES)), "model": str(model), "sae": str(sae)}
    setup["summary"] = _run(setup, root / "reference")
    setup["reference"] = root / "reference"
    return setup


def _results(folder: Path) -> pd.DataFrame:
    return read_parts(folder / RESULTS_FOLDER)


def _scores(folder: Path) -> pd.DataFrame:
    """The results without the wall-clock column (`attribution_seconds`), which no two runs share."""
    return _results(folder).drop(columns="attribution_seconds")


def test_end_to_end_writes_parquet_report_and_figures(setup):
    out, summary = setup["reference"], setup["summary"]
    assert summary.chunks_computed == 3 and summary.images == NUM_IMAGES
    results = _results(out)
    assert len(results) == NUM_IMAGES * CONFIGURATIONS * PRESETS == summary.rows_written
    assert set(results["preset"]) == {"papers", "thesis"}
    for column in ("saco", "faithfulness_correlation", "pixel_flipping", "prediction", "label", "correct", "target"):
        assert results[column].notna().all(), column
    assert results["pixel_flipping_curve"].map(len).eq(17).all()  # 4 x 4 patches: N + 1 points
    papers = results[results["preset"] == "papers"]
    assert papers["pixel_flipping"].between(0, 1).all() and papers["saco"].between(-1, 1).all()
    assert (results["correct"] == (results["prediction"] == results["label"])).all()
    fga = results[results["method"] == "fga"].iloc[0]
    assert list(json.loads(fga["diagnostics"])) == [fga["layers"]]  # one single-block FGA configuration
    assert (results.loc[results["method"] == "transmm", "diagnostics"] == "").all()
    diagnostics = read_parts(out / DIAGNOSTICS_FOLDER)
    assert len(diagnostics) == NUM_IMAGES * 2 and set(diagnostics["block"]) == {0, 1}
    assert (diagnostics[["g_dot_centered", "g_dot_error", "g_dot_x"]] >= 0).all().all()

    report = (out / "report.md").read_text()
    for expected in (
        "## Preset `papers`",
        "## Preset `thesis`",
        "| TransMM | 5 |",
        "FGA combined [0] κ=0.5 c=10",
        "FGA centered [1] κ=0.5 c=10",
        "Wilcoxon p",
        "beats TransMM",
        "Score decomposition",
    ):
        assert expected in report, expected
    summary_csv = pd.read_csv(out / "summary.csv")
    assert len(summary_csv) == CONFIGURATIONS * PRESETS * 3
    assert {"welch_p", "wilcoxon_p", "paired_t_p", "beats_fraction", "pct_change"} <= set(summary_csv.columns)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"bars_papers_mean.png", "pixel_flipping_thesis_mean.png", "blocks_papers_mean_k0.5_c10.png"} <= figures


def test_rerun_skips_everything_done(setup, tmp_path):
    out = tmp_path / "rerun"
    shutil.copytree(setup["reference"], out)
    before = sorted(p.name for p in (out / RESULTS_FOLDER).iterdir())
    summary = _run(setup, out)
    assert summary.chunks_computed == 0 and summary.chunks_skipped == 3 and summary.rows_written == 0
    assert sorted(p.name for p in (out / RESULTS_FOLDER).iterdir()) == before
    # a larger grid computes only the new configuration
    summary = _run(setup, out, kappas="0.5,1.0", variants="combined", layer_sets="0")
    assert summary.rows_written == NUM_IMAGES * PRESETS


def test_interrupted_run_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    calls = []
    original = runner_module.write_part

    def failing_write(folder, rows, rank, chunk):
        if Path(folder).name == RESULTS_FOLDER:
            calls.append(chunk)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated kill after the first chunk")
        return original(folder, rows, rank, chunk)

    monkeypatch.setattr(runner_module, "write_part", failing_write)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out)
    assert len(list((out / RESULTS_FOLDER).glob("part-*.parquet"))) == 1
    monkeypatch.setattr(runner_module, "write_part", original)
    summary = _run(setup, out)
    assert summary.chunks_computed == 2 and summary.chunks_skipped == 1
    pd.testing.assert_frame_equal(_scores(out), _scores(setup["reference"]))


def test_report_only_rebuilds_the_report(setup, tmp_path):
    out = tmp_path / "report_only"
    shutil.copytree(setup["reference"], out)
    (out / "report.md").unlink()
    summary = _run(setup, out, report_only="True")
    assert Path(summary.report).read_text() == (setup["reference"] / "report.md").read_text()


def test_resume_refuses_other_inputs(setup, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(setup["reference"], out)
    with pytest.raises(ValueError, match="new --output_dir"):
        _run(setup, out, target="label")


def test_thread_count_is_applied_recorded_and_restored(setup, tmp_path, monkeypatch):
    out = tmp_path / "threads"
    shutil.copytree(setup["reference"], out)
    recorded = json.loads((out / "run.json").read_text())["num_threads"]
    assert recorded == torch.get_num_threads()
    with pytest.raises(ValueError, match=rf"num_threads: stored {recorded}, now {recorded + 1}.*--num_threads"):
        _run(setup, out, num_threads=str(recorded + 1))
    for part in (out / RESULTS_FOLDER).glob("part-000-000000-*.parquet"):
        part.unlink()  # one chunk to recompute, at the pinned count
    seen, original = [], runner_module.evaluate_chunk

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_chunk", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(recorded + 2)  # the launch's count differs: --num_threads wins inside the run
    try:
        summary = _run(setup, out, num_threads=str(recorded))
        assert torch.get_num_threads() == recorded + 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    assert summary.chunks_computed == 1 and seen == [recorded]
    pd.testing.assert_frame_equal(_scores(out), _scores(setup["reference"]))
    with pytest.raises(ValueError, match="--num_threads must be a positive integer"):
        _run(setup, out, num_threads="0")


def test_select_images_with_id_file_and_limit(setup, tmp_path):
    import datasets

    dataset = datasets.load_dataset(setup["dataset"], split="test")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"validation_file_names": ["img-001.png", "img-003.png", "img-004.png"]}))
    args = DataArguments(
        dataset=setup["dataset"], id_column="file_name", include_ids=str(ids), ids_key="validation_file_names"
    )
    assert select_images(dataset, args) == [(1, "img-001.png"), (3, "img-003.png"), (4, "img-004.png")]
    args.limit = 2
    assert len(select_images(dataset, args)) == 2 and select_images(dataset, args) == select_images(dataset, args)
    # nested subsets in a seeded random order: a larger limit keeps the images of a smaller one, first
    args.include_ids = None
    everything = select_images(dataset, args.__class__(**{**vars(args), "limit": None}))
    shuffled = [select_images(dataset, args.__class__(**{**vars(args), "limit": n})) for n in (2, 4, 100)]
    assert shuffled[1][:2] == shuffled[0] and shuffled[2][:4] == shuffled[1]
    assert sorted(shuffled[2]) == everything and shuffled[2] != everything
    args.include_ids = str(ids)
    args.exclude_ids, args.limit = str(ids), None
    with pytest.raises(ValueError, match="No image is left"):
        select_images(dataset, args)
    with pytest.raises(ValueError, match="--ids_key"):
        select_images(dataset, DataArguments(dataset="x", include_ids=str(ids)))


@pytest.mark.slow
def test_accelerate_two_processes_match_one(setup, tmp_path):
    out = tmp_path / "two_processes"
    # on this CPU-only machine `--multi_gpu` makes accelerate 1.15 start 2 processes (torchrun, gloo); `--cpu`
    # alone would start one (see hf_fga.evaluation.runner.process_state)
    # --num_threads pins each process to the in-process reference's thread count (accelerate would give each
    # process cores / 2): float32 sums (oneDNN's linears in the perturbation forwards, the gradients of the
    # diagnostics) depend on the thread count in their last bits
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    env.pop("OMP_NUM_THREADS", None)
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "scripts" / "evaluate_faithfulness.py"),
        *_arguments(setup, out, num_threads=str(torch.get_num_threads())),
    ]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = {p.name.split("-")[1] for p in (out / RESULTS_FOLDER).glob("part-*.parquet")}
    assert ranks == {"000", "001"}
    results = [_scores(folder) for folder in (out, setup["reference"])]
    # bitwise: scores, curves and the diagnostics (means of dot products) at the same thread count
    pd.testing.assert_frame_equal(*results, check_exact=True)
    diagnostics = [read_parts(folder / DIAGNOSTICS_FOLDER) for folder in (out, setup["reference"])]
    pd.testing.assert_frame_equal(*diagnostics, check_exact=True)
    bodies = [
        (folder / "report.md").read_text().split("Model on")[1].split("## Score decomposition")[0]
        for folder in (out, setup["reference"])
    ]
    assert bodies[0] == bodies[1]


def test_clip_zero_shot_with_mean_centered_and_no_sae(tmp_path):
    from transformers import ViTImageProcessorPil

    from tests.helpers import IMAGE_SIZE, tiny_clip, tiny_clip_tokenizer

    model_dir = tmp_path / "clip"
    tiny_clip(num_layers=4).save_pretrained(model_dir)
    tiny_clip_tokenizer().save_pretrained(model_dir)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(model_dir)
    setup = {"dataset": str(write_dataset(tmp_path, 3)), "model": str(model_dir), "sae": ""}
    out = tmp_path / "out"
    summary = _run(
        setup,
        out,
        methods="transmm,fga,raw-attention",
        variants="no-sae,mean-centered",
        layer_sets="0,1",
        mean_residuals_split="test",
        presets="papers",
        sae="none",
    )
    results = _results(out)
    assert summary.rows_written == len(results) == 3 * 4
    assert (out / "mean_residuals.safetensors").is_file()
    assert set(results["prediction"]) <= {0, 1, 2}  # the three class names are the candidate labels
    assert results["saco"].between(-1, 1).all()
