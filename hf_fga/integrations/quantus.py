"""
Quantus (Hedström et al., JMLR 2023) on hf_fga's models and maps: an `explain_func` for Quantus's metrics and the
settings that make its Faithfulness Correlation and Pixel Flipping comparable to `hf_fga.faithfulness` (method.md §5).

Install with `pip install hf_fga[quantus]`. Quantus reads a torch model as `logits = model(x)` on numpy inputs and
treats a transformers `PreTrainedModel` as a text model, so a vision model is wrapped:

- [`QuantusModel`] (pixel level): input the preprocessed images `(B, C, H, W)`, output the target scores of
  method.md §1 (class logits; CLIP: the logits of the candidate labels). Quantus then perturbs *pixels* (every element
  of x is one feature): its "mean" baseline is the scalar mean of the current, partly perturbed image, and
  Faithfulness Correlation's random subsets are scattered pixels. [`pixel_metrics`] sets the sizes that perturb as
  much of the image as the patch versions (20 patches' worth of pixels, one patch's worth per flipping step).
- [`PatchMaskModel`] (patch level, comparable to ours): input one indicator per patch `(B, 1, h, w)`, 1 = clean,
  0 = replaced by the per-image, per-channel mean of the clean image (the "mean" fill of method.md §5). Every feature
  Quantus perturbs is then one patch of the model's grid, exactly as in `evaluate_faithfulness`. [`patch_metrics`]
  builds the metrics (Pearson over 100 runs of 20 patches; Pixel Flipping one patch per step) and
  [`pixel_flipping_auc`] turns Quantus's curve into our normalised AUC (it adds the clean point k = 0).

Quantus draws Faithfulness Correlation's subsets from NumPy's global generator, so its subsets cannot be ours: the
two scores agree in distribution, image by image only up to the metric's sampling noise.

Example:
```python
>>> import numpy as np, quantus
>>> from hf_fga.integrations.quantus import PatchMaskModel, explain_func, patch_metrics, pixel_flipping_auc
>>> wrapped = PatchMaskModel(model, pixel_values)                 # a ViT classifier and its preprocessed batch
>>> x, y = wrapped.indicators(), wrapped.predictions()
>>> a = explain_func(wrapped, x, y, method="transmm")              # (B, 1, h, w) patch maps
>>> fc, pf = patch_metrics()
>>> fc_scores = fc(model=wrapped, x_batch=x, y_batch=y, a_batch=a, softmax=False, batch_size=len(x))
>>> curves = pf(model=wrapped, x_batch=x, y_batch=y, a_batch=a, softmax=True, batch_size=len(x))
>>> pf_scores = pixel_flipping_auc(curves, wrapped.probabilities(y))

```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..attribution import Attributor
from ..faithfulness.fills import patch_grid
from ..introspection import model_logits
from ..precision import autocast, check_precision

FC_SUBSET_PATCHES = 20
FC_RUNS = 100


def _quantus():
    try:
        import quantus
    except ImportError as error:
        raise ImportError(
            f"hf_fga.integrations.quantus needs Quantus: pip install 'hf_fga[quantus]' ({error})."
        ) from error
    return quantus


class QuantusModel(nn.Module):
    """
    A vision `PreTrainedModel` as Quantus expects a torch model: `forward(pixel_values (B, C, H, W)) -> scores (B, K)`.

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a CLIPModel (then pass `text_embeds`).
        text_embeds (`Tensor` of shape `(K, projection_dim)`, *optional*): CLIP's candidate-label embeddings.
        precision (`str`, defaults to `"float32"`): `"bfloat16"` runs the forward under `torch.autocast`
            ([`hf_fga.precision`]); the scores are float32 either way.
    """

    def __init__(self, model: nn.Module, text_embeds: Tensor | None = None, precision: str = "float32") -> None:
        super().__init__()
        self.model, self.text_embeds, self.precision = model, text_embeds, check_precision(precision)
        self.training = False  # what Quantus checks; only this wrapper's flag (the model's own flags are untouched)

    def scores(self, pixel_values: Tensor) -> Tensor:
        device = next(self.model.parameters()).device
        with autocast(device, self.precision):
            logits = model_logits(self.model, pixel_values.to(device), self.text_embeds)
        return logits.float()

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.scores(pixel_values)


class PatchMaskModel(QuantusModel):
    """
    The model seen through patch indicators: `forward(indicators (B, 1, h, w)) -> scores (B, K)`, where the image is
    `pixel_values` with every patch whose indicator is < 0.5 replaced by the clean image's per-channel mean.

    Quantus must score the images of `pixel_values` in order, all in one batch: call its metrics with
    `x_batch=wrapped.indicators()` and `batch_size=len(pixel_values)`.

    Args:
        model ([`PreTrainedModel`]): as in [`QuantusModel`].
        pixel_values (`Tensor` of shape `(B, C, H, W)`): the clean, preprocessed images.
        text_embeds, precision: as in [`QuantusModel`].
    """

    def __init__(
        self, model: nn.Module, pixel_values: Tensor, text_embeds: Tensor | None = None, precision: str = "float32"
    ) -> None:
        super().__init__(model, text_embeds, precision)
        self.grid = patch_grid(model, pixel_values)
        self.pixel_values = pixel_values.detach()
        self.fill = self.pixel_values.mean(dim=(2, 3), keepdim=True)

    def indicators(self) -> np.ndarray:
        """All patches clean: `(B, 1, h, w)` ones, float32 (Quantus's `x_batch`)."""
        return np.ones((len(self.pixel_values), 1, self.grid.height, self.grid.width), dtype=np.float32)

    def images(self, indicators: Tensor) -> Tensor:
        """The perturbed images `(B, C, H, W)` that `indicators (B, 1, h, w)` describe."""
        if indicators.shape != (len(self.pixel_values), 1, self.grid.height, self.grid.width):
            raise ValueError(
                f"PatchMaskModel got indicators of shape {tuple(indicators.shape)} for {len(self.pixel_values)} "
                f"images of {self.grid.height}x{self.grid.width} patches: call the Quantus metric with "
                "x_batch=wrapped.indicators() and batch_size=len(pixel_values)."
            )
        keep = self.grid.pixel_mask(indicators.reshape(len(indicators), -1).to(self.pixel_values.device) >= 0.5)
        return torch.where(keep, self.pixel_values, self.fill)

    def forward(self, indicators: Tensor) -> Tensor:
        return self.scores(self.images(indicators))

    def predictions(self) -> np.ndarray:
        """The class predicted on each clean image, `(B,)` int64 (Quantus's `y_batch`; Ŷ of method.md §5)."""
        with torch.no_grad():
            return self.scores(self.pixel_values).argmax(dim=-1).cpu().numpy()

    def probabilities(self, targets: np.ndarray) -> np.ndarray:
        """p(target | clean image) `(B,)` float64: the k = 0 point of the Pixel Flipping curve."""
        with torch.no_grad():
            probabilities = self.scores(self.pixel_values).double().softmax(dim=-1).cpu().numpy()
        return probabilities[np.arange(len(targets)), np.asarray(targets)]


def explain_func(
    model: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    method: str = "transmm",
    saes: Mapping[int, Any] | None = None,
    attributor=None,
    **options,
) -> np.ndarray:
    """
    Quantus's `explain_func`: patch maps of any attribution method of `hf_fga.Attributor`, shaped as Quantus wants.

    Args:
        model ([`QuantusModel`], [`PatchMaskModel`] or [`PreTrainedModel`]): what Quantus passes (the wrapped model).
        inputs (`np.ndarray` of shape `(B, C, H, W)`, or `(B, 1, h, w)` indicators for a [`PatchMaskModel`], which
            explains its own clean images).
        targets (`np.ndarray` of shape `(B,)`): the explained classes.
        method (`str`, defaults to `"transmm"`): a registered method (`"transmm"`, `"fga"`, ...).
        saes (`Mapping[int, SparseAutoencoder]`, *optional*): SAEs for `"fga"`.
        attributor (*optional*): a ready `hf_fga.Attributor` (reused across calls; `saes` is then ignored).
        options: method options (e.g. `variant="combined"`, `kappa=0.5`).

    Returns:
        `np.ndarray` float32: `(B, 1, h, w)` for a [`PatchMaskModel`] (one value per patch), else `(B, 1, H, W)` with
        every pixel carrying its patch's value.
    """
    hf_model = model.model if isinstance(model, QuantusModel) else model
    if isinstance(model, PatchMaskModel):
        pixel_values = model.pixel_values
    else:
        pixel_values = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    if attributor is None:
        precision = model.precision if isinstance(model, QuantusModel) else "float32"
        attributor = Attributor(hf_model, saes, precision=precision)
    text_embeds = model.text_embeds if isinstance(model, QuantusModel) else None
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
    kwargs = {"text_embeds": text_embeds} if text_embeds is not None else {}
    maps = attributor.attribute(pixel_values, target=target, method=method, **kwargs, **options).attribution
    maps = maps.float()[:, None]
    if isinstance(model, PatchMaskModel):
        return maps.numpy()
    patch = pixel_values.shape[-1] // maps.shape[-1]
    return maps.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3).numpy()


