"""hf_fga.evaluation.figures.difference_figure: paired differences with their CIs, per preset and metric."""

import pandas as pd
import pytest

from hf_fga.evaluation.figures import difference_figure


def test_difference_figure_draws_every_panel_and_refuses_an_empty_table(tmp_path):
    rows = [
        {"preset": p, "metric": m, "x": x, "mean": 0.1 * i, "ci_low": 0.1 * i - 0.05, "ci_high": 0.1 * i + 0.05}
        for p in ("papers", "thesis")
        for m in ("saco", "pixel_flipping")
        for i, x in enumerate(("a", "b", "c"))
    ]
    path = difference_figure(pd.DataFrame(rows), tmp_path / "f.png", "title", x_label="x", connect=False)
    assert path.stat().st_size > 10_000
    series = pd.DataFrame(rows).assign(series=["one", "two", "two"] * 4)
    assert difference_figure(series, tmp_path / "g.png", "title").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no differences to draw"):
        difference_figure(
            pd.DataFrame(columns=["preset", "metric", "x", "mean", "ci_low", "ci_high"]), tmp_path / "h.png", "t"
        )
