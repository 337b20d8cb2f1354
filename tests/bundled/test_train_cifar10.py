"""scripts/train_cifar10.py on a tiny synthetic CIFAR-like dataset, and the pickle-free training checkpoints."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import get_cosine_schedule_with_warmup

from hf_fga.bundled.training_state import load_training_state, save_training_state

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]  # as shared/data


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_cifar10", SCRIPTS / "train_cifar10.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_tiny_cifar(root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """A dataset folder like `shared/data/cifar10`: 32 px RGB images, 10 named classes, train and test splits."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        ds = datasets.Dataset.from_dict(
            {
                "image": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                "label": [i % 10 for i in range(n)],
            },
            features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}),
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def tiny_args(data: Path, out: Path, **extra) -> list[str]:
    argv = [
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--val_size",
        "10",
        "--hidden_size",
        "16",
        "--num_attention_heads",
        "2",
        "--intermediate_size",
        "32",
        "--batch_size",
        "10",
        "--epochs",
        "2",
        "--warmup_epochs",
        "1",
        "--checkpoint_every",
        "3",
        "--mix_prob",
        "1.0",
    ]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return argv


def test_interrupted_run_resumes_exactly(script, tmp_path):
    """Stopping mid-epoch (--max_steps) and re-running gives bit for bit the uninterrupted run's model."""
    data = write_tiny_cifar(tmp_path / "data")
    full = script.main(tiny_args(data, tmp_path / "full"))
    # the interrupted run keeps its image cache elsewhere and its checkpoint in shards of ≤ 20 KiB (the layout of a
    # run whose output_dir is committed between sessions): neither changes the result
    sharded = {"cache_dir": tmp_path / "cache", "checkpoint_shard_mb": 0.02}
    stopped = script.main(tiny_args(data, tmp_path / "parts", max_steps=7, **sharded))  # 5 steps / epoch: in epoch 2
    assert stopped == {"stopped_at_step": 7, "train_seconds": pytest.approx(stopped["train_seconds"])}
    assert not any((tmp_path / "parts").rglob("*.pt")) and not any((tmp_path / "parts").rglob("*.pkl"))
    assert not any((tmp_path / "parts").glob("cache_*")) and (tmp_path / "cache" / "cache_train.safetensors").is_file()
    shards = list((tmp_path / "parts" / "last").glob("tensors-*.safetensors"))
    assert len(shards) > 1 and all(path.stat().st_size < 0.03 * 2**20 for path in shards)
    resumed = script.main(tiny_args(data, tmp_path / "parts", **sharded))
    left = load_file(str(tmp_path / "full" / "last" / "tensors.safetensors"))
    right = {
        k: v for path in (tmp_path / "parts" / "last").glob("*.safetensors") for k, v in load_file(str(path)).items()
    }
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left if k.startswith(("model.", "optimizer.")))
    assert resumed["test"] == full["test"] and resumed["global_steps"] == full["global_steps"] == 10
    log = [json.loads(line) for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert sum(map(sum, full["test"]["confusion_matrix"])) == 20


def test_crop_and_flip_are_integer_shifts_with_zero_padding(script):
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = script.crop_and_flip(images, pad=2, hflip=True, gen=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(2):  # every output is one of the 5 x 5 x 2 shifted (and maybe mirrored) windows
        windows = [padded[b, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def test_mix_keeps_the_label_weights_consistent(script):
    args = script.TrainCifarArguments(mix_prob=1.0)
    images = torch.rand(6, 3, 32, 32)
    for seed in range(6):
        np.random.seed(seed)
        out, perm, lam = script.mix(images, args, torch.Generator().manual_seed(seed))
        assert out.shape == images.shape and 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(6))
        cutmix = torch.isclose(out, images) | torch.isclose(out, images[perm])
        if cutmix.all():  # CutMix: lam is the share of pixels kept from the batch itself
            kept = torch.isclose(out, images).all(dim=1).float().mean(dim=(1, 2))
            moved = perm != torch.arange(6)
            assert torch.allclose(kept[moved], torch.full_like(kept[moved], lam), atol=1e-6)
        else:  # MixUp
            torch.testing.assert_close(out, lam * images + (1 - lam) * images[perm])


def test_validation_split_is_stratified_and_seeded(script):
    labels = torch.arange(100) % 10
    index = script.validation_index(labels, 20, seed=0)
    assert torch.equal(index, script.validation_index(labels, 20, seed=0))
    assert torch.bincount(labels[index], minlength=10).tolist() == [2] * 10


def test_bad_arguments_are_named(script):
    with pytest.raises(ValueError, match="at least 6"):
        script.TrainCifarArguments(num_hidden_layers=4)
    with pytest.raises(ValueError, match="patch_size"):
        script.TrainCifarArguments(patch_size=5)
    with pytest.raises(ValueError, match="checkpoint_shard_mb must be positive"):
        script.TrainCifarArguments(checkpoint_shard_mb=0)


def test_training_state_restores_everything_without_pickle(tmp_path):
    def make():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, get_cosine_schedule_with_warmup(optimizer, 2, 10)

    torch.manual_seed(0)
    model, optimizer, scheduler = make()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    gen = torch.Generator().manual_seed(1)
    save_training_state(
        tmp_path / "last",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=gen,
        extra={"epoch": 3, "history": [{"loss": 0.5}]},
        extra_tensors={"order": torch.arange(4)},
    )
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["state.json", "tensors.safetensors"]
    draws = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(), random.random())
    torch.manual_seed(5)
    other, other_opt, other_sched = make()
    other_gen = torch.Generator()
    extra, tensors = load_training_state(
        tmp_path / "last", model=other, optimizer=other_opt, scheduler=other_sched, generator=other_gen
    )
    assert extra == {"epoch": 3, "history": [{"loss": 0.5}]} and torch.equal(tensors["order"], torch.arange(4))
    again = (torch.rand(3), torch.rand(3, generator=other_gen), np.random.rand(), random.random())
    assert torch.equal(draws[0], again[0]) and torch.equal(draws[1], again[1]) and draws[2:] == again[2:]
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert repr(optimizer.state_dict()) == repr(other_opt.state_dict())
    assert scheduler.state_dict() == other_sched.state_dict()


def test_training_state_refuses_what_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_training_state(tmp_path / "x", model=torch.nn.Linear(2, 2), extra={"f": object()})
    with pytest.raises(FileNotFoundError, match="save_training_state"):
        load_training_state(tmp_path / "missing", model=torch.nn.Linear(2, 2))


def test_training_state_shards_restore_the_same_state(tmp_path):
    """A sharded checkpoint (files of at most max_shard_bytes, for a repository's file-size limit) loads as one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path / "one", model=model, optimizer=optimizer, extra={"epoch": 1})
    save_training_state(tmp_path / "many", model=model, optimizer=optimizer, extra={"epoch": 1}, max_shard_bytes=300)
    shards = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"tensors-00001-of-{len(shards):05d}.safetensors"
    for path in (tmp_path / "many").glob("*.safetensors"):
        shard = load_file(str(path))  # at most 300 bytes, or one larger tensor alone (the RNG states: ~5 kB)
        assert sum(t.numel() * t.element_size() for t in shard.values()) <= 300 or len(shard) == 1
    joined = {k: v for p in (tmp_path / "many").glob("*.safetensors") for k, v in load_file(str(p)).items()}
    single = load_file(str(tmp_path / "one" / "tensors.safetensors"))
    assert joined.keys() == single.keys() and all(torch.equal(joined[k], single[k]) for k in single)
    # re-saving with fewer shards leaves no stale shard behind (the folder is replaced as a whole)
    save_training_state(tmp_path / "many", model=model, optimizer=optimizer, extra={"epoch": 2}, max_shard_bytes=10**6)
    assert [p.name for p in (tmp_path / "many").glob("*.safetensors")] == ["tensors-00001-of-00001.safetensors"]
    other = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    extra, _ = load_training_state(tmp_path / "many", model=other, optimizer=other_opt)
    assert extra == {"epoch": 2} and repr(other_opt.state_dict()) == repr(optimizer.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    # a shard lost (e.g. not committed) is named, not a KeyError deep inside load_state_dict
    save_training_state(tmp_path / "lost", model=model, optimizer=optimizer, max_shard_bytes=300)
    sorted((tmp_path / "lost").glob("*.safetensors"))[1].unlink()
    with pytest.raises(FileNotFoundError, match="incomplete or mixed set of tensor shards"):
        load_training_state(tmp_path / "lost", model=other, optimizer=other_opt)
    with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
        save_training_state(tmp_path / "bad", model=model, max_shard_bytes=0)
