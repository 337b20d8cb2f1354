"""The power-user API: `FeatureGradientAttribution(model, saes).attribute(pixel_values, target=...)`."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..onednn import OneDNNLinears, PackedLinear, check_backend, check_once, supported_weight, supports_onednn
from ..sae import SparseAutoencoder
from .capture import HOOK_POINTS, Capture, prepared_model, run_capture, vision_config
from .fga import (
    SAE_VARIANTS,
    VARIANTS,
    FeatureCodes,
    block_diagnostics,
    block_scores,
    degenerate_images,
    degenerate_reason,
    gates_from_scores,
    shuffle_permutation,
)
from .rollout import attention_rollout, raw_attention
from .targets import is_clip, model_logits, vision_layers
from .transmm import cls_to_patches, gradient_weighted_attention, propagate_relevance

METHODS = ("transmm", "fga", "rollout", "raw-attention")
CODE_VARIANTS = ("combined", "activation", "shuffled")


@dataclass(frozen=True)
class _Options:
    """The validated call-time options of one `attribute` call."""

    method: str
    variant: str
    kappa: float
    cmax: float
    return_diagnostics: bool
    return_contributions: bool
    num_contributions: int
    shuffle_seed: int


@dataclass
class AttributionOutput:
    """
    The result of [`FeatureGradientAttribution.attribute`]; all tensors detached, float32, on CPU.

    Args:
        attribution (`Tensor` of shape `(B, h, w)`): the map of the requested method (the gated map for `"fga"`).
        baseline (`Tensor` of shape `(B, h, w)`): the TransMM map of the same forward/backward pass.
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
    baseline: Tensor
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


def _model_name(model: PreTrainedModel) -> str | None:
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


