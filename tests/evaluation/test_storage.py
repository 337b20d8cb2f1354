import pytest

from hf_fga.evaluation.storage import RESULTS_FOLDER, check_run_description, completed_keys, read_parts, write_part


def _row(image, config="transmm||||", preset="papers", value=1.0):
    return {"image_id": image, "config": config, "preset": preset, "fill": "mean", "saco": value}


def test_write_part_is_atomic_and_read_back_sorted(tmp_path):
    folder = tmp_path / "results"
    write_part(folder, [_row("b"), _row("a")], rank=1, chunk=3)
    assert write_part(folder, [], rank=0, chunk=0) is None
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 1 and files[0].startswith("part-001-000003-")
    frame = read_parts(folder)
    assert list(frame["image_id"]) == ["a", "b"]


def test_read_parts_ignores_temporary_files_and_drops_duplicates(tmp_path):
    folder = tmp_path / "results"
    write_part(folder, [_row("a", value=1.0)], rank=0, chunk=0)
    write_part(folder, [_row("a", value=2.0), _row("a", preset="thesis")], rank=0, chunk=0)
    (folder / ".tmp-part-000-000001-x.parquet-123").write_bytes(b"half written")
    frame = read_parts(folder)
    assert len(frame) == 2
    assert completed_keys(tmp_path) == {("a", "transmm||||", "papers", "mean"), ("a", "transmm||||", "thesis", "mean")}


def test_parts_written_with_the_legacy_baseline_column_read_as_fill(tmp_path):
    folder = tmp_path / RESULTS_FOLDER
    legacy = [{"image_id": "a", "config": "transmm||||", "preset": "papers", "baseline": "mean", "saco": 0.5}]
    write_part(folder, legacy, rank=0, chunk=0)
    write_part(folder, [_row("b", "transmm||||", "papers", 0.25)], rank=0, chunk=1)
    frame = read_parts(folder)
    assert "baseline" not in frame.columns and list(frame["fill"]) == ["mean", "mean"]
    assert read_parts(folder, columns=["image_id", "fill"])["fill"].tolist() == ["mean", "mean"]
    assert completed_keys(tmp_path) == {("a", "transmm||||", "papers", "mean"), ("b", "transmm||||", "papers", "mean")}


def test_run_description_refuses_other_inputs(tmp_path):
    check_run_description(tmp_path, {"model": "m1", "split": "test"})
    check_run_description(tmp_path, {"model": "m1", "split": "test"})
    with pytest.raises(ValueError, match="model: stored 'm1', now 'm2'"):
        check_run_description(tmp_path, {"model": "m2", "split": "test"})
    # a field recorded only by newer versions (here num_threads) is not compared with a folder written before it
    check_run_description(tmp_path, {"model": "m1", "split": "test", "num_threads": 4})


def test_run_description_thread_count_mismatch_says_which_count_to_pass(tmp_path):
    check_run_description(tmp_path, {"model": "m1", "num_threads": 4})
    with pytest.raises(ValueError, match=r"num_threads: stored 4, now 8.*pass --num_threads 4\."):
        check_run_description(tmp_path, {"model": "m1", "num_threads": 8})
