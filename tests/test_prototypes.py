"""Feature prototypes (method.md §7): the top activating images per feature against a direct search, the index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_fga.prototypes import NO_PATCH, PrototypeIndex, compute_prototypes, sae_fingerprint, write_thumbnails
from tests.helpers import pixel_batch, tiny_sae, tiny_vit


def direct_prototypes(model, sae, pixels, block, top, marks):
    """Top images per feature by peak patch activation, from `output_hidden_states` (an independent residual path)."""
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        x = hidden[block] if sae.config.hook_point == "resid_pre" else hidden[block + 1]
        acts = sae.encode(x[:, 1:]).double()  # (B, N, K), patch tokens only
    peak = acts.max(dim=1).values  # (B, K)
    images = peak.T.argsort(dim=1, descending=True)[:, :top]
    values = peak.T.gather(1, images)
    return acts, images, values


@pytest.mark.parametrize("hook_point", ["resid_post", "resid_pre"])
def test_prototypes_match_a_direct_search(hook_point):
    model = tiny_vit(num_layers=3)
    sae = tiny_sae(layer=1, seed=3, hook_point=hook_point)
    pixels = pixel_batch(7, seed=4)
    tables = compute_prototypes(
        model, {1: sae}, [pixels[:3], pixels[3:5], pixels[5:]], (4, 4), top=4, patches_per_image=3
    )
    acts, images, values = direct_prototypes(model, sae, pixels, 1, top=4, marks=3)
    table = tables[1]
    fired = values > 0
    fired, images, values = fired.numpy(), images.numpy(), values.numpy()
    np.testing.assert_array_equal(np.where(fired, table.images, -1), np.where(fired, images, -1))
    np.testing.assert_allclose(table.values[fired], values[fired], rtol=1e-4, atol=1e-5)
    assert (table.images[~fired] == -1).all()
    for k, n in zip(*np.nonzero(fired), strict=True):
        image = int(images[k, n])
        column = acts[image, :, k]
        expected = [int(p) for p in column.argsort(descending=True)[:3] if column[p] >= 0.5 * column.max()]
        assert [int(p) for p in table.patches[k, n] if p != NO_PATCH] == expected
    again = compute_prototypes(model, {1: sae}, [pixels], (4, 4), top=4, patches_per_image=3)[1]
    np.testing.assert_array_equal(again.images, table.images)


def test_prototype_index_round_trip_and_strip(tmp_path):
    from PIL import Image

    model, sae = tiny_vit(num_layers=3), tiny_sae(layer=2, seed=5)
    pixels = pixel_batch(5, seed=6)
    tables = compute_prototypes(model, {2: sae}, [pixels], (4, 4), top=3)
    files = write_thumbnails([Image.new("RGB", (40, 30), (i * 40, 100, 200)) for i in range(5)], tmp_path, size=32)
    meta = {
        "model": "tiny",
        "grid": [4, 4],
        "thumbnail_size": 32,
        "top": 3,
        "d_sae": {"2": 128},
        "images": [{"file": f, "label": "x"} for f in files],
    }
    PrototypeIndex(tmp_path, meta, tables).save()
    index = PrototypeIndex.load(tmp_path)
    assert index.matches({2: sae}) and not index.matches({1: sae})
    meta["sae_fingerprints"] = {"2": sae_fingerprint(sae)}
    index = PrototypeIndex(tmp_path, meta, tables)
    assert index.matches({2: sae}) and not index.matches({2: tiny_sae(layer=2, seed=6)})
    feature = int(np.argmax(tables[2].values[:, 0]))
    found = index.prototypes(2, feature)
    assert [p[0] for p in found] == [i for i in tables[2].images[feature] if i >= 0]
    strip = index.strip(2, feature, columns=2)
    assert strip.size == (2 * 32, -(-len(found) // 2) * 32)
    assert index.prototypes(2, 10_000) == [] and index.strip(7, 0) is None
    with pytest.raises(FileNotFoundError, match="build_space_assets"):
        PrototypeIndex.load(tmp_path / "missing")
