"""
The bundled domains by name: chest X-ray (default) and breast ultrasound (model, SAEs, mean residuals, examples),
and CIFAR-10, built outside the package (HF_FGA_CIFAR10_DIR, default the checkout's runs/cifar10_assets).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_fga import bundled
from tests.helpers import SHARED_DATA

BUSI = "breast_ultrasound"
CIFAR = "cifar10"
DOMAIN_NAMES = ["chest_xray", BUSI, CIFAR]
BUSI_LABELS = {0: "benign", 1: "malignant", 2: "normal"}
SHIPPED = (bundled.ROOT / BUSI / "model" / "config.json").is_file()
needs_busi = pytest.mark.skipif(not SHIPPED, reason="the breast ultrasound model is not bundled in this checkout")
NAMED = (
    bundled.model_dir,
    bundled.sae_dir,
    bundled.mean_residuals_path,
    bundled.splits_path,
    bundled.example_images,
    bundled.example_records,
)


@pytest.fixture(autouse=True)
def unbuilt_cifar10(monkeypatch, tmp_path):
    """Every test sees an unbuilt CIFAR-10 domain (a missing folder named by the variable), whatever is built."""
    root = tmp_path / "external" / "cifar10_assets"
    monkeypatch.setenv("HF_FGA_CIFAR10_DIR", str(root))
    return root


def test_list_domains_starts_with_the_default():
    assert bundled.list_domains() == DOMAIN_NAMES
    assert bundled.DEFAULT_DOMAIN == "chest_xray"


@pytest.mark.parametrize("function", NAMED, ids=lambda f: f.__name__)
def test_calls_without_a_name_are_the_chest_xray_assets(function):
    assert function() == function("chest_xray")


@pytest.mark.parametrize("function", NAMED, ids=lambda f: f.__name__)
def test_unknown_domain_names_the_bundled_ones(function):
    with pytest.raises(ValueError, match=r"chest_x_ray.*\['chest_xray', 'breast_ultrasound', 'cifar10'\]"):
        function("chest_x_ray")


def test_the_domains_live_in_their_own_folders():
    assert bundled.domain_root() == bundled.ROOT
    assert bundled.domain_root(BUSI) == bundled.ROOT / BUSI
    assert bundled.example_images(BUSI)[0].parent == bundled.ROOT / BUSI / "examples"


def test_missing_domain_asset_names_the_domain_and_its_build(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'breast_ultrasound'.*build_breast_ultrasound_assets\.sh"):
        bundled.sae_dir(BUSI)


def fake_domain_files(root, model: bool = True, saes: bool = True, means: bool = True, examples: bool = True):
    """The files `missing_assets` looks at (not loadable models: only their presence is checked)."""
    if model:
        (root / "model").mkdir(parents=True)
        (root / "model" / "config.json").write_text("{}")
    if saes:
        (root / "saes" / "block_0").mkdir(parents=True)
    if means:
        root.mkdir(parents=True, exist_ok=True)
        (root / "mean_residuals.safetensors").write_bytes(b"")
    if examples:
        (root / "examples").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(root / "examples" / "a.png")


def test_available_domains_are_the_complete_ones(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    fake_domain_files(tmp_path)
    fake_domain_files(tmp_path / BUSI, model=False, saes=False, means=False)  # as shipped now: its examples only
    assert bundled.available_domains() == ["chest_xray"] and bundled.missing_assets() == []
    missing = bundled.missing_assets(BUSI)
    assert len(missing) == 3 and all("build_breast_ultrasound_assets.sh" in m for m in missing)
    assert [m.split(" of ")[0] for m in missing] == [
        "The bundled classifier",
        "The bundled SAE set",
        "The bundled mean-residual file",
    ]
    fake_domain_files(tmp_path / BUSI, examples=False)
    assert bundled.available_domains() == ["chest_xray", BUSI]


@pytest.mark.parametrize(
    "emptied, problem",
    [
        ("model/config.json", "has no config.json"),
        ("saes/block_0", "holds no block_<i> folder"),
        ("examples/a.png", "holds no image"),
    ],
)
def test_empty_asset_folders_make_a_domain_incomplete(monkeypatch, tmp_path, emptied, problem):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    fake_domain_files(tmp_path)
    path = tmp_path / emptied
    path.rmdir() if path.is_dir() else path.unlink()
    (missing,) = bundled.missing_assets()
    assert problem in missing and "'chest_xray'" in missing and "build_bundled_assets.sh" in missing
    assert bundled.available_domains() == []


def test_this_checkout_offers_the_chest_xray_domain(monkeypatch):
    monkeypatch.delenv("HF_FGA_CIFAR10_DIR")  # the checkout's own runs/cifar10_assets (offered only once built)
    assert bundled.available_domains()[0] == "chest_xray"
    assert set(bundled.available_domains()) <= set(bundled.list_domains())
    assert (BUSI in bundled.available_domains()) == SHIPPED
    assert (CIFAR in bundled.available_domains()) == (not bundled.missing_assets(CIFAR))


# ----------------------------------------------------------------------------------- CIFAR-10: an external domain


def test_cifar10_lives_outside_the_package(monkeypatch, unbuilt_cifar10):
    assert bundled.domain_root(CIFAR) == unbuilt_cifar10
    monkeypatch.delenv("HF_FGA_CIFAR10_DIR")
    assert bundled.domain_root(CIFAR) == bundled.EXTERNAL_ROOT / "cifar10_assets"
    assert bundled.EXTERNAL_ROOT == bundled.ROOT.parents[1] / "runs"
    monkeypatch.setenv("HF_FGA_CIFAR10_DIR", "")  # empty: as if unset
    assert bundled.domain_root(CIFAR) == bundled.EXTERNAL_ROOT / "cifar10_assets"


@pytest.mark.parametrize("function", NAMED, ids=lambda f: f.__name__)
def test_unbuilt_cifar10_names_its_build_script_and_variable(function, unbuilt_cifar10):
    with pytest.raises(FileNotFoundError) as raised:
        function(CIFAR)
    message = str(raised.value)
    assert f"'cifar10' domain is missing at {unbuilt_cifar10}" in message
    assert "built, not shipped" in message and "`bash scripts/build_cifar10_assets.sh`" in message
    assert "HF_FGA_CIFAR10_DIR" in message


def test_cifar10_is_offered_once_built(monkeypatch, tmp_path, unbuilt_cifar10):
    monkeypatch.setattr(bundled, "ROOT", tmp_path / "package")
    fake_domain_files(tmp_path / "package")
    assert bundled.available_domains() == ["chest_xray"]
    assert len(bundled.missing_assets(CIFAR)) == 4
    fake_domain_files(unbuilt_cifar10, examples=False)
    (missing,) = bundled.missing_assets(CIFAR)
    assert "example folder" in missing and "build_cifar10_assets.sh" in missing
    (unbuilt_cifar10 / "examples").mkdir()
    (unbuilt_cifar10 / "examples" / "cat_test_00001.jpg").write_bytes(b"")
    assert bundled.available_domains() == ["chest_xray", CIFAR]
    assert bundled.model_dir(CIFAR) == unbuilt_cifar10 / "model"
    assert bundled.example_images(CIFAR) == [unbuilt_cifar10 / "examples" / "cat_test_00001.jpg"]


# ----------------------------------------------------------------------------------------- the breast ultrasound ViT


@pytest.fixture(scope="module")
def model() -> ViTForImageClassification:
    return ViTForImageClassification.from_pretrained(bundled.model_dir(BUSI), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def example_pixels() -> torch.Tensor:
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir(BUSI))
    images = [Image.open(p).convert("RGB") for p in bundled.example_images(BUSI)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


@needs_busi
def test_model_has_the_chest_xray_grid_and_three_labels(model):
    chest = json.loads((bundled.model_dir() / "config.json").read_text())
    config = model.config
    assert (config.image_size, config.patch_size) == (224, 16)
    assert (config.hidden_size, config.num_hidden_layers) == (chest["hidden_size"], chest["num_hidden_layers"])
    assert config.id2label == BUSI_LABELS
    assert ViTImageProcessorPil.from_pretrained(bundled.model_dir(BUSI)).size == {"height": 224, "width": 224}


@needs_busi
def test_model_predicts_three_classes_on_the_examples(model, example_pixels):
    records = bundled.example_records(BUSI)
    assert [r["path"] for r in records] == bundled.example_images(BUSI)
    assert {r["label_name"] for r in records} == set(BUSI_LABELS.values())
    assert all(BUSI_LABELS[r["label"]] == r["label_name"] for r in records)
    with torch.no_grad():
        logits = model(pixel_values=example_pixels).logits
    assert logits.shape == (len(records), 3) and torch.isfinite(logits).all()


@needs_busi
def test_model_card_quotes_the_test_run_and_the_build():
    card = (bundled.model_dir(BUSI) / "README.md").read_text()
    results = json.loads((bundled.model_dir(BUSI) / "training_results.json").read_text())
    assert card.startswith("---\n") and "NOT a medical device" in card
    assert results["test"]["num_examples"] == 118
    assert f"{results['test']['balanced_accuracy']:.4f}" in card
    assert "--dataset breast_ultrasound --init_from hf_fga/bundled/model" in card
    assert results["args"]["dataset"] == BUSI and results["args"]["init_from"] == "hf_fga/bundled/model"


@needs_busi
def test_saes_load_and_meet_their_recorded_quality(model, example_pixels):
    """The recorded held-out figures meet the targets, and a float64 re-computation on the example images agrees."""
    from hf_fga.sae import load_saes

    saes = load_saes(bundled.sae_dir(BUSI))
    assert sorted(saes) == list(range(model.config.num_hidden_layers))
    index = json.loads((bundled.sae_dir(BUSI) / "sae_set.json").read_text())
    with torch.no_grad():
        hidden = model(pixel_values=example_pixels, output_hidden_states=True).hidden_states
    for block, sae in saes.items():
        recorded = index["metrics"][str(block)]
        assert recorded["explained_variance"] >= 0.90 and recorded["dead_fraction"] < 0.10
        assert sae.config.d_in == model.config.hidden_size and sae.config.hook_point == "resid_post"
        x = hidden[block + 1][:, 1:].reshape(-1, model.config.hidden_size)  # resid_post patch tokens of the block
        with torch.no_grad():
            x_hat = sae(x).reconstruction.double()
        x = x.double()
        explained = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert explained >= recorded["explained_variance"] - 0.05, (block, float(explained))


@needs_busi
def test_mean_residuals_match_the_model(model):
    from hf_fga.attribution import load_mean_residuals

    means = load_mean_residuals(bundled.mean_residuals_path(BUSI))
    assert sorted(means) == list(range(model.config.num_hidden_layers))
    assert all(m.shape == (model.config.hidden_size,) and torch.isfinite(m).all() for m in means.values())
    chest = load_mean_residuals(bundled.mean_residuals_path())
    assert not torch.allclose(means[0], chest[0])  # its own statistics, not a copy of the chest X-ray file


@needs_busi
def test_examples_and_validation_split_come_from_the_dataset():
    folder = SHARED_DATA / BUSI
    if not folder.is_dir():
        pytest.skip(f"the breast ultrasound dataset is not at {folder} (shared data absent on this machine)")
    import datasets

    test = datasets.load_dataset(str(folder), split="test").remove_columns("image").to_pandas()
    labels = dict(zip(test.file_name, test.label, strict=True))
    for record in bundled.example_records(BUSI):
        assert labels[record["source_file_name"]] == record["label"]
    validation = datasets.load_dataset(str(folder), split="validation").remove_columns("image").to_pandas()
    split = json.loads(bundled.splits_path(BUSI).read_text())
    assert split["validation_file_names"] == sorted(validation.file_name)
    assert (split["num_train"], split["num_validation"]) == (545, 117)
