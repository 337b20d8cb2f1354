"""`hf_fga.validation`: real numbers of any numeric type, no bools; integers; zero-shot label lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_fga.validation import candidate_label_list, integer, real_number


@pytest.mark.parametrize(
    "value", [0.5, np.float32(0.5), np.float16(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5)]
)
def test_real_numbers_of_every_type(value):
    assert real_number("kappa", value, low=0, inclusive=False) == 0.5
    assert type(real_number("kappa", value)) is float


@pytest.mark.parametrize("value", [2, np.int64(2), np.uint8(2), torch.tensor(2)])
def test_integers_are_real_numbers(value):
    assert real_number("cmax", value, low=1, inclusive=False) == 2.0


@pytest.mark.parametrize(
    "value", [True, np.bool_(True), torch.tensor(True), 1 + 0j, np.complex64(1), "0.5", None, [0.5], np.ones(2)]
)
def test_non_numbers_are_type_errors(value):
    with pytest.raises(TypeError, match="kappa must be"):
        real_number("kappa", value, low=0, inclusive=False)


def test_ranges_and_non_finite_values():
    with pytest.raises(ValueError, match=r"kappa must be a finite real number > 0 \(the gate's sensitivity\), got 0"):
        real_number("kappa", 0.0, low=0, inclusive=False, meaning="the gate's sensitivity")
    with pytest.raises(ValueError, match="cmax must be a finite real number > 1, got 1"):
        real_number("cmax", np.float32(1.0), low=1, inclusive=False)
    assert real_number("x", 1.0, low=1, high=2) == 1.0 and real_number("x", 2.0, low=1, high=2) == 2.0
    with pytest.raises(ValueError, match="< 2"):
        real_number("x", 2.0, low=1, high=2, inclusive=(True, False))
    for value in (float("nan"), np.inf, torch.tensor(float("-inf"))):
        with pytest.raises(ValueError, match="finite"):
            real_number("kappa", value)


def test_integer():
    assert integer("top_k_features", np.int32(3), low=1) == 3 and integer("n", torch.tensor(4)) == 4
    for bad in (True, 2.0, np.float32(2), "2"):
        with pytest.raises(TypeError, match="must be an integer"):
            integer("top_k_features", bad, low=1)
    with pytest.raises(ValueError, match=">= 1.*got -1"):
        integer("top_k_features", -1, low=1)


def test_candidate_labels():
    assert candidate_label_list("cat") == ["cat"]
    assert candidate_label_list("cat, dog ,x-ray") == ["cat", "dog", "x-ray"]
    assert candidate_label_list(("cat", "dog")) == ["cat", "dog"]
    with pytest.raises(ValueError, match="empty"):
        candidate_label_list([])
    with pytest.raises(ValueError, match="empty"):
        candidate_label_list(" , ")
    with pytest.raises(ValueError, match=r"\['cat'\] more than once"):
        candidate_label_list(["cat", "dog", "cat"])
    with pytest.raises(TypeError, match="non-empty strings"):
        candidate_label_list(["cat", 3])
    with pytest.raises(TypeError, match="list of strings"):
        candidate_label_list(3)
