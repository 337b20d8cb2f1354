"""
CaFE (Han, Kim & Kwak 2025; method.md §9): what makes an SAE feature fire. The explained quantity is one feature's
activation at one token of the SAE's block,

    z = ReLU(W_enc (x_q − b_dec) + b_enc)_k      (the SAE's input normalisation included; no Top-K mask),

and its instance-specific effective receptive field (iERF) is any §8 attribution of z to the input patches. The
activation map (z_k at every patch token) is what CaFE argues against; both come back side by side.

Back-ends (`method=`), all through the attribution package's public pieces:

- `gradient`, `gradient-x-input`, `cp-lrp`, `attnlrp` (and `libragrad=True` for the first two): gradients of z
  under the backward rule set the registered method declares (`get_method("attnlrp").rule_set`, through
  [`hf_fga.attribution.rules.backward_rules`]). Several features of the same images share ONE forward pass (which
  stops at the SAE's block) and run one backward pass each through the retained graph, input gradients only, down to
  the patch embedding's output: a plain patch convolution's gradient is contracted per patch in closed form
  ([`patch_embedding_leaf`]) instead of running its pixel-space backward.
- `integrated-gradients`: the registered method's generic core
  ([`hf_fga.attribution.methods.integrated_gradients.integrated_gradients`]) from the `mean` fill, on an objective over
  (image, feature) pairs; `libragrad=True` applies.
- `kernel-shap`: the registered method's generic core ([`hf_fga.attribution.methods.kernel_shap.kernel_shap`]),
  patches as players, absent patches shown as the `mean` fill, seeded.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..attribution.methods import get_method
from ..attribution.methods.integrated_gradients import integrated_gradients, mean_fill
from ..attribution.methods.kernel_shap import kernel_shap
from ..attribution.rules import backward_rules
from ..faithfulness.fills import PatchGrid, patch_grid
from ..introspection import (
    model_dtype,
    prepared_model,
    residual_stream,
    vision_config,
    vision_layers,
    vision_tower,
)
from ..onednn import model_linears
from ..sae import SparseAutoencoder
from .locality import Locality, neighbourhood_share


@dataclass(frozen=True)
class Backend:
    """
    How a CaFE back-end computes an iERF: `kind` of computation, and the registered method it stands for (whose
    options, option checks, backward rule set `rule_set` and `gradient_based` flag it takes from the registry).
    `gradient` (the plain input gradient, patch-summed) has no registered method.
    """

    kind: str
    registered: str | None = None

    @property
    def method(self):
        return None if self.registered is None else get_method(self.registered)

    @property
    def rule_set(self) -> str | None:
        """The registered method's own backward rules (`cp-lrp`, `attnlrp`), else None."""
        return getattr(self.method, "rule_set", None)

    @property
    def libragrad_applies(self) -> bool:
        return self.method is None or self.method.gradient_based


BACKENDS: dict[str, Backend] = {
    "gradient": Backend("gradient"),
    "gradient-x-input": Backend("gradient-x-input", "gradient-x-input"),
    "cp-lrp": Backend("gradient-x-input", "cp-lrp"),
    "attnlrp": Backend("gradient-x-input", "attnlrp"),
    "integrated-gradients": Backend("integrated-gradients", "integrated-gradients"),
    "kernel-shap": Backend("kernel-shap", "kernel-shap"),
}


