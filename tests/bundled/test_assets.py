"""The bundled chest X-ray model, its examples, split, SAEs and mean residuals (all read offline from the package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_fga import bundled
from tests.helpers import SHARED_DATA

BUDGET_BYTES = 40 * 1024**2
DATASET = SHARED_DATA / "chest_xray_pneumonia"


@pytest.fixture(scope="module")
def model() -> ViTForImageClassification:
    return ViTForImageClassification.from_pretrained(bundled.model_dir(), attn_implementation="eager").eval()


def counted_flops(model: ViTForImageClassification) -> int:
    """2 x MACs of one forward pass: counted on the Linear / Conv2d outputs, plus the two attention products."""
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, torch.nn.Linear):
            macs += output.numel() * module.in_features
        else:
            macs += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    handles = [m.register_forward_hook(count) for m in layers]
    size = model.config.image_size
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    tokens = (size // model.config.patch_size) ** 2 + 1
    attention = model.config.num_hidden_layers * 2 * tokens * tokens * model.config.hidden_size
    return 2 * (macs + attention)


def test_model_and_processor_load_offline_with_the_thesis_grid(model):
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
    config = model.config
    assert (config.image_size, config.patch_size) == (224, 16)
    assert config.image_size // config.patch_size == 14
    assert config.num_hidden_layers >= 6
    assert config.id2label == {0: "NORMAL", 1: "PNEUMONIA"}
    assert processor.size == {"height": 224, "width": 224}
    saved = json.loads((bundled.model_dir() / "config.json").read_text())
    assert saved.get("_attn_implementation", saved.get("attn_implementation")) in (None, "sdpa")  # the default


def test_forward_costs_at_most_one_gflop(model):
    flops = counted_flops(model)
    recorded = json.loads((bundled.model_dir() / "training_results.json").read_text())["forward_gflops"]
    assert flops <= 1e9
    assert flops / 1e9 == pytest.approx(recorded, rel=1e-3)


def test_examples_are_predicted_into_the_label_space(model):
    records = bundled.example_records()
    paths = bundled.example_images()
    assert 10 <= len(paths) <= 16
    assert [r["path"] for r in records] == paths
    assert {r["label_name"] for r in records} == {"NORMAL", "PNEUMONIA"}
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert logits.shape == (len(paths), 2)
    assert torch.isfinite(logits).all()
    assert all(model.config.id2label[r["label"]] == r["label_name"] for r in records)
    assert set(logits.argmax(-1).tolist()) <= set(model.config.id2label)


def test_eval_mode_is_deterministic(model):
    pixels = ViTImageProcessorPil.from_pretrained(bundled.model_dir())(
        images=Image.open(bundled.example_images()[0]).convert("RGB"), return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        first, second = model(pixel_values=pixels).logits, model(pixel_values=pixels).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_examples_carry_the_dataset_attribution():
    index = json.loads((bundled.example_images()[0].parent / "examples.json").read_text())
    assert index["license"] == "CC BY 4.0"
    assert "doi:10.17632/rscbjbr9sj" in index["attribution"] and "Kermany" in index["attribution"]


def test_model_card_says_research_only_and_quotes_the_test_run():
    card = (bundled.model_dir() / "README.md").read_text()
    results = json.loads((bundled.model_dir() / "training_results.json").read_text())
    assert card.startswith("---\n") and "license: cc-by-4.0" in card
    assert "NOT a medical device" in card
    assert f"{results['test']['balanced_accuracy']:.4f}" in card
    assert "scripts/train_classifier.py" in card and "--seed 0" in card


def test_bundled_assets_fit_the_budget():
    files = [p for p in bundled.ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= BUDGET_BYTES


def test_missing_asset_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        bundled.model_dir()


def test_saes_match_the_model(model):
    try:
        folder = bundled.sae_dir()
    except FileNotFoundError:
        pytest.skip("no bundled SAE set yet (hf_fga/bundled/saes)")
    from hf_fga.sae import load_saes

    saes = load_saes(folder)
    assert sorted(saes) == list(range(model.config.num_hidden_layers))
    for block, sae in saes.items():
        assert sae.config.d_in == model.config.hidden_size
        assert sae.config.hook_layer == block


def test_mean_residuals_match_the_model(model):
    try:
        path = bundled.mean_residuals_path()
    except FileNotFoundError:
        pytest.skip("no bundled mean residuals yet (hf_fga/bundled/mean_residuals.safetensors)")
    from hf_fga.attribution import load_mean_residuals

    means = load_mean_residuals(path)
    assert sorted(means) == list(range(model.config.num_hidden_layers))
    assert all(m.shape == (model.config.hidden_size,) and torch.isfinite(m).all() for m in means.values())


def patient_of(patient_id: str, file_name: str) -> str:
    """Independent re-statement of the split's patient key (NORMAL2-IM-NNNN for the catch-all id NORMAL2-IM)."""
    return "-".join(file_name.split("-")[:3]) if patient_id == "NORMAL2-IM" else patient_id


@pytest.fixture(scope="module")
def train_table():
    if not DATASET.is_dir():
        pytest.skip(f"the chest X-ray dataset is not at {DATASET} (shared data absent on this machine)")
    import datasets

    return datasets.load_dataset(str(DATASET), split="train").remove_columns("image").to_pandas()


def test_validation_split_is_patient_disjoint(train_table):
    split = json.loads(bundled.splits_path().read_text())
    is_val = train_table.file_name.isin(set(split["validation_file_names"]))
    assert is_val.sum() == split["num_validation"] == len(split["validation_file_names"])
    keys = [patient_of(p, f) for p, f in zip(train_table.patient_id, train_table.file_name, strict=True)]
    val_keys = {k for k, v in zip(keys, is_val, strict=True) if v}
    train_keys = {k for k, v in zip(keys, is_val, strict=True) if not v}
    assert val_keys and not val_keys & train_keys
    assert val_keys == set(split["validation_patient_keys"])
    assert set(train_table.label[is_val]) == {0, 1}


def test_examples_come_from_the_test_split():
    if not DATASET.is_dir():
        pytest.skip(f"the chest X-ray dataset is not at {DATASET} (shared data absent on this machine)")
    import datasets

    test = datasets.load_dataset(str(DATASET), split="test").remove_columns("image").to_pandas()
    labels = dict(zip(test.file_name, test.label, strict=True))
    for record in bundled.example_records():
        assert labels[record["source_file_name"]] == record["label"]
        assert Path(record["path"]).is_file()
