from .configuration_sae import SparseAutoencoderConfig
from .convert import load_prisma_sae, load_saelens_sae
from .modeling_sae import SparseAutoencoder, SparseAutoencoderOutput
from .sae_set import load_saes, push_sae_set_to_hub, save_sae_set

__all__ = [
    "SparseAutoencoder",
    "SparseAutoencoderConfig",
    "SparseAutoencoderOutput",
    "load_prisma_sae",
    "load_saelens_sae",
    "load_saes",
    "push_sae_set_to_hub",
    "save_sae_set",
]
