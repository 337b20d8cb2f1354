"""scripts/build_controls_saes.py per domain: the lower-fidelity SAEs repeat the bundled SAEs' training settings."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from hf_fga import bundled
from hf_fga.sae.training_arguments import SaeTrainingArguments

ROOT = Path(__file__).resolve().parents[2]
# chest X-ray's block 5 SAE was trained by a command of its own (expansion 2, scripts/build_bundled_assets.sh); the
# controls' SAEs repeat the settings of blocks 0-4, which hold every gated set chosen so far
SEPARATELY_TRAINED = {("chest_xray", "block_5")}


def _script():
    spec = importlib.util.spec_from_file_location("build_controls_saes", ROOT / "scripts" / "build_controls_saes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the domains shipped in the package (an external one, CIFAR-10, is built elsewhere and has no controls plan yet)
SHIPPED_DOMAINS = [name for name in bundled.list_domains() if bundled.domain(name).root_variable is None]


@pytest.mark.parametrize("domain", SHIPPED_DOMAINS)
def test_settings_are_those_the_bundled_saes_were_trained_with(domain):
    """Every setting but k equals the flag (or the trainer's default) in each bundled SAE's recorded command."""
    script = _script()
    settings = script.SAE_SETTINGS[domain]
    blocks = [b for b in sorted(bundled.sae_dir(domain).glob("block_*")) if (domain, b.name) not in SEPARATELY_TRAINED]
    assert blocks
    for block in blocks:
        info = json.loads((block / "config.json").read_text())["training_info"]
        words = shlex.split(info["command"])
        flags = {words[i][2:]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        assert flags["license"] == script.LICENSES[domain]
        assert flags["dataset_label"] == bundled.domain(domain).dataset
        for name in (
            "expansion_factor",
            "epochs",
            "batch_size",
            "lr",
            "warmup_steps",
            "dead_tokens",
            "aux_coefficient",
            "seed",
            "eval_fraction",
        ):
            recorded = float(flags.get(name, getattr(SaeTrainingArguments, name)))
            assert float(settings.get(name, getattr(SaeTrainingArguments, name))) == recorded, (domain, block, name)


def test_assets_name_each_domain_s_files_and_validation_split():
    script = _script()
    chest, busi = script.Assets("chest_xray"), script.Assets("breast_ultrasound")
    assert (chest.model, chest.saes, chest.validation_split, chest.flag) == (
        "hf_fga/bundled/model",
        "hf_fga/bundled/saes",
        "train",
        "",
    )
    assert (busi.model, busi.saes, busi.validation_split, busi.flag) == (
        "hf_fga/bundled/breast_ultrasound/model",
        "hf_fga/bundled/breast_ultrasound/saes",
        "validation",
        " --domain breast_ultrasound",
    )
    with pytest.raises(SystemExit, match="no control settings"):
        script.Assets("imagenet")


def test_cifar10_is_read_from_its_build_folder_by_row_index(tmp_path, monkeypatch):
    """CIFAR-10 (external, no file names): its build folder, validation rows carved out of train, by row index."""
    import pandas as pd

    script = _script()
    monkeypatch.setenv("HF_FGA_CIFAR10_DIR", str(tmp_path / "assets"))
    with pytest.raises(SystemExit, match=r"holds no built cifar10 domain: run scripts/build_cifar10_assets.sh"):
        script.Assets("cifar10")
    (tmp_path / "assets").mkdir()
    splits = {"dataset": "cifar10", "split": "train", "validation_rows": ["1", "4"]}  # as train_cifar10.py writes
    (tmp_path / "assets" / "splits.json").write_text(json.dumps(splits))
    assets = script.Assets("cifar10")
    assert (assets.model, assets.saes) == (str(tmp_path / "assets" / "model"), str(tmp_path / "assets" / "saes"))
    assert (assets.ids_key, assets.validation_split, assets.flag) == ("validation_rows", "train", " --domain cifar10")
    data = tmp_path / "cifar10" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"label": [0, 1, 2, 3, 4, 5]}).to_parquet(data / "train-00000-of-00001.parquet")
    fit_set, validation, rows = script.load_train(str(data.parent), assets)
    assert rows.tolist() == [1, 4] and len(validation) == 6
    assert fit_set["label"] == [0, 2, 3, 5]  # the SAEs' images: train without the validation rows


def test_cifar10_settings_are_its_build_script_s():
    """The lower-fidelity SAEs repeat scripts/build_cifar10_assets.sh's train_sae.py flags (all but k)."""
    script = _script()
    command = next(
        line
        for line in (ROOT / "scripts" / "build_cifar10_assets.sh").read_text().splitlines()
        if "scripts/train_sae.py" in line
    )
    words = shlex.split(command.replace('"', ""))
    flags = {words[i][2:]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    assert flags["license"] == script.LICENSES["cifar10"] and flags["k"] == "32"
    for name, value in script.SAE_SETTINGS["cifar10"].items():
        assert float(flags.get(name, getattr(SaeTrainingArguments, name))) == float(value), name


def test_a_block_trained_with_other_settings_is_refused(tmp_path):
    script = _script()
    args = SimpleNamespace(ks=[], output_dir=str(tmp_path))  # no k: only the check runs
    assert script.lower_fidelity(args, script.Assets("chest_xray"), None, [0, 1, 2]) == {}
    with pytest.raises(SystemExit, match="block 5 .* has 384 features, not 4 × 192"):
        script.lower_fidelity(args, script.Assets("chest_xray"), None, [5])


def test_a_rebuilt_set_that_differs_from_the_scored_one_stops_the_build(tmp_path):
    module = _script()
    built, record = tmp_path / "saes", tmp_path / "report" / "weights_sha256.json"
    record.parent.mkdir()
    for kind, payload in (("pca", b"pca weights"), ("ev0.90", b"ev weights")):
        for block in (0, 1):
            (built / kind / f"block_{block}").mkdir(parents=True)
            (built / kind / f"block_{block}" / "model.safetensors").write_bytes(payload + bytes([block]))
    module.check_fingerprints(built, record)
    first = json.loads(record.read_text())
    assert sorted(first) == ["ev0.90", "pca"] and all(len(v) == 64 for v in first.values())
    module.check_fingerprints(built, record)  # the same weights: accepted, unchanged
    assert json.loads(record.read_text()) == first
    (built / "random" / "block_0").mkdir(parents=True)  # a set built later is added
    (built / "random" / "block_0" / "model.safetensors").write_bytes(b"random")
    module.check_fingerprints(built, record)
    assert sorted(json.loads(record.read_text())) == ["ev0.90", "pca", "random"]
    (built / "pca" / "block_1" / "model.safetensors").write_bytes(b"pca weights, retrained")
    with pytest.raises(SystemExit, match=r"\['pca'\] .* differ from the ones recorded"):
        module.check_fingerprints(built, record)
    assert sorted(json.loads(record.read_text())) == ["ev0.90", "pca", "random"]  # the record is left as it was
    assert json.loads(record.read_text())["pca"] == first["pca"]


def _fake_set(folder: Path, payload: bytes) -> None:
    for block in (0, 1):
        (folder / f"block_{block}").mkdir(parents=True)
        (folder / f"block_{block}" / "model.safetensors").write_bytes(payload + bytes([block]))
    (folder / "sae_set.json").write_text("{}")


def test_committed_sets_are_restored_instead_of_rebuilt_and_built_sets_are_kept(tmp_path):
    module = _script()
    built, weights = tmp_path / "runs" / "saes", tmp_path / "report" / "weights"
    _fake_set(weights / "ev0.90", b"scored ev0.90")
    # a stage is restored only when every one of its sets is committed
    assert not module.restore_committed("lower_fidelity", built, weights)
    assert not (built / "ev0.90").exists()
    _fake_set(weights / "ev0.75", b"scored ev0.75")
    _fake_set(built / "ev0.75", b"a rebuild that differs")
    assert module.restore_committed("lower_fidelity", built, weights)
    for kind in ("ev0.90", "ev0.75"):
        for block in (0, 1):
            restored = (built / kind / f"block_{block}" / "model.safetensors").read_bytes()
            assert restored == f"scored {kind}".encode() + bytes([block])
    assert not module.restore_committed("dictionaries", built, weights)  # pca and random: nothing committed
    _fake_set(built / "pca", b"pca")
    module.keep_copies(built, weights)
    assert (weights / "pca" / "block_1" / "model.safetensors").read_bytes() == b"pca" + bytes([1])
    assert not (weights / "random").exists()
    assert module.weight_fingerprints(built) == module.weight_fingerprints(weights)