@dataclass
class FeatureExplanation:
    """
    What [`explain_feature`] returns (CPU; maps float32). Shapes are given for a list of F features; with a single
    int `feature` the F axis is dropped.

    Args:
        ierf (`Tensor` of shape `(B, F, h, w)`): the iERF, the back-end's attribution of z to every input patch.
        activation_map (`Tensor` of shape `(B, F, h, w)`): the feature's activation z_k at every patch token.
        value (`Tensor` of shape `(B, F)`): z at the explained position.
        position (`LongTensor` of shape `(B, F)`): the explained token (0 = CLS, patch p at `num_prefix_tokens + p`).
        cls_activation (`Tensor` of shape `(B, F)`): z_k at the CLS token (absent from `activation_map`).
        locality ([`Locality`]): the 3 × 3 neighbourhood share of the positive iERF mass, the non-local flags
            (share < 0.25) and the CLS flags (non-local by definition, reported apart).
        feature (`list[int]`): the explained features.
        block (`int`), hook_point (`str`): where the SAE reads the residual stream.
        method (`str`): the back-end.
        num_prefix_tokens (`int`): tokens before the patches.
        diagnostics (`dict`): back-end specific, e.g. Integrated Gradients' `convergence_delta` `(B, F)`.
    """

    ierf: Tensor
    activation_map: Tensor
    value: Tensor
    position: Tensor
    cls_activation: Tensor
    locality: Locality
    feature: list[int]
    block: int
    hook_point: str
    method: str
    num_prefix_tokens: int
    diagnostics: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ validation
def check_sae_for_model(model: PreTrainedModel, sae: SparseAutoencoder) -> tuple[int, str]:
    """The SAE's `(block, hook_point)`; a ValueError if the model has no such block or another hidden size."""
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a hf_fga.SparseAutoencoder, got {type(sae).__name__}.")
    num_layers = len(vision_layers(model))
    block = sae.config.hook_layer
    if not 0 <= block < num_layers:
        raise ValueError(
            f"The SAE reads block {block} (config.hook_layer) but the model has {num_layers} blocks "
            f"(0..{num_layers - 1}): this SAE was trained for a deeper model; pass the model it was trained on."
        )
    hidden = vision_config(model).hidden_size
    if sae.config.d_in != hidden:
        raise ValueError(
            f"The SAE expects d_in={sae.config.d_in} but the model's hidden size is {hidden}: this SAE was trained "
            "for a different model."
        )
    return block, sae.config.hook_point


def check_features(feature: int | Sequence[int] | Tensor, d_sae: int) -> tuple[Tensor, bool]:
    """The features as a LongTensor `(F,)` and whether a single int was given; clear errors for bad indices."""
    single = isinstance(feature, int) and not isinstance(feature, bool)
    if isinstance(feature, bool):
        raise TypeError("feature must be an int or a list of ints (SAE feature indices), got a bool.")
    values = torch.as_tensor([feature] if single else feature)
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"feature must be an int or a non-empty list of ints, got {feature!r}.")
    bad = (values < 0) | (values >= d_sae)
    if bad.any():
        raise ValueError(
            f"feature {values[bad][0].item()} is out of range: this SAE has d_sae={d_sae} features, so valid indices "
            f"are 0..{d_sae - 1}."
        )
    return values.long(), single


def check_positions(position, batch: int, num_features: int, num_tokens: int) -> Tensor | None:
    """`position` as a LongTensor `(B, F)` (or None); clear errors for bad shapes and out-of-range tokens."""
    if position is None:
        return None
    if isinstance(position, bool):
        raise TypeError("position must be None, an int, or a LongTensor (B,) / (B, F) of token indices, got a bool.")
    values = torch.as_tensor(position)
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise TypeError(f"position must hold integer token indices, got dtype {values.dtype}.")
    values = values.long()
    if values.dim() == 0:
        values = values.expand(batch, num_features)
    elif values.dim() == 1 and values.shape[0] == batch:
        values = values[:, None].expand(batch, num_features)
    if values.shape != (batch, num_features):
        raise ValueError(
            f"position has shape {tuple(values.shape)}: expected an int, ({batch},) (one token per image) or "
            f"({batch}, {num_features}) (one per image and feature)."
        )
    bad = (values < 0) | (values >= num_tokens)
    if bad.any():
        raise ValueError(
            f"position {values[bad][0].item()} is out of range: the SAE's block has {num_tokens} tokens (0 = CLS, "
            f"then the patches), so valid positions are 0..{num_tokens - 1}."
        )
    return values.contiguous()


