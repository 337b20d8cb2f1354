"""
The bottom layer: what `hf_fga` needs to know about a ViT-family classifier or a CLIPModel.

Everything that reads a model's structure lives here, once: which model family it is ([`is_clip`]), its vision
blocks, vision config and vision tower, the target scores of method.md §1 ([`model_logits`],
[`clip_text_embeddings`]), loading a checkpoint ([`load_vision_model`]), preparing it for an attribution pass and
restoring it exactly afterwards ([`prepared_model`]), the forward hooks on the residual stream and the attention
probabilities, and running the vision tower from a given block onward ([`run_from_block`]). Attribution methods,
SAE training, the faithfulness engine, the evaluation and the Space sit above it and import nothing from each other
to reach a model.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import AttentionInterface, CLIPModel, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

HOOK_POINTS = ("resid_pre", "resid_post")
CLIP_TEMPLATE = "a photo of a {}"
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")
# The CLIP models whose image-embedding norm is a constant in the backward pass (see `constant_embedding_norm`).
_CONSTANT_EMBEDDING_NORM: contextvars.ContextVar[tuple[nn.Module, ...]] = contextvars.ContextVar(
    "constant_embedding_norm", default=()
)


# ------------------------------------------------------------------------------------------------ model structure
def is_clip(model: nn.Module) -> bool:
    """Whether `model` is a `CLIPModel` (zero-shot targets are candidate labels) rather than a classifier."""
    return isinstance(model, CLIPModel)


def vision_config(model: PreTrainedModel) -> PretrainedConfig:
    """The config that describes the vision tower (CLIP's `vision_config`, else the model's own config)."""
    return model.config.vision_config if is_clip(model) else model.config


def vision_tower(model: PreTrainedModel) -> nn.Module:
    """The module whose forward runs the image encoder alone (`model.vision_model` for CLIP, else the model)."""
    return model.vision_model if is_clip(model) else model


def vision_layers(model: PreTrainedModel) -> nn.ModuleList:
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


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def model_name(model: PreTrainedModel) -> str | None:
    """The `name_or_path` the model was loaded from, if it records one."""
    return getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None


def same_model_name(a: str, b: str) -> bool:
    """
    Whether two `name_or_path` strings name the same model: equal Hub ids, the same resolved local folder, or one path
    a trailing part of the other (an SAE records `hf_fga/bundled/model`, the model was loaded from
    `/somewhere/hf_fga/bundled/model`).
    """
    parts_a, parts_b = Path(a.rstrip("/")).parts, Path(b.rstrip("/")).parts
    if parts_a == parts_b:
        return True
    if Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve():
        return True
    shorter, longer = sorted((parts_a, parts_b), key=len)
    return len(shorter) > 1 and longer[-len(shorter) :] == shorter


# ------------------------------------------------------------------------------------------------ target scores
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
def constant_embedding_norm(model: nn.Module) -> Iterator[None]:
    """
    Inside the block, [`model_logits`] of `model` treats the L2 norm of CLIP's image embedding as a constant in the
    backward pass (the forward value is unchanged): the LN rule of method.md §8 applied to the last normalisation, so
    that under the backward rules the CLIP score is linear in the embedding, as a classifier's logit is.
    """
    token = _CONSTANT_EMBEDDING_NORM.set((*_CONSTANT_EMBEDDING_NORM.get(), model))
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
        # `get_image_features`, with the projection and the cosines taken one image at a time: a (B, d) product
        # rounds differently for B = 1 and B > 1 (gemv against gemm), which would make the scores and their
        # gradients depend on the batch (method.md §1)
        pooled = model.vision_model(pixel_values=pixel_values, return_dict=True).pooler_output
        image = torch.cat([model.visual_projection(row) for row in pooled.split(1)])
        norm = image.norm(dim=-1, keepdim=True)
        constant = any(held is model for held in _CONSTANT_EMBEDDING_NORM.get())
        image = image / (norm.detach() if constant else norm)
        text = text_embeds.to(image.dtype).T
        return model.logit_scale.exp() * torch.cat([row @ text for row in image.split(1)])
    return model(pixel_values=pixel_values).logits


# ------------------------------------------------------------------------------------------------ loading
def load_vision_model(name_or_path: str, config: PretrainedConfig | None = None, **kwargs: Any) -> PreTrainedModel:
    """
    Load what `hf_fga` can explain: a `CLIPModel` for CLIP checkpoints, an `AutoModelForImageClassification`
    otherwise, in eval mode. `kwargs` go to `from_pretrained` (the Hub ones, `revision`, `token`, … also to the
    config). The attention implementation is left as saved: [`prepared_model`] switches to eager attention for an
    attribution pass and back afterwards.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    if config is None:
        config = AutoConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
    loader = CLIPModel if config.model_type == "clip" else AutoModelForImageClassification
    return loader.from_pretrained(name_or_path, config=config, **kwargs).eval()


