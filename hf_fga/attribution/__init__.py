"""Attribution for ViT-family classifiers and CLIP: a registry of methods (TransMM, FGA, attention baselines, …) and
the engine that runs them (`Attributor`)."""

from .capture import Capture
from .engine import AttributionOutput, Attributor, FeatureGradientAttribution
from .mean_residuals import compute_mean_residuals, load_mean_residuals, save_mean_residuals
from .methods import AttributionMethod, MethodResult, get_method, list_methods, register_method, unregister_method
from .methods.fga import VARIANTS
from .rules import RULE_SETS, backward_rules

__all__ = [
    "RULE_SETS",
    "VARIANTS",
    "AttributionMethod",
    "AttributionOutput",
    "Attributor",
    "backward_rules",
    "Capture",
    "FeatureGradientAttribution",
    "MethodResult",
    "compute_mean_residuals",
    "get_method",
    "list_methods",
    "load_mean_residuals",
    "register_method",
    "save_mean_residuals",
    "unregister_method",
]
