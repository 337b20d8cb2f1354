"""
The cross-domain summary (issue 16, `hf_fga.evaluation.summary`): every domain's test results in the form of the
thesis's Table 7.3 beside the thesis's own rows, and in how many domains each claim and control verdict holds.
Reads stored results only; a domain whose run is missing or empty is listed as "not run yet" with its command.

    python scripts/domain_summary.py     # chest_xray, breast_ultrasound, cifar10 → docs/results/summary.md
    python scripts/domain_summary.py --domains chest_xray busi=runs/busi/test:runs/busi/chosen_configuration.txt

A domain is `name` (the layout of `scripts/reproduce.sh`: the run `docs/results/<name>/test`, its chosen
configuration `docs/results/<name>/chosen_configuration.txt`), `name=run_dir` (the chosen configuration in the run
folder's parent) or `name=run_dir:chosen_configuration_file`. Patient ids come from the dataset named in the run's
`run.json` (`--data_root` to look it up elsewhere); datasets without them are tested per image.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hf_fga.evaluation.summary import Domain, parse_domain
from hf_fga.evaluation.summary_report import write_summary

NO_PATIENTS = "no patient ids: image-level tests only"
# name → (title, command that produces the run, document saying why it is not run yet, note while it is not)
KNOWN_DOMAINS = {
    "chest_xray": ("Chest X-ray (pneumonia)", "`bash scripts/reproduce.sh --dataset chest_xray`", "", ""),
    "breast_ultrasound": (
        "Breast ultrasound (BUSI)",
        "`bash scripts/reproduce.sh --dataset breast_ultrasound`",
        "docs/results/breast_ultrasound_classifier.md",
        NO_PATIENTS,
    ),
    "cifar10": (
        "CIFAR-10",
        "`bash scripts/build_cifar10_assets.sh --evaluate` (the model, its SAEs and assets, then "
        "`bash scripts/reproduce.sh --dataset cifar10`; a GPU run: the CPU cost is in cifar10_classifier.md)",
        "docs/results/cifar10_classifier.md",
        NO_PATIENTS,
    ),
}


def domain(spec: str, results_root: Path) -> Domain:
    name, run_dir, chosen = parse_domain(spec, results_root)
    title, command, pending, note = KNOWN_DOMAINS.get(
        name, (name, f"`bash scripts/reproduce.sh --dataset {name}`", "", "")
    )
    return Domain(name, title, run_dir, chosen, command, pending, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=list(KNOWN_DOMAINS), help="domains, in table order")
    parser.add_argument("--results_root", type=Path, default=Path("docs/results"), help="where `name` domains lie")
    parser.add_argument("--output", type=Path, default=Path("docs/results/summary.md"))
    parser.add_argument("--data_root", type=Path, default=None, help="folder of the datasets (patient ids)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of every test")
    parser.add_argument("--no_figure", action="store_true", help="skip the bar chart")
    args = parser.parse_args(argv)
    try:
        domains = [domain(spec, args.results_root) for spec in args.domains]
    except ValueError as error:
        parser.error(str(error))
    command = shlex.join(["python", "scripts/domain_summary.py", *(sys.argv[1:] if argv is None else argv)])
    summary = write_summary(
        domains, args.output, data_root=args.data_root, alpha=args.alpha, figure=not args.no_figure, command=command
    )
    pending = [d.name for d in domains if d.name not in summary.runs]
    print(f"{args.output}: {len(summary.runs)} of {len(domains)} domains run; not run yet: {pending or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
