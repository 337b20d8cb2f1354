"""The Space's quick faithfulness scores against the library's evaluation with the same settings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.faithfulness import evaluate_faithfulness

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "spaces"))

from fga_space.quick_metrics import curve_steps, quick_faithfulness, sampled_auc  # noqa: E402


# ------------------------------------------------------------------------------------------------- quick metrics
def small_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=48,
        patch_size=8,
        num_labels=3,
        attn_implementation="eager",
    )  # 6 x 6 = 36 patches
    return ViTForImageClassification(config).eval()


def test_sampled_pixel_flipping_is_the_papers_auc_on_the_full_curve():
    steps = curve_steps(196)
    assert steps[0] == 0 and steps[-1] == 196 and len(steps) == 15
    assert sampled_auc(1 - steps / 196, steps, 196) == pytest.approx(0.5)
    np.testing.assert_array_equal(curve_steps(10, 100), np.arange(11))


def test_quick_metrics_equal_evaluate_faithfulness_with_the_same_settings():
    model = small_vit()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 48, 48, generator=gen)
    maps = {"TransMM": torch.rand(6, 6, generator=gen), "FGA": torch.rand(6, 6, generator=gen)}
    quick = quick_faithfulness(model, pixels, maps, fc_runs=12, pf_points=37)
    reference = evaluate_faithfulness(
        model,
        pixels.expand(2, -1, -1, -1),
        torch.stack(list(maps.values())),
        preset="papers",
        fc_runs=12,
        image_ids=[0, 0],
        progress=False,
    )
    for n, name in enumerate(maps):
        for metric in ("saco", "faithfulness_correlation", "pixel_flipping"):
            assert quick[name][metric] == pytest.approx(float(reference[metric][n]), abs=1e-9), (name, metric)
    coarse = quick_faithfulness(model, pixels, maps, fc_runs=12, pf_points=7)
    assert coarse["FGA"]["pixel_flipping"] == pytest.approx(quick["FGA"]["pixel_flipping"], abs=0.1)
