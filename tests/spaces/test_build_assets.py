"""scripts/build_space_assets.py --domain: another domain's prototypes, from its own validation split, where the Space
reads them."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from hf_fga.prototypes import PrototypeIndex

from .conftest import ROOT, STANDIN_SIZE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")  # gr.Warning outside a request


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("build_space_assets", ROOT / "scripts" / "build_space_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_dataset(folder, labels: list[str]) -> list[str]:
    """A Hub-style dataset with a train and a validation split; returns the validation file names."""
    import datasets

    rng = np.random.default_rng(3)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=labels), "file_name": datasets.Value("string")}
    )
    (folder / "data").mkdir(parents=True)
    names = {}
    for split, count in (("train", 3), ("validation", 5)):
        names[split] = [f"{split}_{i}.png" for i in range(count)]
        images = [rng.integers(0, 256, (STANDIN_SIZE, STANDIN_SIZE, 3), dtype=np.uint8) for _ in range(count)]
        rows = {"image": images, "label": [i % len(labels) for i in range(count)], "file_name": names[split]}
        dataset = datasets.Dataset.from_dict(rows, features=features)
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return names["validation"]


def test_another_domain_gets_its_prototypes_where_the_space_reads_them(
    script, app_module, fake_bundled, monkeypatch, tmp_path
):
    from .conftest import FAKE_LABELS

    assert script.default_output("fake_scans").relative_to(ROOT / "spaces" / "assets").as_posix() == "fake_scans"
    assert app_module.domain_assets("fake_scans").relative_to(app_module.ASSETS).as_posix() == "fake_scans"
    assert script.default_output("chest_xray") == ROOT / "spaces" / "assets"
    validation = write_dataset(tmp_path / "fake_scans", FAKE_LABELS)
    splits = {"dataset": "fake_scans", "validation_file_names": validation[1:]}  # its own validation split
    (fake_bundled / "fake_scans" / "splits.json").write_text(json.dumps(splits))
    monkeypatch.setattr(script, "SHARED_DATA", tmp_path)  # the dataset named by the domain, under shared/data
    monkeypatch.setattr(script, "default_output", app_module.domain_assets)  # (the test's asset folder)
    before = app_module.bundled_explainer("fake_scans")
    assert before.prototypes is None
    assert "build_space_assets.py --domain fake_scans` builds them" in app_module.domain_markdown(before)

    with torch.set_grad_enabled(True):  # the script switches gradients off for the process: restored on exit
        assert script.main(["--domain", "fake_scans", "--top", "2", "--thumbnail-size", "32"]) == 0
    assert torch.is_grad_enabled()

    index = PrototypeIndex.load(app_module.domain_assets("fake_scans"))
    assert {entry["file_name"] for entry in index.meta["images"]} <= set(validation[1:])
    assert "the dataset's validation split" in index.meta["reference_split"] and index.has_ierfs
    monkeypatch.setattr(app_module, "EXPLAINERS", {})
    after = app_module.bundled_explainer("fake_scans")
    assert after.prototypes is not None and sorted(after.prototypes.tables) == after.blocks
    assert "prototypes precomputed" in app_module.domain_markdown(after)
    chest = app_module.bundled_explainer("chest_xray")
    assert chest.prototypes is not None and chest.prototypes.meta["images"] != index.meta["images"]