def _zero_patches(arr: np.ndarray, indices: np.ndarray, **kwargs) -> np.ndarray:
    """Quantus `perturb_func` for [`PatchMaskModel`]: set the indicators of the patches `indices (B, I)` to 0."""
    perturbed = np.array(arr, copy=True)
    perturbed[np.arange(len(perturbed))[:, None], indices] = 0.0
    return perturbed


def patch_metrics(nr_runs: int = FC_RUNS, subset_size: int = FC_SUBSET_PATCHES, **kwargs):
    """
    `(FaithfulnessCorrelation, PixelFlipping)` of Quantus set up as the papers preset of `hf_fga.faithfulness`, for a
    [`PatchMaskModel`]: Pearson over `nr_runs` random subsets of `subset_size` patches, attributions neither
    normalised nor made absolute (Pearson does not depend on a positive scale), one patch per flipping step, the
    per-channel mean fill; scores per image (`return_aggregate=False`). Call FC with `softmax=False` (the target
    logit) and Pixel Flipping with `softmax=True`, then [`pixel_flipping_auc`]. `kwargs` go to both constructors.
    """
    quantus = _quantus()
    common = dict(perturb_func=_zero_patches, return_aggregate=False, disable_warnings=True, **kwargs)
    fc = quantus.FaithfulnessCorrelation(
        nr_runs=nr_runs,
        subset_size=subset_size,
        similarity_func=quantus.similarity_func.correlation_pearson,
        abs=False,
        normalise=False,
        **common,
    )
    pf = quantus.PixelFlipping(features_in_step=1, abs=False, normalise=False, **common)
    return fc, pf


