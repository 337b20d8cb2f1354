"""The `feature-gradient-attribution` pipeline: FGA and TransMM maps for ViT classifiers and CLIP zero-shot."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from ..attribution import FeatureGradientAttribution, get_method
from ..images import as_image_list, load_image
from ..introspection import clip_text_embeddings, is_clip, load_vision_model
from ..viz import overlay

TASK = "feature-gradient-attribution"
# Variants that read an SAE's features, so that "which features drove the gates" has an answer.
FEATURE_VARIANTS = ("combined", "shuffled")


class AutoModelForFeatureGradientAttribution:
    """Loads what the pipeline can explain: `CLIPModel` for CLIP checkpoints, an image classifier otherwise."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs):
        kwargs.pop("_from_pipeline", None)
        return load_vision_model(name_or_path, **kwargs)


class FeatureGradientAttributionPipeline(Pipeline):
    r"""
    Explains image predictions with Feature-Gradient Attribution (method.md §3) beside its TransMM baseline (§2).

    Args:
        model: a ViT-family image classifier or a `CLIPModel` (id, folder or instance).
        sae: a [`SparseAutoencoder`], a folder or Hub id of one SAE or of a set, or a list/dict of those.
        layers (`list[int]`, *optional*): the gated blocks to pick out of the SAE set (default: all of them).
        mean_residuals (*optional*): μ_ℓ per block (a dict of tensors or a path written by `save_mean_residuals`),
            for `variant="mean-centered"`, which needs no SAE.
        linear_backend (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"onednn"` or `"default"`, how linear
            layers and SAE encoders run on CPU (see [`FeatureGradientAttribution`]).

    Call-time parameters: `target` (index or label name; default the predicted class), `candidate_labels` (CLIP),
    `method` ("fga", "transmm", "rollout", "raw-attention"), `variant`, `kappa`, `cmax`, `batch_size`,
    `top_k_features`.

    Returns, per image, a dict of plain Python / numpy values: `label`, `score` (probability of the explained class),
    `target`, `attribution` (float32, patch grid h × w), `baseline` (TransMM, h × w), `gates` ({block: h × w}),
    `top_features` ({block: [{"index", "sign", "contribution"}, …]}), `overlay` (PIL image).

    Example:
    ```python
    >>> import hf_fga
    >>> from transformers import pipeline
    >>> model, sae = hf_fga.bundled.model_dir(), hf_fga.bundled.sae_dir()
    >>> explain = pipeline("feature-gradient-attribution", model=model, sae=sae)  # doctest: +SKIP
    >>> explain(hf_fga.bundled.example_images()[0])["label"]  # doctest: +SKIP
    'PNEUMONIA'
    ```
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = None  # CLIP needs one; a classifier has none

    def __init__(
        self,
        *args,
        sae=None,
        layers: Sequence[int] | None = None,
        mean_residuals=None,
        linear_backend: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        from ..attribution import load_mean_residuals
        from ..sae import load_saes

        self.saes = load_saes(sae, layers=layers) if sae is not None else {}
        if isinstance(mean_residuals, (str, bytes)) or hasattr(mean_residuals, "__fspath__"):
            mean_residuals = load_mean_residuals(mean_residuals)
        self.layers = list(layers) if layers is not None else None
        self.attributor = FeatureGradientAttribution(
            self.model, self.saes, mean_residuals=mean_residuals, linear_backend=linear_backend
        )
        self._text_cache: tuple[tuple[str, ...], torch.Tensor] | None = None

    def get_inference_context(self):
        return torch.enable_grad

    def _sanitize_parameters(
        self,
        target=None,
        candidate_labels=None,
        method=None,
        variant=None,
        kappa=None,
        cmax=None,
        layers=None,
        top_k_features=None,
        timeout=None,
        **unexpected,
    ):
        if unexpected:
            raise TypeError(
                f"Unknown parameter(s) {sorted(unexpected)} for the {TASK} pipeline; accepted: target, "
                "candidate_labels, method, variant, kappa, cmax, layers, top_k_features, batch_size."
            )
        preprocess, forward, postprocess = {}, {}, {}
        for name, value in (
            ("target", target),
            ("method", method),
            ("variant", variant),
            ("kappa", kappa),
            ("cmax", cmax),
            ("layers", layers),
            ("candidate_labels", candidate_labels),
        ):
            if value is not None:
                forward[name] = value
        if top_k_features is not None:
            postprocess["top_k_features"] = top_k_features
        return preprocess, forward, postprocess

    # ------------------------------------------------------------------------------------------------------- call
    def __call__(self, inputs, **kwargs):
        """Explain one image or a list / `datasets` column of images; batches of `batch_size` share one backward."""
        batch_size = int(kwargs.pop("batch_size", self._batch_size or 1))
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        items, single = as_image_list(inputs)
        _, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        results = []
        for start in range(0, len(items), batch_size):
            chunk = [self.preprocess(item) for item in items[start : start + batch_size]]
            model_inputs = {
                "pixel_values": torch.cat([c["pixel_values"] for c in chunk]),
                "images": [c["image"] for c in chunk],
            }
            with self.device_placement(), self.get_inference_context()():
                model_outputs = self._forward(model_inputs, **forward_params)
            results.extend(self.postprocess(model_outputs, **postprocess_params))
        return results[0] if single else results

    def preprocess(self, image, timeout=None) -> dict[str, Any]:
        image = load_image(image)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values.to(self.device, dtype=self.model.dtype), "image": image}

    def _target_indices(self, target, labels: Sequence[str], batch: int) -> list[int] | None:
        if target is None:
            return None
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * batch
        if len(targets) != batch:
            raise ValueError(f"Got {len(targets)} targets for {batch} images: pass one target, or one per image.")
        indices = []
        for t in targets:
            if isinstance(t, str):
                if t not in labels:
                    raise ValueError(f"Unknown target label {t!r}; the model's labels are {list(labels)}.")
                indices.append(list(labels).index(t))
            elif isinstance(t, (int, np.integer)) and 0 <= int(t) < len(labels):
                indices.append(int(t))
            else:
                raise ValueError(f"target must be a label name or an index in [0, {len(labels) - 1}], got {t!r}.")
        return indices

    def _clip_text(self, candidate_labels) -> torch.Tensor:
        if not candidate_labels:
            raise ValueError(
                "This is a CLIP model: pass candidate_labels=[...] (the zero-shot labels to choose between)."
            )
        if self.tokenizer is None:
            raise ValueError(
                "CLIP needs its tokenizer: pass tokenizer=... to pipeline(), or a model folder that has one."
            )
        key = tuple(candidate_labels)
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, clip_text_embeddings(self.model, self.tokenizer, list(candidate_labels)))
        return self._text_cache[1]

    def _forward(
        self,
        model_inputs,
        target=None,
        candidate_labels=None,
        method="fga",
        variant="combined",
        kappa=0.5,
        cmax=10.0,
        layers=None,
    ) -> dict[str, Any]:
        pixel_values = model_inputs["pixel_values"]
        if is_clip(self.model):
            text_embeds = self._clip_text(candidate_labels)
            labels = list(candidate_labels)
        else:
            if candidate_labels is not None:
                warnings.warn(
                    "candidate_labels is only used by CLIP models; ignoring it for this classifier.", stacklevel=3
                )
            text_embeds = None
            labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        wants_features = method == "fga" and variant in FEATURE_VARIANTS
        options = dict(
            variant=variant,
            layers=layers if layers is not None else self.layers,
            kappa=kappa,
            cmax=cmax,
            return_contributions=wants_features,
        )
        accepted = get_method(method).options  # the FGA settings apply to the methods that take them
        out = self.attributor.attribute(
            pixel_values,
            method=method,
            target=self._target_indices(target, labels, pixel_values.shape[0]),
            text_embeds=text_embeds,
            **{name: value for name, value in options.items() if name in accepted},
        )
        return {"output": out, "images": model_inputs["images"], "labels": labels}

    def postprocess(self, model_outputs, top_k_features: int = 5) -> list[dict[str, Any]]:
        out, labels = model_outputs["output"], model_outputs["labels"]
        results = []
        for b, image in enumerate(model_outputs["images"]):
            t = int(out.target[b])
            attribution = out.attribution[b].numpy().astype(np.float32)
            results.append(
                {
                    "label": labels[t],
                    "score": float(out.probabilities[b, t]),
                    "target": t,
                    "attribution": attribution,
                    "baseline": out.baseline[b].numpy().astype(np.float32),
                    "gates": {block: g[b].numpy().astype(np.float32) for block, g in out.gates.items()},
                    "top_features": _top_features(out, b, top_k_features),
                    "overlay": overlay(image, attribution),
                }
            )
        return results


def _top_features(out, b: int, top_k: int) -> dict[int, list[dict[str, Any]]]:
    """
    The features that moved the gates most, per gated block.

    A feature's contribution is Σ_t c_{t,k} / (1.4826 (MAD + ε)), with c_{t,k} = f_t^k (Dᵀ g_t)_k its share of the
    patch scores s_t = Σ_k c_{t,k}: its total push on the normalised scores ŝ that set the gates (method.md §3).
    Positive = amplifier (raises the gates of the patches it is active on), negative = suppressor.
    """
    if not out.contributions:
        return {}
    top = {}
    for block, (values, indices) in out.contributions.items():
        scores = out.scores[block][b].flatten().double()
        median = scores.median()
        scale = 1.4826 * ((scores - median).abs().median() + 1e-8)
        totals: dict[int, float] = {}
        for value, index in zip(values[b].flatten().tolist(), indices[b].flatten().tolist(), strict=True):
            totals[index] = totals.get(index, 0.0) + value
        ranked = sorted(totals.items(), key=lambda kv: abs(kv[1]), reverse=True)[:top_k]
        top[block] = [
            {"index": int(k), "sign": "amplifier" if v > 0 else "suppressor", "contribution": float(v / scale)}
            for k, v in ranked
        ]
    return top
