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

from hf_fga.bundled.classifier_training import forward_flops

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
        names = [
            f"NORMAL2-IM-{i:04d}-0001.jpeg" if y == 0 else f"person{i}_bacteria_{i}.jpeg" for i, y in enumerate(labels)
        ]
        grey = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]
        ds = datasets.Dataset.from_dict(
            {
                "image": [np.stack([g] * 3, -1) for g in grey],
                "label": labels,
                "patient_id": ["NORMAL2-IM" if y == 0 else f"person{i}" for i, y in enumerate(labels)],
                "subtype": ["normal" if y == 0 else "bacteria" for y in labels],
                "file_name": names,
            },
            features=datasets.Features(
                {
                    "image": datasets.Image(),
                    "label": datasets.Value("int64"),
                    "patient_id": datasets.Value("string"),
                    "subtype": datasets.Value("string"),
                    "file_name": datasets.Value("string"),
                }
            ),
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def tiny_args(data: Path, out: Path, epochs: int, export: Path | None = None) -> list[str]:
    argv = [
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--image_size",
        "32",
        "--patch_size",
        "8",
        "--low_res",
        "16",
        "--low_res_epochs",
        "1",
        "--epochs",
        str(epochs),
        "--hidden_size",
        "16",
        "--num_hidden_layers",
        "2",
        "--num_attention_heads",
        "2",
        "--intermediate_size",
        "32",
        "--batch_size",
        "8",
        "--max_steps_per_epoch",
        "2",
        "--val_fraction",
        "0.25",
        "--num_threads",
        "1",
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


def test_forward_flops_formula():
    config = ViTConfig(
        image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=6, intermediate_size=384, num_labels=2
    )
    d, m, n = 192, 384, 197
    expected = 2 * (196 * 768 * d + 6 * (n * (4 * d * d + 2 * d * m) + 2 * n * n * d) + 2 * d)
    assert forward_flops(config) == expected


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


def write_tiny_three_class_dataset(root: Path, sizes=(("train", 18), ("validation", 9), ("test", 6))) -> Path:
    """A dataset folder like breast_ultrasound: fixed train / validation / test splits, 3 labels, no patient ids."""
    rng = np.random.default_rng(1)
    for split, n in sizes:
        grey = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(n)]
        ds = datasets.Dataset.from_dict(
            {
                "image": [np.stack([g] * 3, -1) for g in grey],
                "label": [i % 3 for i in range(n)],
                "file_name": [f"{split}_{i}.png" for i in range(n)],
            },
            features=datasets.Features(
                {
                    "image": datasets.Image(),
                    "label": datasets.ClassLabel(names=["benign", "malignant", "normal"]),
                    "file_name": datasets.Value("string"),
                }
            ),
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_fine_tuning_on_a_dataset_with_its_own_validation_split(script, tmp_path):
    """--dataset breast_ultrasound --init_from: the body starts from the given model, the head is new (3 labels)."""
    torch.manual_seed(0)
    parent = ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
            id2label={0: "NORMAL", 1: "PNEUMONIA"},
            label2id={"NORMAL": 0, "PNEUMONIA": 1},
        )
    )
    parent.save_pretrained(tmp_path / "parent")
    data = write_tiny_three_class_dataset(tmp_path / "data")
    argv = [
        "--dataset",
        "breast_ultrasound",
        "--init_from",
        str(tmp_path / "parent"),
        "--data_dir",
        str(data),
        "--output_dir",
        str(tmp_path / "run"),
        "--image_size",
        "32",
        "--patch_size",
        "8",
        "--low_res",
        "16",
        "--low_res_epochs",
        "0",
        "--epochs",
        "1",
        "--batch_size",
        "6",
        "--learning_rate",
        "0",
        "--num_threads",
        "1",
        "--export_dir",
        str(tmp_path / "export"),
        "--evaluate_test",
        "False",
    ]
    result = script.main(argv)
    assert (result["num_train_images"], result["num_validation_images"]) == (18, 9)
    model = ViTForImageClassification.from_pretrained(tmp_path / "export")
    assert model.config.id2label == {0: "benign", 1: "malignant", 2: "normal"}
    assert model.classifier.weight.shape == (3, 16)
    body, start = model.vit.state_dict(), parent.vit.state_dict()
    assert all(torch.equal(body[k], start[k]) for k in start)  # lr 0: the body is the parent's, untouched
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["validation_file_names"] == [f"validation_{i}.png" for i in sorted(range(9), key=str)]
    with pytest.raises(ValueError, match="image_size, patch_size"):
        script.main([*argv[:-2], "--image_size", "48", "--low_res", "48", "--output_dir", str(tmp_path / "other")])


