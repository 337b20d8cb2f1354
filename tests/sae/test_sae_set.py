"""SAE sets, load_saes inputs and errors, model cards, push_to_hub (offline), config versioning."""

import json
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hf_fga import SparseAutoencoder, SparseAutoencoderConfig
from hf_fga.sae import load_saes, push_sae_set_to_hub, save_sae_set
from hf_fga.sae.model_card import render_sae_card
from tests.helpers import tiny_sae


def _set(tmp_path, blocks=(1, 2, 4)):
    saes = {b: tiny_sae(layer=b, seed=b, base_model_name_or_path="org/tiny-vit") for b in blocks}
    return saes, save_sae_set(saes, tmp_path / "set")


def _same(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))


def test_set_layout_and_round_trip(tmp_path):
    saes, folder = _set(tmp_path)
    index = json.loads((folder / "sae_set.json").read_text())
    assert index["blocks"] == [1, 2, 4] and index["hook_point"] == "resid_post"
    assert index["base_model_name_or_path"] == "org/tiny-vit"
    for b in (1, 2, 4):
        assert {p.name for p in (folder / f"block_{b}").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = load_saes(folder)
    assert list(loaded) == [1, 2, 4] and all(_same(loaded[b], saes[b]) for b in saes)
    assert list(load_saes(str(folder), layers=[4, 1])) == [1, 4]


def test_layers_missing_lists_available_blocks(tmp_path):
    _, folder = _set(tmp_path)
    with pytest.raises(ValueError, match=r"No SAE for block\(s\) \[3\].*\[1, 2, 4\]"):
        load_saes(folder, layers=[3])


def test_instances_lists_and_dicts(tmp_path):
    saes, folder = _set(tmp_path)
    one = tiny_sae(layer=7)
    assert load_saes(one) == {7: one}
    mixed = load_saes([one, folder / "block_2"])
    assert list(mixed) == [2, 7] and _same(mixed[2], saes[2])
    picked = load_saes({4: folder, 7: one})
    assert list(picked) == [4, 7] and _same(picked[4], saes[4])


def test_duplicate_blocks_are_an_error(tmp_path):
    _, folder = _set(tmp_path)
    with pytest.raises(ValueError, match="Two SAEs for block 2"):
        load_saes([folder, tiny_sae(layer=2)])


def test_dict_key_must_match_the_sae_block():
    with pytest.raises(ValueError, match="trained on block 3"):
        load_saes({5: tiny_sae(layer=3)})


def test_missing_folder_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_saes(tmp_path / "nope")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"Unknown SAE format.*cfg.json.*\['weights.bin'\]"):
        load_saes(tmp_path / "odd")
    with pytest.raises(ValueError, match="empty list"):
        load_saes([])
    with pytest.raises(ValueError, match="Cannot load an SAE from int"):
        load_saes(3)


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub repo"):
        load_saes("some-org/some-sae-set")


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    saes, folder = _set(tmp_path, blocks=(0, 3))
    calls = {}

    def fake_snapshot_download(repo_id, **kwargs):
        calls[repo_id] = kwargs
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = load_saes("org/sae-set", layers=[3], revision="v1")
    assert list(loaded) == [3] and _same(loaded[3], saes[3]) and calls == {"org/sae-set": {"revision": "v1"}}


def test_set_without_index_is_found_by_subfolders(tmp_path):
    saes, folder = _set(tmp_path)
    (folder / "sae_set.json").unlink()
    assert list(load_saes(folder)) == [1, 2, 4]


def test_save_set_checks_keys(tmp_path):
    with pytest.raises(ValueError, match="hook_layer=1"):
        save_sae_set({2: tiny_sae(layer=1)}, tmp_path)
    with pytest.raises(ValueError, match="at least one SAE"):
        save_sae_set({}, tmp_path)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_is_filled_from_the_config():
    sae = tiny_sae(layer=5, base_model_name_or_path="org/vit", activation="relu", l1_coefficient=0.002)
    sae.config.training_info = {
        "dataset": "org/chest-xray",
        "training_tokens": 123456,
        "seed": 7,
        "command": "python scripts/train_sae.py --blocks 5",
        "metrics": {"explained_variance": 0.9512, "l0": 31.5, "dead_fraction": 0.01, "cosine_similarity": 0.97},
    }
    card = render_sae_card(sae.config)
    meta = _front_matter(card)
    assert meta["library_name"] == "hf_fga" and meta["base_model"] == ["org/vit"]
    assert meta["datasets"] == ["org/chest-xray"] and "sparse-autoencoder" in meta["tags"]
    for text in ("block 5", "ReLU (L1)", "λ = 0.002", "123,456", "0.9512", "31.5000", "--blocks 5", "| seed | 7 |"):
        assert text in card, text


