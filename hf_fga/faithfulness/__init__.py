"""Batched perturbation engine for the faithfulness metrics of method.md §5 (SaCo, FC, Pixel Flipping, …)."""

from .evaluation import (
    METRICS,
    completeness_scores,
    evaluate_faithfulness,
    evaluate_presets,
    faithfulness_records,
    faithfulness_records_for_presets,
    forward_passes_per_image,
    make_runner,
    score_records,
)
from .fills import FILLS, PatchGrid, patch_grid
from .presets import PRESETS, FaithfulnessPreset, resolve_preset
from .records import CurveRecord, FaithfulnessCorrelationRecord, SaCoRecord
from .runner import PerturbationRunner, ResponseCache

__all__ = [
    "FILLS",
    "METRICS",
    "PRESETS",
    "CurveRecord",
    "FaithfulnessCorrelationRecord",
    "FaithfulnessPreset",
    "PatchGrid",
    "PerturbationRunner",
    "ResponseCache",
    "SaCoRecord",
    "completeness_scores",
    "evaluate_faithfulness",
    "evaluate_presets",
    "faithfulness_records",
    "faithfulness_records_for_presets",
    "forward_passes_per_image",
    "make_runner",
    "patch_grid",
    "resolve_preset",
    "score_records",
]
