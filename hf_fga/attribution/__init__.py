"""Attribution for ViT-family classifiers and CLIP: a registry of methods (TransMM, FGA, attention baselines, …) and
the engine that runs them (`Attributor`)."""

from .capture import Capture
from .engine import AttributionOutput, Attributor, FeatureGradientAttribution
from .feature_selection import compute_feature_importance, load_feature_importance, save_feature_importance
from .mean_residuals import compute_mean_residuals, load_mean_residuals, save_mean_residuals
from .methods import AttributionMethod, MethodResult, get_method, list_methods, register_method, unregister_method
from .methods.fga import CONTROL_VARIANTS, VARIANTS
from .rules import RULE_SETS, backward_rules

__all__ = [
    "CONTROL_VARIANTS",
    "RULE_SETS",
    "VARIANTS",
    "AttributionMethod",
    "AttributionOutput",
    "Attributor",
    "backward_rules",
    "Capture",
    "FeatureGradientAttribution",
    "MethodResult",
    "compute_feature_importance",
    "compute_mean_residuals",
    "get_method",
    "list_methods",
    "load_feature_importance",
    "load_mean_residuals",
    "register_method",
    "save_feature_importance",
    "save_mean_residuals",
    "unregister_method",
]