def test_card_without_training_info_says_not_recorded():
    card = render_sae_card(tiny_sae().config)
    assert "Not recorded" in card and "not recorded" in card
    assert "base_model" not in _front_matter(card)


def test_push_to_hub_uploads_config_weights_and_card(tmp_path, monkeypatch):
    sae = tiny_sae(layer=3, base_model_name_or_path="org/vit")
    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        uploaded["kwargs"] = kwargs
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    assert sae.push_to_hub("me/tiny-sae", commit_message="hello") == "commit-info"
    assert uploaded["repo_id"] == "me/tiny-sae" and uploaded["kwargs"]["commit_message"] == "hello"
    assert set(uploaded["files"]) == {"config.json", "model.safetensors", "README.md"}
    card_path = tmp_path / "README.md"
    card_path.write_bytes(uploaded["files"]["README.md"])
    card = ModelCard.load(card_path)
    assert card.data.library_name == "hf_fga" and card.data.base_model == ["org/vit"]
    assert json.loads(uploaded["files"]["config.json"])["hook_layer"] == 3


def test_config_records_the_library_version(tmp_path):
    import hf_fga

    sae = tiny_sae()
    sae.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hf_fga_version"] == hf_fga.__version__


def test_config_from_another_version_with_unknown_field_loads_with_a_warning(tmp_path):
    sae = tiny_sae(layer=2)
    sae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hf_fga_version"] = "9.9.9"
    config["future_option"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"hf_fga 9\.9\.9.*future_option"):
        loaded = SparseAutoencoder.from_pretrained(tmp_path)
    assert _same(loaded, sae) and loaded.config.hook_layer == 2


def test_same_version_loads_silently(tmp_path):
    tiny_sae().save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SparseAutoencoderConfig.from_pretrained(tmp_path)


def _fake_hub(monkeypatch):
    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        uploaded.update(repo_id=repo_id, kwargs=kwargs)
        uploaded["files"] = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    return uploaded


@pytest.mark.parametrize("from_folder", [False, True])
def test_push_sae_set_uploads_index_card_and_blocks(tmp_path, monkeypatch, from_folder):
    saes, folder = _set(tmp_path, blocks=(0, 3))
    uploaded = _fake_hub(monkeypatch)
    assert push_sae_set_to_hub(folder if from_folder else saes, "me/sae-set") == "commit-info"
    files = set(uploaded["files"])
    assert {"sae_set.json", "README.md", "block_0/config.json", "block_3/model.safetensors"} <= files
    assert "block_3/README.md" in files and uploaded["repo_id"] == "me/sae-set"
    (tmp_path / "card.md").write_bytes(uploaded["files"]["README.md"])
    card = ModelCard.load(tmp_path / "card.md")
    assert card.data.library_name == "hf_fga" and card.data.base_model == ["org/tiny-vit"]


def test_push_set_from_a_folder_that_is_not_a_set(tmp_path, monkeypatch):
    _fake_hub(monkeypatch)
    with pytest.raises(ValueError, match="not an SAE set"):
        push_sae_set_to_hub(tmp_path, "me/x")


def test_set_card_has_one_quality_row_per_block(tmp_path):
    saes = {b: tiny_sae(layer=b, base_model_name_or_path="org/vit") for b in (2, 5)}
    for b, sae in saes.items():
        sae.config.training_info = {
            "command": "python scripts/train_sae.py",
            "metrics": {"explained_variance": 0.9 + b / 100},
        }
    folder = save_sae_set(saes, tmp_path / "s")
    card = (folder / "README.md").read_text()
    assert "| 2 | 0.9200 |" in card and "| 5 | 0.9500 |" in card and card.count("python scripts/train_sae.py") == 1
