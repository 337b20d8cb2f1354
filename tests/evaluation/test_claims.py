import numpy as np
import pandas as pd
import pytest

from hf_fga.evaluation.claims import HELD, MIXED, NOT_HELD, claims_markdown, control_claims, thesis_claims, verdict

COMBINED = "fga|combined|1,2|0.5|10"


def _results(shifts: dict[str, float], n: int = 30, seed: int = 0) -> pd.DataFrame:
    """Per-image rows where each configuration is TransMM's score plus `shift` (negated for Pixel Flipping)."""
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(n):
        base = rng.uniform(0.3, 0.6, size=3)
        for config, shift in shifts.items():
            noise = rng.normal(0.0, 0.01, size=3) if shift else np.zeros(3)
            for preset in ("papers", "thesis"):
                rows.append(
                    {
                        "image_id": f"i{image}",
                        "config": config,
                        "preset": preset,
                        "fill": "mean",
                        "saco": base[0] + shift + noise[0],
                        "faithfulness_correlation": base[1] + shift + noise[1],
                        "pixel_flipping": base[2] - shift - noise[2],
                    }
                )
    return pd.DataFrame(rows)


def _key(variant: str) -> str:
    return COMBINED.replace("combined", variant)


def test_every_claim_held_when_combined_beats_everything():
    shifts = {
        "transmm||||": 0.0,
        COMBINED: 0.1,
        _key("activation"): 0.02,
        _key("gradient"): 0.03,
        _key("shuffled"): -0.05,
        _key("centered"): 0.04,
        _key("mean-centered"): 0.02,
    }
    claims = thesis_claims(_results(shifts), COMBINED)
    assert [c.verdict for c in claims] == [HELD] * 6
    assert len(claims[0].evidence) == 2  # SaCo in both presets
    assert len(claims[3].evidence) == 12  # 2 references x 3 metrics x 2 presets
    text = claims_markdown(claims)
    assert text.count("**held**") == 6 and "A does not beat B" in text


def test_verdicts_not_held_and_mixed():
    # combined equals centered but beats mean-centered; shuffled beats TransMM but loses to combined
    shifts = {
        "transmm||||": 0.0,
        COMBINED: 0.1,
        _key("shuffled"): 0.05,
        _key("centered"): 0.1,
        _key("mean-centered"): 0.05,
    }
    results = _results(shifts)
    results.loc[results["config"] == _key("centered"), ["saco", "faithfulness_correlation", "pixel_flipping"]] = (
        results.loc[results["config"] == COMBINED, ["saco", "faithfulness_correlation", "pixel_flipping"]].to_numpy()
    )
    claims = {c.statement.split(" (")[0]: c for c in thesis_claims(results, COMBINED)}
    assert "Both the activation and the gradient are needed" not in claims  # no activation/gradient rows: skipped
    assert claims["A shuffled decoder loses the gain"].verdict == MIXED
    features = claims["The features add something beyond centring"]
    assert features.verdict == MIXED
    by_reference = features.evidence.groupby("reference")["holds"]
    assert not by_reference.any()[_key("centered")] and by_reference.all()[_key("mean-centered")]
    worse = _results({"transmm||||": 0.0, COMBINED: -0.1})
    assert {c.verdict for c in thesis_claims(worse, COMBINED)} == {NOT_HELD}


def test_claims_need_a_combined_configuration():
    with pytest.raises(ValueError, match="not an FGA 'combined'"):
        thesis_claims(_results({"transmm||||": 0.0}), _key("centered"))


def test_control_claims_per_control_and_metric():
    # centered beats TransMM on every image and metric; mean-centered is worse on every one; no-sae is not run
    shifts = {"transmm||||": 0.0, COMBINED: 0.1, _key("centered"): 0.1, _key("mean-centered"): -0.05}
    claims = control_claims(_results(shifts), COMBINED, controls=("centered", "mean-centered", "no-sae"))
    assert [c.statement.split(" (")[0] for c in claims] == ["`centered`"] * 3 + ["`mean-centered`"] * 3
    assert [c.verdict for c in claims] == [HELD] * 3 + [NOT_HELD] * 3
    assert all(len(c.evidence) == 2 and set(c.evidence["config"]) == {_key(c.statement[1:].split("`")[0])}
               for c in claims)  # fmt: skip
    assert verdict(pd.Series([True, False])) == MIXED
    with pytest.raises(ValueError, match="not an FGA 'combined'"):
        control_claims(_results(shifts), _key("centered"))
