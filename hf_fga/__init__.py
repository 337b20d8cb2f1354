"""hf_fga: Feature-Gradient Attribution for Vision Transformers, native to the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from .sae import SparseAutoencoder, SparseAutoencoderConfig, SparseAutoencoderOutput

__version__ = "0.1.0"


def _register() -> None:
    """Register the SAE auto classes (idempotent: re-importing never raises)."""
    try:
        AutoConfig.register(SparseAutoencoderConfig.model_type, SparseAutoencoderConfig)
    except ValueError:
        pass
    try:
        AutoModel.register(SparseAutoencoderConfig, SparseAutoencoder)
    except ValueError:
        pass


_register()

__all__ = ["SparseAutoencoder", "SparseAutoencoderConfig", "SparseAutoencoderOutput", "__version__"]
