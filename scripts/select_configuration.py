"""
Rank the FGA configurations of a (validation) evaluation run by their mean % improvement over TransMM across the
metrics (`hf_fga.evaluation.statistics.rank_configurations`), to choose the one the test split will use.

    python scripts/select_configuration.py runs/validation_single --variant combined --top 5
    python scripts/select_configuration.py RUN --variant combined --best            # only the best key
    python scripts/select_configuration.py RUN --variant combined --layers 0,1,2 --best
    python scripts/select_configuration.py RUN --variant combined --multi_block_sets 4  # sets around the best blocks
    python scripts/select_configuration.py RUN --method caap --best                 # CAAP's best block range
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hf_fga.evaluation.statistics import METRICS, rank_configurations
from hf_fga.evaluation.storage import upgrade_columns


def multi_block_sets(ranked: pd.DataFrame, max_block: int) -> list[tuple[int, ...]]:
    """
    The protocol's multi-block sets around the best single blocks (method.md §6 leaves the choice open): with b the
    best single block and the top three single blocks of the ranking, {b−1, b}, {b, b+1}, {b−1, b, b+1}, the top two
    and the top three, keeping sets of two or more blocks within 0..`max_block`.
    """
    single = [int(layers) for layers in ranked["layers"] if "," not in layers and int(layers) <= max_block][:3]
    if not single:
        raise ValueError(f"no single-block configuration with a block <= {max_block} in the ranking.")
    b = single[0]
    candidates = [{b - 1, b}, {b, b + 1}, {b - 1, b, b + 1}, set(single[:2]), set(single)]
    return sorted({tuple(sorted(c)) for c in candidates if len(c) > 1 and all(0 <= x <= max_block for x in c)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation output folder holding summary.csv")
    parser.add_argument("--preset", default="papers")
    parser.add_argument("--fill", default="mean", help="the perturbation fill whose results are ranked")
    parser.add_argument("--method", default="fga", help="rank this method's configurations (e.g. caap's block ranges)")
    parser.add_argument("--variant", default=None, help="only this FGA variant")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--layers", default=None, help="only this gated-block set, e.g. 0,1,2")
    parser.add_argument("--best", action="store_true", help="print only the best configuration's key")
    parser.add_argument(
        "--multi_block_sets",
        type=int,
        default=None,
        metavar="MAX_BLOCK",
        help="print the multi-block sets around the best single blocks ('0,1;0,1,2'), blocks <= MAX_BLOCK",
    )
    args = parser.parse_args(argv)
    path = args.run / "summary.csv"
    if not path.is_file():
        parser.error(f"{path} does not exist: run scripts/evaluate_faithfulness.py (or --report_only) first.")
    summary = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"layers": str, "variant": str})
    ranked = rank_configurations(
        upgrade_columns(summary),
        preset=args.preset,
        fill=args.fill,
        metrics=args.metrics.split(","),
        variant=args.variant,
        method=args.method,
    )
    if args.layers is not None:
        ranked = ranked[ranked["layers"] == args.layers]
        if ranked.empty:
            parser.error(f"no configuration gates exactly the blocks {args.layers!r}.")
    if args.multi_block_sets is not None:
        print(";".join(",".join(map(str, s)) for s in multi_block_sets(ranked, args.multi_block_sets)))
        return 0
    if args.best:
        print(ranked.index[0])
        return 0
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(ranked.head(args.top).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
