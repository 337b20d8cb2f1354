"""The `feature-gradient-attribution` pipeline: FGA and TransMM maps for ViT classifiers and CLIP zero-shot."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from ..attribution import FeatureGradientAttribution, get_method
from ..cafe import BACKENDS, explain_feature
from ..feature_drivers import feature_drivers
from ..images import as_pipeline_inputs, load_image
from ..introspection import clip_text_embeddings, is_clip, load_vision_model
from ..precision import check_precision
from ..validation import candidate_label_list, integer, real_number
from ..viz import overlay

TASK = "feature-gradient-attribution"
# Variants that read an SAE's features, so that "which features drove the gates" has an answer.
FEATURE_VARIANTS = ("combined", "shuffled")
OPTIONS = (
    "target",
    "candidate_labels",
    "method",
    "variant",
    "kappa",
    "cmax",
    "layers",
    "libragrad",
    "method_options",
    "top_k_features",
    "explain_features",
    "cafe_method",
    "timeout",
    "batch_size",
    "num_workers",
)
# What the pipeline passes to `Attributor.attribute` itself (from its own parameters), so never in `method_options`.
PIPELINE_SET = ("variant", "layers", "kappa", "cmax", "return_contributions")
CONSTRUCTION_ONLY = ("sae", "mean_residuals", "linear_backend", "precision")


class AutoModelForFeatureGradientAttribution:
    """Loads what the pipeline can explain: `CLIPModel` for CLIP checkpoints, an image classifier otherwise."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs):
        kwargs.pop("_from_pipeline", None)
        return load_vision_model(name_or_path, **kwargs)


