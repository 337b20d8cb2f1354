"""
Fixtures of the Space tests: the app module, one explainer per session (bundled model, else a stand-in), and a fake
bundled folder with two complete domains and an incomplete one (for the domain picker).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_fga import bundled

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "spaces"
STANDIN_SIZE, STANDIN_PATCH = 64, 8  # an 8 x 8 patch grid: enough patches for the metrics' subsets of 20


def load_app():
    """`spaces/app.py` as a module (imported once; it never launches on import)."""
    if "fga_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fga_space_app", SPACE / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["fga_space_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["fga_space_app"]


def bundle_complete() -> bool:
    try:
        from hf_fga import bundled

        return (Path(bundled.model_dir()) / "config.json").is_file() and any(Path(bundled.sae_dir()).iterdir())
    except (ImportError, FileNotFoundError, AttributeError):
        return False


def standin_explainer(root: Path):
    """
    A small random ViT (64 px, 8 × 8 patches, 4 blocks), SAEs for blocks 1 and 2, and prototypes (with their iERFs)
    over 6 images.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    from hf_fga import bundled
    from hf_fga.attribution import compute_mean_residuals
    from hf_fga.images import load_image
    from hf_fga.prototypes import (
        IERF_METHOD,
        compute_prototype_ierfs,
        save_prototype_ierfs,
    )
    from hf_fga.sae import save_sae_set

    from ..helpers import tiny_sae

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=STANDIN_SIZE,
        patch_size=STANDIN_PATCH,
        num_labels=2,
        id2label={0: "NORMAL", 1: "PNEUMONIA"},
        label2id={"NORMAL": 0, "PNEUMONIA": 1},
    )
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessorPil(size={"height": STANDIN_SIZE, "width": STANDIN_SIZE})
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    saes = {b: tiny_sae(d_in=32, d_sae=64, layer=b, k=4, seed=b) for b in (1, 2)}
    save_sae_set(saes, root / "saes")
    examples = [str(p) for p in bundled.example_images()[:3]]
    images = [load_image(p) for p in bundled.example_images()[:6]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assets = root / "assets"
    tables = save_prototypes(assets, model, saes, images, [pixels[:4], pixels[4:]], name="stand-in", size=64, top=3)
    ierfs = compute_prototype_ierfs(model, saes, tables, lambda image: pixels[image : image + 1])
    save_prototype_ierfs(assets, ierfs, tables, saes, IERF_METHOD)
    means = compute_mean_residuals(model, [pixels], layers=sorted(saes), progress=False)
    app = load_app()
    return app.make_explainer(
        str(root / "model"), str(root / "saes"), "stand-in", examples, assets=assets, mean_residuals=means
    )


@pytest.fixture(scope="session")
def app_module():
    return load_app()


@pytest.fixture(scope="session")
def space_explainer(tmp_path_factory, app_module):
    """The bundled explainer when the bundle is complete (set FGA_SPACE_STANDIN=1 to force the stand-in)."""
    if bundle_complete() and os.environ.get("FGA_SPACE_STANDIN") != "1":
        return app_module.bundled_explainer()
    return standin_explainer(tmp_path_factory.mktemp("space_standin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def space_url(app_module, space_explainer):
    """The app launched once on 127.0.0.1 (a free port), with its queue, for the client and browser tests."""
    demo = app_module.build_demo(space_explainer)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


# ------------------------------------------------------------- a fake bundled folder, for the domain picker

FAKE_DOMAINS = {
    "chest_xray": bundled.Domain("", "chest_xray_pneumonia", "scripts/build_bundled_assets.sh", "chest X-ray"),
    "fake_scans": bundled.Domain("fake_scans", "fake_scans", "scripts/build_fake_scans_assets.sh", "fake scan"),
    "unbuilt": bundled.Domain("unbuilt", "unbuilt", "scripts/build_unbuilt_assets.sh", "unbuilt organ"),
}
CHEST_LABELS, FAKE_LABELS = ["NORMAL", "PNEUMONIA"], ["benign", "malignant", "normal"]


def write_domain(root, labels: list[str], sae_blocks: tuple[int, ...], seed: int, examples: int) -> list[Image.Image]:
    """A complete bundled domain in `root`: a tiny random ViT, its SAEs, mean residuals and example images."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    from hf_fga.attribution import compute_mean_residuals, save_mean_residuals
    from hf_fga.sae import save_sae_set

    from ..helpers import tiny_sae, tiny_vision_size

    torch.manual_seed(seed)
    size = tiny_vision_size(num_layers=4, hidden=32) | {"image_size": STANDIN_SIZE, "patch_size": STANDIN_PATCH}
    config = ViTConfig(**size, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessorPil(size={"height": STANDIN_SIZE, "width": STANDIN_SIZE})
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    saes = {b: tiny_sae(d_in=32, d_sae=64, layer=b, k=4, seed=seed + b) for b in sae_blocks}
    save_sae_set(saes, root / "saes")
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (STANDIN_SIZE, STANDIN_SIZE, 3), dtype=np.uint8)) for _ in range(4)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    means = compute_mean_residuals(model, [pixels], layers=sorted(saes), progress=False)
    save_mean_residuals(means, root / bundled.MEAN_RESIDUALS_NAME)
    (root / "examples").mkdir()
    for n, image in enumerate(images[:examples]):
        image.save(root / "examples" / f"{labels[n % len(labels)]}_{n}.png")
    return images


def write_prototypes(assets, domain_root, images: list[Image.Image]) -> None:
    """The default domain's precomputed prototypes (as `scripts/build_space_assets.py` names them: model "bundled")."""
    from transformers import ViTForImageClassification, ViTImageProcessorPil

    from hf_fga.sae import load_saes

    model = ViTForImageClassification.from_pretrained(domain_root / "model").eval()
    saes = load_saes(str(domain_root / "saes"))
    processor = ViTImageProcessorPil.from_pretrained(domain_root / "model")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        save_prototypes(assets, model, saes, images, [pixels], name="bundled", size=32, top=2)


def save_prototypes(assets, model, saes, images, pixel_batches, *, name: str, size: int, top: int) -> dict:
    """Compute the stand-in grid's prototype tables and save them with thumbnails as the Space reads them."""
    from hf_fga.prototypes import PrototypeIndex, compute_prototypes, write_thumbnails

    grid = (STANDIN_SIZE // STANDIN_PATCH,) * 2
    tables = compute_prototypes(model, saes, pixel_batches, grid, top=top)
    files = write_thumbnails(images, assets, size=size)
    meta = {
        "model": name,
        "grid": list(grid),
        "thumbnail_size": size,
        "top": top,
        "d_sae": {str(b): sae.config.d_sae for b, sae in saes.items()},
        "images": [{"file": f, "label": ""} for f in files],
    }
    PrototypeIndex(assets, meta, tables).save()
    return tables


@pytest.fixture(scope="module")
def fake_bundled(tmp_path_factory, app_module):
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
        patch.setattr(bundled, "DOMAINS", FAKE_DOMAINS)
        patch.setattr(app_module, "ASSETS", root / "assets")
        patch.setattr(app_module, "EXPLAINERS", {})  # the real bundled explainers come back afterwards
        yield root
