"""
CAAP, causal attribution via activation patching (seed `002_…`, method.md §8).

Neutral context: the fully filled image x̄ (the `mean` fill of method.md §5). For each patch p, x̄ is run again, and
after every block ℓ ∈ [a, b] the residual of p's token is replaced by the source image's residual at the same block
and token; A(p) = y(patched run) − y(x̄). The N patched runs of an image are independent, so they are batched, and
each starts from x̄'s residual at the input of block a (computed once): a patched run costs blocks a..L−1 and the head
([`hf_fga.introspection.run_from_block`]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...faithfulness.fills import patch_grid
from ...introspection import model_dtype, model_logits, prepared_model, residual_hooks, run_from_block
from ...onednn import model_linears
from .base import AttributionMethod, MethodResult, check_integer, register_method
from .integrated_gradients import mean_fill

if TYPE_CHECKING:
    from ..engine import Attributor

DEFAULT_BATCH_SIZE = 64

# (residual at the input of block a (R, T, d), rows (R,): the image of each run) -> scores (R,)
ObjectiveFromBlock = Callable[[Tensor, Tensor], Tensor]


def default_block_range(num_layers: int) -> tuple[int, int]:
    """a = 1, b = ⌊L/2⌋ (method.md §8), clipped to the model's blocks."""
    start = min(1, num_layers - 1)
    return start, max(start, num_layers // 2)


def check_block_range(block_range, num_layers: int) -> tuple[int, int]:
    """`block_range` as a validated `(a, b)`: two ints with 0 ≤ a ≤ b < L."""
    valid = (
        isinstance(block_range, Sequence)
        and len(block_range) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in block_range)
    )
    if not valid or not 0 <= block_range[0] <= block_range[1] < num_layers:
        raise ValueError(
            f"block_range={block_range!r} is not a valid CAAP block range for this model with {num_layers} blocks: "
            f"expected two ints (a, b) with 0 <= a <= b <= {num_layers - 1} (0-indexed, inclusive); the default is "
            f"{default_block_range(num_layers)}."
        )
    return int(block_range[0]), int(block_range[1])


def check_batch_size(batch_size) -> int:
    return check_integer("batch_size", batch_size, meaning="patched runs per forward pass")


