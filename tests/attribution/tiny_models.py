"""Tiny models this folder needs beyond `tests/helpers.py`: a DeiT with a distillation token, CLIP label embeddings."""

from __future__ import annotations

import torch
from transformers import CLIPModel, DeiTConfig, DeiTForImageClassificationWithTeacher

from tests.helpers import tiny_vision_size


def tiny_deit(num_layers: int = 3, hidden: int = 32, seed: int = 0) -> DeiTForImageClassificationWithTeacher:
    """Two non-patch tokens (CLS, distillation) before the 4 x 4 patch grid."""
    torch.manual_seed(seed)
    config = DeiTConfig(**tiny_vision_size(num_layers, hidden), num_labels=3, attn_implementation="eager")
    return DeiTForImageClassificationWithTeacher(config).eval()


def clip_label_inputs(model: CLIPModel, num_labels: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompt token ids `(C, 6)` and their L2-normalised text embeddings `(C, projection_dim)`."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (num_labels, 6), generator=gen)
    input_ids[:, -1] = model.config.text_config.eos_token_id
    with torch.no_grad():
        out = model.get_text_features(input_ids=input_ids)
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return input_ids, emb / emb.norm(dim=-1, keepdim=True)
