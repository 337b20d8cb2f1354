from .configuration_sae import SparseAutoencoderConfig
from .modeling_sae import SparseAutoencoder, SparseAutoencoderOutput

__all__ = ["SparseAutoencoder", "SparseAutoencoderConfig", "SparseAutoencoderOutput"]
