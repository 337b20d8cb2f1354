"""
Setting up an evaluation run: this process's accelerate state and thread count, the presets and configuration grid
from the arguments, and the model with its processor, SAEs, mean residuals and attribution method.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState

from ..attribution import FeatureGradientAttribution, compute_mean_residuals, load_mean_residuals, save_mean_residuals
from ..attribution.feature_selection import load_feature_importance
from ..faithfulness import resolve_preset
from ..images import load_image
from ..introspection import clip_text_embeddings, is_clip, load_vision_model
from .arguments import DataArguments, EvaluationArguments, ModelArguments
from .attribution_grid import gated_blocks
from .configuration import REFERENCE, EvaluationConfiguration, expand_grid, parse_floats, parse_layer_sets, parse_list
from .selection import load_split

PRESET_NAMES = ("papers", "thesis")
MEAN_RESIDUALS_FILE = "mean_residuals.safetensors"
FEATURE_IMPORTANCE_FILE = "feature_importance.safetensors"


def process_state() -> PartialState:
    """
    accelerate's view of this process. Without a GPU (or under `accelerate launch --cpu`) it is a CPU state, so a
    multi-process launch on a CPU-only machine shards over gloo: `PartialState()` alone would treat every process as
    a lone rank 0. (accelerate 1.15 starts several CPU processes only with `--multi_gpu` on a machine without GPUs,
    or with `--cpu --mpirun_hostfile`; `--cpu --num_processes N` alone starts one.)
    """
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def preset_overrides(eval_args: EvaluationArguments) -> dict:
    """The `--preset_overrides` JSON object (validated against the preset fields)."""
    if not eval_args.preset_overrides:
        return {}
    try:
        overrides = json.loads(eval_args.preset_overrides)
    except json.JSONDecodeError as error:
        raise ValueError(f"--preset_overrides must be a JSON object, e.g. '{{\"fc_runs\": 50}}': {error}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--preset_overrides must be a JSON object, got {eval_args.preset_overrides!r}.")
    resolve_preset("papers", **overrides)
    return overrides


def parse_presets(text: str) -> list[str]:
    names = parse_list(text, "presets")
    names = list(PRESET_NAMES) if names == ["both"] else names
    unknown = [n for n in names if n not in PRESET_NAMES]
    if unknown:
        raise ValueError(f"--presets {text!r}: expected 'papers', 'thesis' or 'both'; got {unknown}.")
    return names


def build_grid(eval_args: EvaluationArguments) -> list[EvaluationConfiguration]:
    methods = parse_list(eval_args.methods, "methods")
    grid = expand_grid(
        methods,
        parse_list(eval_args.variants, "variants"),
        parse_layer_sets(eval_args.layer_sets),
        parse_floats(eval_args.kappas, "kappas"),
        parse_floats(eval_args.cmaxes, "cmaxes"),
    )
    if eval_args.skip_reference and REFERENCE.method not in methods:
        grid = [c for c in grid if c != REFERENCE]
    if not grid:
        raise ValueError("--skip_reference leaves nothing to score: name at least one method besides TransMM.")
    return grid


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with `torch.set_num_threads(count)` (unchanged when None), restoring the count after it."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"--num_threads must be a positive integer, got {count!r}.")
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass
class EvaluationModel:
    """The loaded model and everything that scores it."""

    model: torch.nn.Module
    processor: object
    attribution: FeatureGradientAttribution
    text_embeds: torch.Tensor | None
    variant_options: dict = field(default_factory=dict)

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        return self.processor(images=[load_image(image) for image in images], return_tensors="pt")["pixel_values"]


def load_model(model_args: ModelArguments, device, candidate_labels: list[str] | None):
    from transformers import AutoImageProcessor

    model = load_vision_model(model_args.model).to(device)
    try:
        processor = AutoImageProcessor.from_pretrained(model_args.model)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{model_args.model} has no image processor (preprocessor_config.json): save the processor the model "
            "was trained with beside it (processor.save_pretrained(folder))."
        ) from error
    text_embeds = None
    if is_clip(model):
        from transformers import AutoTokenizer

        labels = parse_list(model_args.candidate_labels, "candidate_labels") if model_args.candidate_labels else None
        labels = labels or candidate_labels
        if not labels:
            raise ValueError("A CLIP model needs --candidate_labels (or a label column with class names).")
        text_embeds = clip_text_embeddings(model, AutoTokenizer.from_pretrained(model_args.model), labels)
    return model, processor, text_embeds


def mean_residuals(
    model_args: ModelArguments,
    data_args: DataArguments,
    output_dir: Path,
    attr: FeatureGradientAttribution,
    blocks: list[int],
    processor,
    state: PartialState,
    batch_size: int,
) -> dict[int, torch.Tensor]:
    """μ_ℓ for the mean-centered variant: from --mean_residuals, or computed once (main process) and stored."""
    stored = output_dir / MEAN_RESIDUALS_FILE
    if model_args.mean_residuals:
        if state.is_main_process and not stored.is_file():  # kept with the results they produced
            output_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_args.mean_residuals, stored)
        return load_mean_residuals(model_args.mean_residuals)
    if not stored.is_file():
        if not model_args.mean_residuals_split:
            raise ValueError(
                "The mean-centered variant needs the mean residuals μ_ℓ: pass --mean_residuals FILE, or "
                "--mean_residuals_split SPLIT to compute them from that split of the dataset."
            )
        if state.is_main_process:
            reference = load_split(data_args, model_args.mean_residuals_split)
            count = min(model_args.mean_residuals_limit, len(reference))
            images = reference.select(range(count))[data_args.image_column]
            batches = [
                processor(images=[load_image(i) for i in images[s : s + batch_size]], return_tensors="pt")[
                    "pixel_values"
                ]
                for s in range(0, count, batch_size)
            ]
            by_point: dict[str, list[int]] = {}
            for block in blocks:
                by_point.setdefault(attr.hook_point_of(block), []).append(block)
            means = {}
            for hook_point, chosen in by_point.items():
                means.update(compute_mean_residuals(attr.model, batches, chosen, hook_point, progress=False))
            output_dir.mkdir(parents=True, exist_ok=True)
            save_mean_residuals(means, stored, hook_point=",".join(by_point), model_name=model_args.model)
        state.wait_for_everyone()
    return load_mean_residuals(stored)


def load_evaluation_model(
    model_args: ModelArguments,
    data_args: DataArguments,
    eval_args: EvaluationArguments,
    configurations: list[EvaluationConfiguration],
    candidate_labels: list[str] | None,
    state: PartialState,
) -> EvaluationModel:
    """
    The model, its processor, SAEs and (for mean-centered) mean residuals, and the attribution method over them;
    every configuration is checked against them before any image is scored.
    """
    device = torch.device(model_args.device) if model_args.device else state.device
    model, processor, text_embeds = load_model(model_args, device, candidate_labels)
    saes = {}
    if model_args.sae and model_args.sae.lower() != "none":
        from ..sae import load_saes

        saes = {block: sae.to(device) for block, sae in load_saes(parse_list(model_args.sae, "sae")).items()}
    attr = FeatureGradientAttribution(
        model, saes, linear_backend=eval_args.linear_backend, precision=eval_args.precision
    )
    if any(c.variant == "mean-centered" for c in configurations):
        chosen = sorted({b for c in configurations if c.variant == "mean-centered" for b in c.layers}) or sorted(saes)
        if not chosen:
            raise ValueError("mean-centered without --layer_sets or SAEs has no block to gate: pass --layer_sets.")
        means = mean_residuals(
            model_args, data_args, Path(eval_args.output_dir), attr, chosen, processor, state, eval_args.batch_size
        )
        attr = FeatureGradientAttribution(
            model,
            saes,
            mean_residuals={b: m.to(device) for b, m in means.items()},
            linear_backend=eval_args.linear_backend,
            precision=eval_args.precision,
        )
    options = variant_options(model_args, Path(eval_args.output_dir), state)
    for configuration in configurations:  # fail before any work on a configuration that cannot run
        gated_blocks(attr, configuration, options)
    return EvaluationModel(model, processor, attr, text_embeds, options)


def variant_options(model_args: ModelArguments, output_dir: Path, state: PartialState) -> dict:
    """The control variants' run-level options: the `selective` feature importances, kept beside the results."""
    if not model_args.feature_importance:
        return {}
    stored = output_dir / FEATURE_IMPORTANCE_FILE
    if state.is_main_process and Path(model_args.feature_importance).resolve() != stored.resolve():
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_args.feature_importance, stored)
    return {"feature_importance": load_feature_importance(model_args.feature_importance)}
