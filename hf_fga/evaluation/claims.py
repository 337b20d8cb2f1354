"""
The thesis's claims about FGA (thesis ch. 7, method.md §6), each tested on a finished evaluation run with the paired
statistics of [`paired_comparison`] and marked `held`, `not held` or `mixed`.

A comparison "A beats B" on one metric and preset holds when A's mean is better (higher SaCo / Faithfulness
Correlation, lower Pixel Flipping) and the two-sided Wilcoxon signed-rank test on the per-image differences gives
p < `alpha`. A claim made of several such comparisons (metrics × presets) is `held` when all of them hold,
`not held` when none does, and `mixed` otherwise; the evidence lists every comparison with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .configuration import REFERENCE, EvaluationConfiguration
from .statistics import LOWER_IS_BETTER, METRIC_NAMES, METRICS, paired_comparison

HELD, NOT_HELD, MIXED = "held", "not held", "mixed"


@dataclass
class Claim:
    """One claim: its statement, verdict and the comparisons behind it (rows of `paired_comparison` + `holds`)."""

    statement: str
    verdict: str
    evidence: pd.DataFrame = field(repr=False)


def _beats(results: pd.DataFrame, config: str, reference: str, metrics, alpha: float) -> pd.DataFrame:
    table = paired_comparison(results, config, reference, metrics)
    lower = table["metric"].isin(LOWER_IS_BETTER)
    better = (table["mean_difference"] < 0).where(lower, table["mean_difference"] > 0)
    return table.assign(requirement="A beats B", holds=better & (table["wilcoxon_p"] < alpha))


def verdict(holds: pd.Series) -> str:
    """`held` when every comparison of a claim holds, `not held` when none does, `mixed` otherwise."""
    return HELD if holds.all() else NOT_HELD if not holds.any() else MIXED


def _variant(config: str, variant: str) -> str:
    chosen = EvaluationConfiguration.from_key(config)
    return EvaluationConfiguration(chosen.method, variant, chosen.layers, chosen.kappa, chosen.cmax).key


def thesis_claims(
    results: pd.DataFrame, config: str, *, metrics: tuple[str, ...] = METRICS, alpha: float = 0.05
) -> list[Claim]:
    """
    Test the thesis's claims for the FGA `combined` configuration `config` of a run's per-image `results`.

    The claims: FGA beats TransMM on each metric (three claims); both the activation and the gradient are needed
    (`combined` beats `activation` and `gradient`); a shuffled decoder loses the gain (`combined` beats `shuffled`,
    and `shuffled` does not beat TransMM); and, beyond the thesis, the features add something the controls of
    method.md §3 do not (`combined` beats `centered` and `mean-centered`). A claim whose configurations are missing
    from the results is skipped.
    """
    if EvaluationConfiguration.from_key(config).variant != "combined":
        raise ValueError(f"{config!r} is not an FGA 'combined' configuration: the claims are about the method.")
    present = set(results["config"])
    claims = []
    for metric in metrics:
        evidence = _beats(results, config, REFERENCE.key, (metric,), alpha)
        claims.append(Claim(f"FGA beats TransMM on {METRIC_NAMES[metric]}", verdict(evidence["holds"]), evidence))

    def versus(variants: tuple[str, ...]) -> pd.DataFrame | None:
        keys = [_variant(config, v) for v in variants]
        if not all(k in present for k in keys):
            return None
        return pd.concat([_beats(results, config, k, metrics, alpha) for k in keys], ignore_index=True)

    both = versus(("activation", "gradient"))
    if both is not None:
        claims.append(
            Claim(
                "Both the activation and the gradient are needed (combined beats activation-only and gradient-only)",
                verdict(both["holds"]),
                both,
            )
        )
    shuffled = _variant(config, "shuffled")
    if shuffled in present:
        loses = _beats(results, config, shuffled, metrics, alpha)
        gains = _beats(results, shuffled, REFERENCE.key, metrics, alpha)
        gains = gains.assign(requirement="A does not beat B", holds=~gains["holds"])
        evidence = pd.concat([loses, gains], ignore_index=True)
        claims.append(
            Claim(
                "A shuffled decoder loses the gain (combined beats shuffled; shuffled does not beat TransMM)",
                verdict(evidence["holds"]),
                evidence,
            )
        )
    controls = versus(("centered", "mean-centered"))
    if controls is not None:
        claims.append(
            Claim(
                "The features add something beyond centring (combined beats centered and "
                "mean-centered; not a thesis claim: method.md §3)",
                verdict(controls["holds"]),
                controls,
            )
        )
    return claims


CONTROLS = ("centered", "mean-centered")


def control_claims(
    results: pd.DataFrame,
    config: str,
    *,
    controls: tuple[str, ...] = CONTROLS,
    metrics: tuple[str, ...] = METRICS,
    alpha: float = 0.05,
) -> list[Claim]:
    """
    The controls' side of the thesis's claims (method.md §3, §10): each control of the FGA `combined` configuration
    `config` (same blocks, κ, c_max; `centered` and `mean-centered` by default, which use no SAE feature) beats
    TransMM, one claim per control and metric, with the rule of [`thesis_claims`]. When a control beats TransMM
    wherever FGA does, FGA's gain does not need the features. A control missing from the results is skipped.
    """
    if EvaluationConfiguration.from_key(config).variant != "combined":
        raise ValueError(f"{config!r} is not an FGA 'combined' configuration: the controls are of that configuration.")
    present = set(results["config"])
    claims = []
    for control in controls:
        key = _variant(config, control)
        if key not in present:
            continue
        for metric in metrics:
            evidence = _beats(results, key, REFERENCE.key, (metric,), alpha)
            claims.append(
                Claim(
                    f"`{control}` (no SAE feature) beats TransMM on {METRIC_NAMES[metric]}",
                    verdict(evidence["holds"]),
                    evidence,
                )
            )
    return claims


def claims_markdown(claims: list[Claim]) -> str:
    """A Markdown summary table of the claims, then one evidence table per claim."""
    lines = ["| claim | verdict | comparisons that hold |", "| --- | --- | --- |"]
    for claim in claims:
        lines.append(
            f"| {claim.statement} | **{claim.verdict}** | "
            f"{int(claim.evidence['holds'].sum())} of {len(claim.evidence)} |"
        )
    for claim in claims:
        lines += [
            "",
            f"**{claim.statement}: {claim.verdict}.**",
            "",
            "| preset | A | B | requirement | metric | n | mean A | mean B | A − B | Wilcoxon p | A better on | "
            "holds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in claim.evidence.itertuples():
            a, b = (EvaluationConfiguration.from_key(k).label for k in (r.config, r.reference))
            lines.append(
                f"| {r.preset} | {a} | {b} | {r.requirement} | {METRIC_NAMES.get(r.metric, r.metric)} | "
                f"{r.n_paired} | {r.mean:.4g} | "
                f"{r.reference_mean:.4g} | {r.mean_difference:+.4f} | {r.wilcoxon_p:.2g}{r.stars} | "
                f"{100 * r.better_fraction:.0f} % | {'yes' if r.holds else 'no'} |"
            )
    return "\n".join(lines)