# ------------------------------------------------------------------------------------------------ the objective
@dataclass
class FeatureTarget:
    """The explained activations: features `(F,)`, positions `(B, F)`, and the SAE's block and hook point."""

    sae: SparseAutoencoder
    block: int
    hook_point: str
    features: Tensor
    positions: Tensor | None = None

    def token_activations(self, model: PreTrainedModel, pixel_values: Tensor) -> Tensor:
        """z of every feature at every token `(R, T, F)`, differentiable; the forward stops at the SAE's block."""
        residual = residual_stream(model, pixel_values, self.block, self.hook_point)
        return self.sae.feature_activations(residual.to(self.sae.W_enc.dtype), self.features)

    def at_positions(self, tokens: Tensor) -> Tensor:
        """z at the explained positions `(B, F)` from `token_activations (B, T, F)`."""
        batch, _, num_features = tokens.shape
        rows = torch.arange(batch, device=tokens.device)[:, None]
        return tokens[rows, self.positions.to(tokens.device), torch.arange(num_features, device=tokens.device)]

    def pair_objective(self, model: PreTrainedModel) -> Callable[[Tensor, Tensor], Tensor]:
        """
        The objective of the attribution cores over (image, feature) pairs, pair r = b·F + f:
        `(pixel_values (R, C, H, W), rows (R,)) -> z (R,)`, with `rows` the pair each input belongs to.
        """
        num_features = self.features.shape[0]
        positions = self.positions.reshape(-1)
        slots = torch.arange(num_features).repeat(self.positions.shape[0])

        def objective(pixel_values: Tensor, rows: Tensor) -> Tensor:
            residual = residual_stream(model, pixel_values, self.block, self.hook_point)
            rows = rows.to(residual.device)
            index = torch.arange(len(rows), device=residual.device)
            tokens = residual[index, positions.to(residual.device)[rows]]
            values = self.sae.feature_activations(tokens.to(self.sae.W_enc.dtype), self.features)
            return values[index, slots.to(residual.device)[rows]]

        return objective


def patch_convolution(model: PreTrainedModel, grid: PatchGrid, channels: int) -> nn.Conv2d | None:
    """
    The vision tower's patch embedding when it is a plain non-overlapping convolution (kernel = stride = the patch
    size, no padding, dilation or groups, `channels` inputs), else None. Its first `nn.Conv2d` is the one looked at
    (ViT, DeiT, DINOv2, CLIP); any other stem (e.g. a hybrid's ResNet) gives None.
    """
    conv = next((module for module in vision_tower(model).modules() if isinstance(module, nn.Conv2d)), None)
    p = grid.patch_size
    if conv is None or conv.in_channels != channels or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if tuple(conv.kernel_size) != (p, p) or tuple(conv.stride) != (p, p) or tuple(conv.dilation) != (1, 1):
        return None
    return conv if tuple(conv.padding) == (0, 0) else None


