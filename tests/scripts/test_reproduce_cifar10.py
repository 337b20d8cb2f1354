"""
scripts/reproduce.sh --dataset cifar10, with a stand-in for Python that records every command: the external
assets folder, validation on the rows of the train split that scripts/train_cifar10.py held out (row-index ids, no
file names), 256 validation and 2,000 test images by default, and a clear refusal before the domain is built.
"""

from __future__ import annotations

import json
import shlex

from .test_reproduce_controls import EVALUATE, run

# records its arguments; answers scripts/select_configuration.py like a finished validation sweep would
STAND_IN = r"""#!/usr/bin/env bash
{ printf '%q ' "$@"; echo; } >> "$ARGV_LOG"
case "$*" in
  *select_configuration.py*--multi_block_sets*) echo "4,5;3,4,5" ;;
  *select_configuration.py*--best*) echo "fga|combined|4,5|0.5|10" ;;
esac
"""


def built_assets(root):
    """The files reproduce.sh checks before it starts (only their presence matters to the stand-in)."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    (root / "splits.json").write_text(json.dumps({"validation_rows": ["3", "17"]}))
    return root


def test_cifar10_runs_the_protocol_on_its_external_assets_with_row_ids(tmp_path):
    assets, out = built_assets(tmp_path / "assets"), tmp_path / "out"
    process, commands = run(
        tmp_path,
        "reproduce.sh",
        "--dataset",
        "cifar10",
        stand_in=STAND_IN,
        OUT=str(out),
        HF_FGA_CIFAR10_DIR=str(assets),
    )
    assert process.returncode == 0, process.stderr
    evaluations = [shlex.split(c) for c in commands if c.startswith(EVALUATE)]
    assert len(evaluations) == 4  # single blocks, multi-block sets, κ × c_max, test
    for argv in evaluations:
        assert "--id_column" not in argv  # the row index: CIFAR-10 has no file names
        assert argv[argv.index("--dataset") + 1] == "../shared/data/cifar10"
        assert argv[argv.index("--model") + 1] == f"{assets}/model"
        assert argv[argv.index("--sae") + 1] == f"{assets}/saes"
        assert argv[argv.index("--mean_residuals") + 1] == f"{assets}/mean_residuals.safetensors"
    for argv in evaluations[:3]:
        validation = argv[argv.index("--split") :][:10]
        assert validation == [
            "--split", "train", "--include_ids", f"{assets}/splits.json", "--ids_key", "validation_rows",
            "--limit", "256", "--seed", "0",
        ]  # fmt: skip
    test = evaluations[3]
    assert test[test.index("--split") + 1] == "test" and test[test.index("--limit") + 1] == "2000"
    assert test[test.index("--layer_sets") + 1] == "4,5" and test[test.index("--output_dir") + 1] == f"{out}/test"
    assert (out / "chosen_configuration.txt").read_text() == "chosen configuration: fga|combined|4,5|0.5|10\n"
    claims = shlex.split(commands[-1])  # last: the thesis's claims on the finished test run
    assert claims == [
        "scripts/thesis_claims.py", f"{out}/test", "--config", "fga|combined|4,5|0.5|10",
        "--output", f"{out}/test/claims.md",
    ]  # fmt: skip


def test_cifar10_limits_can_be_overridden(tmp_path):
    assets = built_assets(tmp_path / "assets")
    process, commands = run(
        tmp_path,
        "reproduce.sh",
        "--dataset=cifar10",
        stand_in=STAND_IN,
        OUT=str(tmp_path / "out"),
        HF_FGA_CIFAR10_DIR=str(assets),
        VALIDATION_LIMIT="300",
        TEST_LIMIT="5000",
    )
    assert process.returncode == 0, process.stderr
    limits = [shlex.split(c) for c in commands if c.startswith(EVALUATE)]
    assert [argv[argv.index("--limit") + 1] for argv in limits] == ["300", "300", "300", "5000"]


def test_cifar10_before_it_is_built_names_the_build_script(tmp_path):
    process, commands = run(
        tmp_path,
        "reproduce.sh",
        "--dataset",
        "cifar10",
        stand_in=STAND_IN,
        OUT=str(tmp_path / "out"),
        HF_FGA_CIFAR10_DIR=str(tmp_path / "not_built"),
    )
    assert process.returncode == 1 and commands == []
    assert f"the cifar10 domain is not built at {tmp_path / 'not_built'}" in process.stderr
    assert "bash scripts/build_cifar10_assets.sh" in process.stderr


def test_the_medical_domains_keep_their_file_name_ids(tmp_path):
    process, commands = run(
        tmp_path, "reproduce.sh", "--dataset", "breast_ultrasound", stand_in=STAND_IN, OUT=str(tmp_path / "out")
    )
    assert process.returncode == 0, process.stderr
    first = shlex.split(next(c for c in commands if c.startswith(EVALUATE)))
    assert first[first.index("--id_column") + 1] == "file_name"
    assert first[first.index("--ids_key") + 1] == "validation_file_names" and "64" in first


def test_unknown_datasets_are_refused_with_the_known_ones(tmp_path):
    process, commands = run(tmp_path, "reproduce.sh", "--dataset", "imagenet", stand_in=STAND_IN, OUT=str(tmp_path))
    assert process.returncode == 2 and commands == []
    assert "chest_xray, breast_ultrasound and cifar10" in process.stderr
