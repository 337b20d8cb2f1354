"""
scripts/build_cifar10_assets.sh end to end on a tiny synthetic CIFAR-like dataset: every Python command of the script,
as written there, run in process with a few size arguments appended (a tiny ViT, one short epoch, tiny SAEs), must
leave a complete `cifar10` domain in the folder HF_FGA_CIFAR10_DIR names.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import ViTForImageClassification

from hf_fga import bundled
from hf_fga.attribution import load_mean_residuals
from hf_fga.sae import load_saes

from .test_train_cifar10 import write_tiny_cifar

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build_cifar10_assets.sh"
# appended to the script's own arguments (the last occurrence of an option wins): small enough for a test
TINY = {
    "train_cifar10.py": "--val_size 10 --hidden_size 16 --num_attention_heads 2 --intermediate_size 32 "
    "--batch_size 10 --epochs 1 --warmup_epochs 0.5 --device cpu --num_threads 1",
    "train_sae.py": "--expansion_factor 2 --k 4 --epochs 1 --batch_size 64 --warmup_steps 1 --dead_tokens 256 "
    "--harvest_batch_size 16 --shard_tokens 200 --eval_fraction 0.2 --torch_threads 1",
    "compute_bundled_mean_residuals.py": "--num_threads 1",
}


def script_commands(variables: dict[str, str]) -> list[list[str]]:
    """The script's `$PY scripts/...` lines, its variables replaced, as argument lists (script path first)."""
    commands = []
    for line in BUILD.read_text().splitlines():
        if not line.startswith("$PY scripts/"):
            continue
        line = re.sub(r"\$(\w+)", lambda m: shlex.quote(variables[m.group(1)]), line.removeprefix("$PY "))
        argv = shlex.split(line)
        commands.append(argv + shlex.split(TINY.get(Path(argv[0]).name, "")))
    return commands


