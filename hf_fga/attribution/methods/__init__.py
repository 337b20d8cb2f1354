"""
Registered attribution methods, one per file. Importing this package registers the built-in ones; a new method is
one more file here (an [`AttributionMethod`] subclass decorated with [`register_method`]) and one import below.
"""

from . import (
    caap,
    fga,
    grad_cam,
    gradient_x_input,
    integrated_gradients,
    kernel_shap,
    lrp,
    raw_attention,
    rollout,
    transmm,
)
from .base import (
    AttributionMethod,
    MethodResult,
    ObjectiveMethod,
    ObjectiveRun,
    check_integer,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "AttributionMethod",
    "MethodResult",
    "ObjectiveMethod",
    "ObjectiveRun",
    "caap",
    "check_integer",
    "fga",
    "get_method",
    "grad_cam",
    "gradient_x_input",
    "integrated_gradients",
    "kernel_shap",
    "list_methods",
    "lrp",
    "raw_attention",
    "register_method",
    "rollout",
    "transmm",
    "unregister_method",
]
