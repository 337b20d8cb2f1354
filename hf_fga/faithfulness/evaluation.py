"""One call for users: faithfulness scores of patch attributions, in either preset of method.md §5."""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Sequence

import evaluate
import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..introspection import clip_text_embeddings, is_clip, model_logits
from ..metrics import metric_path
from ..precision import autocast, check_precision
from .fast_linear import fast_forward
from .fills import FILLS, check_attributions, check_pixel_values, default_normalization, patch_grid
from .presets import FaithfulnessPreset, resolve_preset
from .records import Plan, plan_curve, plan_faithfulness_correlation, plan_saco
from .runner import PerturbationRunner, ResponseCache

METRICS = ("saco", "faithfulness_correlation", "pixel_flipping", "insertion", "deletion")
COMPLETENESS = "completeness"  # not a perturbation metric: the gradients' completeness error (method.md §8)
DEFAULT_METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")


def make_runner(
    model: PreTrainedModel | Callable[[Tensor], Tensor],
    pixel_values: Tensor,
    *,
    text_embeds: Tensor | None = None,
    candidate_labels: Sequence[str] | None = None,
    tokenizer=None,
    batch_size: int = 64,
    seed: int = 0,
    image_ids: Sequence[int] | None = None,
    targets: Sequence[int] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    blur_sigma: float | None = None,
    patch_size: int | None = None,
    cache: ResponseCache | None = None,
    progress: bool = True,
    linear_backend: str = "auto",
    precision: str = "float32",
) -> PerturbationRunner:
    """
    A `PerturbationRunner` for a ViT-family classifier, a CLIPModel (with `text_embeds`, or `candidate_labels` and
    `tokenizer`), or any callable `pixel_values -> scores (b, num_outputs)` (then pass `patch_size`).

    Scores are the model logits (`hf_fga.introspection.model_logits`); probabilities are their softmax (for
    CLIP, over the candidate labels). `image_mean`/`image_std` default to the processor defaults of the model family
    (pass `processor.image_mean`, `processor.image_std`); they are used by the `black` and `uniform` fills only.
    `linear_backend` (`"auto"`, `"onednn"` or `"default"`) picks how a `PreTrainedModel`'s linear layers run in the
    perturbation forwards (`hf_fga.faithfulness.fast_linear`): `"auto"` uses prepacked oneDNN kernels on CPU where
    they agree with the stock forward, which is up to ~1.7x faster on CPUs where MKL's sgemm is slow.
    `precision` (`"float32"` or `"bfloat16"`, `hf_fga.precision`) is the precision of the perturbation forwards;
    with `"bfloat16"` they run under `torch.autocast` with the stock linears, and the responses are float64 either way.
    """
    check_precision(precision)
    grid = patch_grid(model, pixel_values, patch_size)
    check_pixel_values(pixel_values)
    if isinstance(model, PreTrainedModel):
        if is_clip(model) and text_embeds is None:
            if candidate_labels is None or tokenizer is None:
                raise ValueError("CLIP needs text_embeds, or candidate_labels with a tokenizer, to score images.")
            text_embeds = clip_text_embeddings(model, tokenizer, list(candidate_labels))
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        embeds = text_embeds

        def stock_forward(batch: Tensor) -> Tensor:
            return model_logits(model, batch, embeds)

        forward = fast_forward(model, stock_forward, linear_backend) if precision == "float32" else stock_forward

        label_key = None
        if text_embeds is not None:
            label_key = hashlib.blake2b(text_embeds.detach().cpu().double().numpy().tobytes()).hexdigest()
        model_key = (id(model), label_key, precision)
    else:
        forward, model_key = model, (id(model), None, precision)
    if precision != "float32":
        forward = _in_precision(forward, pixel_values.device, precision)
    default_mean, default_std = default_normalization(model)
    return PerturbationRunner(
        forward,
        pixel_values,
        grid,
        image_mean=list(default_mean if image_mean is None else image_mean),
        image_std=list(default_std if image_std is None else image_std),
        batch_size=batch_size,
        seed=seed,
        image_ids=image_ids,
        targets=targets,
        blur_sigma=blur_sigma,
        cache=cache,
        model_key=model_key,
        progress=progress,
    )


def _in_precision(forward: Callable[[Tensor], Tensor], device, precision: str) -> Callable[[Tensor], Tensor]:
    """`forward` run under `hf_fga.precision.autocast`, its scores returned as float32."""

    def run(batch: Tensor) -> Tensor:
        with autocast(device, precision):
            scores = forward(batch)
        return scores.float()

    return run


