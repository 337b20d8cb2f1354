"""
The package's docstring examples: the self-contained ones run and print what they show; the illustrative ones (they
start from a user's `model`, `pixel_values`, … that the docstring does not build) at least compile.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_fga"
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if ">>>" in path.read_text(encoding="utf-8")
)
ILLUSTRATIVE = {
    "hf_fga.attribution.completeness",
    "hf_fga.attribution.engine",
    "hf_fga.attribution.methods.gradient_x_input",
    "hf_fga.attribution.objectives",
    "hf_fga.attribution.rules.libragrad",
    "hf_fga.bundled.classifier_training",
    "hf_fga.bundled.training_state",
    "hf_fga.cafe.explain",
    "hf_fga.cafe.insertion",
    "hf_fga.feature_drivers",
    "hf_fga.integrations.quantus",
    "hf_fga.introspection",
    "hf_fga.onednn",
}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_the_lists_name_real_modules():
    assert len(MODULES) >= 30 and "hf_fga.bundled" in MODULES
    assert ILLUSTRATIVE <= set(MODULES), sorted(ILLUSTRATIVE - set(MODULES))


@pytest.mark.parametrize("name", [m for m in MODULES if m not in ILLUSTRATIVE])
def test_self_contained_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, f"{name} has '>>>' in its source but doctest ran no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see above)"


@pytest.mark.parametrize("name", sorted(ILLUSTRATIVE))
def test_illustrative_examples_compile(name):
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    examples = [(test.name, example) for test in tests for example in test.examples]
    assert examples, f"{name} is listed as illustrative but has no docstring example"
    for where, example in examples:
        compile(example.source, where, "single")
