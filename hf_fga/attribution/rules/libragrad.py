"""
LibraGrad (seed `002_…`, "LibraGrad: Balancing Gradient Flow for Universally Better Vision Transformer Attributions";
reference code NightMachinery/pytorch-image-models-libragrad-v1), method.md §8.

LN rule + gate rule + softmax-pruning rule. After pruning no product of two input-dependent operands is left in a ViT
(A·V is linear in V once A is a constant), so the uniform rule has nothing to act on. Under these rules the backward
pass is that of a network linear in the input and the bias-like parameters jointly, hence FullGrad completeness:
y = Σ_i x_i g_i + Σ_b b·∂y/∂b over every bias-like parameter b (biases, LayerNorm β, position embeddings, CLS and
distillation tokens). LayerNorm's γ is a weight: with σ constant, LN is γ ⊙ (x − μ)/σ + β, linear in x with γ as its
slope. CLIP's score additionally divides by the norm of the image embedding, which is a constant for the same reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .patching import rules_applied


@contextlib.contextmanager
def libragrad(model: nn.Module) -> Iterator[nn.Module]:
    """
    LibraGrad's backward rules on `model` inside the block (forward unchanged; model restored on exit).

    Example:

    ```python
    >>> with libragrad(model):
    ...     logits = model(pixel_values=pixels).logits
    ...     (grad,) = torch.autograd.grad(logits[:, 0].sum(), pixels)
    >>> attribution = (pixels * grad)  # FullGrad-complete up to the bias terms

    ```
    """
    with rules_applied(model, attention="prune") as patched:
        yield patched
