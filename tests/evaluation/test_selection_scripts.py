"""scripts/select_configuration.py and scripts/compare_configurations.py on a synthetic results folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from hf_fga.evaluation.statistics import summarize
from hf_fga.evaluation.storage import read_parts, write_part

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TRANSMM, GOOD, BAD = "transmm||||", "fga|combined|1|0.5|10", "fga|centered|2|0.5|10"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    rows = []
    for image in range(12):
        base = rng.uniform(0.3, 0.6, size=3)
        for config, shift in ((TRANSMM, 0.0), (GOOD, 0.05), (BAD, -0.05)):
            shift = shift + rng.normal(0.0, 0.005, size=3) if shift else np.zeros(3)
            method, variant, layers, kappa, cmax = config.split("|")
            rows.append(
                {
                    "image_id": f"img{image:02d}",
                    "index": image,
                    "config": config,
                    "method": method,
                    "variant": variant,
                    "layers": layers,
                    "kappa": float(kappa or 0),
                    "cmax": float(cmax or 0),
                    "preset": "papers",
                    "fill": "mean",
                    "saco": base[0] + shift[0],
                    "faithfulness_correlation": base[1] + shift[1],
                    "pixel_flipping": base[2] - shift[2],
                }
            )
    write_part(folder / "results", rows, rank=0, chunk=0)
    summarize(read_parts(folder / "results")).to_csv(folder / "summary.csv", index=False)
    return folder


def test_select_configuration_prints_the_best_first(run, capsys):
    assert _script("select_configuration").main([str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(GOOD) and lines[3].startswith(BAD)
    with pytest.raises(SystemExit):
        _script("select_configuration").main([str(run / "missing")])


def test_compare_configurations_markdown_and_csv(run, tmp_path, capsys):
    csv = tmp_path / "pairs.csv"
    assert _script("compare_configurations").main([str(run), "--pairs", f"{GOOD}:{BAD}", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert out.count("FGA combined [1] κ=0.5 c=10 | FGA centered [2] κ=0.5 c=10") == 3
    assert out.count("| 100 % |") == 3  # A is better on every image for every metric
    with pytest.raises(SystemExit):
        _script("compare_configurations").main([str(run), "--pairs", GOOD])


def test_select_configuration_best_layers_and_multi_block_sets(run, capsys):
    select = _script("select_configuration")
    assert select.main([str(run), "--best"]) == 0
    assert capsys.readouterr().out.strip() == GOOD
    assert select.main([str(run), "--best", "--layers", "2"]) == 0
    assert capsys.readouterr().out.strip() == BAD
    with pytest.raises(SystemExit):
        select.main([str(run), "--best", "--layers", "0,1"])
    assert select.main([str(run), "--multi_block_sets", "4"]) == 0  # best block 1, then 2
    assert capsys.readouterr().out.strip() == "0,1;0,1,2;1,2"
    import pandas as pd

    ranked = pd.DataFrame({"layers": ["3", "1", "5", "0,1"]})
    assert select.multi_block_sets(ranked, max_block=4) == [(1, 3), (2, 3), (2, 3, 4), (3, 4)]
    with pytest.raises(ValueError, match="no single-block"):
        select.multi_block_sets(pd.DataFrame({"layers": ["5"]}), max_block=4)
