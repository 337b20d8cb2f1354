"""Attribution for ViT-family classifiers and CLIP: TransMM, Feature-Gradient Attribution and attention baselines."""

from .feature_gradient_attribution import METHODS, AttributionOutput, FeatureGradientAttribution
from .fga import VARIANTS
from .mean_residuals import compute_mean_residuals, load_mean_residuals, save_mean_residuals

__all__ = [
    "METHODS",
    "VARIANTS",
    "AttributionOutput",
    "FeatureGradientAttribution",
    "compute_mean_residuals",
    "load_mean_residuals",
    "save_mean_residuals",
]