class FeatureGradientAttributionPipeline(Pipeline):
    r"""
    Explains image predictions with Feature-Gradient Attribution (method.md §3) beside its TransMM baseline (§2).

    A standard transformers pipeline: `Pipeline.__call__` merges the options given to `pipeline(...)` with those of
    each call (the call's win), batches lists, `KeyDataset`s and generators through a `DataLoader` (`batch_size`,
    `num_workers`), and streams datasets and generators. Images of one batch share one forward and one backward pass;
    the results equal the per-image ones (method.md §1).

    Construction-only args:
        model: a ViT-family image classifier or a `CLIPModel` (id, folder or instance).
        sae: a [`SparseAutoencoder`], a folder or Hub id of one SAE or of a set, or a list/dict of those.
        layers (`list[int]`, *optional*): the gated blocks to pick out of the SAE set (default: all of them); also
            the default gated blocks of every call.
        mean_residuals (*optional*): μ_ℓ per block (a dict of tensors or a path written by `save_mean_residuals`),
            for `variant="mean-centered"`, which needs no SAE.
        linear_backend (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"onednn"` or `"default"`, how linear
            layers and SAE encoders run on CPU (see [`FeatureGradientAttribution`]).
        precision (`str`, *optional*, defaults to `"float32"`): `"float32"` or `"bfloat16"`, the precision of the
            attribution passes (`hf_fga.precision`; see [`FeatureGradientAttribution`]): `"bfloat16"` runs them under
            `torch.autocast`, the model itself is never converted and every result is float32. bfloat16 is slower
            than float32 on CPUs without native bfloat16 instructions (a warning says so).

    Options (given to `pipeline(...)` they apply to every call; given to a call, to that call):
        target (`int` or `str`, *optional*): the class index or label name explained, for every image (default: each
            image's predicted class). To explain several classes, call once per class.
        candidate_labels (`list[str]` or `str`): CLIP's zero-shot labels; a string is one label, or several
            separated by commas (`"cat, dog"`).
        method (`str`, defaults to `"fga"`): a registered method (`hf_fga.list_methods()`): `"fga"`, `"transmm"`,
            `"rollout"`, `"raw-attention"`, `"integrated-gradients"`, `"caap"`, `"kernel-shap"`, …
        method_options (`dict[str, Any]`, *optional*): the chosen method's own options
            (`hf_fga.attribution.get_method(method).options`), passed to [`Attributor.attribute`]: e.g. `{"steps": 16,
            "internal_batch_size": 8}` for `"integrated-gradients"`, `{"block_range": (0, 4), "batch_size": 32}`
            for `"caap"`, `{"n_samples": 200, "seed": 0}` for `"kernel-shap"`, `{"num_contributions": 32}` for
            `"fga"`. `variant`, `layers`, `kappa` and `cmax` are pipeline options of their own and
            `return_contributions` is set by the pipeline, so none of them may appear here; an option the method
            does not take raises a TypeError listing the ones it does. A call's `method_options` replaces the
            construction's (it is not merged key by key).
        variant (`str`, defaults to `"combined"`): the FGA score (method.md §3).
        kappa (`float`, defaults to 0.5): κ > 0; any real number type (Python, numpy, 0-d tensor), not a bool.
        cmax (`float`, defaults to 10.0): c_max > 1, same types.
        layers (`list[int]`): the gated blocks (at least one).
        libragrad (`bool`, defaults to `False`): run a gradient-based method (`"fga"`, `"transmm"`, …) under
            LibraGrad's backward rules (method.md §8; see [`Attributor.attribute`]).
        top_k_features (`int`, defaults to 5): at most this many features in `top_features` (≥ 1).
        explain_features (`int`, defaults to 0): explain why the strongest this-many features of `top_features`
            fire (CaFE, method.md §9; [`hf_fga.cafe.explain_feature`]): their entries gain `ierf` (h × w, the
            attribution of the feature's activation at its peak token to the input patches), `activation_map`
            (h × w), `position` (the peak token, 0 = CLS), `activation`, `locality_share` (positive iERF mass in the
            3 × 3 patches around the peak; NaN at CLS), `non_local` and `at_cls`. One forward pass of the blocks up
            to the SAE's and one backward pass per feature; 0 turns it off.
        cafe_method (`str`, defaults to `"gradient-x-input"`): the iERF back-end (`hf_fga.cafe.BACKENDS`).
        timeout (`float`, *optional*): seconds to wait for an image URL.
        batch_size (`int`, defaults to 1), num_workers (`int`, defaults to 0): as in every transformers pipeline.

    Inputs: one image or a list / tuple / `datasets` column / `KeyDataset` / generator of images: paths, http(s) URLs
    and base64 strings (read by `transformers.image_utils.load_image`, EXIF orientation applied), PIL images, arrays
    and tensors (the accepted values per dtype are listed in `hf_fga.images`), `datasets` image cells.

    Returns, per image, a dict of plain Python / numpy values: `label`, `score` (probability of the explained class),
    `target`, `attribution` (float32, patch grid h × w), `baseline` (TransMM of the same pass, h × w; `None` for
    methods that run their own passes), `gates` ({block: h × w}),
    `top_features` ({block: [{"index", "sign", "contribution", "patches"}, …]}, see below), `overlay` (PIL image).
    A list of such dicts for a list of images; an iterator of them for a dataset or a generator.

    `top_features` follows method.md §7 (`hf_fga.feature_drivers`): from the patch whose attribution FGA changed most
    against TransMM (both maps min–max scaled) on, each patch's driver is the (block, feature) with the largest push
    c_{t,k} / (1.4826 (MAD_ℓ + ε)) on its normalised score ŝ_t, hence on its gate: an amplifier when positive, a
    suppressor when negative. Up to `top_k_features` distinct drivers are listed under their block, strongest first,
    with their summed push (`contribution`) and the patches they drive; every gated block with an SAE has a key, so
    a block whose features drove none of the largest changes has an empty list. Empty (`{}`) for methods and variants
    that do not read SAE features.

    Example:
    ```python
    >>> import hf_fga
    >>> from transformers import pipeline
    >>> model, sae = hf_fga.bundled.model_dir(), hf_fga.bundled.sae_dir()
    >>> explain = pipeline("feature-gradient-attribution", model=model, sae=sae, kappa=1.0)  # doctest: +SKIP
    >>> explain(hf_fga.bundled.example_images()[0])["label"]  # doctest: +SKIP
    'PNEUMONIA'
    >>> [out["label"] for out in explain(hf_fga.bundled.example_images()[:4], batch_size=4)]  # doctest: +SKIP
    ['PNEUMONIA', 'NORMAL', 'NORMAL', 'NORMAL']

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
        precision: str = "float32",
        **kwargs,
    ):
        layers = gated_layers(layers) if layers is not None else None
        precision = check_precision(precision)
        super().__init__(*args, **kwargs)  # sanitizes the remaining options: they apply to every call
        from ..attribution import load_mean_residuals
        from ..sae import load_saes

        self.saes = load_saes(sae, layers=layers) if sae is not None else {}
        if isinstance(mean_residuals, (str, bytes)) or hasattr(mean_residuals, "__fspath__"):
            mean_residuals = load_mean_residuals(mean_residuals)
        self.layers = layers
        if layers is not None:
            self._forward_params = {"layers": layers, **self._forward_params}
        self.attributor = FeatureGradientAttribution(
            self.model, self.saes, mean_residuals=mean_residuals, linear_backend=linear_backend, precision=precision
        )
        self._text_cache: tuple[tuple[str, ...], torch.Tensor] | None = None

    def __call__(self, inputs, **kwargs):
        """
        Explain one image, or several (a list, tuple, `datasets` column, 4-D array, `KeyDataset` or generator).

        Tuples, columns and 4-D arrays are handed to `Pipeline.__call__` as lists (so they are batched and a list
        comes back); everything else as it is. Keyword arguments are the options of the class docstring.
        """
        return super().__call__(as_pipeline_inputs(inputs), **kwargs)

    def get_inference_context(self):
        return gradients_on  # `Pipeline.forward` runs `_forward` under it: attribution needs gradients

    def _sanitize_parameters(
        self,
        target=None,
        candidate_labels=None,
        method=None,
        variant=None,
        kappa=None,
        cmax=None,
        layers=None,
        libragrad=None,
        method_options=None,
        top_k_features=None,
        explain_features=None,
        cafe_method=None,
        timeout=None,
        **unexpected,
    ):
        construction = sorted(set(unexpected) & set(CONSTRUCTION_ONLY))
        if construction:
            raise TypeError(
                f"{construction} can only be given when the pipeline is built: pipeline({TASK!r}, ..., "
                f"{construction[0]}=...)."
            )
        if unexpected:
            raise TypeError(f"Unknown parameter(s) {sorted(unexpected)} for the {TASK} pipeline; accepted: {OPTIONS}.")
        preprocess, forward, postprocess = {}, {}, {}
        if timeout is not None:
            preprocess["timeout"] = real_number("timeout", timeout, low=0, inclusive=False, meaning="seconds")
        if target is not None:
            forward["target"] = check_target(target)
        if candidate_labels is not None:
            forward["candidate_labels"] = tuple(candidate_label_list(candidate_labels))
        for name, value in (("method", method), ("variant", variant)):
            if value is not None:
                if not isinstance(value, str):
                    raise TypeError(f"{name} must be a string, got {value!r}.")
                forward[name] = value
        if kappa is not None:
            forward["kappa"] = real_number("kappa", kappa, low=0, inclusive=False, meaning="the gate's sensitivity")
        if cmax is not None:
            forward["cmax"] = real_number("cmax", cmax, low=1, inclusive=False, meaning="gates lie in [1/cmax, cmax]")
        if layers is not None:
            forward["layers"] = gated_layers(layers)
        if libragrad is not None:
            if not isinstance(libragrad, bool):
                raise TypeError(f"libragrad must be True or False, got {libragrad!r}.")
            forward["libragrad"] = libragrad
        if method_options is not None:
            forward["method_options"] = check_method_options(method_options)
        if top_k_features is not None:
            postprocess["top_k_features"] = integer(
                "top_k_features", top_k_features, low=1, meaning="how many features top_features lists"
            )
        if explain_features is not None:
            forward["explain_features"] = integer(
                "explain_features", explain_features, low=0, meaning="how many top features CaFE explains"
            )
        if cafe_method is not None:
            if cafe_method not in BACKENDS:
                raise ValueError(f"cafe_method={cafe_method!r}: expected one of {sorted(BACKENDS)}.")
            forward["cafe_method"] = cafe_method
        return preprocess, forward, postprocess

    def preprocess(self, image, timeout: float | None = None) -> dict[str, Any]:
        image = load_image(image, timeout=timeout)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values.to(dtype=self.model.dtype), "image": image}

    def _labels(self, candidate_labels: tuple[str, ...] | None) -> tuple[tuple[str, ...], torch.Tensor | None]:
        """The labels the target indexes, and CLIP's text embeddings of them (`None` for a classifier)."""
        if not is_clip(self.model):
            if candidate_labels is not None:
                warnings.warn(
                    "candidate_labels is only used by CLIP models; ignoring it for this classifier.", stacklevel=4
                )
            config = self.model.config
            return tuple(config.id2label[i] for i in range(config.num_labels)), None
        if not candidate_labels:
            raise ValueError(
                "This is a CLIP model: pass candidate_labels=[...] (the zero-shot labels to choose between)."
            )
        if self.tokenizer is None:
            raise ValueError(
                "CLIP needs its tokenizer: pass tokenizer=... to pipeline(), or a model folder that has one."
            )
        if self._text_cache is None or self._text_cache[0] != candidate_labels:
            self._text_cache = (
                candidate_labels,
                clip_text_embeddings(self.model, self.tokenizer, list(candidate_labels)),
            )
        return candidate_labels, self._text_cache[1]

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
        libragrad=False,
        method_options=None,
        explain_features=0,
        cafe_method="gradient-x-input",
    ) -> dict[str, list]:
        """
        One forward and one backward pass for a batch `pixel_values (B, 3, H, W)`; returns per-image lists (the
        `DataLoader` unbatches them): `output` (an `AttributionOutput` of batch 1 each), `image`, `labels`.
        """
        pixel_values = model_inputs["pixel_values"].clone()  # a normal tensor even if made under inference mode
        images = model_inputs["image"] if isinstance(model_inputs["image"], list) else [model_inputs["image"]]
        labels, text_embeds = self._labels(candidate_labels)
        options = dict(
            variant=variant,
            layers=layers,
            kappa=kappa,
            cmax=cmax,
            return_contributions=method == "fga" and variant in FEATURE_VARIANTS,
        )
        accepted = get_method(method).options  # the FGA settings apply to the methods that take them
        method_options = method_options or {}
        unknown = sorted(set(method_options) - set(accepted))
        if unknown:
            own = [name for name in accepted if name not in PIPELINE_SET]
            raise TypeError(
                f"method_options {unknown} are not options of method {method!r}; its method_options are: "
                f"{own or 'none'} (see hf_fga.attribution.get_method({method!r}).options)."
            )
        out = self.attributor.attribute(
            pixel_values,
            target=target_index(target, labels),
            method=method,
            text_embeds=text_embeds,
            libragrad=libragrad,
            **{name: value for name, value in options.items() if name in accepted},
            **method_options,
        )
        batch = pixel_values.shape[0]
        outputs = [one_image(out, b) for b in range(batch)]
        explained = [
            self._explain_drivers(output, pixel_values[b : b + 1], explain_features, cafe_method)
            for b, output in enumerate(outputs)
        ]
        return {"output": outputs, "image": images, "labels": [labels] * batch, "explained": explained}

    def _explain_drivers(self, out, pixel_values, count: int, cafe_method: str) -> dict[tuple[int, int], dict]:
        """CaFE for the `count` strongest feature drivers of one image: `{(block, feature): fields}`."""
        if count == 0 or not out.contributions:
            return {}
        by_block: dict[int, list[int]] = {}
        for driver in feature_drivers(out, 0, max_features=count):
            by_block.setdefault(driver.block, []).append(driver.index)
        explained = {}
        for block, features in by_block.items():
            result = explain_feature(
                self.model,
                self.saes[block],
                pixel_values,
                features,
                method=cafe_method,
                linear_backend=self.attributor.linear_backend,
            )
            for f, feature in enumerate(features):
                explained[(block, feature)] = {
                    "ierf": result.ierf[0, f].numpy().astype(np.float32),
                    "activation_map": result.activation_map[0, f].numpy().astype(np.float32),
                    "position": int(result.position[0, f]),
                    "activation": float(result.value[0, f]),
                    "locality_share": float(result.locality.share[0, f]),
                    "non_local": bool(result.locality.non_local[0, f]),
                    "at_cls": bool(result.locality.at_cls[0, f]),
                }
        return explained

    def postprocess(self, model_outputs, top_k_features: int = 5) -> dict[str, Any]:
        # A batch unrolled by the DataLoader gives each image's entries; a single call, lists of one.
        out, image, labels, explained = (
            v[0] if isinstance(v, list) else v
            for v in (
                model_outputs["output"],
                model_outputs["image"],
                model_outputs["labels"],
                model_outputs["explained"],
            )
        )
        t = int(out.target[0])
        attribution = out.attribution[0].numpy().astype(np.float32)
        return {
            "label": labels[t],
            "score": float(out.probabilities[0, t]),
            "target": t,
            "attribution": attribution,
            "baseline": None if out.baseline is None else out.baseline[0].numpy().astype(np.float32),
            "gates": {block: g[0].numpy().astype(np.float32) for block, g in out.gates.items()},
            "top_features": top_features(out, top_k_features, explained),
            "overlay": overlay(image, attribution),
        }


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Gradients on, also when the caller runs the pipeline under `torch.inference_mode()` or `torch.no_grad()`."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def gated_layers(layers) -> list[int]:
    """`layers` (one block or a sequence of blocks) as a list of block indices; empty is an error."""
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, (bool, np.bool_)):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, np.ndarray)):
        raise TypeError(f"layers must be a list of block indices, e.g. layers=[4, 5], got {layers!r}.")
    blocks = [integer("layers", block, low=0, meaning="a 0-indexed block") for block in layers]
    if not blocks:
        raise ValueError(
            "layers=[] gates no block, so FGA would be plain TransMM: pass at least one block (e.g. layers=[4, 5]), "
            "leave layers out to gate every block that has an SAE, or use method='transmm'."
        )
    return blocks


