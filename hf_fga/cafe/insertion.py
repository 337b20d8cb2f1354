"""
CaFE's insertion test on an SAE feature (method.md §9), run through the batched perturbation engine of
[`hf_fga.faithfulness`]: start from x̄ (the `mean` fill), insert the original patches in ranking order, read z_j (the
feature at the explained token q after j patches), AUC = (1/N) Σ_{j=1..N} (z_{j−1} + z_j)/2 / z_N.

Every insertion step of every ranking, image and feature is one request to a single [`PerturbationRunner`], so all of
them run in shared batches and shared inputs (x̄ itself, the clean image) run once. The runner's forward returns z of
every explained (image, feature, position) triple for every input; each triple tracks its own column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..faithfulness import PerturbationRunner
from ..faithfulness.fills import check_attributions, default_normalization, patch_grid
from ..faithfulness.records import plan_curve, run_plan
from ..introspection import model_dtype, prepared_model, residual_stream
from ..metrics.curve_auc import curve_aucs
from ..onednn import model_linears
from ..sae import SparseAutoencoder
from .explain import FeatureTarget, check_features, check_sae_for_model, resolve_positions


@dataclass
class FeatureInsertionOutput:
    """
    What [`feature_insertion`] returns (CPU, float64). Shapes are given for F features; with a single int `feature`
    the F axis is dropped.

    Args:
        auc (`dict[str, Tensor]`): per ranking, the normalised insertion AUC `(B, F)` (higher is better).
        curves (`dict[str, Tensor]`): per ranking, z_0..z_N `(B, F, N + 1)` (unnormalised).
        value (`Tensor` of shape `(B, F)`): the clean activation z_N.
        position (`LongTensor` of shape `(B, F)`): the explained token.
        num_forwards (`int`): distinct inputs run (shared steps counted once).
    """

    auc: dict[str, Tensor]
    curves: dict[str, Tensor]
    value: Tensor
    position: Tensor
    num_forwards: int


def feature_insertion(
    model: PreTrainedModel,
    sae: SparseAutoencoder,
    pixel_values: Tensor,
    feature: int | Sequence[int] | Tensor,
    position: int | Sequence[int] | Tensor | None,
    rankings: Mapping[str, Tensor],
    batch_size: int = 64,
    linear_backend: str = "auto",
) -> FeatureInsertionOutput:
    r"""
    Insertion AUC of SAE feature activations for several patch rankings (iERFs, the activation map, a random order).

    Args:
        model ([`PreTrainedModel`]): a ViT-family classifier or a `CLIPModel`.
        sae ([`SparseAutoencoder`]): the SAE of one block.
        pixel_values (`Tensor` of shape `(B, C, H, W)`): preprocessed images.
        feature (`int` or list of `F` ints): the explained feature(s).
        position (`int`, `LongTensor (B,)` / `(B, F)` or `None`): the explained token (0 = CLS); `None` takes the
            token where z is largest (as [`explain_feature`]).
        rankings (`Mapping[str, Tensor]`): name → scores `(B, h, w)` (one feature) or `(B, F, h, w)`; patches are
            inserted by score, descending, ties by patch index.
        batch_size (`int`, defaults to 64): inputs per forward pass.
        linear_backend (`str`, defaults to `"auto"`): oneDNN linears where they match the stock kernels.

    Returns:
        [`FeatureInsertionOutput`].

    Raises:
        ValueError: as [`explain_feature`] for the SAE, features and positions; a ranking of the wrong shape or with
            non-finite values; a feature that is 0 at q on the clean image (the AUC divides by z_N).

    Example:
    ```python
    >>> out = explain_feature(model, sae, pixel_values, feature=7)
    >>> scores = feature_insertion(model, sae, pixel_values, 7, out.position,
    ...                            {"ierf": out.ierf, "activation": out.activation_map})
    >>> scores.auc["ierf"], scores.auc["activation"]  # (B,), (B,)

    ```
    """
    block, hook_point = check_sae_for_model(model, sae)
    features, single = check_features(feature, sae.config.d_sae)
    if not isinstance(rankings, Mapping) or not rankings:
        raise ValueError("rankings must be a non-empty mapping name -> scores (B, h, w) or (B, F, h, w).")
    grid = patch_grid(model, pixel_values)
    batch, num_features = pixel_values.shape[0], features.shape[0]
    pairs = batch * num_features
    orders = {}
    for name, scores in rankings.items():
        scores = torch.as_tensor(scores)
        if single and scores.dim() == 3:
            scores = scores[:, None]
        orders[name] = check_attributions(
            scores.reshape(-1, *scores.shape[2:])
            if scores.dim() == 4 and scores.shape[:2] == (batch, num_features)
            else scores,
            grid,
            pairs,
        )
    target = FeatureTarget(sae, block, hook_point, features.to(sae.W_enc.device))
    with prepared_model(model), torch.no_grad():
        pixels = pixel_values.detach().to(model.device, model_dtype(model))
        tokens = target.token_activations(model, pixels)
        resolve_positions(target, tokens, position)
        clean = target.at_positions(tokens)
        if (clean <= 0).any():
            b, f = (int(i) for i in torch.nonzero(clean <= 0)[0])
            raise ValueError(
                f"SAE feature {int(features[f])} is 0 at position {int(target.positions[b, f])} of image {b}: the "
                "insertion AUC is divided by this clean activation z_N. Explain a token where the feature fires "
                "(position=None takes its largest)."
            )
        positions = target.positions.reshape(-1).to(pixels.device)
        slots = torch.arange(num_features, device=pixels.device).repeat(batch)

        def forward(inputs: Tensor) -> Tensor:
            """z of every explained (image, feature, position) triple for every input: `(R, B·F)`."""
            residual = residual_stream(model, inputs, block, hook_point)
            values = sae.feature_activations(residual[:, positions].to(sae.W_enc.dtype), target.features)
            return values[:, torch.arange(pairs, device=values.device), slots]

        image_mean, image_std = default_normalization(model)
        runner = PerturbationRunner(
            forward,
            pixels.repeat_interleave(num_features, dim=0),
            grid,
            image_mean=image_mean,
            image_std=image_std,
            batch_size=batch_size,
            targets=list(range(pairs)),
            progress=False,
        )
        fill_key = runner.fill_key("mean")
        stock_pixels = pixels[:1]
        with model_linears(model, linear_backend, lambda: residual_stream(model, stock_pixels, block, hook_point)):
            plans = {
                name: plan_curve(runner, scores, insert=True, fill_key=fill_key, quantity="score")
                for name, scores in orders.items()
            }
            runner.prefetch([request for plan in plans.values() for request in plan.requests])
            records = {name: run_plan(runner, plan) for name, plan in plans.items()}
    shape = (batch, num_features)
    curves, aucs = {}, {}
    for name, record in records.items():
        curve = torch.from_numpy(record.curves)
        curves[name] = curve.reshape(*shape, -1)
        normalised = (curve / curve[:, -1:]).numpy()  # z_N: the clean input, run by the same forward
        aucs[name] = torch.tensor(curve_aucs(list(normalised), "feature_insertion"), dtype=torch.float64).reshape(
            shape
        )

    def squeeze(tensor: Tensor) -> Tensor:
        return tensor[:, 0] if single else tensor

    return FeatureInsertionOutput(
        auc={name: squeeze(value) for name, value in aucs.items()},
        curves={name: squeeze(value) for name, value in curves.items()},
        value=squeeze(next(iter(curves.values()))[..., -1]),
        position=squeeze(target.positions.cpu()),
        num_forwards=runner.num_forwards,
    )


def random_ranking(shape: Sequence[int], seed: int = 0) -> Tensor:
    """A seeded random patch ranking of `shape` (e.g. `(B, h, w)`), the control of method.md §9."""
    generator = np.random.default_rng(seed)
    return torch.from_numpy(generator.random(tuple(shape)))
