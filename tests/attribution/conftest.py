"""
The model, images and naive float64 capture that the reference tests share (`test_reference.py`,
`test_control_variants.py`); a module that defines its own `vit` or `pixels` fixture overrides them.
"""

from __future__ import annotations

import pytest

from tests.attribution.reference import reference_capture
from tests.helpers import pixel_batch, tiny_vit


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_layers=4)


@pytest.fixture(scope="module")
def pixels():
    return pixel_batch(2, seed=3)


@pytest.fixture(scope="module")
def vit_reference(vit, pixels):
    return reference_capture(vit, pixels)
