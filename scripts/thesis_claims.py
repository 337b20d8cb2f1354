"""
Test the thesis's claims on a finished evaluation run (`hf_fga.evaluation.claims`) and print them as Markdown:
FGA beats TransMM on each metric; both the activation and the gradient are needed; a shuffled decoder loses the gain;
and whether the features add anything beyond the `centered` / `mean-centered` controls.

    python scripts/thesis_claims.py docs/results/chest_xray/test --config "fga|combined|1|0.5|10"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_fga.evaluation.claims import claims_markdown, thesis_claims
from hf_fga.evaluation.storage import read_parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation output folder (with results/)")
    parser.add_argument("--config", required=True, help="the FGA combined configuration key")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the Wilcoxon tests")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    results = read_parts(args.run / "results")
    if results.empty:
        parser.error(f"no results under {args.run / 'results'}.")
    text = claims_markdown(thesis_claims(results, args.config, alpha=args.alpha))
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
