"""
Paired comparisons between configurations of one evaluation run (every configuration is scored on the same images),
printed as a Markdown table: e.g. FGA `combined` against its `centered` and `mean-centered` controls (method.md §6).

    python scripts/compare_configurations.py docs/results/chest_xray/test \
        --pairs "fga|combined|1|0.5|10:fga|centered|1|0.5|10" "fga|combined|1|0.5|10:fga|mean-centered|1|0.5|10"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.statistics import METRIC_NAMES, paired_comparison
from hf_fga.evaluation.storage import read_parts


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| preset | A | B | metric | n | mean A | mean B | mean A − B ± SEM | Wilcoxon p | paired t p | A better |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        a, b = (EvaluationConfiguration.from_key(k).label for k in (r.config, r.reference))
        lines.append(
            f"| {r.preset} | {a} | {b} | {METRIC_NAMES.get(r.metric, r.metric)} | {r.n_paired} | {r.mean:.4g} | "
            f"{r.reference_mean:.4g} | {r.mean_difference:+.4f} ± {r.sem_difference:.4f} | {r.wilcoxon_p:.3g}{r.stars}"
            f" | {r.paired_t_p:.3g} | {100 * r.better_fraction:.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation output folder (with results/)")
    parser.add_argument("--pairs", nargs="+", required=True, help="'A:B' configuration keys; A is compared to B")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    results = read_parts(args.run / "results")
    if results.empty:
        parser.error(f"no results under {args.run / 'results'}.")
    tables = []
    for pair in args.pairs:
        if pair.count(":") != 1:
            parser.error(f"--pairs {pair!r}: expected 'A:B' (two configuration keys separated by ':').")
        a, b = pair.split(":")
        tables.append(paired_comparison(results, a, b))
    table = pd.concat(tables, ignore_index=True).sort_values(["preset", "config", "reference"], kind="stable")
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
