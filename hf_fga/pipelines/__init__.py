from .feature_gradient_attribution import (
    TASK,
    AutoModelForFeatureGradientAttribution,
    FeatureGradientAttributionPipeline,
)

__all__ = ["TASK", "AutoModelForFeatureGradientAttribution", "FeatureGradientAttributionPipeline"]