def test_hflip_mirrors_the_augmented_image(script):
    """With --hflip each output is the no-flip output or its mirror image (crop and rotation draws are unchanged;
    the flip draw comes before the brightness / contrast draws, so those are switched off here)."""
    images = torch.rand(16, 32, 32)
    outputs = []
    for hflip in (False, True):
        args = script.TrainClassifierArguments(
            image_size=32,
            patch_size=8,
            low_res=16,
            epochs=1,
            low_res_epochs=0,
            hflip=hflip,
            brightness=0.0,
            contrast=0.0,
        )
        outputs.append(script.augment(images, 32, args, torch.Generator().manual_seed(3)))
    plain, flipped = outputs
    mirrored = [torch.allclose(f, p.flip(-1), atol=1e-5) for f, p in zip(flipped, plain, strict=True)]
    same = [torch.allclose(f, p, atol=1e-6) for f, p in zip(flipped, plain, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and any(mirrored) and any(same)


def test_unknown_dataset_is_named(script):
    with pytest.raises(ValueError, match="breast_ultrasound"):
        script.TrainClassifierArguments(dataset="busi")


def test_domain_card_tables_come_from_the_results(tmp_path):
    """The breast ultrasound card: every placeholder filled, the 3 × 3 confusion matrix and recalls from results."""
    from hf_fga.bundled.model_card import DOMAIN_CARDS, RESULTS_NAME, write_domain_card

    args = {
        "image_size": 224,
        "patch_size": 16,
        "low_res": 112,
        "low_res_epochs": 0,
        "epochs": 12,
        "seed": 1,
        "num_hidden_layers": 6,
        "hidden_size": 192,
        "num_attention_heads": 3,
        "intermediate_size": 384,
        "crop_scale_min": 0.7,
        "max_rotation_deg": 10.0,
        "brightness": 0.1,
        "contrast": 0.1,
        "label_smoothing": 0.1,
        "learning_rate": 1e-3,
        "weight_decay": 0.05,
        "batch_size": 32,
        "warmup_epochs": 1.0,
        "max_grad_norm": 1.0,
        "val_fraction": 0.12,
    }
    test = {
        "accuracy": 0.5,
        "balanced_accuracy": 0.625,
        "num_examples": 8,
        "recall_per_class": {"benign": 0.5, "malignant": 0.75, "normal": 0.625},
        "confusion_matrix": [[1, 0, 1], [0, 3, 1], [2, 1, 0]],
    }
    results = {
        "test": test,
        "args": args,
        "validation_balanced_accuracy": 0.6,
        "num_validation_images": 117,
        "num_train_images": 545,
        "best_epoch": 7,
        "train_seconds": 600.0,
        "num_threads": 1,
        "torch_version": "2.13.0",
        "num_parameters": 10,
        "forward_gflops": 0.9,
        "pixel_mean": 0.3,
        "pixel_std": 0.2,
    }
    (tmp_path / RESULTS_NAME).write_text(json.dumps(results))
    card = write_domain_card(tmp_path, "breast_ultrasound").read_text()
    assert "$" not in card.replace("$$", "") and "NOT a medical device" in card
    assert "| malignant (4) | 0 | 3 | 1 |" in card and "| test | 0.5000 | 0.6250 | 0.5000 | 0.7500 | 0.6250 |" in card
    assert "--dataset breast_ultrasound" in card  # the build script's commands are quoted
    assert set(DOMAIN_CARDS) == {"breast_ultrasound"}
    with pytest.raises(ValueError, match="breast_ultrasound"):
        write_domain_card(tmp_path, "cifar10")
