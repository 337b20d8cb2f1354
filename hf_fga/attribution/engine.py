"""
The engine: `Attributor(model, saes).attribute(pixel_values, method=..., target=..., **options)`, and the two halves
of it, `capture` (one forward + one backward pass) and `explain` (a map from a capture, any number of times).
Methods come from the registry ([`hf_fga.attribution.methods`]); the engine never branches on their names.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..introspection import (
    HOOK_POINTS,
    is_clip,
    model_logits,
    model_name,
    prepared_model,
    same_model_name,
    vision_config,
    vision_layers,
)
from ..onednn import (
    OneDNNLinears,
    PackedLinear,
    cached_linears,
    check_backend,
    check_once,
    supported_weight,
    supports_onednn,
    use_onednn,
)
from ..precision import autocast, check_precision
from ..sae import SparseAutoencoder
from .capture import BackwardContext, Capture, run_capture
from .methods import MethodResult, get_method, list_methods
from .methods.transmm import transmm_map
from .rules import backward_rules


@dataclass
class AttributionOutput:
    """
    The result of [`Attributor.attribute`] / [`Attributor.explain`]; all tensors detached, float32, on CPU.

    Args:
        attribution (`Tensor` of shape `(B, h, w)`): the map of the requested method (the gated map for `"fga"`).
        baseline (`Tensor` of shape `(B, h, w)`, *optional*): the TransMM map of the same forward/backward pass, for
            the methods derived from the shared capture; `None` for methods that run their own passes.
        logits (`Tensor` of shape `(B, C)`): class logits (CLIP: image–text logits of the candidate labels).
        probabilities (`Tensor` of shape `(B, C)`): their softmax.
        target (`Tensor` of shape `(B,)`, long): the explained class / candidate label.
        scores (`dict[int, Tensor]`): raw per-patch scores s_t `(B, h, w)` per gated block (empty unless `"fga"`).
        gates (`dict[int, Tensor]`): gates w_t `(B, h, w)` per gated block (empty unless `"fga"`).
        diagnostics (`dict[int, dict[str, Tensor]]`, *optional*): per gated block, `(B,)` means over patches of
            |g·(x − b_dec)| (`"g_dot_centered"`), |g·e| (`"g_dot_error"`) and |g·x| (`"g_dot_x"`); NaN where the block
            has no SAE.
        contributions (`dict[int, tuple[Tensor, Tensor]]`, *optional*): per gated block with an SAE, the signed
            contributions c_{t,k} = f_t^k (Dᵀg_t)_k `(B, N, m)` of the m active features with the largest |c| per
            patch, and their feature indices `(B, N, m)`; patches in row-major order.
        grid (`tuple[int, int]`): the patch grid (h, w).
    """

    attribution: Tensor
    baseline: Tensor | None
    logits: Tensor
    probabilities: Tensor
    target: Tensor
    scores: dict[int, Tensor]
    gates: dict[int, Tensor]
    diagnostics: dict[int, dict[str, Tensor]] | None
    contributions: dict[int, tuple[Tensor, Tensor]] | None
    grid: tuple[int, int]


def _cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", torch.float32)


def _cpu_tree(value):
    """Tensors of nested dicts and tuples moved to CPU (floating ones as float32, indices as they are)."""
    if isinstance(value, Tensor):
        return _cpu(value) if value.is_floating_point() else value.detach().cpu()
    if isinstance(value, dict):
        return {key: _cpu_tree(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_cpu_tree(item) for item in value)
    return value


class Attributor:
    r"""
    Every registered attribution method (TransMM, Feature-Gradient Attribution, attention baselines, …) for a
    ViT-family classifier or a CLIPModel (method.md §1–3; thesis ch. 6, Algorithm 6.1).

    Args:
        model ([`PreTrainedModel`]): a ViT-family image classifier (`ViTForImageClassification`, DeiT, … with any
            number of non-patch tokens before the patches) or a `CLIPModel` (zero-shot, targets are candidate labels).
        saes (`Mapping[int, SparseAutoencoder]`, *optional*): SAEs keyed by 0-indexed block; each SAE's config names
            its hook point (`resid_pre`: input of the block, `resid_post`: its output).
        mean_residuals (`Mapping[int, Tensor]`, *optional*): μ_ℓ `(d,)` per block, the mean patch residual over a
            reference set, for the `mean-centered` variant (see [`compute_mean_residuals`]).
        hook_point (`str`, *optional*, defaults to `"resid_post"`): where x is read for blocks gated without an SAE
            (`no-sae`, `mean-centered`); blocks with an SAE always use the SAE's hook point.
        linear_backend (`str`, *optional*, defaults to `"auto"`): how the model's linear layers (forward and the
            input-gradient backward) and the SAE encoders run on CPU. `"auto"` uses prepacked oneDNN kernels
            ([`hf_fga.onednn`]) when the model is float32 on CPU and its oneDNN forward matches the stock one
            (checked once per model); `"onednn"` requires them; `"default"` keeps PyTorch's stock kernels. The packs
            hold a second copy of the linear weights (two for the model: W and Wᵀ), taken on the first call and
            retaken when the weights change; `"auto"` takes them only where oneDNN is clearly faster than the stock
            kernels on this CPU ([`hf_fga.onednn.use_onednn`]).
        precision (`str`, *optional*, defaults to `"float32"`): `"bfloat16"` runs the forward and backward pass and
            the SAE encoders under `torch.autocast` ([`hf_fga.precision`]; stock kernels, no oneDNN packs); the
            captured tensors are converted to float32 before any map is computed, so the relevance propagation, the
            gates and everything returned are float32. The model is never converted. The public attribute
            `precision` may be changed between calls.

    Notes:
        - TransMM follows the authors' reference code: R ← I, then R ← R + Ā_ℓ R with Ā_ℓ = mean_h((∇A ⊙ A)^+)
          (the thesis' printed Ā = I + … would add the identity twice).
        - The gate of a gated block scales the columns of Ā_ℓ: Ā_ℓ · diag(w), w = 1 on CLS and other non-patch tokens.
        - Degenerate blocks (method.md §3): the output reads only non-patch tokens, so at the output of the last
          block every patch gradient is 0, and at the output of block L−2 a patch reaches the output only through the
          last block's scale-invariant LayerNorm, so g·x = 0 exactly. There `no-sae` is rounding noise and `combined`
          measures −g·(b_dec + e) (e the SAE's reconstruction error), i.e. how the *error and bias* of the SAE align
          with the gradient, not the features. For every variant but `activation`, scores whose spread is at rounding
          level (MAD ≤ 1e-6 · max_t ‖g_t‖‖x_t‖) give gates of 1 and one warning naming the block.
        - SAEs with a runtime layer norm (Prisma): f is computed on the normalised input, but the raw residual
          gradient is projected onto the raw decoder (as the thesis code does); `combined` = `centered` − g·e then
          holds only approximately.

    Methods are looked up by name in the registry ([`hf_fga.list_methods`]); each has its own options
    ([`AttributionMethod.options`]). `attribute` = `capture` + `explain` for the methods derived from the shared pass.

    Example:
    ```python
    >>> attr = Attributor(model, saes={4: sae4, 5: sae5})
    >>> out = attr.attribute(pixel_values, method="fga", variant="combined", kappa=0.5, cmax=10.0)
    >>> out.attribution.shape  # (B, h, w)
    >>> capture = attr.capture(pixel_values)  # one forward + one backward pass ...
    >>> maps = [attr.explain(capture, kappa=k).attribution for k in (0.1, 0.5, 1.0)]  # ... any number of maps

    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        saes: Mapping[int, SparseAutoencoder] | None = None,
        mean_residuals: Mapping[int, Tensor] | None = None,
        hook_point: str = "resid_post",
        linear_backend: str = "auto",
        precision: str = "float32",
    ):
        self.model = model
        self.linear_backend = check_backend(linear_backend)
        self.precision = check_precision(precision)
        if linear_backend == "onednn" and not supports_onednn(model):
            raise ValueError(
                "linear_backend='onednn' needs a PyTorch build with oneDNN and a model whose linear weights are "
                "float32 on CPU; use linear_backend='auto' or 'default' for this model."
            )
        self._model_packs: OneDNNLinears | None = None
        self._encoder_packs: dict[int, PackedLinear] = {}
        self.onednn_active = False  # whether the latest capture ran the linears through oneDNN
        self.layers = vision_layers(model)
        self.num_layers = len(self.layers)
        self.vision_config = vision_config(model)
        self.hidden_size = self.vision_config.hidden_size
        if hook_point not in HOOK_POINTS:
            raise ValueError(f"hook_point must be one of {list(HOOK_POINTS)}, got {hook_point!r}.")
        self.hook_point = hook_point
        self.saes = {self.check_block(block, "saes"): sae for block, sae in (saes or {}).items()}
        for block, sae in self.saes.items():
            self._check_sae(block, sae)
        self.mean_residuals = {
            self.check_block(block, "mean_residuals"): self._check_mean(block, mean)
            for block, mean in (mean_residuals or {}).items()
        }

    # ------------------------------------------------------------------------------------------------ validation
    def check_block(self, block, where: str) -> int:
        """`block` if it is a 0-indexed block of the model, else a ValueError naming `where` it came from."""
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.num_layers:
            raise ValueError(
                f"Block {block!r} in {where} is out of range: this model has {self.num_layers} blocks, so valid "
                f"0-indexed blocks are 0..{self.num_layers - 1}."
            )
        return block

    def _check_sae(self, block: int, sae: SparseAutoencoder) -> None:
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"saes[{block}] must be a hf_fga.SparseAutoencoder, got {type(sae).__name__}.")
        if sae.config.d_in != self.hidden_size:
            raise ValueError(
                f"SAE for block {block} expects d_in={sae.config.d_in} but the model's hidden size is "
                f"{self.hidden_size}: this SAE was trained for a different model."
            )
        if sae.config.hook_layer != block:
            warnings.warn(
                f"The SAE passed for block {block} was trained on block {sae.config.hook_layer} "
                f"(config.hook_layer); it is used at block {block} as requested.",
                UserWarning,
                stacklevel=3,
            )
        sae_model, name = sae.config.base_model_name_or_path, model_name(self.model)
        if sae_model and name and not same_model_name(sae_model, name):
            warnings.warn(
                f"The SAE for block {block} was trained on {sae_model!r} but the model is {name!r}: its "
                "features may not match this model's residual stream.",
                UserWarning,
                stacklevel=3,
            )

    def _check_mean(self, block: int, mean: Tensor) -> Tensor:
        mean = torch.as_tensor(mean)
        if mean.shape != (self.hidden_size,) or not torch.isfinite(mean).all():
            raise ValueError(
                f"mean_residuals[{block}] must be a finite vector of shape ({self.hidden_size},) (the model's hidden "
                f"size), got shape {tuple(mean.shape)}: compute it with compute_mean_residuals(model, ...)."
            )
        return mean

    def _check_pixels(self, pixel_values: Tensor) -> tuple[int, int]:
        if not isinstance(pixel_values, Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor (B, 3, H, W), got {type(pixel_values).__name__}.")
        channels = getattr(self.vision_config, "num_channels", 3)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels or pixel_values.shape[0] == 0:
            raise ValueError(
                f"pixel_values must have shape (B, {channels}, H, W) with B >= 1, got {tuple(pixel_values.shape)}: "
                "pass a preprocessed batch (e.g. the image processor's output['pixel_values'])."
            )
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contain NaN or infinite values: check the image and its preprocessing.")
        patch = self.vision_config.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return pixel_values.shape[2] // patch_h, pixel_values.shape[3] // patch_w

    def _num_classes(self, text_embeds: Tensor | None) -> int:
        if is_clip(self.model):
            if text_embeds is None:
                raise ValueError(
                    "A CLIPModel needs text_embeds (C, projection_dim) of the candidate labels: compute them with "
                    "hf_fga.introspection.clip_text_embeddings(model, tokenizer, candidate_labels)."
                )
            projection = self.model.config.projection_dim
            if text_embeds.dim() != 2 or text_embeds.shape[1] != projection or text_embeds.shape[0] == 0:
                raise ValueError(
                    f"text_embeds must have shape (C, {projection}) with C >= 1, got {tuple(text_embeds.shape)}."
                )
            return text_embeds.shape[0]
        return self.model.config.num_labels

    def _check_target(self, target, batch: int, num_classes: int) -> Tensor | None:
        if target is None:
            return None
        if isinstance(target, bool):
            raise TypeError("target must be None, an int, a sequence of ints or a LongTensor, got a bool.")
        if isinstance(target, int):
            target = torch.full((batch,), target, dtype=torch.long)
        else:
            target = torch.as_tensor(target)
            if target.dtype.is_floating_point or target.dtype == torch.bool:
                raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
            target = target.long().reshape(-1) if target.dim() == 0 else target.long()
            if target.numel() == 1 and batch > 1:
                target = target.expand(batch)
            if target.shape != (batch,):
                raise ValueError(f"target must be an int or hold one index per image ({batch}), got {target.shape}.")
        bad = (target < 0) | (target >= num_classes)
        if bad.any():
            raise ValueError(
                f"target {target[bad][0].item()} is out of range: the model scores {num_classes} classes/labels, "
                f"so targets must be in 0..{num_classes - 1}."
            )
        return target

    def hook_point_of(self, block: int) -> str:
        """Where x is read for `block`: the SAE's hook point, else the instance's `hook_point`."""
        sae = self.saes.get(block)
        return sae.config.hook_point if sae is not None else self.hook_point

    def default_hook_points(self) -> dict[int, str]:
        """The hook points `capture` records by default: every block with an SAE or a mean residual."""
        return {block: self.hook_point_of(block) for block in sorted({*self.saes, *self.mean_residuals})}

    # ---------------------------------------------------------------------------------------------------- attribute
    def attribute(
        self,
        pixel_values: Tensor,
        method: str = "fga",
        target: int | Sequence[int] | Tensor | None = None,
        text_embeds: Tensor | None = None,
        libragrad: bool = False,
        **options: Any,
    ) -> AttributionOutput:
        r"""
        Attribute the target score of each image to its patches with a registered method.

        Args:
            pixel_values (`Tensor` of shape `(B, 3, H, W)`): preprocessed images.
            method (`str`, defaults to `"fga"`): a registered method name (`hf_fga.list_methods()`): `"transmm"`,
                `"fga"`, `"rollout"` (Abnar & Zuidema 2020), `"raw-attention"`, …
            target (`int`, sequence of `B` ints, `LongTensor (B,)` or `None`): the class (CLIP: candidate label)
                explained; `None` takes each image's argmax.
            text_embeds (`Tensor` of shape `(C, projection_dim)`, *optional*): L2-normalised candidate-label
                embeddings; required for CLIP.
            libragrad (`bool`, defaults to `False`): run the method's forward and backward passes under LibraGrad's
                backward rules (method.md §8; [`hf_fga.attribution.rules.libragrad`]): the forward pass is unchanged,
                the gradients become FullGrad-complete. Only for gradient-based methods (`gradient_based`, e.g.
                `"transmm"`, `"fga"`, `"gradient-x-input"`, `"integrated-gradients"`); others raise a ValueError.
            options: the method's options (`get_method(method).options`; for `"fga"`: `variant`, `layers`, `kappa`,
                `cmax`, `return_diagnostics`, `return_contributions`, `num_contributions`, `shuffle_seed`). An
                unknown option raises a TypeError listing the accepted ones.

        Returns:
            [`AttributionOutput`]. Methods derived from the shared capture run one forward and one backward pass;
            for FGA, a gated block whose scores' spread is at rounding level (MAD ≤ 1e-6 · max_t ‖g_t‖‖x_t‖) gets
            gates of 1 with one warning naming the block (for every variant but `activation`).
        """
        impl = get_method(method)
        rules = self._libragrad_rules(method, libragrad)
        options = impl.check_options(self, **options)
        if impl.uses_capture:
            points = impl.hook_points(self, options)
            capture = self.capture(pixel_values, target, text_embeds, hook_points=points, backward_context=rules)
            return self._output(capture, impl.explain(self, capture, options), baseline=transmm_map(capture))
        grid = self._check_pixels(pixel_values)
        target = self._check_target(target, pixel_values.shape[0], self._num_classes(text_embeds))
        precision = check_precision(self.precision)
        rules_context = rules(self.model) if rules is not None else contextlib.nullcontext()
        if impl.resolves_target:
            # every forward and backward pass the method runs gets the rules (the model is restored on exit)
            with rules_context, autocast(self.model.device, precision):
                result = impl.attribute(self, pixel_values, target, text_embeds, options)
            logits, target = result.logits.float(), result.target
        else:
            with prepared_model(self.model), torch.no_grad(), autocast(self.model.device, precision):
                logits = model_logits(self.model, pixel_values.to(self.model.device, self.dtype), text_embeds).float()
            target = logits.argmax(dim=-1) if target is None else target.to(logits.device)
            with rules_context, autocast(self.model.device, precision):
                result = impl.attribute(self, pixel_values, target, text_embeds, options)
        head = Capture(logits, target, [], [], {}, {}, grid=grid)
        return self._output(head, result, baseline=None)

    @staticmethod
    def _libragrad_rules(method: str, libragrad: bool) -> BackwardContext | None:
        """LibraGrad's rules for `libragrad=True` on a gradient-based method; a ValueError for any other method."""
        if not libragrad:
            return None
        if not get_method(method).gradient_based:
            accepted = [name for name in list_methods() if get_method(name).gradient_based]
            raise ValueError(
                f"libragrad=True changes the gradients a method reads, but {method!r} reads none of the model's "
                f"gradients (or applies backward rules of its own). Use it with a gradient-based method: "
                f"{', '.join(accepted)}; or drop libragrad for {method!r}."
            )
        return backward_rules("libragrad")

    # ------------------------------------------------------------------------------------------ capture / explain
    def capture(
        self,
        pixel_values: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        text_embeds: Tensor | None = None,
        hook_points: Mapping[int, str] | Iterable[int] | None = None,
        backward_context: BackwardContext | None = None,
    ) -> Capture:
        r"""
        One forward pass and one backward pass of Σ_b y_b, recording what the capture-based methods read.

        The model is prepared (eval mode, batch-invariant eager attention, frozen parameters, oneDNN linears if
        chosen) for the pass and restored exactly afterwards, also after an exception.

        Args:
            pixel_values (`Tensor` of shape `(B, 3, H, W)`), target, text_embeds: as in [`attribute`].
            hook_points (`Mapping[int, str]` or `Iterable[int]`, *optional*): the residuals to record,
                `{block: "resid_pre" | "resid_post"}`, or blocks read at their default hook point
                ([`hook_point_of`]); defaults to every block with an SAE or a mean residual.
            backward_context (`Callable[[PreTrainedModel], ContextManager]`, *optional*): entered around the forward
                and backward pass with the model (e.g. a modified backward pass such as LibraGrad's rules).

        Returns:
            [`Capture`]: pass it to [`explain`] any number of times.
        """
        grid = self._check_pixels(pixel_values)
        target = self._check_target(target, pixel_values.shape[0], self._num_classes(text_embeds))
        points = self._hook_points(hook_points)
        precision = check_precision(self.precision)
        with prepared_model(self.model) as handles:
            packs = self._packs_for(pixel_values[:1], text_embeds) if precision == "float32" else None
            with contextlib.ExitStack() as stack:
                if packs is not None:
                    stack.enter_context(packs.applied())
                if backward_context is not None:
                    stack.enter_context(backward_context(self.model))
                stack.enter_context(autocast(self.model.device, precision))
                capture = run_capture(self.model, handles, pixel_values, target, points, text_embeds)
        if precision != "float32":
            capture = _in_float32(capture)
        capture.grid, capture.precision = grid, precision
        capture.onednn = self.onednn_active = packs is not None
        tokens = capture.attentions[0].shape[-1]
        if tokens <= grid[0] * grid[1]:
            raise ValueError(
                f"The model has {tokens} tokens for a {grid[0]}x{grid[1]} patch grid: expected at least one CLS token "
                "before the patch tokens."
            )
        return capture

    def explain(self, capture: Capture, method: str = "fga", **options: Any) -> AttributionOutput:
        r"""
        The map of a capture-based method from a [`Capture`] of this attributor, with no further model pass.

        Args:
            capture ([`Capture`]): from [`capture`]; it must hold the residuals the method reads (e.g. every gated
                block of FGA at its hook point), else a ValueError says which `hook_points` to capture.
            method (`str`, defaults to `"fga"`), options: as in [`attribute`].

        Returns:
            [`AttributionOutput`], equal to `attribute` with the same inputs and options.
        """
        impl = get_method(method)
        if not impl.uses_capture:
            raise ValueError(
                f"Method {method!r} runs its own forward/backward passes and cannot be derived from a capture: call "
                "attribute(pixel_values, method=...) instead."
            )
        if "libragrad" in options:
            raise ValueError(
                "libragrad is a property of the capture's backward pass, not of a map: capture with "
                "backward_context=hf_fga.attribution.rules.backward_rules('libragrad') and explain that capture."
            )
        options = impl.check_options(self, **options)
        if capture.grid is None or len(capture.attentions) != self.num_layers:
            raise ValueError("explain needs a Capture made by Attributor.capture for this attributor's model.")
        missing = {
            block: point
            for block, point in impl.hook_points(self, options).items()
            if (block, point) not in capture.residuals
        }
        if missing:
            raise ValueError(
                f"The capture holds the residuals of {capture.hook_points or 'no block'}, but {method!r} with these "
                f"options reads {missing}: capture with hook_points={missing | capture.hook_points}."
            )
        return self._output(capture, impl.explain(self, capture, options), baseline=transmm_map(capture))

    def _output(self, capture: Capture, result: MethodResult, baseline: Tensor | None) -> AttributionOutput:
        return AttributionOutput(
            attribution=_cpu(result.attribution),
            baseline=None if baseline is None else _cpu(baseline),
            logits=_cpu(capture.logits),
            probabilities=_cpu(capture.logits.float().softmax(dim=-1)),
            target=capture.target.detach().to("cpu", torch.long),
            scores=_cpu_tree(result.scores),
            gates=_cpu_tree(result.gates),
            diagnostics=_cpu_tree(result.diagnostics),
            contributions=_cpu_tree(result.contributions),
            grid=capture.grid,
        )

    def _hook_points(self, hook_points: Mapping[int, str] | Iterable[int] | None) -> dict[int, str]:
        if hook_points is None:
            return self.default_hook_points()
        if not isinstance(hook_points, Mapping):
            hook_points = {self.check_block(block, "hook_points"): None for block in hook_points}
            hook_points = {block: self.hook_point_of(block) for block in hook_points}
        points = {self.check_block(block, "hook_points"): point for block, point in hook_points.items()}
        for block, point in points.items():
            if point not in HOOK_POINTS:
                raise ValueError(f"hook_points[{block}] must be one of {list(HOOK_POINTS)}, got {point!r}.")
        return points

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------------------------------- oneDNN linears
    def _packs_for(self, pixel_values: Tensor, text_embeds: Tensor | None) -> OneDNNLinears | None:
        """The model's oneDNN packs (taken or retaken as needed) if this call may use them, else None."""
        if not use_onednn(self.model, self.linear_backend):
            return None
        self._model_packs = cached_linears(self.model, backward=True)  # shared with the own-pass methods
        pixels = pixel_values.detach().to(self.model.device, torch.float32)
        if not check_once(
            self.model, self._model_packs, lambda: model_logits(self.model, pixels, text_embeds), self.linear_backend
        ):
            return None
        return self._model_packs

    def sae_encoder(self, block: int, capture: Capture) -> PackedLinear | None:
        """
        The prepacked oneDNN encoder `x ↦ x W_enc + b_enc` of a block's SAE, when the capture's pass ran the model's
        linears through oneDNN (which implies the backend allows it) and the encoder can be packed; else `None`
        (the SAE's own matmul).
        """
        sae = self.saes[block]
        if capture.precision != "float32":
            return _autocast_encoder(sae, capture.precision)
        if not (capture.onednn and supported_weight(sae.W_enc)):
            return None
        pack = self._encoder_packs.get(block)
        if pack is None or not pack.is_current(sae.W_enc, sae.b_enc):
            pack = self._encoder_packs[block] = PackedLinear(sae.W_enc, sae.b_enc, transposed=True)
        return pack


def _in_float32(capture: Capture) -> Capture:
    """The capture of a reduced-precision pass with its logits, attentions, residuals and gradients in float32."""

    def up(t: Tensor) -> Tensor:
        return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t

    capture.logits = up(capture.logits)
    capture.attentions = [up(t) for t in capture.attentions]
    capture.attention_grads = [up(t) for t in capture.attention_grads]
    capture.residuals = {key: up(t) for key, t in capture.residuals.items()}
    capture.residual_grads = {key: up(t) for key, t in capture.residual_grads.items()}
    return capture


def _autocast_encoder(sae: SparseAutoencoder, precision: str):
    """`x ↦ x W_enc + b_enc` under `hf_fga.precision.autocast`, in float32 (an encoder for `SAE.encode`)."""

    def encode(x: Tensor) -> Tensor:
        with autocast(x.device, precision):
            pre = torch.addmm(sae.b_enc, x, sae.W_enc)
        return pre.float()

    return encode


# The name of the first release, kept working: the engine serves every registered method, not FGA alone.
FeatureGradientAttribution = Attributor
