"""Feature prototypes (method.md §7): the top activating images per feature against a direct search, the index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_fga.cafe import explain_feature
from hf_fga.prototypes import (
    IERF_LEVELS,
    NO_PATCH,
    PrototypeIndex,
    compute_prototype_ierfs,
    compute_prototypes,
    quantize_ierfs,
    sae_fingerprint,
    save_prototype_ierfs,
    write_thumbnails,
)
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


def test_prototype_ierfs_are_cafe_at_the_peak_patch_and_round_trip(tmp_path):
    """Each prototype's iERF = explain_feature of its feature at its peak patch; stored quantised; stale = refused."""
    from PIL import Image

    model, sae = tiny_vit(num_layers=3), tiny_sae(layer=1, seed=5, activation="relu")
    pixels = pixel_batch(4, seed=7)
    tables = compute_prototypes(model, {1: sae}, [pixels], (4, 4), top=2)
    with torch.no_grad():  # the build script runs without grad: the iERFs must not care
        maps = compute_prototype_ierfs(model, {1: sae}, tables, lambda i: pixels[i : i + 1])
    table = tables[1]
    assert maps[1].shape == (128, 2, 4, 4) and (maps[1][table.images < 0] == 0).all()
    for feature, slot in list(zip(*np.nonzero(table.images >= 0), strict=True))[:12]:
        image, peak = int(table.images[feature, slot]), int(table.patches[feature, slot, 0])
        expected = explain_feature(model, sae, pixels[image : image + 1], int(feature), position=1 + peak).ierf[0]
        np.testing.assert_allclose(maps[1][feature, slot], expected.numpy(), rtol=1e-5, atol=1e-7)

    quantised = quantize_ierfs(np.array([[[-1.0, 0.0], [0.5, 2.0]], [[0.0, 0.0], [-3.0, 0.0]]]))
    np.testing.assert_array_equal(quantised, [[[0, 0], [round(IERF_LEVELS / 4), IERF_LEVELS]], [[0, 0], [0, 0]]])

    files = write_thumbnails([Image.new("RGB", (32, 32), (i * 60, 90, 200)) for i in range(4)], tmp_path, size=32)
    meta = {"model": "tiny", "grid": [4, 4], "thumbnail_size": 32, "top": 2, "images": [{"file": f} for f in files]}
    PrototypeIndex(tmp_path, meta, tables).save()
    plain = PrototypeIndex.load(tmp_path)
    assert not plain.has_ierfs and "--ierfs-only" in plain.ierf_problem and "missing" in plain.ierf_problem
    feature = int(np.argmax(table.values[:, 0]))
    with pytest.raises(ValueError, match="--ierfs-only"):
        plain.strip(1, feature, ierfs=True)
    save_prototype_ierfs(tmp_path, maps, tables, {1: sae}, "gradient-x-input")
    index = PrototypeIndex.load(tmp_path)
    assert index.has_ierfs and index.ierf_problem is None
    np.testing.assert_array_equal(index.ierfs[1], quantize_ierfs(maps[1]))
    overlaid, bare = index.strip(1, feature, columns=2, ierfs=True), index.strip(1, feature, columns=2)
    assert overlaid.size == bare.size and not np.array_equal(np.asarray(overlaid), np.asarray(bare))
    table.images[feature, 0] = (table.images[feature, 0] + 1) % 4  # other prototypes: the iERFs are stale
    PrototypeIndex(tmp_path, meta, tables).save()
    stale = PrototypeIndex.load(tmp_path)
    assert not stale.has_ierfs and "other prototypes" in stale.ierf_problem
