"""The prototypes shipped in spaces/assets/ belong to the bundled SAEs and stay small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hf_fga.prototypes import IERF_LEVELS, INDEX_NAME, NO_PATCH, PrototypeIndex

from .conftest import SPACE, bundle_complete

ASSETS = SPACE / "assets"
pytestmark = pytest.mark.skipif(not (ASSETS / INDEX_NAME).is_file(), reason="spaces/assets/ has no prototypes")


def test_assets_are_small_and_complete():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 5 * 2**20, f"spaces/assets is {total / 2**20:.1f} MB; keep it a few MB"
    index = PrototypeIndex.load(ASSETS)
    grid = index.grid
    for block, table in index.tables.items():
        used = table.images[table.images >= 0]
        assert used.max() < len(index.meta["images"]), f"block {block} names an image without a thumbnail"
        assert (table.values[table.images < 0] == 0).all()
        fired = table.images >= 0
        assert (np.diff(table.values.astype(np.float64), axis=1) <= 0).all(), "prototypes must be strongest first"
        marked = table.patches[fired]
        assert ((marked == NO_PATCH) | (marked < grid[0] * grid[1])).all()
        assert (marked[:, 0] != NO_PATCH).all(), "every prototype marks at least its peak patch"
    for entry in index.meta["images"]:
        assert (ASSETS / entry["file"]).is_file()


def test_prototype_ierfs_ship_with_the_prototypes():
    index = PrototypeIndex.load(ASSETS)
    assert index.has_ierfs, index.ierf_problem
    for block, table in index.tables.items():
        maps = index.ierfs[block]
        assert maps.dtype == np.uint8 and maps.shape == (*table.images.shape, *index.grid)
        assert (maps[table.images < 0] == 0).all() and maps.max() <= IERF_LEVELS
        peaks = maps[table.images >= 0].max(axis=(1, 2))
        assert (peaks == IERF_LEVELS).all(), "every prototype's iERF is scaled to its own positive peak"


@pytest.mark.skipif(not bundle_complete(), reason="the bundled model or SAEs are missing")
def test_assets_match_the_bundled_saes():
    from hf_fga import bundled
    from hf_fga.sae import load_saes

    index = PrototypeIndex.load(ASSETS)
    saes = load_saes(str(bundled.sae_dir()))
    assert index.meta["model"] == "bundled"
    assert index.matches(saes), "the bundled SAEs changed: re-run python scripts/build_space_assets.py"
    assert sorted(index.tables) == sorted(saes)
    assert index.meta["grid"] == [14, 14]
    assert Path(index.meta["images"][0]["file"]).suffix == ".jpg"
