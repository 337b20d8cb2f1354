"""The Space's domain picker: it offers the complete bundled domains only, and switching one switches everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from hf_fga import bundled

from ..helpers import IMAGE_SIZE, PATCH, tiny_sae, tiny_vit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")  # gr.Warning outside a request

REGISTRY = {
    "chest_xray": bundled.Domain("", "chest_xray_pneumonia", "scripts/build_bundled_assets.sh", "chest X-ray"),
    "fake_scans": bundled.Domain("fake_scans", "fake_scans", "scripts/build_fake_scans_assets.sh", "fake scan"),
    "unbuilt": bundled.Domain("unbuilt", "unbuilt", "scripts/build_unbuilt_assets.sh", "unbuilt organ"),
}
CHEST_LABELS, FAKE_LABELS = ["NORMAL", "PNEUMONIA"], ["benign", "malignant", "normal"]


def write_domain(root, labels: list[str], sae_blocks: tuple[int, ...], seed: int, examples: int) -> list[Image.Image]:
    """A complete bundled domain in `root`: a tiny random ViT, its SAEs, mean residuals and example images."""
    from hf_fga.attribution import compute_mean_residuals, save_mean_residuals
    from hf_fga.sae import save_sae_set

    model = tiny_vit(num_layers=4, seed=seed, num_labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    saes = {b: tiny_sae(d_in=32, d_sae=64, layer=b, k=4, seed=seed + b) for b in sae_blocks}
    save_sae_set(saes, root / "saes")
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(4)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    means = compute_mean_residuals(model, [pixels], layers=sorted(saes), progress=False)
    save_mean_residuals(means, root / bundled.MEAN_RESIDUALS_NAME)
    (root / "examples").mkdir()
    for n, image in enumerate(images[:examples]):
        image.save(root / "examples" / f"{labels[n % len(labels)]}_{n}.png")
    return images


def write_prototypes(assets, domain_root, images: list[Image.Image]) -> None:
    """The default domain's precomputed prototypes (as `scripts/build_space_assets.py` names them: model "bundled")."""
    from transformers import ViTForImageClassification

    from hf_fga.prototypes import PrototypeIndex, compute_prototypes, write_thumbnails
    from hf_fga.sae import load_saes

    model = ViTForImageClassification.from_pretrained(domain_root / "model").eval()
    saes = load_saes(str(domain_root / "saes"))
    processor = ViTImageProcessorPil.from_pretrained(domain_root / "model")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    grid = (IMAGE_SIZE // PATCH,) * 2
    with torch.no_grad():
        tables = compute_prototypes(model, saes, [pixels], grid, top=2)
    files = write_thumbnails(images, assets, size=32)
    meta = {
        "model": "bundled",
        "grid": list(grid),
        "thumbnail_size": 32,
        "top": 2,
        "d_sae": {str(b): sae.config.d_sae for b, sae in saes.items()},
        "images": [{"file": f, "label": ""} for f in files],
    }
    PrototypeIndex(assets, meta, tables).save()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, app_module):
    """
    A bundled folder with two complete domains (chest X-ray with prototypes, "fake_scans" without) and one with its
    examples only, as the Space sees it: `hf_fga.bundled`'s root and registry and the Space's assets swapped for it.
    """
    root = tmp_path_factory.mktemp("bundled")
    chest = write_domain(root, CHEST_LABELS, (0, 1), seed=0, examples=2)
    write_domain(root / "fake_scans", FAKE_LABELS, (1, 2), seed=7, examples=3)
    (root / "unbuilt" / "examples").mkdir(parents=True)
    chest[0].save(root / "unbuilt" / "examples" / "only_an_example.png")
    write_prototypes(root / "assets", root, chest)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bundled, "ROOT", root)
        patch.setattr(bundled, "DOMAINS", REGISTRY)
        patch.setattr(app_module, "ASSETS", root / "assets")
        patch.setattr(app_module, "EXPLAINERS", {})  # the real bundled explainers come back afterwards
        yield root


@pytest.fixture
def loads(app_module, registry, monkeypatch):
    """The domains loaded during the test, in order (each load is a `make_explainer` call)."""
    monkeypatch.setattr(app_module, "EXPLAINERS", {})
    calls = []
    make = app_module.make_explainer
    monkeypatch.setattr(app_module, "make_explainer", lambda *a, **k: calls.append(k["domain"]) or make(*a, **k))
    return calls


def component(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_picker_offers_the_complete_domains_only(app_module, registry, loads):
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


def test_switching_loads_the_domain_once_and_shows_its_examples_and_blocks(app_module, registry, loads):
    import gradio as gr

    dataset, blocks, note = app_module.switch_domain("fake_scans")
    again = app_module.switch_domain("fake_scans")
    assert loads == ["fake_scans"]
    expected = [[str(p)] for p in sorted((registry / "fake_scans" / "examples").glob("*.png"))]
    assert isinstance(dataset, gr.Dataset) and dataset.raw_samples == expected == again[0].raw_samples
    assert dataset.label == "Examples (fake scan, test split)"
    assert isinstance(blocks, gr.CheckboxGroup) and [c[1] for c in blocks.choices] == [1, 2] and blocks.value == [1]
    assert "bundled fake scan ViT" in note and "benign, malignant, normal" in note
    assert "No prototypes are precomputed for the fake scan model's SAEs" in note
    chest = app_module.switch_domain("chest_xray")
    assert loads == ["fake_scans", "chest_xray"] and "prototypes precomputed" in chest[2]
    assert [c[1] for c in chest[1].choices] == [0, 1] and len(chest[0].raw_samples) == 2


def test_the_handler_explains_with_the_picked_domain(app_module, registry, loads):
    default = app_module.bundled_explainer("chest_xray")
    handle = app_module.make_handler(default, pick=app_module.domain_explainer)
    example = str(registry / "fake_scans" / "examples" / "benign_0.png")
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
def test_a_domain_not_offered_gives_a_message(app_module, registry, loads, name):
    import gradio as gr

    default = app_module.bundled_explainer("chest_xray")
    handle = app_module.make_handler(default, pick=app_module.domain_explainer)
    example = str(registry / "examples" / "NORMAL_0.png")
    message = next(handle(example, "combined", [1], 0.5, 10.0, "", "", "transmm", False, name))[0]
    assert message.startswith("⚠️") and "not offered" in message and "chest_xray, fake_scans" in message
    dataset, blocks, note = app_module.switch_domain(name)
    assert dataset == gr.skip() and blocks == gr.skip() and "not offered" in note
    assert loads == ["chest_xray"]


def test_a_single_complete_domain_is_the_only_choice(app_module, registry, loads, monkeypatch):
    (registry / "fake_scans" / bundled.MEAN_RESIDUALS_NAME).rename(registry / "means.bak")
    try:
        demo = app_module.build_demo()
    finally:
        (registry / "means.bak").rename(registry / "fake_scans" / bundled.MEAN_RESIDUALS_NAME)
    picker = component(demo, "fga-domain")
    assert picker.choices == [("chest X-ray", "chest_xray")] and not picker.interactive
    unbuilt = component(demo, "fga-unbuilt").value
    assert "fake scan (build it with `scripts/build_fake_scans_assets.sh`)" in unbuilt and "unbuilt organ" in unbuilt


def test_no_complete_domain_says_what_is_missing(app_module, registry, monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "ROOT", tmp_path)
    with pytest.raises(RuntimeError, match=r"No bundled domain is complete.*build_bundled_assets\.sh"):
        app_module.build_demo()
