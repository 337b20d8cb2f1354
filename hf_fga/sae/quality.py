"""The quality figures every SAE reports (method.md §4), on held-out tokens, and their markdown table."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import iterate_rows
from .model_card import QUALITY_FIELDS
from .modeling_sae import SparseAutoencoder


@torch.no_grad()
def sae_quality(sae: SparseAutoencoder, batches: Iterable[Tensor], max_tokens: int | None = None) -> dict[str, float]:
    """
    Quality figures of method.md §4 on raw (un-normalised) tokens, given as `(rows, d_in)` batches, through the SAE's
    own forward (float64 accumulation): explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², L0, dead fraction (never
    active on these tokens), mean cos(x, x̂), and the number of tokens. At most `max_tokens` tokens are read.
    """
    sae.eval()
    device = sae.W_dec.device
    n, sq_err, sum_x, sum_sq_x, l0, cos = 0, 0.0, None, 0.0, 0.0, 0.0
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool, device=device)
    for rows in batches:
        rows = rows[: None if max_tokens is None else max_tokens - n].to(device, sae.W_dec.dtype)
        if rows.shape[0] == 0:
            break
        out = sae(rows)
        x, x_hat = rows.double(), out.reconstruction.double()
        sq_err += (x - x_hat).pow(2).sum().item()
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_sq_x += x.pow(2).sum().item()
        active = out.features > 0
        l0 += active.sum().item()
        fired |= active.any(0)
        cos += F.cosine_similarity(x, x_hat, dim=-1).sum().item()
        n += rows.shape[0]
    if n == 0:
        raise ValueError(
            "No tokens to evaluate the SAE on: give held-out tokens (raise eval_fraction or use more images)."
        )
    total_var = sum_sq_x - (sum_x.pow(2).sum().item() / n)
    return {
        "explained_variance": 1.0 - sq_err / total_var,
        "l0": l0 / n,
        "dead_fraction": 1.0 - fired.float().mean().item(),
        "cosine_similarity": cos / n,
        "eval_tokens": n,
    }


def evaluate_sae(sae: SparseAutoencoder, files: list[Path], max_tokens: int, chunk: int = 8192) -> dict[str, float]:
    """[`sae_quality`] on the first `max_tokens` held-out tokens of activation shard `files`."""
    return sae_quality(sae, iterate_rows(files, chunk), max_tokens)


def quality_markdown(rows: dict[int, dict[str, float]]) -> str:
    header = "| block | " + " | ".join(label for _, label in QUALITY_FIELDS) + " | eval tokens |"
    rule = "|---|" + "---|" * (len(QUALITY_FIELDS) + 1)
    lines = [header, rule]
    for block, m in sorted(rows.items()):
        cells = " | ".join(f"{m[key]:.4f}" for key, _ in QUALITY_FIELDS)
        lines.append(f"| {block} | {cells} | {m['eval_tokens']} |")
    return "\n".join(lines) + "\n"