@contextlib.contextmanager
def patch_embedding_leaf(conv: nn.Conv2d | None, pixels: Tensor) -> Iterator[dict]:
    """
    During the block, the patch convolution's output on `pixels` becomes a leaf `e (B, d, h, w)` that requires
    grad, and the convolution without its bias, `W x (B, d, h, w)`, is kept: a gradient ∂z/∂e then gives the
    patch sums of the pixel gradient exactly, Σ_pixels of patch p ∂z/∂x = ∂z/∂e_p · Σ W and
    Σ_pixels of p x · ∂z/∂x = ∂z/∂e_p · (W x)_p, without the pixel-space convolution backward (a sixth of a whole
    backward pass on the bundled model). Yields `{"leaf", "linear", "replaced"}`: the leaf is None unless the
    convolution ran exactly once, on `pixels` themselves (then the pixels' own gradient is the way, and where the
    output was already replaced, `replaced` says the forward must run again without the hook).
    """
    seen: dict = {"leaf": None, "linear": None, "replaced": False}
    if conv is None:
        yield seen
        return

    def hook(module: nn.Conv2d, inputs: tuple, output: Tensor) -> Tensor | None:
        if seen["replaced"] or inputs[0] is not pixels:
            seen["leaf"] = None
            return None
        with torch.no_grad():
            seen["linear"] = torch.nn.functional.conv2d(pixels, module.weight, None, module.stride)
        seen["leaf"] = output.detach().requires_grad_(True)
        seen["replaced"] = True
        return seen["leaf"]

    handle = conv.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _gradient_maps(
    target: FeatureTarget, model: PreTrainedModel, pixels: Tensor, grid: PatchGrid, times_input: bool, position
) -> tuple[Tensor, Tensor]:
    """
    One forward pass (stopping at the SAE's block, the patch embedding's output as the graph's leaf where
    [`patch_embedding_leaf`] applies, else the pixels); one backward pass per feature through the retained graph,
    input gradients only (the parameters are frozen). Returns (tokens (B, T, F), maps (B, F, h, w)).
    """
    conv = patch_convolution(model, grid, pixels.shape[1])
    pixels = pixels.detach().requires_grad_(True)
    with torch.enable_grad(), patch_embedding_leaf(conv, pixels) as seen:
        tokens = target.token_activations(model, pixels)
    leaf = seen["leaf"]
    if leaf is None and seen["replaced"]:  # the convolution ran twice: its first output was cut off, run again plainly
        with torch.enable_grad():
            tokens = target.token_activations(model, pixels)
    resolve_positions(target, tokens.detach(), position, stacklevel=4)
    if leaf is not None:
        weights = seen["linear"] if times_input else conv.weight.detach().sum(dim=(1, 2, 3))[None, :, None, None]
    maps = []
    with torch.enable_grad():  # also under the caller's torch.no_grad(): the objectives below are graph nodes
        values = target.at_positions(tokens)
        num_features = values.shape[1]
        for f in range(num_features):
            retain = f < num_features - 1
            if leaf is not None:
                (grads,) = torch.autograd.grad(values[:, f].sum(), leaf, retain_graph=retain)
                maps.append((grads * weights).sum(dim=1).reshape(len(pixels), -1))
            else:
                (grads,) = torch.autograd.grad(values[:, f].sum(), pixels, retain_graph=retain)
                maps.append(grid.patch_sums(pixels.detach() * grads if times_input else grads))
    return tokens.detach(), torch.stack(maps, dim=1).reshape(len(pixels), num_features, grid.height, grid.width)


def resolve_positions(target: FeatureTarget, tokens: Tensor, position, stacklevel: int = 3) -> None:
    """
    Fill `target.positions` (argmax over tokens where `position` is None); errors for dead features, a warning (at
    `stacklevel`, the user's call) for a requested position where the feature is 0.
    """
    batch, num_tokens, num_features = tokens.shape
    peak = tokens.amax(dim=1)  # (B, F)
    dead = peak <= 0
    if dead.any():
        b, f = (int(i) for i in torch.nonzero(dead)[0])
        raise ValueError(
            f"SAE feature {int(target.features[f])} is 0 at every token of image {b} (block {target.block}, "
            f"{target.hook_point}): it does not fire on this image, so there is no activation to explain. Choose a "
            "feature that fires here (e.g. from the image's top features) or another image."
        )
    positions = check_positions(position, batch, num_features, num_tokens)
    if positions is None:
        positions = tokens.argmax(dim=1).cpu()
    target.positions = positions
    values = target.at_positions(tokens)
    if (values <= 0).any():
        b, f = (int(i) for i in torch.nonzero(values <= 0)[0])
        warnings.warn(
            f"SAE feature {int(target.features[f])} is 0 at the requested position {int(positions[b, f])} of "
            f"image {b} (it fires elsewhere on the image): gradient-based iERFs of an inactive ReLU are 0; "
            "position=None explains the token where it is largest.",
            UserWarning,
            stacklevel=stacklevel,
        )