def check_method_options(method_options) -> dict[str, Any]:
    """A copy of `method_options` (a dict of option name → value) without the options the pipeline sets itself."""
    if not isinstance(method_options, dict):
        raise TypeError(
            f"method_options must be a dict of the method's options, e.g. method_options={{'steps': 16}} for "
            f"method='integrated-gradients', got {type(method_options).__name__}: {method_options!r}."
        )
    names = [name for name in method_options if not isinstance(name, str)]
    if names:
        raise TypeError(f"method_options keys must be option names (strings), got {names!r}.")
    own = sorted(set(method_options) & set(PIPELINE_SET))
    if own:
        raise ValueError(
            f"method_options may not set {own}: variant, layers, kappa and cmax are pipeline options (pass e.g. "
            "kappa=1.0 to pipeline(...) or to the call) and return_contributions is set by the pipeline."
        )
    return dict(method_options)


def check_target(target) -> int | str:
    """One class index or label name (the same for every image)."""
    if isinstance(target, str):
        return target
    if isinstance(target, (list, tuple)):
        raise TypeError(
            f"target applies to every image: pass one class index or label name, got {target!r}. To explain "
            "several classes, call the pipeline once per class."
        )
    return integer("target", target, low=0, meaning="a class index or a label name")


def target_index(target: int | str | None, labels: Sequence[str]) -> int | None:
    """The class index of `target` among `labels` (`None` keeps each image's prediction)."""
    if target is None:
        return None
    if isinstance(target, str):
        if target not in labels:
            raise ValueError(f"Unknown target label {target!r}; the labels are {list(labels)}.")
        return list(labels).index(target)
    if target >= len(labels):
        raise ValueError(f"target must be a label name or an index in [0, {len(labels) - 1}], got {target}.")
    return target


def one_image(out, b: int):
    """Image `b` of a batched `AttributionOutput`, as an output of batch 1 (every tensor sliced `[b : b + 1]`)."""

    def select(value):
        if isinstance(value, torch.Tensor):
            return value[b : b + 1]
        if isinstance(value, dict):
            return {k: select(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(select(v) for v in value)
        return value

    return dataclasses.replace(out, **{f.name: select(getattr(out, f.name)) for f in dataclasses.fields(out)})


def top_features(out, top_k: int, explained: dict | None = None) -> dict[int, list[dict[str, Any]]]:
    """
    The pipeline's `top_features` of an output of batch 1 (see the class docstring): up to `top_k` drivers from
    [`hf_fga.feature_drivers.feature_drivers`], grouped by block, strongest first; the CaFE fields of the drivers in
    `explained` (`{(block, feature): fields}`) are added to their entries.
    """
    if not out.contributions:
        return {}
    explained = explained or {}
    grouped: dict[int, list[dict[str, Any]]] = {block: [] for block in sorted(out.contributions)}
    for driver in feature_drivers(out, 0, max_features=top_k):
        grouped[driver.block].append({**driver.as_dict(), **explained.get((driver.block, driver.index), {})})
    return grouped
