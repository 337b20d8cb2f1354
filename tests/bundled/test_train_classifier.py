"""scripts/train_classifier.py on a tiny synthetic dataset (a few steps), so the script stays working."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_classifier.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_classifier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def write_tiny_dataset(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    """A dataset folder like chest_xray_pneumonia (32 px grey-as-RGB images), with NORMAL2-IM catch-all ids."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % 2 for i in range(n)]
        names = [f"NORMAL2-IM-{i:04d}-0001.jpeg" if y == 0 else f"person{i}_bacteria_{i}.jpeg" for i, y in
                 enumerate(labels)]
        grey = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]
        ds = datasets.Dataset.from_dict(
            {
                "image": [np.stack([g] * 3, -1) for g in grey],
                "label": labels,
                "patient_id": ["NORMAL2-IM" if y == 0 else f"person{i}" for i, y in enumerate(labels)],
                "subtype": ["normal" if y == 0 else "bacteria" for y in labels],
                "file_name": names,
            },
            features=datasets.Features({
                "image": datasets.Image(), "label": datasets.Value("int64"), "patient_id": datasets.Value("string"),
                "subtype": datasets.Value("string"), "file_name": datasets.Value("string"),
            }),
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def tiny_args(data: Path, out: Path, epochs: int, export: Path | None = None) -> list[str]:
    argv = [
        "--data_dir", str(data), "--output_dir", str(out), "--image_size", "32", "--patch_size", "8",
        "--low_res", "16", "--low_res_epochs", "1", "--epochs", str(epochs), "--hidden_size", "16",
        "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "32", "--batch_size", "8",
        "--max_steps_per_epoch", "2", "--val_fraction", "0.25", "--num_threads", "1",
    ]
    return argv + (["--export_dir", str(export)] if export else [])


def test_train_resume_and_export(script, tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    out, export = tmp_path / "run", tmp_path / "export"
    first = script.main(tiny_args(data, out, epochs=2))
    assert first["best_epoch"] == 2 and set(first["test"]) >= {"accuracy", "balanced_accuracy", "confusion_matrix"}
    assert sum(map(sum, first["test"]["confusion_matrix"])) == 8
    second = script.main(tiny_args(data, out, epochs=3, export=export))  # resumes at epoch 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r["resolution"] for r in log] == [16, 32, 32]
    assert second["test"] == first["test"] or second["best_epoch"] == 3
    model = ViTForImageClassification.from_pretrained(export)
    processor = ViTImageProcessorPil.from_pretrained(export)
    assert model.config.image_size == 32 and processor.size == {"height": 32, "width": 32}
    splits = json.loads((out / "splits.json").read_text())
    assert splits["num_validation"] + splits["num_train"] == 24


class _Payload:
    """Unpickling this runs `os.system`, which creates a marker file: proof that a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("file_name", ["last.pt", "cache_train.pt"])
def test_crafted_checkpoint_or_cache_is_refused_without_running_it(script, tmp_path, file_name):
    data = write_tiny_dataset(tmp_path / "data")
    out, marker = tmp_path / "run", tmp_path / "payload_ran"
    out.mkdir()
    torch.save({"model": _Payload(marker), "state": {"epoch": 0}}, out / file_name)
    with pytest.raises(ValueError, match=rf"{file_name} holds Python objects that this script refuses to unpickle"):
        script.main(tiny_args(data, out, epochs=2))
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(script, tmp_path):
    gen = torch.Generator().manual_seed(3)
    np.random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in the legacy NumPy state
    torch.save({"rng": script.rng_state(gen)}, tmp_path / "rng.pt")
    expected = (torch.rand(3), torch.rand(3, generator=gen), np.random.standard_normal(4), random.random())
    script.set_rng_state(script.safe_torch_load(tmp_path / "rng.pt")["rng"], gen)
    again = (torch.rand(3), torch.rand(3, generator=gen), np.random.standard_normal(4), random.random())
    torch.testing.assert_close(again[0], expected[0])
    torch.testing.assert_close(again[1], expected[1])
    np.testing.assert_array_equal(again[2], expected[2])
    assert again[3] == expected[3]


def test_patient_split_is_disjoint_and_stratified(script):
    ids = ["NORMAL2-IM"] * 4 + ["IM-0001", "IM-0001", "person1", "person2", "person2", "person3"]
    names = [f"NORMAL2-IM-000{i}-0001.jpeg" for i in range(4)] + ["a", "b", "c", "d", "e", "f"]
    keys = script.patient_keys(ids, names)
    assert keys[:4] == [f"NORMAL2-IM-000{i}" for i in range(4)] and keys[4:] == ids[4:]
    labels = [0] * 6 + [1] * 4
    val = script.patient_split(keys, labels, 0.4, seed=0)
    assert val == script.patient_split(keys, labels, 0.4, seed=0)
    assert {labels[keys.index(k)] for k in val} == {0, 1}


def test_augment_is_seeded_and_in_range(script):
    args = script.TrainClassifierArguments(image_size=32, patch_size=8, low_res=16, epochs=1, low_res_epochs=0)
    images = torch.rand(4, 32, 32)
    a = script.augment(images, 16, args, torch.Generator().manual_seed(1))
    b = script.augment(images, 16, args, torch.Generator().manual_seed(1))
    assert a.shape == (4, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_forward_flops_formula(script):
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=6, intermediate_size=384,
                       num_labels=2)
    d, m, n = 192, 384, 197
    expected = 2 * (196 * 768 * d + 6 * (n * (4 * d * d + 2 * d * m) + 2 * n * n * d) + 2 * d)
    assert script.forward_flops(config) == expected


def test_bad_arguments_are_named(script):
    with pytest.raises(ValueError, match="low_res_epochs"):
        script.TrainClassifierArguments(epochs=2, low_res_epochs=3)
    with pytest.raises(ValueError, match="val_fraction"):
        script.TrainClassifierArguments(val_fraction=1.5)


def test_card_needs_the_test_evaluation():
    from hf_fga.bundled.model_card import render_classifier_card

    with pytest.raises(ValueError, match="test"):
        render_classifier_card({"args": {}}, ["python scripts/train_classifier.py"])


def test_merge_sae_sets_overrides_blocks(tmp_path):
    from hf_fga.sae import SparseAutoencoder, SparseAutoencoderConfig, load_saes, save_sae_set

    spec = importlib.util.spec_from_file_location("merge_sae_sets", SCRIPT.parent / "merge_sae_sets.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)

    def sae_set(path, blocks, d_sae):
        saes = {b: SparseAutoencoder(SparseAutoencoderConfig(d_in=8, d_sae=d_sae, k=2, hook_layer=b)) for b in blocks}
        metrics = {str(b): {"dead_fraction": d_sae / 100} for b in blocks}
        return save_sae_set(saes, path, extra_index={"metrics": metrics})

    base, other = sae_set(tmp_path / "base", [0, 1], 32), sae_set(tmp_path / "other", [1], 16)
    index = merge.merge(base, [other], tmp_path / "merged")
    saes = load_saes(tmp_path / "merged")
    assert {b: s.config.d_sae for b, s in saes.items()} == {0: 32, 1: 16}
    assert index["metrics"] == {"0": {"dead_fraction": 0.32}, "1": {"dead_fraction": 0.16}}