# ------------------------------------------------------------------------------------------------ preparing
BATCH_INVARIANT_ATTENTION = "hf_fga_eager"


def _per_image_matmul(a: Tensor, b: Tensor) -> Tensor:
    """`torch.matmul(a, b)` of `(B, H, m, k)` and `(B, H, k, n)`, one image's `(H, ·, ·)` product at a time."""
    return torch.stack([torch.matmul(x, y) for x, y in zip(a.unbind(0), b.unbind(0), strict=True)])


def batch_invariant_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """
    transformers' eager attention (ViT, DeiT, CLIP `eager_attention_forward`), with the two matrix products run one
    image at a time so that every image's result, gradients included, does not depend on the batch it is in.

    `torch.matmul` on `(B, H, T, d_h)` operands folds (B, H) into one batch dimension: for B = 1 a view of the
    transposed projections, for B > 1 a contiguous copy, so the backward products of a batch run on differently laid
    out operands than those of a single image and round differently (~1e-7 relative). Here each image's product is
    exactly the one transformers computes for that image alone: the forward of one image is bit-identical to
    transformers' eager attention, and a batch is bit-identical to its images one by one.

    Args:
        module (`nn.Module`): the attention module (its `training` flag drives the dropout, as in transformers).
        query, key, value (`Tensor` of shape `(B, H, T, d_h)`): the projected heads.
        attention_mask (`Tensor` of shape `(B, 1, T, T)`, *optional*): additive mask (CLIP's text tower).
        scaling (`float`, *optional*): defaults to `d_h ** -0.5`.
        dropout (`float`, defaults to 0): the attention dropout probability (transformers passes 0 in eval mode).

    Returns:
        `(attn_output (B, T, H, d_h), attn_weights (B, H, T, T))`, the softmax taken in float32 and cast back to the
        query's dtype as transformers does.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = _per_image_matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = _per_image_matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


AttentionInterface.register(BATCH_INVARIANT_ATTENTION, batch_invariant_eager_attention)
AttentionMaskInterface.register(BATCH_INVARIANT_ATTENTION, eager_mask)


def _all_configs(model: PreTrainedModel) -> list[PretrainedConfig]:
    """Every config object reachable from the model (top level, sub-configs, and those held by submodules)."""
    found: dict[int, PretrainedConfig] = {}
    stack = [model.config]
    stack.extend(getattr(m, "config", None) for m in model.modules())
    while stack:
        config = stack.pop()
        if not isinstance(config, PretrainedConfig) or id(config) in found:
            continue
        found[id(config)] = config
        stack.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}))
    return list(found.values())


_MISSING = object()


def _dispatches_attention(model: PreTrainedModel) -> bool:
    """Whether every transformers model inside `model` picks its attention function from the `AttentionInterface`."""
    return all(
        getattr(type(module), "_supports_attention_backend", False)
        for module in model.modules()
        if isinstance(module, PreTrainedModel)
    )


@contextlib.contextmanager
def prepared_model(model: PreTrainedModel) -> Iterator[list[RemovableHandle]]:
    """
    Put `model` in eval mode with batch-invariant eager attention and frozen parameters; restore all of it on exit.

    The attention is [`batch_invariant_eager_attention`] (registered with transformers' `AttentionInterface` as
    `"hf_fga_eager"`): transformers' eager attention, whose probabilities the hooks capture, computed so that a batch
    gives each image exactly what the image alone gives. A model whose attention does not dispatch through the
    `AttentionInterface` is switched to plain `"eager"` instead.

    Yields a list to which the caller appends its hook handles; they are removed on exit, also after an exception.
    Restored: every submodule's train/eval flag, every parameter's `requires_grad`, and the attention implementation
    of every config (the model's own `_attn_implementation` included).
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    configs = _all_configs(model)
    attn = [(config, config.__dict__.get("_attn_implementation_internal", _MISSING)) for config in configs]
    handles: list[RemovableHandle] = []
    try:
        model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        if _dispatches_attention(model):
            for config in configs:
                config._attn_implementation_internal = BATCH_INVARIANT_ATTENTION
        elif any(config._attn_implementation not in (None, "eager") for config in configs):
            model.set_attn_implementation("eager")
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        for config, value in attn:
            if value is _MISSING:
                config.__dict__.pop("_attn_implementation_internal", None)
            else:
                config._attn_implementation_internal = value
        for param, flag in requires_grad:
            param.requires_grad_(flag)
        for module, flag in training:
            module.training = flag


# ------------------------------------------------------------------------------------------------ hooks
def attention_module(layer: nn.Module, index: int) -> nn.Module:
    """The self-attention module of a block: the first submodule whose class name ends with `Attention`."""
    for module in layer.modules():
        if type(module).__name__.endswith("Attention"):
            return module
    raise TypeError(
        f"Block {index} ({type(layer).__name__}) has no submodule named '*Attention': attention maps cannot be "
        "captured for this architecture. Use a ViT-family classifier or a CLIPModel."
    )


def check_hook_points(model: PreTrainedModel, hook_points: Mapping[int, str]) -> None:
    """A ValueError naming the entry unless every key is a block of `model` and every value one of `HOOK_POINTS`."""
    num_layers = len(vision_layers(model))
    for block, point in hook_points.items():
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < num_layers:
            raise ValueError(
                f"Block {block!r} is out of range: this model has {num_layers} blocks, so valid 0-indexed blocks are "
                f"0..{num_layers - 1}."
            )
        if point not in HOOK_POINTS:
            raise ValueError(f"Block {block}: unknown hook point {point!r}; expected one of {list(HOOK_POINTS)}.")


def register_residual_hooks(
    model: PreTrainedModel, hook_points: Mapping[int, str], record: Callable[[int, str, Tensor], None]
) -> list[RemovableHandle]:
    """
    Forward hooks that call `record(block, hook_point, x)` with the residual stream `x (B, T, d)` of each requested
    block: its input for `resid_pre`, its output for `resid_post`. Returns the handles (the caller removes them).
    """
    check_hook_points(model, hook_points)
    layers = vision_layers(model)
    handles = []
    for block, point in sorted(hook_points.items()):
        if point == "resid_pre":

            def pre_hook(module, args, kwargs, block=block):
                record(block, "resid_pre", args[0] if args else kwargs["hidden_states"])

            handles.append(layers[block].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def post_hook(module, args, output, block=block):
                record(block, "resid_post", output[0] if isinstance(output, tuple) else output)

            handles.append(layers[block].register_forward_hook(post_hook))
    return handles


def register_attention_hooks(model: PreTrainedModel, record: Callable[[int, Tensor], None]) -> list[RemovableHandle]:
    """
    Forward hooks that call `record(block, probabilities)` with the attention probabilities `(B, H, T, T)` of every
    block (after softmax; eager attention is needed, see [`prepared_model`]). Returns the handles.
    """
    handles = []
    for index, layer in enumerate(vision_layers(model)):

        def save_attention(module, args, output, index=index):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, Tensor) or weights.dim() != 4:
                raise TypeError(
                    f"The attention module of block {index} did not return attention probabilities (B, H, T, T): "
                    "eager attention is needed to capture them."
                )
            record(index, weights)

        handles.append(attention_module(layer, index).register_forward_hook(save_attention))
    return handles


@contextlib.contextmanager
def residual_hooks(
    model: PreTrainedModel,
    hook_points: Mapping[int, str],
    record: Callable[[int, str, Tensor], None] | None = None,
) -> Iterator[dict[int, Tensor]]:
    """
    Record the residual stream during the forward passes run inside the block; the hooks are removed on exit.

    Yields a dict `{block: x (B, T, d)}` (detached) of the latest pass, unless `record` is given, which is then called
    instead (see [`register_residual_hooks`]).

    Example:
    ```python
    >>> with residual_hooks(model, {4: "resid_post"}) as seen:  # doctest: +SKIP
    ...     vision_tower(model)(pixel_values=pixel_values)
    >>> seen[4].shape  # (B, T, d)  # doctest: +SKIP

    ```
    """
    seen: dict[int, Tensor] = {}

    def remember(block: int, point: str, x: Tensor) -> None:
        seen[block] = x.detach()

    handles = register_residual_hooks(model, hook_points, record or remember)
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------- part of a forward pass
def _layers_owner(model: PreTrainedModel) -> tuple[nn.Module, str]:
    """The module that holds the vision tower's `ModuleList` of blocks, and the attribute name it is held under."""
    layers = vision_layers(model)
    for module in model.modules():
        for name, child in module.named_children():
            if child is layers:
                return module, name
    raise TypeError(f"The blocks of {type(model).__name__} are not a child of any of its modules.")


@contextlib.contextmanager
def blocks_from(model: PreTrainedModel, start: int, hidden_states: Tensor) -> Iterator[None]:
    """
    Inside the block, a forward pass of `model` runs only blocks `start..L-1`, with `hidden_states (R, T, d)` as the
    input of block `start`, then the model's own head; the model is restored on exit, also after an exception.
    Hooks on the blocks still fire.

    Why: activation patching (CAAP) reruns only the blocks after an intervention. Rather than re-implement each
    architecture's head (ViT's final LayerNorm and classifier, DeiT's two classifiers, CLIP's post-LayerNorm,
    projection and text logits), the model's own forward runs with its list of blocks truncated for the call and the
    given residual stream substituted for the input of block `start`. The embeddings still run on whatever image the
    caller passes (their output is replaced), so pass one small image (see [`run_from_block`]).
    """
    owner, name = _layers_owner(model)
    layers = owner._modules[name]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(layers):
        raise ValueError(f"start={start!r} is not a block of this model: valid blocks are 0..{len(layers) - 1}.")

    def substitute(module, args, kwargs):
        if args:
            return (hidden_states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden_states}

    handle = layers[start].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        owner._modules[name] = nn.ModuleList(list(layers)[start:])
        yield
    finally:
        owner._modules[name] = layers
        handle.remove()


def run_from_block(
    model: PreTrainedModel, hidden_states: Tensor, start: int, text_embeds: Tensor | None = None
) -> Tensor:
    """
    The scores `(R, C)` of [`model_logits`] when the residual stream at the input of block `start` is
    `hidden_states (R, T, d)`: blocks `start..L-1`, then the model's head. The embeddings run on one dummy image, so
    the cost is that of the blocks run and the head.

    Example:
    ```python
    >>> with residual_hooks(model, {4: "resid_pre"}) as seen:  # doctest: +SKIP
    ...     logits = model_logits(model, pixel_values)
    >>> torch.allclose(run_from_block(model, seen[4], start=4), logits)  # doctest: +SKIP
    True

    ```
    """
    config = vision_config(model)
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    dummy = torch.zeros(1, config.num_channels, height, width, device=hidden_states.device, dtype=model_dtype(model))
    with blocks_from(model, start, hidden_states):
        return model_logits(model, dummy, text_embeds)


class _StopForward(Exception):
    """Raised by the hook of [`residual_stream`] once the requested residual is computed."""


def residual_stream(
    model: PreTrainedModel, pixel_values: Tensor, block: int, hook_point: str = "resid_post"
) -> Tensor:
    """
    The residual stream `(B, T, d)` at `hook_point` of `block`, differentiable, from a forward pass of the vision
    tower that stops there: the later blocks and the head do not run (an SAE feature of block ℓ needs blocks 0..ℓ
    only).

    Example:
    ```python
    >>> x = residual_stream(model, pixel_values, block=4, hook_point="resid_post")  # (B, T, d)  # doctest: +SKIP

    ```
    """
    seen: list[Tensor] = []

    def stop(index: int, point: str, x: Tensor) -> None:
        seen.append(x)
        raise _StopForward

    handles = register_residual_hooks(model, {block: hook_point}, stop)
    try:
        vision_tower(model)(pixel_values=pixel_values)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise RuntimeError(f"The forward pass of {type(model).__name__} never reached block {block} ({hook_point}).")
    return seen[0]
