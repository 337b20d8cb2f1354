"""The Space's domain picker: it offers the complete bundled domains only, and switching one switches everything."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hf_fga import bundled

from .conftest import CHEST_LABELS, FAKE_LABELS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")  # gr.Warning outside a request


@pytest.fixture
def loads(app_module, fake_bundled, monkeypatch):
    """The domains loaded during the test, in order (each load is a `make_explainer` call)."""
    monkeypatch.setattr(app_module, "EXPLAINERS", {})
    calls = []
    make = app_module.make_explainer
    monkeypatch.setattr(app_module, "make_explainer", lambda *a, **k: calls.append(k["domain"]) or make(*a, **k))
    return calls


def component(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_picker_offers_the_complete_domains_only(app_module, fake_bundled, loads):
    assert bundled.available_domains() == ["chest_xray", "fake_scans"]
    demo = app_module.build_demo()
    picker = component(demo, "fga-domain")
    assert picker.choices == [("chest X-ray", "chest_xray"), ("fake scan", "fake_scans")]
    assert picker.value == "chest_xray" and picker.interactive
    unbuilt = component(demo, "fga-unbuilt").value
    assert "unbuilt organ" in unbuilt and "scripts/build_unbuilt_assets.sh" in unbuilt and "fake scan" not in unbuilt
    assert "NORMAL, PNEUMONIA" in component(demo, "fga-domain-note").value
    assert component(demo, "fga-examples").label == "Examples (chest X-ray, test split)"
    assert loads == ["chest_xray"]  # the other domain loads on its first pick


def test_switching_loads_the_domain_once_and_shows_its_examples_and_blocks(app_module, fake_bundled, loads):
    import gradio as gr

    dataset, blocks, note = app_module.switch_domain("fake_scans")
    again = app_module.switch_domain("fake_scans")
    assert loads == ["fake_scans"]
    expected = [[str(p)] for p in sorted((fake_bundled / "fake_scans" / "examples").glob("*.png"))]
    assert isinstance(dataset, gr.Dataset) and dataset.raw_samples == expected == again[0].raw_samples
    assert dataset.label == "Examples (fake scan, test split)"
    assert isinstance(blocks, gr.CheckboxGroup) and [c[1] for c in blocks.choices] == [1, 2] and blocks.value == [1]
    assert "bundled fake scan ViT" in note and "benign, malignant, normal" in note
    assert "No prototypes are precomputed for the fake scan model's SAEs" in note
    chest = app_module.switch_domain("chest_xray")
    assert loads == ["fake_scans", "chest_xray"] and "prototypes precomputed" in chest[2]
    assert [c[1] for c in chest[1].choices] == [0, 1] and len(chest[0].raw_samples) == 2


def test_the_handler_explains_with_the_picked_domain(app_module, fake_bundled, loads):
    default = app_module.bundled_explainer("chest_xray")
    handle = app_module.make_handler(default, pick=app_module.domain_explainer)
    example = str(fake_bundled / "fake_scans" / "examples" / "benign_0.png")
    first = next(handle(example, "combined", [1], 0.5, 10.0, "", "", "transmm", True, "fake_scans"))
    message, prediction, features = first[0], first[1], first[9]
    assert "⚠️" not in message and "bundled fake scan ViT" in message and "blocks [1]" in message
    assert list(prediction) == FAKE_LABELS
    assert "No prototypes are precomputed for the fake scan model's SAEs" in features  # not the chest X-ray ones
    fake = app_module.bundled_explainer("fake_scans")
    expected = fake.pipe(app_module.read_upload(example), layers=[1])["attribution"]
    shown = app_module.fit_within(app_module.read_upload(example), app_module.DISPLAY_SIDE)
    np.testing.assert_array_equal(np.asarray(first[4]), np.asarray(app_module.overlay(shown, expected)))
    chest = next(handle(example, "combined", [0, 1], 0.5, 10.0, "", "", "transmm", False, "chest_xray"))
    assert list(chest[1]) == CHEST_LABELS and "bundled chest X-ray ViT" in chest[0]
    assert "No prototypes" not in chest[9] and isinstance(chest[8], Image.Image)
    assert loads == ["chest_xray", "fake_scans"]


@pytest.mark.parametrize("name", ["unbuilt", "no_such_domain"])
def test_a_domain_not_offered_gives_a_message(app_module, fake_bundled, loads, name):
    import gradio as gr

    default = app_module.bundled_explainer("chest_xray")
    handle = app_module.make_handler(default, pick=app_module.domain_explainer)
    example = str(fake_bundled / "examples" / "NORMAL_0.png")
    message = next(handle(example, "combined", [1], 0.5, 10.0, "", "", "transmm", False, name))[0]
    assert message.startswith("⚠️") and "not offered" in message and "chest_xray, fake_scans" in message
    dataset, blocks, note = app_module.switch_domain(name)
    assert dataset == gr.skip() and blocks == gr.skip() and "not offered" in note
    assert loads == ["chest_xray"]


def test_a_single_complete_domain_is_the_only_choice(app_module, fake_bundled, loads, monkeypatch):
    (fake_bundled / "fake_scans" / bundled.MEAN_RESIDUALS_NAME).rename(fake_bundled / "means.bak")
    try:
        demo = app_module.build_demo()
    finally:
        (fake_bundled / "means.bak").rename(fake_bundled / "fake_scans" / bundled.MEAN_RESIDUALS_NAME)
    picker = component(demo, "fga-domain")
    assert picker.choices == [("chest X-ray", "chest_xray")] and not picker.interactive
    unbuilt = component(demo, "fga-unbuilt").value
    assert "**fake scan**, built by `scripts/build_fake_scans_assets.sh`" in unbuilt and "unbuilt organ" in unbuilt


def test_no_complete_domain_says_what_is_missing(app_module, fake_bundled, monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    with pytest.raises(RuntimeError, match=r"No bundled domain is complete.*build_bundled_assets\.sh"):
        app_module.build_demo()


def test_another_domains_prototypes_are_never_shown(app_module, fake_bundled, loads, monkeypatch, tmp_path):
    """The chest X-ray prototypes copied into the other domain's asset folder: not its SAEs', so not used."""
    import shutil

    shutil.copytree(fake_bundled / "assets", tmp_path / "assets")
    shutil.copytree(fake_bundled / "assets", tmp_path / "assets" / "fake_scans")
    monkeypatch.setattr(app_module, "ASSETS", tmp_path / "assets")
    fake = app_module.bundled_explainer("fake_scans")
    assert fake.prototypes is None and "for other SAEs than the fake scan model's" in fake.no_prototypes
    note = app_module.domain_markdown(fake)
    assert "other SAEs" in note and "`python scripts/build_space_assets.py --domain fake_scans` builds them" in note
    assert app_module.bundled_explainer("chest_xray").prototypes is not None