def run_script(argv: list[str], monkeypatch) -> None:
    path = REPO / argv[0]
    spec = importlib.util.spec_from_file_location(f"build_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), *argv[1:]])  # train_sae.py reads sys.argv
    result = module.main() if path.name == "train_sae.py" else module.main(argv[1:])
    assert result in (None, 0) or isinstance(result, dict)


def test_the_build_script_leaves_a_complete_cifar10_domain(tmp_path, monkeypatch):
    data, assets, runs = write_tiny_cifar(tmp_path / "data"), tmp_path / "assets", tmp_path / "runs"
    monkeypatch.setenv("HF_FGA_CIFAR10_DIR", str(assets))
    variables = {
        "DATA": str(data), "A": str(assets), "RUNS": str(runs), "DEVICE": "cpu", "TRAIN_DIR": str(runs / "train"),
        "THREADS": "1",
    }  # fmt: skip
    commands = script_commands(variables)
    assert [Path(argv[0]).name for argv in commands] == [
        "export_bundled_examples.py",
        "train_cifar10.py",
        "export_sae_images.py",
        "train_sae.py",
        "merge_sae_sets.py",
        "compute_bundled_mean_residuals.py",
        "train_cifar10.py",  # again: re-writes the model card with the SAE table
    ]
    assert bundled.missing_assets("cifar10")  # nothing built yet
    for argv in commands:
        run_script(argv, monkeypatch)

    assert bundled.missing_assets("cifar10") == [] and "cifar10" in bundled.available_domains()
    # the run folder holds the sharded checkpoint and no image cache: it can be committed between sessions
    assert list((runs / "train" / "last").glob("tensors-00001-of-*.safetensors"))
    assert not list((runs / "train").glob("cache_*"))
    assert (runs / "cifar10_cache" / "cache_train.safetensors").is_file()
    model = ViTForImageClassification.from_pretrained(bundled.model_dir("cifar10"))
    assert (model.config.image_size, model.config.patch_size, model.config.num_hidden_layers) == (32, 4, 6)
    splits = json.loads(bundled.splits_path("cifar10").read_text())
    assert len(splits["validation_rows"]) == 10 and all(isinstance(row, str) for row in splits["validation_rows"])
    # the SAEs and the mean residuals are fitted on the train split without the validation rows
    assert len(list((runs / "cifar10_train_without_validation" / "data").glob("*.parquet"))) == 1
    import datasets

    kept = datasets.load_dataset(str(runs / "cifar10_train_without_validation"), split="train")
    assert len(kept) == 60 - 10
    saes = load_saes(bundled.sae_dir("cifar10"))
    assert sorted(saes) == list(range(6))
    means = load_mean_residuals(bundled.mean_residuals_path("cifar10"))
    assert sorted(means) == list(range(6)) and all(mu.shape == (16,) for mu in means.values())
    card = (bundled.model_dir("cifar10") / "README.md").read_text()
    assert "| test | " in card and "## Bundled SAEs" in card and card.count("| `resid_post` |") == 6
    assert "scripts/train_sae.py --model_name_or_path" in card and "$" + "test_accuracy" not in card
    records = bundled.example_records("cifar10")
    assert len(records) == 2 * 10 and {r["label"] for r in records} == set(range(10))
    assert all(re.fullmatch(r"test_\d{5}\.png", r["source_file_name"]) for r in records)
    assert all(r["path"].is_file() and r["path"].name.startswith(r["label_name"]) for r in records)


@pytest.mark.parametrize("argument", ["--dataset", "--model"])
def test_the_build_script_refuses_unknown_arguments(argument):
    import subprocess

    process = subprocess.run(["bash", str(BUILD), argument], capture_output=True, text=True, timeout=30)
    assert process.returncode == 2 and "--evaluate" in process.stderr


# ------------------------------------------------------------------- the 8 x 8 patch grid through the metric presets


@pytest.mark.parametrize(
    "preset, forwards",
    [  # method.md §5 on N = 64 patches, plus the clean forward: SaCo K, FC runs x trials, Pixel Flipping N
        ("papers", {"saco": 10, "faithfulness_correlation": 100, "pixel_flipping": 64}),
        ("thesis", {"saco": 64 // 4, "faithfulness_correlation": 20 * 3, "pixel_flipping": 64}),
    ],
)
def test_both_presets_fit_the_64_patches_of_a_32_px_image(preset, forwards):
    """SaCo groups of 4 patches -> 16 groups (thesis), K = 10 (papers); FC subsets of 20 of the 64 patches in both."""
    import torch

    from hf_fga.faithfulness import evaluate_faithfulness, resolve_preset

    counted = []

    def model(pixels):  # two scores that depend on every pixel; counts the images it sees
        counted.append(len(pixels))
        return torch.stack([pixels.mean(dim=(1, 2, 3)), pixels[:, 0].mean(dim=(1, 2))], dim=1)

    pixel_values, attributions = torch.rand(2, 3, 32, 32), torch.rand(2, 8, 8)
    assert resolve_preset(preset).subset_size(4) == 20
    for metric, count in forwards.items():
        counted.clear()
        scores = evaluate_faithfulness(
            model, pixel_values, attributions, [metric], preset, patch_size=4, progress=False
        )
        assert sum(counted) == 2 * (count + 1) and np.isfinite(scores[metric]).all()


def test_the_spaces_quick_metrics_take_a_64_patch_map():
    import torch
    from transformers import ViTConfig

    sys.path.insert(0, str(REPO / "spaces"))
    try:
        from fga_space import quick_faithfulness
    finally:
        sys.path.remove(str(REPO / "spaces"))
    config = ViTConfig(
        image_size=32, patch_size=4, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32
    )
    model = ViTForImageClassification(config).eval()
    scores = quick_faithfulness(
        model, torch.rand(1, 3, 32, 32), {"TransMM": torch.rand(8, 8), "FGA": torch.rand(8, 8)}
    )
    assert set(scores) == {"TransMM", "FGA"}
    assert all(np.isfinite(list(s.values())).all() and 0 <= s["pixel_flipping"] <= 1 for s in scores.values())