class FeatureGradientAttribution:
    r"""
    TransMM, Feature-Gradient Attribution (FGA) and attention baselines for a ViT-family classifier or a CLIPModel
    (method.md §1–3; thesis ch. 6, Algorithm 6.1).

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
            retaken when the weights change.

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

    Example:
    ```python
    >>> attr = FeatureGradientAttribution(model, saes={4: sae4, 5: sae5})
    >>> out = attr.attribute(pixel_values, method="fga", variant="combined", kappa=0.5, cmax=10.0)
    >>> out.attribution.shape  # (B, h, w)
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        saes: Mapping[int, SparseAutoencoder] | None = None,
        mean_residuals: Mapping[int, Tensor] | None = None,
        hook_point: str = "resid_post",
        linear_backend: str = "auto",
    ):
        self.model = model
        self.linear_backend = check_backend(linear_backend)
        if linear_backend == "onednn" and not supports_onednn(model):
            raise ValueError(
                "linear_backend='onednn' needs a PyTorch build with oneDNN and a model whose linear weights are "
                "float32 on CPU; use linear_backend='auto' or 'default' for this model."
            )
        self._model_packs: OneDNNLinears | None = None
        self._encoder_packs: dict[int, PackedLinear] = {}
        self._onednn_active = False
        self.layers = vision_layers(model)
        self.num_layers = len(self.layers)
        self.vision_config = vision_config(model)
        self.hidden_size = self.vision_config.hidden_size
        if hook_point not in HOOK_POINTS:
            raise ValueError(f"hook_point must be one of {list(HOOK_POINTS)}, got {hook_point!r}.")
        self.hook_point = hook_point
        self.saes = {self._check_block(block, "saes"): sae for block, sae in (saes or {}).items()}
        for block, sae in self.saes.items():
            self._check_sae(block, sae)
        self.mean_residuals = {
            self._check_block(block, "mean_residuals"): self._check_mean(block, mean)
            for block, mean in (mean_residuals or {}).items()
        }

    # ------------------------------------------------------------------------------------------------ validation
    def _check_block(self, block, where: str) -> int:
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
        sae_model, model_name = sae.config.base_model_name_or_path, _model_name(self.model)
        if sae_model and model_name and not same_model_name(sae_model, model_name):
            warnings.warn(
                f"The SAE for block {block} was trained on {sae_model!r} but the model is {model_name!r}: its "
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
                    "hf_fga.attribution.targets.clip_text_embeddings(model, tokenizer, candidate_labels)."
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

    def _gated_blocks(self, variant: str, layers: Sequence[int] | None) -> list[int]:
        if layers is None:
            source = self.mean_residuals if variant == "mean-centered" else self.saes
            layers = sorted(source)
            if not layers:
                needs = "mean_residuals" if variant == "mean-centered" else "saes"
                raise ValueError(
                    f"FGA variant {variant!r} has no block to gate: pass layers=[...] or build "
                    f"FeatureGradientAttribution with {needs}."
                )
        if isinstance(layers, int):
            layers = [layers]
        blocks = sorted({self._check_block(block, "layers") for block in layers})
        for block in blocks:
            if variant in SAE_VARIANTS and block not in self.saes:
                raise ValueError(
                    f"Variant {variant!r} needs an SAE for block {block}, but SAEs were given only for blocks "
                    f"{sorted(self.saes)}: pass one in saes={{{block}: sae}} or choose other layers."
                )
            if variant == "mean-centered" and block not in self.mean_residuals:
                raise ValueError(
                    f"Variant 'mean-centered' needs the mean residual μ of block {block}, but mean_residuals covers "
                    f"only blocks {sorted(self.mean_residuals)}: compute it with compute_mean_residuals(model, ...)."
                )
        return blocks

    def hook_point_of(self, block: int) -> str:
        """Where x is read for `block`: the SAE's hook point, else the instance's `hook_point`."""
        sae = self.saes.get(block)
        return sae.config.hook_point if sae is not None else self.hook_point

    # ---------------------------------------------------------------------------------------------------- attribute
    def attribute(
        self,
        pixel_values: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        *,
        method: str = "fga",
        variant: str = "combined",
        layers: Sequence[int] | None = None,
        kappa: float = 0.5,
        cmax: float = 10.0,
        text_embeds: Tensor | None = None,
        return_diagnostics: bool = False,
        return_contributions: bool = False,
        num_contributions: int = 16,
        shuffle_seed: int = 12345,
    ) -> AttributionOutput:
        r"""
        Attribute the target score of each image to its patches, with one forward and one backward pass.

        Args:
            pixel_values (`Tensor` of shape `(B, 3, H, W)`): preprocessed images.
            target (`int`, sequence of `B` ints, `LongTensor (B,)` or `None`): the class (CLIP: candidate label)
                explained; `None` takes each image's argmax.
            method (`str`, defaults to `"fga"`): one of `METHODS` = `"transmm"`, `"fga"`, `"rollout"` (Abnar &
                Zuidema 2020), `"raw-attention"` (last block's head-mean CLS → patch attention).
            variant (`str`, defaults to `"combined"`): the FGA score, one of `VARIANTS` (method.md §3).
            layers (`Sequence[int]`, *optional*): gated blocks; defaults to every block with an SAE (with a mean
                residual for `mean-centered`).
            kappa (`float`, defaults to 0.5): κ > 0, the gate's sensitivity.
            cmax (`float`, defaults to 10.0): c_max > 1, gates lie in [1/c_max, c_max].
            text_embeds (`Tensor` of shape `(C, projection_dim)`, *optional*): L2-normalised candidate-label
                embeddings; required for CLIP.
            return_diagnostics (`bool`, defaults to `False`): add the per-block score decomposition.
            return_contributions (`bool`, defaults to `False`): add the per-patch feature contributions.
            num_contributions (`int`, defaults to 16): how many contributions (largest |c|) to keep per patch.
            shuffle_seed (`int`, defaults to 12345): seed of the feature permutation of the `shuffled` variant.

        Returns:
            [`AttributionOutput`]. For variants other than `activation`, a gated block whose scores' spread is at
            rounding level (MAD ≤ 1e-6 · max_t ‖g_t‖‖x_t‖) gets gates of 1 with one warning naming the block.
        """
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: expected one of {list(METHODS)}.")
        if variant not in VARIANTS:
            raise ValueError(f"Unknown FGA variant {variant!r}: expected one of {list(VARIANTS)}.")
        if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a finite number > 0 (the gate's sensitivity), got {kappa!r}.")
        if not (isinstance(cmax, int | float) and math.isfinite(cmax) and cmax > 1):
            raise ValueError(f"cmax must be a finite number > 1 (gates lie in [1/cmax, cmax]), got {cmax!r}.")
        if isinstance(num_contributions, bool) or not isinstance(num_contributions, int) or num_contributions < 1:
            raise ValueError(f"num_contributions must be a positive integer, got {num_contributions!r}.")
        grid = self._check_pixels(pixel_values)
        batch = pixel_values.shape[0]
        target = self._check_target(target, batch, self._num_classes(text_embeds))
        blocks = self._gated_blocks(variant, layers) if method == "fga" else []
        hook_points = {block: self.hook_point_of(block) for block in blocks}

        options = _Options(
            method, variant, float(kappa), float(cmax), return_diagnostics, return_contributions, num_contributions,
            shuffle_seed,
        )
        capture = self._capture(pixel_values, target, hook_points, text_embeds)
        return self._explain(capture, hook_points, grid, options)

    def _capture(
        self, pixel_values: Tensor, target: Tensor | None, hook_points: dict[int, str], text_embeds: Tensor | None
    ) -> Capture:
        """The one forward and backward pass, with the model prepared and restored (and oneDNN linears if chosen)."""
        with prepared_model(self.model) as handles:
            packs = self._packs_for(pixel_values[:1], text_embeds)
            self._onednn_active = packs is not None
            with packs.applied() if packs is not None else contextlib.nullcontext():
                return run_capture(self.model, handles, pixel_values, target, hook_points, text_embeds)

    # ------------------------------------------------------------------------------------------- oneDNN linears
    def _packs_for(self, pixel_values: Tensor, text_embeds: Tensor | None) -> OneDNNLinears | None:
        """The model's oneDNN packs (taken or retaken as needed) if this call may use them, else None."""
        if self.linear_backend == "default" or not supports_onednn(self.model):
            return None
        if self._model_packs is None or not self._model_packs.is_current():
            self._model_packs = OneDNNLinears(self.model, backward=True)
        pixels = pixel_values.detach().to(self.model.device, torch.float32)
        if not check_once(
            self.model, self._model_packs, lambda: model_logits(self.model, pixels, text_embeds), self.linear_backend
        ):
            return None
        return self._model_packs

    def _encoder_for(self, block: int, sae: SparseAutoencoder) -> PackedLinear | None:
        """The prepacked oneDNN encoder `x ↦ x W_enc + b_enc` of a block's SAE, when the backend allows it."""
        # only when the model's linears run through oneDNN in this call too (which implies the backend allows it)
        if not (self._onednn_active and supported_weight(sae.W_enc)):
            return None
        pack = self._encoder_packs.get(block)
        if pack is None or not pack.is_current(sae.W_enc, sae.b_enc):
            pack = self._encoder_packs[block] = PackedLinear(sae.W_enc, sae.b_enc, transposed=True)
        return pack

    def _explain(
        self, capture: Capture, hook_points: dict[int, str], grid: tuple[int, int], options: _Options
    ) -> AttributionOutput:
        """All maps from one capture; `hook_points` maps each gated block to where x was read."""
        pairs = zip(capture.attentions, capture.attention_grads, strict=True)
        weighted = [gradient_weighted_attention(a, g) for a, g in pairs]
        tokens = weighted[0].shape[-1]
        if tokens <= grid[0] * grid[1]:
            raise ValueError(
                f"The model has {tokens} tokens for a {grid[0]}x{grid[1]} patch grid: expected at least one CLS token "
                "before the patch tokens."
            )
        baseline = cls_to_patches(propagate_relevance(weighted), grid)
        batch = baseline.shape[0]
        scores: dict[int, Tensor] = {}
        gates: dict[int, Tensor] = {}
        diagnostics: dict[int, dict[str, Tensor]] = {}
        contributions: dict[int, tuple[Tensor, Tensor]] = {}
        for block, hook_point in hook_points.items():
            result = self._gate_block(capture, block, hook_point, grid, options)
            scores[block], gates[block] = result["scores"], result["gates"]
            if "diagnostics" in result:
                diagnostics[block] = result["diagnostics"]
            if "contributions" in result:
                contributions[block] = result["contributions"]

        if options.method == "transmm":
            attribution = baseline
        elif options.method == "fga":
            full_gates = {}
            for block, gate in gates.items():
                full = torch.ones(batch, tokens, dtype=weighted[0].dtype, device=weighted[0].device)
                full[:, -gate.shape[1] :] = gate.to(full)
                full_gates[block] = full
            attribution = cls_to_patches(propagate_relevance(weighted, full_gates), grid)
        elif options.method == "rollout":
            attribution = cls_to_patches(attention_rollout(capture.attentions), grid)
        else:
            attribution = cls_to_patches(raw_attention(capture.attentions), grid)

        h, w = grid
        return AttributionOutput(
            attribution=_cpu(attribution),
            baseline=_cpu(baseline),
            logits=_cpu(capture.logits),
            probabilities=_cpu(capture.logits.float().softmax(dim=-1)),
            target=capture.target.detach().to("cpu", torch.long),
            scores={block: _cpu(s.reshape(batch, h, w)) for block, s in scores.items()},
            gates={block: _cpu(g.reshape(batch, h, w)) for block, g in gates.items()},
            diagnostics={b: {k: _cpu(v) for k, v in d.items()} for b, d in diagnostics.items()}
            if options.return_diagnostics
            else None,
            contributions={
                b: (_cpu(v.reshape(batch, h * w, -1)), i.reshape(batch, h * w, -1).cpu())
                for b, (v, i) in contributions.items()
            }
            if options.return_contributions
            else None,
            grid=grid,
        )

    def _gate_block(
        self, capture: Capture, block: int, hook_point: str, grid: tuple[int, int], options: _Options
    ) -> dict:
        """Scores, gates (and on request diagnostics and contributions) of one gated block, each over its patches."""
        patches = grid[0] * grid[1]
        x = capture.residuals[(block, hook_point)][:, -patches:]
        g = capture.residual_grads[(block, hook_point)][:, -patches:]
        batch, _, width = x.shape
        sae = self.saes.get(block)
        if sae is not None:
            x = x.to(sae.W_dec.device, sae.W_dec.dtype)
            g = g.to(sae.W_dec.device, sae.W_dec.dtype)
        flat_x, flat_g = x.reshape(-1, width), g.reshape(-1, width)
        variant = options.variant
        needs_codes = variant in CODE_VARIANTS or options.return_diagnostics or options.return_contributions
        codes = None
        if sae is not None and needs_codes:
            key = ("codes", block, hook_point, id(sae))
            if key not in capture.cache:
                capture.cache[key] = FeatureCodes.encode(sae, flat_x, self._encoder_for(block, sae))
            codes = capture.cache[key]
        permutation = None
        if variant == "shuffled":
            permutation = shuffle_permutation(sae.config.d_sae, options.shuffle_seed).to(x.device)
        mean = self.mean_residuals.get(block)
        mean = mean.to(x.device, x.dtype) if mean is not None else None

        with torch.no_grad():
            scores = block_scores(variant, flat_x, flat_g, sae, codes, mean, permutation).reshape(batch, patches)
            gates, mad = gates_from_scores(scores, options.kappa, options.cmax)
            if variant != "activation":
                degenerate = degenerate_images(mad, x, g)
                if degenerate.any():
                    gates = torch.where(degenerate[:, None], torch.ones_like(gates), gates)
                    position = block if hook_point == "resid_post" else block - 1
                    warnings.warn(
                        f"FGA block {block} ({hook_point}): the '{variant}' scores of {int(degenerate.sum())} of "
                        f"{batch} image(s) have a spread at rounding level (MAD <= 1e-6 * max ||g|| ||x||), so their "
                        f"gates are set to 1. Reason: {degenerate_reason(position, self.num_layers)}.",
                        UserWarning,
                        stacklevel=4,
                    )
        result = {"scores": scores, "gates": gates}
        if options.return_diagnostics:
            result["diagnostics"] = block_diagnostics(flat_x, flat_g, codes, batch)
        if options.return_contributions and codes is not None:
            result["contributions"] = codes.contributions(flat_g, options.num_contributions, permutation)
        return result
