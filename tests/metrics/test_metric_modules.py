"""The bundled `evaluate` modules: offline loading, their docstring examples, hand-computed scores and validation."""

from __future__ import annotations

import doctest
import inspect
import math
from pathlib import Path

import evaluate
import numpy as np
import pytest

from hf_fga.metrics import METRIC_NAMES, metric_path


@pytest.fixture(scope="module")
def modules():
    return {name: evaluate.load(metric_path(name)) for name in METRIC_NAMES}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_docstring_examples_run(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # loaded the way users load it, so the script's local imports (curve_auc.py) resolve as they do for them
    script = inspect.getmodule(type(evaluate.load(metric_path(name))))
    test = doctest.DocTestParser().get_doctest(script._KWARGS_DESCRIPTION, {}, name, None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert test.examples and runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_folder_has_card_app_and_requirements(name):
    folder = metric_path(name)
    card = open(f"{folder}/README.md").read()
    assert card.startswith("---\n") and "sdk: gradio" in card and "app_file: app.py" in card
    app = open(f"{folder}/app.py").read()
    assert f'evaluate.load("{name}.py")' in app and "launch_gradio_widget" in app
    assert "evaluate==" in open(f"{folder}/requirements.txt").read()


def test_metric_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="saco"):
        metric_path("sacoo")


def test_saco_by_hand(modules):
    result = modules["saco"].compute(saliences=[[4.0, 3.0, 2.0, 1.0]], drops=[[0.1, 0.3, 0.2, 0.05]])
    assert result["saco"] == pytest.approx(0.4)  # Σw = -1 - 2 + 3 + 1 + 2 + 1 = 4, Σ|w| = 10
    scaled = modules["saco"].compute(saliences=[[8.0, 6.0, 4.0, 2.0]], drops=[[0.1, 0.3, 0.2, 0.05]])
    assert scaled["saco"] == pytest.approx(0.4)
    assert modules["saco"].compute(saliences=[[1.0, 1.0, 1.0]], drops=[[0.1, 0.3, 0.2]])["saco"] == 0.0


def test_faithfulness_correlation_by_hand(modules):
    sums, drops = [1.0, 2.0, 3.0, 5.0], [0.2, 0.1, 0.4, 0.3]
    pearson = modules["faithfulness_correlation"].compute(attribution_sums=[sums], drops=[drops])
    assert pearson["faithfulness_correlation"] == pytest.approx(np.corrcoef(sums, drops)[0, 1])
    spearman = modules["faithfulness_correlation"].compute(
        attribution_sums=[sums], drops=[drops], correlation="spearman"
    )
    assert spearman["faithfulness_correlation"] == pytest.approx(0.6)  # ranks (1,2,3,4) vs (2,1,4,3)
    trials = modules["faithfulness_correlation"].compute(
        attribution_sums=[[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]], drops=[[1.0, 2.0, 3.0, 3.0, 2.0, 1.0]], trials=2
    )
    assert trials["faithfulness_correlation"] == pytest.approx(0.0)  # mean of +1 and -1
    constant = modules["faithfulness_correlation"].compute(attribution_sums=[[2.0] * 4], drops=[drops])
    assert constant["faithfulness_correlation"] == 0.0


def test_curve_aucs_by_hand(modules):
    curve = [0.9, 0.6, 0.3, 0.2, 0.0]
    trapezoid = (0.9 + 0.6) / 2 + (0.6 + 0.3) / 2 + (0.3 + 0.2) / 2 + (0.2 + 0.0) / 2
    assert modules["pixel_flipping"].compute(curves=[curve])["pixel_flipping"] == pytest.approx(trapezoid / 4)
    thesis = modules["pixel_flipping"].compute(curves=[curve], auc="trapezoid")
    assert thesis["pixel_flipping"] == pytest.approx(trapezoid)
    assert modules["deletion"].compute(curves=[curve])["deletion"] == pytest.approx(trapezoid / 4)
    assert modules["insertion"].compute(curves=[curve[::-1]])["insertion"] == pytest.approx(trapezoid / 4)
    per_image = modules["insertion"].compute(curves=[curve, [0.0, 1.0]], return_per_image=True)
    assert per_image["insertion_per_image"] == pytest.approx([trapezoid / 4, 0.5])
    assert math.isclose(per_image["insertion"], (trapezoid / 4 + 0.5) / 2)


def test_invalid_inputs_raise_value_errors(modules):
    with pytest.raises(ValueError, match="same"):
        modules["saco"].compute(saliences=[[1.0, 2.0]], drops=[[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="at least 2 groups"):
        modules["saco"].compute(saliences=[[1.0]], drops=[[0.1]])
    with pytest.raises(ValueError, match="NaN"):
        modules["saco"].compute(saliences=[[1.0, float("nan")]], drops=[[0.1, 0.2]])
    with pytest.raises(ValueError, match="correlation"):
        modules["faithfulness_correlation"].compute(
            attribution_sums=[[1.0, 2.0]], drops=[[1.0, 2.0]], correlation="kendall"
        )
    with pytest.raises(ValueError, match="trials=3"):
        modules["faithfulness_correlation"].compute(attribution_sums=[[1.0, 2.0]], drops=[[1.0, 2.0]], trials=3)
    with pytest.raises(ValueError, match="auc"):
        modules["pixel_flipping"].compute(curves=[[1.0, 0.0]], auc="simpson")
    for name in ("pixel_flipping", "insertion", "deletion"):
        with pytest.raises(ValueError, match="at least 2 finite"):
            modules[name].compute(curves=[[1.0]])


@pytest.mark.parametrize("name", ["pixel_flipping", "deletion", "insertion"])
def test_curve_metrics_share_one_auc_implementation(name):
    link = Path(metric_path(name)) / "curve_auc.py"
    assert link.is_symlink() and link.resolve() == (Path(metric_path(name)).parent / "curve_auc.py").resolve()


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_modules_share_one_info_and_result_implementation(name):
    folder = Path(metric_path(name))
    link = folder / "metric_module.py"
    assert link.is_symlink() and link.resolve() == (folder.parent / "metric_module.py").resolve()
    assert "from .metric_module import mean_result, metric_info" in (folder / f"{name}.py").read_text()


def test_deletion_is_the_normalised_pixel_flipping_auc(modules):
    curves = np.random.default_rng(0).random((5, 9)).tolist()
    deletion = modules["deletion"].compute(curves=curves, return_per_image=True)["deletion_per_image"]
    flipping = modules["pixel_flipping"].compute(curves=curves, auc="normalized", return_per_image=True)
    assert deletion == flipping["pixel_flipping_per_image"]
