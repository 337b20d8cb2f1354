"""Fixtures of the Space tests: the app module, and one explainer per session (bundled model, else a stand-in)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

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
        PrototypeIndex,
        compute_prototype_ierfs,
        compute_prototypes,
        save_prototype_ierfs,
        write_thumbnails,
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
    grid = (STANDIN_SIZE // STANDIN_PATCH,) * 2
    tables = compute_prototypes(model, saes, [pixels[:4], pixels[4:]], grid, top=3)
    assets = root / "assets"
    files = write_thumbnails(images, assets, size=64)
    meta = {
        "model": "stand-in",
        "grid": list(grid),
        "thumbnail_size": 64,
        "top": 3,
        "d_sae": {str(b): 64 for b in saes},
        "images": [{"file": f, "label": ""} for f in files],
    }
    PrototypeIndex(assets, meta, tables).save()
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
