"""The two evaluation protocols of method.md §5: the metric papers (`papers`, the default) and the thesis code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SACO_TARGETS = ("clean", "perturbed_argmax")
CORRELATIONS = ("pearson", "spearman")
PF_AUCS = ("normalized", "trapezoid")
MEAN_FILLS = ("per_channel", "scalar")


@dataclass(frozen=True)
class FaithfulnessPreset:
    """
    Every protocol choice that changes the faithfulness numbers (method.md §5, table of the two presets).

    Args:
        name (`str`): `"papers"`, `"thesis"`, or a name of your own for an overridden preset.
        saco_num_groups (`int`, *optional*, defaults to 10): SaCo's K. Exactly one of this and `saco_group_size`.
        saco_group_size (`int`, *optional*): patches per SaCo group; K = ceil(N / size) groups made with
            `numpy.array_split` (the thesis: 4, i.e. 49 groups for ViT-B/16 and 13 for ViT-B/32).
        saco_target (`str`, *optional*, defaults to `"clean"`): `"clean"`: Δ = p(Ŷ|x) − p(Ŷ|x_G), Ŷ the class
            predicted on the clean image; `"perturbed_argmax"` (thesis code): Δ = p(Ŷ|x) − max_c p(c|x_G).
        fc_runs (`int`, *optional*, defaults to 100): random subsets per trial.
        fc_subset_size (`int`, *optional*, defaults to 20): patches per subset. `None` picks the thesis sizes from
            the patch size: 10 for patches of 32 pixels or more (ViT-B/32), else 20 (ViT-B/16). The thesis table
            reads "20 runs of 20 patches (B/16) or 10 (B/32)"; we read the 10 as the subset size, since 20 of the
            49 patches of a B/32 image would perturb 40 % of it. Override `fc_runs`/`fc_subset_size` for the other
            reading.
        fc_correlation (`str`, *optional*, defaults to `"pearson"`): `"pearson"` or `"spearman"`.
        fc_trials (`int`, *optional*, defaults to 1): seeded trials averaged (the thesis: 3).
        pf_auc (`str`, *optional*, defaults to `"normalized"`): `"normalized"`: (1/N) Σ trapezoids ∈ [0, 1];
            `"trapezoid"` (thesis): dx = 1, not divided by N.
        mean_fill (`str`, *optional*, defaults to `"per_channel"`): how the `"mean"` fill perturbs a patch:
            `"per_channel"`: the clean image's per-channel mean; `"scalar"` (thesis code): one scalar mean of the
            preprocessed tensor, which Pixel Flipping recomputes on the partly perturbed image before each step.
    """

    name: str
    saco_num_groups: int | None = 10
    saco_group_size: int | None = None
    saco_target: str = "clean"
    fc_runs: int = 100
    fc_subset_size: int | None = 20
    fc_correlation: str = "pearson"
    fc_trials: int = 1
    pf_auc: str = "normalized"
    mean_fill: str = "per_channel"

    def __post_init__(self) -> None:
        if (self.saco_num_groups is None) == (self.saco_group_size is None):
            raise ValueError(
                f"preset {self.name!r} has saco_num_groups={self.saco_num_groups} and saco_group_size="
                f"{self.saco_group_size}: set exactly one of them (e.g. saco_num_groups=10 or saco_group_size=4)."
            )
        for field in ("saco_num_groups", "saco_group_size", "fc_subset_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"preset {self.name!r} got {field}={value!r}; expected a positive integer or None.")
        if self.saco_num_groups is not None and self.saco_num_groups < 2:
            raise ValueError(f"preset {self.name!r} got saco_num_groups={self.saco_num_groups}; SaCo needs >= 2.")
        for field in ("fc_runs", "fc_trials"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"preset {self.name!r} got {field}={value!r}; expected a positive integer.")
        if self.fc_runs < 2:
            raise ValueError(f"preset {self.name!r} got fc_runs={self.fc_runs}; a correlation needs >= 2 runs.")
        for field, allowed in (
            ("saco_target", SACO_TARGETS),
            ("fc_correlation", CORRELATIONS),
            ("pf_auc", PF_AUCS),
            ("mean_fill", MEAN_FILLS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"preset {self.name!r} got {field}={getattr(self, field)!r}; expected one of {allowed}."
                )

    def subset_size(self, patch_size: int) -> int:
        """The Faithfulness Correlation subset size for this patch size (resolves `fc_subset_size=None`)."""
        if self.fc_subset_size is not None:
            return self.fc_subset_size
        return 10 if patch_size >= 32 else 20


PRESETS = {
    "papers": FaithfulnessPreset(name="papers"),
    "thesis": FaithfulnessPreset(
        name="thesis",
        saco_num_groups=None,
        saco_group_size=4,
        saco_target="perturbed_argmax",
        fc_runs=20,
        fc_subset_size=None,
        fc_correlation="spearman",
        fc_trials=3,
        pf_auc="trapezoid",
        mean_fill="scalar",
    ),
}


def resolve_preset(preset: str | FaithfulnessPreset, **overrides) -> FaithfulnessPreset:
    """
    A preset by name (`"papers"` or `"thesis"`) or as given, with any of its fields overridden.

    Overriding one of `saco_num_groups` / `saco_group_size` clears the other, so `resolve_preset("thesis",
    saco_num_groups=10)` is valid.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(
                f"preset={preset!r} is unknown: expected one of {tuple(PRESETS)} or a FaithfulnessPreset."
            )
        preset = PRESETS[preset]
    fields = {field.name for field in dataclasses.fields(FaithfulnessPreset)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown preset override(s) {unknown}: the overridable fields are {sorted(fields)}.")
    if "saco_num_groups" in overrides and "saco_group_size" not in overrides:
        overrides["saco_group_size"] = None
    if "saco_group_size" in overrides and "saco_num_groups" not in overrides:
        overrides["saco_num_groups"] = None
    return dataclasses.replace(preset, **overrides) if overrides else preset
