"""Helpers of the Feature-Gradient Attribution Space: which SAE features moved the map, and their prototypes."""

from .features import FeatureFinding, changed_patches, feature_findings
from .prototypes import PrototypeIndex, compute_prototypes

__all__ = ["FeatureFinding", "PrototypeIndex", "changed_patches", "compute_prototypes", "feature_findings"]
