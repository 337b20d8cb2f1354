"""
One forward and one backward pass that capture what every attribution method reads (method.md §1–3):

- the attention probabilities A_ℓ `(B, H, T, T)` of every block (after softmax; dropout is the identity in eval mode)
  and their gradients ∂y/∂A_ℓ,
- the residual stream x at the requested hook points (`resid_pre` = input of block ℓ, `resid_post` = its output) and
  its gradient g = ∂y/∂x,

with y the target score of each image (§1). The gradients of the whole batch come from one backward pass of Σ_b y_b.
The model is put in eval mode with eager attention and frozen parameters for the call and restored exactly afterwards,
also when an exception is raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from .targets import is_clip, model_logits, vision_layers

HOOK_POINTS = ("resid_pre", "resid_post")


@dataclass
class Capture:
    """
    What one forward/backward pass recorded.

    Args:
        logits (`Tensor` of shape `(B, C)`): the target scores of every class / candidate label (detached).
        target (`Tensor` of shape `(B,)`): the class whose score y was back-propagated.
        attentions (`list[Tensor]`, L tensors of shape `(B, H, T, T)`): attention probabilities per block.
        attention_grads (`list[Tensor]`, same shapes): ∂y/∂A_ℓ.
        residuals (`dict[tuple[int, str], Tensor]`, `(B, T, d)`): x at each requested `(block, hook_point)`.
        residual_grads (`dict[tuple[int, str], Tensor]`, `(B, T, d)`): ∂y/∂x there.
        cache (`dict`): results derived from this capture that several maps share (the SAE codes of a block), so
            deriving many configurations from one capture encodes each block once.
    """

    logits: Tensor
    target: Tensor
    attentions: list[Tensor]
    attention_grads: list[Tensor]
    residuals: dict[tuple[int, str], Tensor]
    residual_grads: dict[tuple[int, str], Tensor]
    cache: dict = field(default_factory=dict)


def vision_config(model: PreTrainedModel) -> PretrainedConfig:
    """The config that describes the vision tower (CLIP's `vision_config`, else the model's own config)."""
    return model.config.vision_config if is_clip(model) else model.config


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


@contextlib.contextmanager
def prepared_model(model: PreTrainedModel) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """
    Put `model` in eval mode with eager attention and frozen parameters; restore all of it on exit.

    Yields a list to which the caller appends its hook handles; they are removed on exit, also after an exception.
    Restored: every submodule's train/eval flag, every parameter's `requires_grad`, and the attention implementation
    of every config (the model's own `_attn_implementation` included).
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    configs = _all_configs(model)
    attn = [(config, config.__dict__.get("_attn_implementation_internal")) for config in configs]
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        if any(config._attn_implementation not in (None, "eager") for config in configs):
            model.set_attn_implementation("eager")
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        for config, value in attn:
            config._attn_implementation_internal = value
        for param, flag in requires_grad:
            param.requires_grad_(flag)
        for module, flag in training:
            module.training = flag


def attention_module(layer: nn.Module, index: int) -> nn.Module:
    """The self-attention module of a block: the first submodule whose class name ends with `Attention`."""
    for module in layer.modules():
        if type(module).__name__.endswith("Attention"):
            return module
    raise TypeError(
        f"Block {index} ({type(layer).__name__}) has no submodule named '*Attention': attention maps cannot be "
        "captured for this architecture. Use a ViT-family classifier or a CLIPModel."
    )


def _hidden_states_argument(args: tuple, kwargs: Mapping) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def install_hooks(
    model: PreTrainedModel,
    handles: list[torch.utils.hooks.RemovableHandle],
    hook_points: Mapping[int, str],
    store: dict,
    capture_attentions: bool = True,
) -> None:
    """
    Register the forward hooks that fill `store["attentions"][ℓ]` and `store["residuals"][(ℓ, hook_point)]`.

    The handles are appended to `handles` (removed by [`prepared_model`] on exit).
    """
    layers = vision_layers(model)
    store.setdefault("attentions", {})
    store.setdefault("residuals", {})

    for index, layer in enumerate(layers):
        if capture_attentions:

            def save_attention(module, args, output, index=index):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if not isinstance(weights, Tensor) or weights.dim() != 4:
                    raise TypeError(
                        f"The attention module of block {index} did not return attention probabilities (B, H, T, T): "
                        "eager attention is needed to capture them."
                    )
                store["attentions"][index] = weights

            handles.append(attention_module(layer, index).register_forward_hook(save_attention))

        point = hook_points.get(index)
        if point == "resid_pre":

            def save_input(module, args, kwargs, index=index):
                store["residuals"][(index, "resid_pre")] = _hidden_states_argument(args, kwargs)

            handles.append(layer.register_forward_pre_hook(save_input, with_kwargs=True))
        elif point == "resid_post":

            def save_output(module, args, output, index=index):
                store["residuals"][(index, "resid_post")] = output[0] if isinstance(output, tuple) else output

            handles.append(layer.register_forward_hook(save_output))


def model_dtype(model: PreTrainedModel) -> torch.dtype:
    return next(model.parameters()).dtype


def run_capture(
    model: PreTrainedModel,
    handles: list[torch.utils.hooks.RemovableHandle],
    pixel_values: Tensor,
    target: Tensor | None,
    hook_points: Mapping[int, str],
    text_embeds: Tensor | None = None,
) -> Capture:
    """
    One forward pass and one backward pass of Σ_b y_b (must run inside [`prepared_model`], which owns `handles`).

    `target=None` takes each image's argmax. Only the captured tensors receive gradients (`torch.autograd.grad`), so
    no `.grad` is left anywhere.
    """
    store: dict = {}
    install_hooks(model, handles, hook_points, store)
    pixels = pixel_values.detach().to(model.device, model_dtype(model)).requires_grad_(True)
    with torch.enable_grad():
        logits = model_logits(model, pixels, text_embeds)
        if target is None:
            target = logits.detach().argmax(dim=-1)
        target = target.to(logits.device)
        y = logits.gather(1, target[:, None]).sum()
        num_layers = len(vision_layers(model))
        attentions = [store["attentions"][index] for index in range(num_layers)]
        keys = list(store["residuals"])
        residuals = [store["residuals"][key] for key in keys]
        grads = torch.autograd.grad(y, attentions + residuals, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(attentions + residuals, grads, strict=True)]
    return Capture(
        logits=logits.detach(),
        target=target.detach(),
        attentions=[a.detach() for a in attentions],
        attention_grads=grads[:num_layers],
        residuals={key: x.detach() for key, x in zip(keys, residuals, strict=True)},
        residual_grads=dict(zip(keys, grads[num_layers:], strict=True)),
    )