# ------------------------------------------------------------------------------------------------ entry point
def explain_feature(
    model: PreTrainedModel,
    sae: SparseAutoencoder,
    pixel_values: Tensor,
    feature: int | Sequence[int] | Tensor,
    position: int | Sequence[int] | Tensor | None = None,
    method: str = "gradient-x-input",
    libragrad: bool = False,
    linear_backend: str = "auto",
    **method_options: Any,
) -> FeatureExplanation:
    r"""
    Explain why SAE features fire: the iERF of z = ReLU(W_enc (x_q − b_dec) + b_enc)_k (method.md §9) beside the
    feature's activation map.

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a `CLIPModel` (only its vision tower runs).
        sae ([`SparseAutoencoder`]): the SAE of one block (`config.hook_layer`, `config.hook_point`).
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        feature (`int` or list of `F` ints): the explained feature(s); several features of the same images share one
            forward pass.
        position (`int`, `LongTensor (B,)` or `(B, F)`, *optional*): the explained token (0 = CLS); `None` takes,
            per image and feature, the token (patch or CLS) where z is largest.
        method (`str`, defaults to `"gradient-x-input"`): `"gradient"`, `"gradient-x-input"`,
            `"integrated-gradients"`, `"cp-lrp"`, `"attnlrp"` or `"kernel-shap"`.
        libragrad (`bool`, defaults to `False`): LibraGrad's backward rules (for `gradient`, `gradient-x-input`,
            `integrated-gradients`).
        linear_backend (`str`, defaults to `"auto"`): the model's linears through oneDNN where they match
            ([`hf_fga.onednn.model_linears`]).
        method_options: the registered method's options (`integrated-gradients`: `steps`, `internal_batch_size`;
            `kernel-shap`: `n_samples`, `seed`, `perturbations_per_eval`).

    Returns:
        [`FeatureExplanation`].

    Raises:
        ValueError: an unknown method, options it does not take, `libragrad=True` where it does not apply, a feature
            or position out of range, an SAE whose block the model does not have, or a feature that is 0 at every
            token of an image (dead there: nothing to explain).

    The model is restored (train/eval flags, attention implementation, `requires_grad`, hooks, backward rules) on
    return and after an exception. The SAE's own normalisation (constant scale or layer norm) is part of z and is
    differentiated plainly; the backward rules apply to the model only.

    Example:
    ```python
    >>> out = explain_feature(model, sae, pixel_values, feature=[12, 40], method="gradient-x-input")
    >>> out.ierf.shape, out.activation_map.shape, out.position  # (B, 2, h, w), (B, 2, h, w), (B, 2)

    ```
    """
    if method not in BACKENDS:
        raise ValueError(f"Unknown CaFE back-end {method!r}: expected one of {sorted(BACKENDS)}.")
    backend = BACKENDS[method]
    if backend.method is not None:
        options = backend.method.check_options(None, **method_options)
    elif method_options:
        raise TypeError(f"CaFE back-end {method!r} takes no options, got {sorted(method_options)}.")
    else:
        options = {}
    if libragrad and not backend.libragrad_applies:
        accepted = [name for name, other in BACKENDS.items() if other.libragrad_applies]
        raise ValueError(
            f"libragrad=True changes the gradients of a gradient-based back-end; {method!r} has rules of its own or "
            f"reads no gradients. Use it with {', '.join(accepted)}."
        )
    block, hook_point = check_sae_for_model(model, sae)
    features, single = check_features(feature, sae.config.d_sae)
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
        raise ValueError("pixel_values must be a preprocessed batch (B, C, H, W) with B >= 1.")
    if not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contain NaN or infinite values: check the images and their preprocessing.")
    grid = patch_grid(model, pixel_values)
    target = FeatureTarget(sae, block, hook_point, features.to(sae.W_enc.device))
    rule_set = "libragrad" if libragrad else backend.rule_set
    diagnostics: dict = {}
    with prepared_model(model):
        pixels = pixel_values.detach().to(model.device, model_dtype(model))

        def stock() -> Tensor:
            return residual_stream(model, pixels[:1], block, hook_point)

        with contextlib.ExitStack() as stack:
            stack.enter_context(model_linears(model, linear_backend, stock, backward=True))
            if rule_set is not None:
                stack.enter_context(backward_rules(rule_set)(model))
            if backend.kind in ("gradient", "gradient-x-input"):
                times_input = backend.kind == "gradient-x-input"
                tokens, maps = _gradient_maps(target, model, pixels, grid, times_input, position)
            else:
                with torch.no_grad():
                    tokens = target.token_activations(model, pixels)
                resolve_positions(target, tokens, position)
                maps, diagnostics = _pair_maps(backend.kind, target, model, pixels, grid, options)
    return _output(target, tokens, maps, grid, method, single, diagnostics)


