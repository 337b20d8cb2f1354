"""The bfloat16-vs-float32 agreement checks (hf_fga.evaluation.precision_check)."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from hf_fga.evaluation.precision_check import (
    agreement_table,
    attribution_agreement,
    faithfulness_agreement,
    summarize_agreement,
    top_k_overlap,
)
from tests.helpers import pixel_batch, tiny_vit


def test_faithfulness_agreement_rows_and_bounds():
    model, pixels = tiny_vit(seed=3), pixel_batch(3, seed=2)
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = faithfulness_agreement(model, pixels, maps, ["pixel_flipping", "saco"])
    assert len(frame) == 6 and set(frame["metric"]) == {"pixel_flipping", "saco"}
    np.testing.assert_allclose(frame["abs_diff"], (frame["bfloat16"] - frame["float32"]).abs())
    assert frame.loc[frame.metric == "pixel_flipping", "abs_diff"].max() < 2e-3
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="both precisions"):
        faithfulness_agreement(model, pixels, maps, precision="bfloat16")


def test_top_k_overlap_by_hand():
    reference = torch.arange(16.0).reshape(1, 4, 4)
    swapped = reference.clone().flatten()
    swapped[[15, 0]] = swapped[[0, 15]]  # the best patch becomes the worst
    assert top_k_overlap(reference, reference, k=4).tolist() == [1.0]
    assert top_k_overlap(swapped.reshape(1, 4, 4), reference, k=4).tolist() == [0.75]


def test_attribution_agreement_on_given_outputs():
    a = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    gates = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    outputs = {
        "float32": types.SimpleNamespace(attribution=a, gates={1: gates}),
        "bfloat16": types.SimpleNamespace(attribution=a * 1.01, gates={1: gates}),
    }
    frame = attribution_agreement(lambda precision: outputs[precision], k=5)
    assert set(frame["quantity"]) == {"map", "gates[1]"}
    np.testing.assert_allclose(frame.loc[frame.quantity == "map", "relative_error"], 0.01, rtol=1e-5)
    np.testing.assert_allclose(frame.loc[frame.quantity == "gates[1]", "relative_error"], 0.0)
    assert (frame["top_k_overlap"] == 1.0).all()


def test_summary_ranks_configurations_by_mean():
    rows = []
    for image in range(3):
        rows.append(
            {
                "image": image,
                "metric": "pixel_flipping",
                "configuration": "transmm",
                "float32": 0.3,
                "bfloat16": 0.301,
                "abs_diff": 0.001,
            }
        )
        rows.append(
            {
                "image": image,
                "metric": "pixel_flipping",
                "configuration": "fga",
                "float32": 0.2,
                "bfloat16": 0.35,
                "abs_diff": 0.15,
            }
        )  # bfloat16 reverses the ranking
    summary = summarize_agreement(pd.DataFrame(rows))["faithfulness"].iloc[0]
    assert summary["ranking_float32"] == "fga > transmm" and not summary["ranking_identical"]
    assert summary["n"] == 6 and summary["max_abs_diff"] == pytest.approx(0.15)
    assert any("ranking_identical" in line for line in agreement_table({"faithfulness": pd.DataFrame([summary])}))