def caap(
    objective_from_block: ObjectiveFromBlock,
    layers: Sequence[nn.Module],
    start_residual: Tensor,
    source_residuals: Mapping[int, Tensor],
    neutral_scores: Tensor,
    grid: tuple[int, int],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """
    CAAP for any objective that can be computed from the residual stream at the input of block a.

    Args:
        objective_from_block (`Callable`): `(hidden_states (R, T, d), rows (R,)) -> scores (R,)`, the explained score
            when `hidden_states` is the input of block a (it runs blocks a.. and reads the score; for the model logit
            [`run_from_block`], for an SAE feature at block k the blocks a..k and the SAE encoder). `rows` holds the
            index of the image each run belongs to.
        layers (`Sequence[nn.Module]`): the model's blocks; the patch is applied by forward hooks on
            `layers[ℓ]` for ℓ in `source_residuals`, removed on return (also after an exception).
        start_residual (`Tensor` of shape `(B, T, d)`): x̄'s residual at the input of block a.
        source_residuals (`Mapping[int, Tensor]`, `(B, T, d)` each): the source image's residual at the output of
            every block ℓ ∈ [a, b].
        neutral_scores (`Tensor` of shape `(B,)`): y(x̄).
        grid (`tuple[int, int]`): the patch grid (h, w); patch p is token T − N + p.
        batch_size (`int`, defaults to 64): patched runs per forward pass; the result does not depend on it.

    Returns:
        `Tensor` of shape `(B, h, w)`: A(p) = y(patched run of p) − y(x̄).
    """
    batch_size = check_batch_size(batch_size)
    images, tokens = start_residual.shape[:2]
    patches = grid[0] * grid[1]
    device = start_residual.device
    state: dict[str, Tensor] = {}

    def patch(module, args, output, block):
        hidden = output[0] if isinstance(output, tuple) else output
        runs = torch.arange(hidden.shape[0], device=hidden.device)
        hidden[runs, state["tokens"]] = source_residuals[block][state["rows"], state["tokens"]].to(hidden.dtype)
        return output

    handles = [
        layers[block].register_forward_hook(lambda m, a, o, block=block: patch(m, a, o, block))
        for block in source_residuals
    ]
    scores = torch.empty(images * patches, dtype=torch.float64, device=device)
    try:
        with torch.inference_mode():
            for begin in range(0, images * patches, batch_size):
                runs = torch.arange(begin, min(begin + batch_size, images * patches), device=device)
                state["rows"], state["tokens"] = runs // patches, tokens - patches + runs % patches
                scores[runs] = objective_from_block(start_residual[state["rows"]], state["rows"]).double()
    finally:
        for handle in handles:
            handle.remove()
    effect = scores.reshape(images, patches) - neutral_scores.double()[:, None].to(device)
    return effect.reshape(images, *grid)


@register_method
class Caap(AttributionMethod):
    """
    `attribute(pixel_values, method="caap", block_range=(a, b), batch_size=64)`: one forward of the source images
    and their fills (the source residuals after blocks a..b, x̄'s residual at the input of block a, the clean logits
    and y(x̄)), then N patched runs per image of blocks a..L−1 and the head, `batch_size` runs per pass. Forward
    passes only; the linears use the attributor's `linear_backend` (oneDNN on CPU where it applies, as in the
    faithfulness engine).
    """

    name = "caap"
    description = "CAAP: patch p's residuals from the source image patched into the mean fill after blocks a..b"
    uses_capture = False
    resolves_target = True
    options = {"block_range": None, "batch_size": DEFAULT_BATCH_SIZE}

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        options = super().check_options(attributor, **options)
        block_range = options["block_range"]
        if block_range is None:
            block_range = default_block_range(attributor.num_layers)
        options["block_range"] = check_block_range(block_range, attributor.num_layers)
        check_batch_size(options["batch_size"])
        return options

    def attribute(
        self,
        attributor: Attributor,
        pixel_values: Tensor,
        target: Tensor | None,
        text_embeds: Tensor | None,
        options: Mapping[str, Any],
    ) -> MethodResult:
        model = attributor.model
        start, end = options["block_range"]
        patches = patch_grid(model, pixel_values)
        images = pixel_values.shape[0]
        with prepared_model(model):
            pixels = pixel_values.detach().to(model.device, model_dtype(model))

            def stock() -> Tensor:
                return model_logits(model, pixels[:1], text_embeds)

            with model_linears(model, attributor.linear_backend, stock), torch.inference_mode():
                residuals: dict[tuple[int, str], Tensor] = {}

                def record(block: int, point: str, x: Tensor) -> None:
                    residuals[(block, point)] = x

                points = {block: "resid_post" for block in range(start, end + 1)}
                with contextlib.ExitStack() as stack:
                    stack.enter_context(residual_hooks(model, {start: "resid_pre"}, record))
                    stack.enter_context(residual_hooks(model, points, record))
                    logits = model_logits(model, torch.cat([pixels, mean_fill(model, pixels)]), text_embeds)
                chosen = logits[:images].argmax(dim=-1) if target is None else target.to(logits.device)
                neutral = logits[images:].gather(1, chosen[:, None])[:, 0]

                def objective_from_block(hidden_states: Tensor, rows: Tensor) -> Tensor:
                    scores = run_from_block(model, hidden_states, start, text_embeds)
                    return scores.gather(1, chosen[rows, None])[:, 0]

                attribution = caap(
                    objective_from_block,
                    attributor.layers,
                    residuals[(start, "resid_pre")][images:],
                    {block: residuals[(block, "resid_post")][:images] for block in points},
                    neutral,
                    (patches.height, patches.width),
                    options["batch_size"],
                )
        return MethodResult(
            attribution=attribution,
            logits=logits[:images],
            target=chosen,
            diagnostics={"neutral_scores": neutral},
        )