def pixel_metrics(
    patch_size: int,
    channels: int = 3,
    nr_runs: int = FC_RUNS,
    subset_patches: int = FC_SUBSET_PATCHES,
    perturb_baseline: str = "mean",
    **kwargs,
):
    """
    `(FaithfulnessCorrelation, PixelFlipping)` of Quantus at pixel level, for a [`QuantusModel`] and maps from
    [`explain_func`] (Quantus broadcasts a `(B, 1, H, W)` map over the channels, so every element of x is a
    feature): FC subsets of `subset_patches` patches' worth of elements (`subset_patches · C · p²`); Pixel Flipping
    `p²` elements per step, the most Quantus allows (its step must divide H · W), so a patch (C · p² equal values,
    flipped together as the map is constant on it) takes C steps and [`patch_curve`] keeps every C-th point;
    Quantus's own `perturb_baseline` ("mean": the scalar mean of the current image). Other settings as in
    [`patch_metrics`].
    """
    quantus = _quantus()
    common = dict(
        perturb_baseline=perturb_baseline,
        return_aggregate=False,
        disable_warnings=True,
        abs=False,
        normalise=False,
        **kwargs,
    )
    fc = quantus.FaithfulnessCorrelation(
        nr_runs=nr_runs,
        subset_size=subset_patches * channels * patch_size**2,
        similarity_func=quantus.similarity_func.correlation_pearson,
        **common,
    )
    pf = quantus.PixelFlipping(features_in_step=patch_size**2, **common)
    return fc, pf


def patch_curve(curves, channels: int = 3) -> np.ndarray:
    """The points of a pixel-level Pixel Flipping curve `(B, C · N)` ([`pixel_metrics`]) after whole patches (B, N)."""
    return np.asarray(curves, dtype=np.float64)[:, channels - 1 :: channels]


def pixel_flipping_auc(curves, clean_probabilities: np.ndarray) -> np.ndarray:
    """
    Our Pixel Flipping score (method.md §5) from Quantus's curves `(B, N)` (p after k = 1..N steps) and the clean
    probabilities `(B,)`: AUC = (1/N) Σ_{k=1..N} (s_{k−1} + s_k) / 2 with s_0 the clean point. Quantus's own AUC
    (`return_auc_per_sample=True`) is the trapezoid over k = 1..N with dx = 1, neither starting at the clean image nor
    normalised.
    """
    curves = np.asarray(curves, dtype=np.float64)
    full = np.concatenate([np.asarray(clean_probabilities, dtype=np.float64)[:, None], curves], axis=1)
    return (full[:, :-1] + full[:, 1:]).sum(axis=1) / (2 * curves.shape[1])