def _pair_maps(
    kind: str, target: FeatureTarget, model: PreTrainedModel, pixels: Tensor, grid: PatchGrid, options: Mapping
) -> tuple[Tensor, dict]:
    """Integrated Gradients or KernelSHAP of every (image, feature) pair through the registered methods' cores."""
    batch, num_features = target.positions.shape
    pairs = pixels.repeat_interleave(num_features, dim=0)
    objective = target.pair_objective(model)
    fill = mean_fill(model, pairs)
    diagnostics = {}
    if kind == "integrated-gradients":
        maps, delta = integrated_gradients(
            objective, pairs, fill, grid, options["steps"], options["internal_batch_size"]
        )
        diagnostics["convergence_delta"] = delta.reshape(batch, num_features).detach().cpu().float()
    else:
        with torch.no_grad():
            maps = kernel_shap(
                objective, pairs, fill, grid, options["n_samples"], options["seed"], options["perturbations_per_eval"]
            )
    return maps.reshape(batch, num_features, grid.height, grid.width), diagnostics


def _output(
    target: FeatureTarget,
    tokens: Tensor,
    maps: Tensor,
    grid: PatchGrid,
    method: str,
    single: bool,
    diagnostics: dict,
) -> FeatureExplanation:
    batch, num_tokens, num_features = tokens.shape
    prefix = num_tokens - grid.num_patches
    if prefix < 1:
        raise ValueError(f"The model has {num_tokens} tokens for {grid.num_patches} patches: expected a CLS token.")
    activation_map = tokens[:, prefix:].transpose(1, 2).reshape(batch, num_features, grid.height, grid.width)
    values = target.at_positions(tokens)
    ierf = maps.detach().to("cpu", torch.float32)
    locality = neighbourhood_share(ierf, target.positions, prefix)

    def squeeze(tensor: Tensor) -> Tensor:
        return tensor[:, 0] if single else tensor

    return FeatureExplanation(
        ierf=squeeze(ierf),
        activation_map=squeeze(activation_map.detach().to("cpu", torch.float32)),
        value=squeeze(values.detach().to("cpu", torch.float32)),
        position=squeeze(target.positions.cpu()),
        cls_activation=squeeze(tokens[:, 0].detach().to("cpu", torch.float32)),
        locality=Locality(
            share=squeeze(locality.share),
            non_local=squeeze(locality.non_local),
            at_cls=squeeze(locality.at_cls),
            threshold=locality.threshold,
        ),
        feature=[int(f) for f in target.features],
        block=target.block,
        hook_point=target.hook_point,
        method=method,
        num_prefix_tokens=prefix,
        diagnostics={key: squeeze(value) for key, value in diagnostics.items()},
    )
