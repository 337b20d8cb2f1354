"""
scripts/reproduce_controls.sh per domain, run with a stand-in for Python that records every command instead of running
it: the chest X-ray wrapper launches exactly the commands of the script it replaced, breast ultrasound the same
commands on its own assets, splits and sizes, and both refuse clearly without a chosen configuration.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# records its arguments; answers scripts/select_configuration.py with a configuration of the validated γ and m
FAKE_PYTHON = r"""#!/usr/bin/env bash
{ printf '%q ' "$@"; echo; } >> "$ARGV_LOG"
case "$*" in
  *select_configuration.py*--variant\ transmm-power*) echo "fga|transmm-power@1.5|0,1,2|0.5|10" ;;
  *select_configuration.py*--variant\ selective*) echo "fga|selective@16|0,1,2|0.5|10" ;;
esac
"""
EVALUATE = "scripts/evaluate_faithfulness.py"
CHEST_DATA = "/work/shared/data/chest_xray_pneumonia"
CHEST_COMMON = f"--dataset {CHEST_DATA} --id_column file_name --model hf_fga/bundled/model --batch_size 8"
CHEST_VALIDATION = (
    "--split train --include_ids hf_fga/bundled/splits.json --ids_key validation_file_names --limit 256 --seed 0"
)
CHEST_TEST = (
    "--split test --limit 618 --seed 0 --presets papers,thesis --methods fga --skip_reference "
    "--layer_sets 0,1,2 --kappas 0.5 --cmaxes 10"
)
VALIDATION_VARIANTS = (
    "combined,transmm-power@1.5,transmm-power@2,transmm-power@3,transmm-power@4,"
    "selective@16,selective@64,selective@256"
)


def chest_commands(out: str) -> list[str]:
    """
    The commands scripts/reproduce_chest_xray_controls.sh launched before it became a wrapper (recorded at commit
    0ed1537 with this test's stand-in): the evaluation and feature-importance commands unchanged; the SAE script and
    the analysis now get `--domain chest_xray`, the SAE script the blocks and validation sample size (its defaults),
    the analysis the configuration and its input folders under OUT (its defaults when OUT is not overridden).
    """
    tail = [
        f"{EVALUATE} {CHEST_COMMON} {CHEST_TEST} --sae runs/controls_saes/{sae} --variants {variants} "
        f"--output_dir {out}/test_{name}"
        for sae, variants, name in [
            ("pca", "combined", "pca"),
            ("random", "combined", "random"),
            ("ev0.90", "combined,centered", "ev090"),
            ("ev0.75", "combined,centered", "ev075"),
        ]
    ]
    return [
        f"scripts/build_controls_saes.py --domain chest_xray --data {CHEST_DATA} --blocks 0,1,2 "
        f"--validation_images 256 --output_dir runs/controls_saes --report_dir {out}/saes",
        f"scripts/compute_feature_importance.py --dataset {CHEST_DATA} --id_column file_name {CHEST_VALIDATION} "
        f"--model hf_fga/bundled/model --sae hf_fga/bundled/saes --layers 0,1,2 "
        f"--output {out}/feature_importance.safetensors",
        f"{EVALUATE} {CHEST_COMMON} {CHEST_VALIDATION} --sae hf_fga/bundled/saes "
        f"--feature_importance {out}/feature_importance.safetensors --presets papers --methods transmm,fga "
        f"--variants {VALIDATION_VARIANTS} --layer_sets 0,1,2 --kappas 0.5 --cmaxes 10 --output_dir {out}/validation",
        f"scripts/select_configuration.py {out}/validation --variant transmm-power --best",
        f"scripts/select_configuration.py {out}/validation --variant selective --best",
        f"{EVALUATE} {CHEST_COMMON} {CHEST_TEST} --sae hf_fga/bundled/saes "
        f"--feature_importance {out}/feature_importance.safetensors --variants error-scaled@0.5,error-scaled@2,"
        f"error-scaled@4,error-only,transmm-power@1.5,random-gates,selective@16 --output_dir {out}/test",
        *tail,
        f"scripts/controls_analysis.py --domain chest_xray --data {CHEST_DATA} --config fga|combined|0,1,2|0.5|10 "
        f"--gamma 1.5 --m 16 --controls {out}/test --pca {out}/test_pca --random {out}/test_random "
        f"--ev090 {out}/test_ev090 --ev075 {out}/test_ev075 --output_dir {out}/test",
    ]


def busi_commands(out: str, layers: str, kappa: str, cmax: str) -> list[str]:
    """The chest X-ray commands with the breast ultrasound assets, data, validation split, sizes and configuration."""
    swaps = [
        ("hf_fga/bundled/", "hf_fga/bundled/breast_ultrasound/"),
        (CHEST_DATA, "/work/shared/data/breast_ultrasound"),
        ("--split train", "--split validation"),
        ("--limit 256", "--limit 117"),
        ("--validation_images 256", "--validation_images 117"),
        ("--limit 618", "--limit 118"),
        ("runs/controls_saes", "runs/breast_ultrasound_controls_saes"),
        ("--domain chest_xray", "--domain breast_ultrasound"),
        ("--layer_sets 0,1,2 --kappas 0.5 --cmaxes 10", f"--layer_sets {layers} --kappas {kappa} --cmaxes {cmax}"),
        ("--layers 0,1,2", f"--layers {layers}"),
        ("--blocks 0,1,2", f"--blocks {layers}"),
        ("--config fga|combined|0,1,2|0.5|10", f"--config fga|combined|{layers}|{kappa}|{cmax}"),
    ]
    commands = []
    for command in chest_commands(out):
        for old, new in swaps:
            command = command.replace(old, new)
        commands.append(command)
    return commands


def run(
    tmp_path: Path, script: str, *args: str, stand_in: str = FAKE_PYTHON, **env: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """
    Run a reproduction script with a stand-in Python (`stand_in`: a bash script that appends its arguments to
    `$ARGV_LOG`); returns the process and the commands it launched.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake, log = tmp_path / "python", tmp_path / "argv.log"
    fake.write_text(stand_in)
    fake.chmod(0o755)
    environment = {**os.environ, "PY": str(fake), "ARGV_LOG": str(log), "NUM_PROCESSES": "1", **env}
    process = subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    lines = log.read_text().splitlines() if log.is_file() else []
    return process, [shlex.join(shlex.split(line)) for line in lines]


def finished_validation(tmp_path: Path) -> Path:
    """An output folder whose validation and last test stage look finished (what the script checks for)."""
    out = tmp_path / "out"
    for stage in ("validation", "test_ev075"):
        (out / stage).mkdir(parents=True)
        (out / stage / "summary.csv").write_text("")
    return out


def normalised(commands: list[str]) -> list[str]:
    return [shlex.join(shlex.split(command)) for command in commands]


def test_chest_xray_wrapper_launches_the_commands_of_the_script_it_replaced(tmp_path):
    out = finished_validation(tmp_path)
    process, commands = run(tmp_path, "reproduce_chest_xray_controls.sh", OUT=str(out))
    assert process.returncode == 0, process.stderr
    assert commands == normalised(chest_commands(str(out)))
    stages = [line.split()[0] for line in (out / "wall_times.txt").read_text().splitlines()]
    assert stages == ["validation_controls", "test_controls", "test_pca", "test_random", "test_ev090", "test_ev075"]
    assert (out / "chosen_parameters.txt").read_text() == "chosen on validation: gamma=1.5 m=16\n"
    assert "resumed" not in (out / "wall_times.txt").read_text()
    # the generic script with --dataset chest_xray is the same run; a stage with parts already written says so
    (out / "test_pca" / "results").mkdir(parents=True)
    (out / "test_pca" / "results" / "part-000-000000-abc.parquet").write_text("")
    direct, again = run(tmp_path / "direct", "reproduce_controls.sh", "--dataset", "chest_xray", OUT=str(out))
    assert direct.returncode == 0 and again == commands
    logged = (out / "wall_times.txt").read_text().splitlines()[6:]
    assert [("resumed" in line) for line in logged] == [False, False, True, False, False, False]


def test_report_only_rebuilds_every_stage_report_and_runs_nothing_else(tmp_path):
    out = finished_validation(tmp_path)
    process, commands = run(tmp_path, "reproduce_chest_xray_controls.sh", OUT=str(out), REPORT_ONLY="1")
    assert process.returncode == 0, process.stderr
    expected = [c for c in normalised(chest_commands(str(out))) if not c.startswith(("scripts/build", "scripts/comp"))]
    assert commands == [c + " --report_only" if c.startswith(EVALUATE) else c for c in expected]
    assert not (out / "wall_times.txt").exists()


def test_breast_ultrasound_uses_its_assets_validation_split_sizes_and_chosen_configuration(tmp_path):
    out = finished_validation(tmp_path)
    chosen = tmp_path / "chosen_configuration.txt"
    chosen.write_text("chosen configuration: fga|combined|3,4|1.0|50\n")
    process, commands = run(
        tmp_path, "reproduce_controls.sh", "--dataset", "breast_ultrasound", OUT=str(out), CHOSEN=str(chosen)
    )
    assert process.returncode == 0, process.stderr
    assert commands == normalised(busi_commands(str(out), "3,4", "1.0", "50"))


def test_a_domain_without_a_chosen_configuration_is_refused(tmp_path):
    missing = tmp_path / "nowhere" / "chosen_configuration.txt"
    process, commands = run(
        tmp_path, "reproduce_controls.sh", "--dataset", "breast_ultrasound", OUT=str(tmp_path), CHOSEN=str(missing)
    )
    assert process.returncode == 1 and commands == []
    assert f"{missing} does not exist" in process.stderr
    assert "run scripts/reproduce.sh --dataset breast_ultrasound first" in process.stderr


def test_a_domain_is_refused_until_its_pre_registration_is_committed(tmp_path):
    """A plan.md that is not committed (here: one the tests write): nothing is scored, and the message says why."""
    chosen = tmp_path / "chosen_configuration.txt"
    chosen.write_text("chosen configuration: fga|combined|3,4|1.0|50\n")
    plan = "docs/results/cifar10_controls/plan_not_committed.md"
    process, commands = run(
        tmp_path, "reproduce_controls.sh", "--dataset", "cifar10", OUT=str(tmp_path), CHOSEN=str(chosen), PLAN=plan
    )
    assert process.returncode == 1 and commands == []
    assert f"{plan} is not committed: the pre-registration must be committed before any control" in process.stderr


def test_every_domain_s_controls_plan_is_committed():
    """The pre-registrations (chest X-ray, breast ultrasound, CIFAR-10) are in the history, as the script requires."""
    for domain in ("chest_xray", "breast_ultrasound", "cifar10"):
        plan = f"docs/results/{domain}_controls/plan.md"
        assert (ROOT / plan).is_file(), plan
        logged = subprocess.run(
            ["git", "log", "--format=%h", "-1", "--", plan], cwd=ROOT, capture_output=True, text=True
        )
        assert logged.stdout.strip() or not (ROOT / ".git").exists(), f"{plan} is not committed"


@pytest.mark.parametrize("args", [("--dataset", "imagenet"), ("--model", "x")])
def test_unknown_arguments_are_refused(tmp_path, args):
    process, commands = run(tmp_path, "reproduce_controls.sh", *args, OUT=str(tmp_path))
    assert process.returncode == 2 and commands == [] and "chest_xray" in process.stderr


def test_test_stages_pick_the_test_runs_and_the_sae_sets_they_need(tmp_path):
    out = finished_validation(tmp_path)
    process, commands = run(tmp_path, "reproduce_chest_xray_controls.sh", OUT=str(out), TEST_STAGES="ev090,ev075")
    assert process.returncode == 0, process.stderr
    full = normalised(chest_commands(str(out)))
    kept = [c for c in full if not c.startswith(EVALUATE) or "--split test" not in c or "ev0." in c]
    kept[0] += " --stages lower_fidelity"  # only the lower-fidelity SAEs are built or restored
    assert commands == kept
    stages = [line.split()[0] for line in (out / "wall_times.txt").read_text().splitlines()]
    assert stages == ["validation_controls", "test_ev090", "test_ev075"]
    _, commands = run(tmp_path / "dictionaries", "reproduce_chest_xray_controls.sh", OUT=str(out), TEST_STAGES="pca")
    assert commands[0].endswith("--stages dictionaries") and sum("--split test" in c for c in commands) == 1
    refused, commands = run(tmp_path / "bad", "reproduce_chest_xray_controls.sh", OUT=str(out), TEST_STAGES="ev050")
    assert refused.returncode == 2 and commands == [] and "unknown test stage ev050" in refused.stderr
