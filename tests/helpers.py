"""Shared tiny models for the fast suite (random weights, built locally: nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTForImageClassification

from hf_fga import SparseAutoencoder, SparseAutoencoderConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGE_SIZE = 32
PATCH = 8  # a 4 x 4 patch grid


def tiny_vision_size(num_layers: int, hidden: int) -> dict:
    """The size of every tiny vision model: 32 px images, patches of 8 (a 4 x 4 grid), 4 heads, MLP of 2 x hidden."""
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
    )


def tiny_vit(num_layers: int = 3, hidden: int = 32, seed: int = 0, num_labels: int = 3) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        **tiny_vision_size(num_layers, hidden),
        num_labels=num_labels,
        id2label={i: f"class_{i}" for i in range(num_labels)},
        label2id={f"class_{i}": i for i in range(num_labels)},
        attn_implementation="eager",
    )
    return ViTForImageClassification(config).eval()


def tiny_clip(num_layers: int = 3, hidden: int = 32, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=514,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        ),
        vision_config=tiny_vision_size(num_layers, hidden),
        projection_dim=16,
        attn_implementation="eager",
    )
    return CLIPModel(config).eval()


def tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges (ids 0–511 bytes, 512 start, 513 end), matching `tiny_clip`."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sae(
    d_in: int = 32, d_sae: int = 128, layer: int = 1, activation: str = "topk", k: int = 8, seed: int = 0, **kwargs
) -> SparseAutoencoder:
    """An SAE with random (not unit-norm-transpose) weights, so encode/decode are generic."""
    config = SparseAutoencoderConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, hook_layer=layer, **kwargs)
    sae = SparseAutoencoder(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
    return sae.eval()


def pixel_batch(batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


def offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