def plan_metrics(
    runner: PerturbationRunner,
    attributions: np.ndarray,
    metrics: Sequence[str],
    preset: FaithfulnessPreset,
    fill: str,
    seed: int,
    curve_quantity: str = "probability",
) -> dict[str, Plan]:
    """
    The plan of every metric under one preset (see `records.py`). `curve_quantity` is what insertion and deletion
    track: `"probability"` (softmax of the scores) or `"score"` (the raw output, e.g. an SAE feature activation
    returned by a callable model); SaCo and Pixel Flipping always use probabilities, FC the raw logit.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics={tuple(metrics)} is not a non-empty subset of {METRICS}.")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is unknown: expected one of {FILLS}.")
    fill_key = runner.fill_key(fill, preset.mean_fill)
    builders = {
        "saco": lambda: plan_saco(
            runner,
            attributions,
            num_groups=preset.saco_num_groups,
            group_size=preset.saco_group_size,
            target=preset.saco_target,
            fill_key=fill_key,
        ),
        "faithfulness_correlation": lambda: plan_faithfulness_correlation(
            runner,
            attributions,
            runs=preset.fc_runs,
            subset_size=preset.subset_size(runner.grid.patch_size),
            trials=preset.fc_trials,
            seed=seed,
            fill_key=fill_key,
        ),
        "pixel_flipping": lambda: plan_curve(
            runner,
            attributions,
            fill_key=fill_key,
            recompute_mean=fill == "mean" and preset.mean_fill == "scalar",
        ),
        "insertion": lambda: plan_curve(runner, attributions, insert=True, fill_key=fill_key, quantity=curve_quantity),
        "deletion": lambda: plan_curve(runner, attributions, fill_key=fill_key, quantity=curve_quantity),
    }
    return {name: builders[name]() for name in metrics}


@functools.cache
def metric_module(name: str) -> evaluate.EvaluationModule:
    """
    The bundled `evaluate` module of metric `name`, loaded once per process (a benchmark warms it up with this).
    In memory: no cache files or file locks, so parallel processes (e.g. under accelerate) never collide.
    """
    return evaluate.load(metric_path(name), keep_in_memory=True)


def score_records(records: dict[str, object], preset: str | FaithfulnessPreset = "papers") -> dict[str, np.ndarray]:
    """Per-image scores `{metric: (B,)}` of records, computed by the bundled `evaluate` modules."""
    preset = resolve_preset(preset)
    scores = {}
    for name, record in records.items():
        if name == "saco":
            kwargs = dict(saliences=record.saliences.tolist(), drops=record.drops.tolist())
        elif name == "faithfulness_correlation":
            flat = record.attribution_sums.shape[0], -1
            kwargs = dict(
                attribution_sums=record.attribution_sums.reshape(flat).tolist(),
                drops=record.drops.reshape(flat).tolist(),
                correlation=preset.fc_correlation,
                trials=record.attribution_sums.shape[1],
            )
        elif name == "pixel_flipping":
            kwargs = dict(curves=record.curves.tolist(), auc=preset.pf_auc)
        else:
            kwargs = dict(curves=record.curves.tolist())
        result = metric_module(name).compute(**kwargs, return_per_image=True)
        scores[name] = np.asarray(result[f"{name}_per_image"], dtype=np.float64)
    return scores


def faithfulness_records(
    model: PreTrainedModel | Callable[[Tensor], Tensor],
    pixel_values: Tensor,
    attributions: Tensor | np.ndarray,
    metrics: Sequence[str] = DEFAULT_METRICS,
    preset: str | FaithfulnessPreset = "papers",
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    **options,
) -> dict[str, object]:
    """
    The per-image records `{metric: record}` (`SaCoRecord`, `FaithfulnessCorrelationRecord`, `CurveRecord`) that the
    `evaluate` modules score. All metrics' perturbed inputs are batched together. Arguments as `evaluate_faithfulness`.
    """
    return faithfulness_records_for_presets(
        model, pixel_values, attributions, metrics, (preset,), fill, seed, batch_size, **options
    )[0]


def faithfulness_records_for_presets(
    model: PreTrainedModel | Callable[[Tensor], Tensor],
    pixel_values: Tensor,
    attributions: Tensor | np.ndarray,
    metrics: Sequence[str] = DEFAULT_METRICS,
    presets: Sequence[str | FaithfulnessPreset] = ("papers", "thesis"),
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    **options,
) -> list[dict[str, object]]:
    """
    Records for several presets from one runner: every distinct perturbed input runs once (see `ResponseCache` for
    what the presets share). Keyword options are `make_runner`'s, then preset overrides applied to every preset.
    """
    fill = _deprecated_baseline(options, fill)
    runner_options = {k: options.pop(k) for k in list(options) if k in _RUNNER_OPTIONS}
    curve_quantity = runner_options.pop("curve_quantity", "probability")
    resolved = [resolve_preset(preset, **options) for preset in presets]
    runner = make_runner(model, pixel_values, batch_size=batch_size, seed=seed, **runner_options)
    values = check_attributions(attributions, runner.grid, runner.num_images)
    plans = [plan_metrics(runner, values, metrics, preset, fill, seed, curve_quantity) for preset in resolved]
    runner.prefetch(runner.clean_requests() + [r for per in plans for plan in per.values() for r in plan.requests])
    return [{name: plan.build(runner.responses(plan.requests)) for name, plan in per.items()} for per in plans]


def _deprecated_baseline(options: dict, fill: str) -> str:
    """`fill`, or the value of the deprecated `baseline=` keyword (removed from `options`) with a FutureWarning."""
    if "baseline" not in options:
        return fill
    warnings.warn(
        "The faithfulness keyword `baseline=` is deprecated and will be removed: pass `fill=` (what a perturbed "
        "patch is filled with); `baseline` names the TransMM map in attribution outputs.",
        FutureWarning,
        stacklevel=3,
    )
    return options.pop("baseline")


_RUNNER_OPTIONS = (
    "text_embeds",
    "candidate_labels",
    "tokenizer",
    "image_ids",
    "targets",
    "image_mean",
    "image_std",
    "blur_sigma",
    "patch_size",
    "cache",
    "progress",
    "curve_quantity",
    "linear_backend",
    "precision",
)


def evaluate_faithfulness(
    model: PreTrainedModel | Callable[[Tensor], Tensor],
    pixel_values: Tensor,
    attributions: Tensor | np.ndarray,
    metrics: Sequence[str] = DEFAULT_METRICS,
    preset: str | FaithfulnessPreset = "papers",
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    **overrides,
) -> dict[str, np.ndarray]:
    """
    Per-image faithfulness scores of patch attributions (method.md §5).

    Args:
        model (`PreTrainedModel` or callable): a ViT-family classifier, a CLIPModel (pass `text_embeds`, or
            `candidate_labels` and `tokenizer`), or a callable `pixel_values -> scores (b, num_outputs)` (pass
            `patch_size`).
        pixel_values (`torch.Tensor` of shape `(B, C, H, W)`): preprocessed images.
        attributions (`torch.Tensor` or `np.ndarray` of shape `(B, h, w)`): one value per patch of the model's grid.
        metrics (`Sequence[str]`, *optional*): any of `"saco"`, `"faithfulness_correlation"`, `"pixel_flipping"`,
            `"insertion"`, `"deletion"`, and `"completeness"`: the completeness error of the model's gradients
            (method.md §8; [`completeness_scores`]), plain or with `libragrad=True`; it does not read the map.
        preset (`str` or `FaithfulnessPreset`, *optional*, defaults to `"papers"`): `"papers"` or `"thesis"` (the
            thesis code's protocol, method.md §5 table).
        fill (`str`, *optional*, defaults to `"mean"`): what a perturbed patch is filled with (method.md §5):
            `"mean"`, `"zero"`, `"black"`, `"blur"` or `"uniform"`. (`baseline=` is a deprecated alias.)
        seed (`int`, *optional*, defaults to 0): seeds the random subsets and the noise, per image.
        batch_size (`int`, *optional*, defaults to 64): perturbed inputs per forward pass; scores do not depend on it.
        overrides: `make_runner` options (`text_embeds`, `candidate_labels`, `tokenizer`, `image_ids`, `targets`,
            `image_mean`, `image_std`, `blur_sigma`, `patch_size`, `cache`, `progress`, `linear_backend`,
            `precision`: `"float32"` (default) or `"bfloat16"`, see `hf_fga.precision`), `curve_quantity`
            (`"probability"` or `"score"`: what insertion/deletion track; see `plan_metrics`) and any
            `FaithfulnessPreset` field (e.g. `fc_runs=50`, `saco_num_groups=5`); `libragrad` (`bool`) for the
            `completeness` metric.

    Returns:
        `dict[str, np.ndarray]`: per-image scores `(B,)` per metric. SaCo, Faithfulness Correlation and insertion:
        higher is better; Pixel Flipping and deletion: lower is better.

    Forward passes per image: SaCo K, Faithfulness Correlation runs × trials, Pixel Flipping N, insertion N − 1
    (the fully perturbed image is Pixel Flipping's last step when the fills agree), deletion N (shared with Pixel
    Flipping in the papers preset), plus one clean forward shared by all.

    Example (a toy "model" whose 3 scores are the channel means; any ViT classifier or CLIPModel works the same):
    ```python
    >>> import torch
    >>> from hf_fga.faithfulness import evaluate_faithfulness
    >>> pixel_values, attributions = torch.rand(2, 3, 32, 32), torch.rand(2, 4, 4)
    >>> scores = evaluate_faithfulness(
    ...     lambda x: x.mean(dim=(2, 3)), pixel_values, attributions, preset="thesis", fill="zero",
    ...     patch_size=8, fc_subset_size=4, progress=False,
    ... )
    >>> {name: values.shape for name, values in scores.items()}
    {'saco': (2,), 'faithfulness_correlation': (2,), 'pixel_flipping': (2,)}

    ```
    """
    fill = _deprecated_baseline(overrides, fill)
    libragrad = bool(overrides.pop("libragrad", False))
    perturbation = [name for name in metrics if name != COMPLETENESS]
    scores = {}
    if perturbation:
        (scores,) = evaluate_presets(
            model, pixel_values, attributions, perturbation, (preset,), fill, seed, batch_size, **overrides
        ).values()
    if COMPLETENESS in metrics:
        targets = overrides.get("targets")
        scores[COMPLETENESS] = completeness_scores(
            model,
            pixel_values,
            None if targets is None else torch.as_tensor(list(targets), dtype=torch.long),
            overrides.get("text_embeds"),
            libragrad=libragrad,
        )
    return {name: scores[name] for name in metrics}


def completeness_scores(
    model: PreTrainedModel,
    pixel_values: Tensor,
    targets: Tensor | None = None,
    text_embeds: Tensor | None = None,
    libragrad: bool = False,
) -> np.ndarray:
    """
    The completeness error of method.md §8, `|y − Σ_i x_i g_i − Σ_b b·∂y/∂b| / |y|` per image `(B,)`, scored by the
    bundled `completeness` `evaluate` module: for plain gradients, or for LibraGrad's (`libragrad=True`).

    Completeness is a property of the gradients a method reads, not of its map: every plain-gradient method
    (gradient × input, Integrated Gradients' integrand, Grad-CAM, TransMM, FGA) shares the plain value, and
    `+libragrad` makes it ≈ 0 (< 1e-8 in float64, ~1e-6 in float32). Methods that read no gradients (rollout, raw
    attention, CAAP, LRP's own rules) have none; `evaluate_faithfulness` computes it regardless of the map. One forward
    and one backward pass per image (parameter gradients of the bias-like terms are per image).
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            "The completeness metric needs the model itself (a ViT-family classifier or a CLIPModel), not a callable: "
            "it differentiates with respect to the model's bias-like parameters."
        )
    # deferred: the attribution stack imports `faithfulness.fills`; completeness belongs to its backward rules
    from ..attribution.completeness import model_completeness_terms
    from ..attribution.rules import backward_rules

    terms = model_completeness_terms(
        model, pixel_values, targets, text_embeds, backward_context=backward_rules("libragrad") if libragrad else None
    )
    result = metric_module(COMPLETENESS).compute(
        scores=terms["scores"].tolist(),
        input_terms=terms["input_terms"].tolist(),
        bias_terms=terms["bias_terms"].tolist(),
        return_per_image=True,
    )
    return np.asarray(result[f"{COMPLETENESS}_per_image"], dtype=np.float64)


def evaluate_presets(
    model: PreTrainedModel | Callable[[Tensor], Tensor],
    pixel_values: Tensor,
    attributions: Tensor | np.ndarray,
    metrics: Sequence[str] = DEFAULT_METRICS,
    presets: Sequence[str | FaithfulnessPreset] = ("papers", "thesis"),
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    **overrides,
) -> dict[str, dict[str, np.ndarray]]:
    """
    `evaluate_faithfulness` under several presets at once, `{preset name: {metric: (B,) scores}}`, sharing the
    model responses wherever the perturbed inputs coincide (one `ResponseCache`; see its docstring for what is
    shared: always the clean forward; with a non-`mean` fill also the Pixel Flipping curve and Faithfulness
    Correlation's first-trial subsets when the subset sizes agree).
    """
    fill = _deprecated_baseline(overrides, fill)
    records = faithfulness_records_for_presets(
        model, pixel_values, attributions, metrics, presets, fill, seed, batch_size, **overrides
    )
    preset_overrides = {k: v for k, v in overrides.items() if k not in _RUNNER_OPTIONS}
    resolved = [resolve_preset(preset, **preset_overrides) for preset in presets]
    return {preset.name: score_records(record, preset) for preset, record in zip(resolved, records, strict=True)}


def forward_passes_per_image(
    preset: str | FaithfulnessPreset, num_patches: int, patch_size: int, **overrides
) -> dict[str, int]:
    """The minimum forward passes per image each metric needs beyond the shared clean forward."""
    preset = resolve_preset(preset, **overrides)
    k = preset.saco_num_groups or -(-num_patches // preset.saco_group_size)
    return {
        "clean (shared)": 1,
        "saco": k,
        "faithfulness_correlation": preset.fc_runs * preset.fc_trials,
        "pixel_flipping": num_patches,
        "insertion": num_patches - 1,
        "deletion": num_patches,
    }
