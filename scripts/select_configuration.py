"""
Rank the FGA configurations of a (validation) evaluation run by their mean % improvement over TransMM across the
metrics (`hf_fga.evaluation.statistics.rank_configurations`), to choose the one the test split will use.

    python scripts/select_configuration.py runs/validation_single --variant combined --top 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_fga.evaluation.statistics import METRICS, rank_configurations  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation output folder holding summary.csv")
    parser.add_argument("--preset", default="papers")
    parser.add_argument("--baseline", default="mean")
    parser.add_argument("--variant", default=None, help="only this FGA variant")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    path = args.run / "summary.csv"
    if not path.is_file():
        parser.error(f"{path} does not exist: run scripts/evaluate_faithfulness.py (or --report_only) first.")
    summary = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"layers": str, "variant": str})
    ranked = rank_configurations(summary, preset=args.preset, baseline=args.baseline,
                                 metrics=args.metrics.split(","), variant=args.variant)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(ranked.head(args.top).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
