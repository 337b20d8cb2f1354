"""
CP-LRP and AttnLRP against the `lxt` package's own rules (Achtibat et al.'s reference implementation) on one tiny ViT.

lxt 2.1 does not import as a package with transformers 5: `lxt.efficient/__init__` imports every model patch, and
`lxt/efficient/models/bert.py` imports `find_pruneable_heads_and_indices` from `transformers.pytorch_utils`, which
transformers 5 removed (its torchvision ViT patch needs torchvision besides). lxt has no patch map for transformers'
ViT either. So this test loads lxt's rule modules (`lxt/efficient/rules.py`, `patches.py`, which need only torch)
without the package's `__init__`, and applies its patch functions the way its patch maps do: `layer_norm_forward` on
LayerNorm, `non_linear_forward` (identity rule) on GELU, and `cp_wrap_attention_forward` (CP-LRP) or
`wrap_attention_forward` (AttnLRP) around transformers' eager attention. lxt is a test-only dependency and optional:
install it with `pip install --no-deps 'lxt==2.1'` (its declared dependencies pull torchvision, open_clip and
bitsandbytes, and a torchvision that does not match the installed torch breaks `import transformers`).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import activations
from transformers.models.vit import modeling_vit

from hf_fga.attribution.rules import attnlrp, cp_lrp
from tests.attribution.test_rules import build, gradient_x_input
from tests.helpers import pixel_batch


@pytest.fixture
def lxt_patches(monkeypatch):
    """lxt's `efficient.patches` module, loaded without `lxt.efficient.__init__` (sys.modules restored after)."""
    lxt = pytest.importorskip("lxt")
    saved = {name: module for name, module in sys.modules.items() if name.startswith("lxt.efficient")}
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
    sys.modules["lxt.efficient"] = package
    try:
        yield importlib.import_module("lxt.efficient.patches")
    finally:
        for name in [name for name in sys.modules if name.startswith("lxt.efficient")]:
            del sys.modules[name]
        sys.modules.update(saved)


def lxt_map(monkeypatch, patches, model, pixels, target, variant: str) -> torch.Tensor:
    """Gradient × input per patch with lxt's patches applied to the classes and functions ViT uses."""
    with monkeypatch.context() as patch:
        patch.setattr(nn.LayerNorm, "forward", patches.layer_norm_forward)
        gelu = activations.GELUActivation
        patch.setattr(gelu, "original_forward", gelu.forward, raising=False)
        patch.setattr(gelu, "forward", patches.non_linear_forward)
        wrap = patches.cp_wrap_attention_forward if variant == "cp-lrp" else patches.wrap_attention_forward
        patch.setattr(modeling_vit, "eager_attention_forward", wrap(modeling_vit.eager_attention_forward))
        return gradient_x_input(model, pixels, target)


@pytest.mark.parametrize(("variant", "rules"), [("cp-lrp", cp_lrp), ("attnlrp", attnlrp)])
def test_maps_match_lxt(monkeypatch, lxt_patches, variant, rules):
    model, _ = build("vit")
    pixels, target = pixel_batch(2).double(), torch.tensor([0, 2])
    expected = lxt_map(monkeypatch, lxt_patches, model, pixels, target, variant)
    actual = gradient_x_input(model, pixels, target, rules)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    plain = gradient_x_input(model, pixels, target)
    assert (plain - expected).abs().max() > 1e-2 * expected.abs().max()  # lxt's patches were in effect
    assert nn.LayerNorm.forward is not lxt_patches.layer_norm_forward  # and are gone
