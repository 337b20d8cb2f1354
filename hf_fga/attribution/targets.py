"""The target score y of method.md §1, for ViT-family classifiers and CLIP zero-shot classification."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import CLIPModel, PreTrainedModel

CLIP_TEMPLATE = "a photo of a {}"
# Whether CLIP's image-embedding norm is a constant in the backward pass (see `constant_embedding_norm`).
_CONSTANT_EMBEDDING_NORM: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "constant_embedding_norm", default=False
)


def is_clip(model: PreTrainedModel) -> bool:
    return isinstance(model, CLIPModel)


def vision_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The transformer blocks of the vision tower (`model.vit.layers` in transformers 5, or CLIP's encoder layers)."""
    if is_clip(model):
        return model.vision_model.encoder.layers
    backbone = getattr(model, model.base_model_prefix, None)
    layers = getattr(backbone, "layers", None)
    if layers is None and backbone is not None and hasattr(backbone, "encoder"):
        layers = getattr(backbone.encoder, "layer", None) or getattr(backbone.encoder, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__} is not supported: expected a ViT-family image classifier (e.g. "
            "ViTForImageClassification, DeiTForImageClassification) or a CLIPModel."
        )
    return layers


@torch.no_grad()
def clip_text_embeddings(
    model: CLIPModel, tokenizer, candidate_labels: list[str], template: str = CLIP_TEMPLATE
) -> Tensor:
    """L2-normalised text embeddings `(C, projection_dim)` of `template.format(label)` for each candidate label."""
    if not candidate_labels:
        raise ValueError(
            "CLIP needs candidate_labels: pass the zero-shot labels, e.g. candidate_labels=['cat', 'dog']."
        )
    prompts = [template.format(label) for label in candidate_labels]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(model.device)
    out = model.get_text_features(**inputs)
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return emb / emb.norm(dim=-1, keepdim=True)


@contextlib.contextmanager
def constant_embedding_norm() -> Iterator[None]:
    """
    Inside the block, [`model_logits`] treats the L2 norm of CLIP's image embedding as a constant in the backward pass
    (the forward value is unchanged): the LN rule of method.md §8 applied to the last normalisation, so that under the
    backward rules the CLIP score is linear in the embedding, as a classifier's logit is.
    """
    token = _CONSTANT_EMBEDDING_NORM.set(True)
    try:
        yield
    finally:
        _CONSTANT_EMBEDDING_NORM.reset(token)


def model_logits(model: PreTrainedModel, pixel_values: Tensor, text_embeds: Tensor | None = None) -> Tensor:
    """
    The pre-softmax scores `(B, C)` whose entry t is the target score y of method.md §1.

    Classifier: the class logits. CLIP: `logits_per_image` against the candidate-label text embeddings
    `text_embeds (C, projection_dim)` (already normalised), i.e. `exp(logit_scale) · cos(image, text)`.
    """
    if is_clip(model):
        if text_embeds is None:
            raise ValueError("CLIP needs candidate labels: pass candidate_labels (or their text_embeds).")
        image = model.get_image_features(pixel_values=pixel_values)
        image = image.pooler_output if hasattr(image, "pooler_output") else image
        norm = image.norm(dim=-1, keepdim=True)
        image = image / (norm.detach() if _CONSTANT_EMBEDDING_NORM.get() else norm)
        return model.logit_scale.exp() * image @ text_embeds.to(image.dtype).T
    return model(pixel_values=pixel_values).logits
