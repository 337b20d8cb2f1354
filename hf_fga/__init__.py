"""hf_fga: Feature-Gradient Attribution for Vision Transformers, native to the Hugging Face stack.

`import hf_fga` registers the `feature-gradient-attribution` pipeline task and the SAE classes with
`AutoConfig` / `AutoModel`.
"""

from transformers import AutoConfig, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from . import bundled
from .attribution import AttributionOutput, Attributor, FeatureGradientAttribution, list_methods
from .metrics import metric_path
from .sae import (
    SparseAutoencoder,
    SparseAutoencoderConfig,
    SparseAutoencoderOutput,
    load_prisma_sae,
    load_saelens_sae,
    load_saes,
    push_sae_set_to_hub,
    save_sae_set,
)

__version__ = "0.1.0"


def _register() -> None:
    """Register the SAE auto classes and the pipeline task (idempotent: re-importing never raises or warns)."""
    try:
        AutoConfig.register(SparseAutoencoderConfig.model_type, SparseAutoencoderConfig)
    except ValueError:
        pass
    try:
        AutoModel.register(SparseAutoencoderConfig, SparseAutoencoder)
    except ValueError:
        pass
    from .pipelines import TASK, AutoModelForFeatureGradientAttribution, FeatureGradientAttributionPipeline

    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            TASK,
            pipeline_class=FeatureGradientAttributionPipeline,
            pt_model=AutoModelForFeatureGradientAttribution,
            type="image",
        )


_register()

__all__ = [
    "AttributionOutput",
    "Attributor",
    "FeatureGradientAttribution",
    "SparseAutoencoder",
    "SparseAutoencoderConfig",
    "SparseAutoencoderOutput",
    "__version__",
    "bundled",
    "load_prisma_sae",
    "load_saelens_sae",
    "list_methods",
    "load_saes",
    "metric_path",
    "push_sae_set_to_hub",
    "save_sae_set",
]
