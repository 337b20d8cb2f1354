"""
Run a vision tower from the input of block `start` onward, through the model's own head.

Activation patching (CAAP, method.md §8) reruns only the blocks after an intervention. Rather than re-implementing
each architecture's head (ViT's final LayerNorm and classifier, DeiT's two classifiers, CLIP's post-LayerNorm,
projection and text logits), the model's own forward is reused with its list of blocks truncated to `start..L-1` for
the duration of the call and the given residual stream substituted for the input of block `start`. The embeddings
still run, on a single dummy image (their output is replaced), so the cost is that of blocks `start..L-1` and the head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from .capture import model_dtype, vision_config
from .targets import model_logits, vision_layers


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
    Inside the block, a forward of `model` runs only blocks `start..L-1`, with `hidden_states (R, T, d)` as the input
    of block `start`; the model is restored on exit, also after an exception. Hooks on the blocks still fire.
    """
    owner, name = _layers_owner(model)
    layers = owner._modules[name]
    if not 0 <= start < len(layers):
        raise ValueError(f"start={start} is not a block of this model: valid blocks are 0..{len(layers) - 1}.")

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
    The model's scores `(R, C)` (class logits; CLIP: image–text logits against `text_embeds`) when the residual
    stream at the input of block `start` is `hidden_states (R, T, d)`: blocks `start..L-1`, then the head.

    Example:
    ```python
    >>> logits = run_from_block(model, residual_at_block_4, start=4)  # equals model(pixel_values).logits
    ```
    """
    config = vision_config(model)
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    dummy = torch.zeros(1, config.num_channels, height, width, device=hidden_states.device, dtype=model_dtype(model))
    with blocks_from(model, start, hidden_states):
        return model_logits(model, dummy, text_embeds)
