"""A deliberately naive reference for method.md §5: one perturbation and one forward at a time, float64, loops."""

from __future__ import annotations

import math

import numpy as np
import torch


def _probabilities(logits: torch.Tensor) -> list[float]:
    return torch.softmax(logits.double(), dim=-1).tolist()


def _ranked(attribution: list[float]) -> list[int]:
    return sorted(range(len(attribution)), key=lambda p: (-attribution[p], p))


def _patch_slices(index: int, width: int, patch: int) -> tuple[slice, slice]:
    row, col = divmod(index, width)
    return slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch)


def _perturb(image: torch.Tensor, patches, fill: torch.Tensor, width: int, patch: int) -> torch.Tensor:
    out = image.clone()
    for p in patches:
        rows, cols = _patch_slices(p, width, patch)
        out[:, rows, cols] = fill[:, rows, cols]
    return out


def _fill(image: torch.Tensor, fill: str, mean_fill: str) -> torch.Tensor:
    if fill == "zero":
        return torch.zeros_like(image)
    if mean_fill == "scalar":
        return torch.full_like(image, image.mean().item())
    return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def _ranks(values: list[float]) -> list[float]:
    ranks = [0.0] * len(values)
    for i, v in enumerate(values):
        ranks[i] = sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2
    return ranks


@torch.no_grad()
def naive_scores(
    forward,
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    patch: int,
    *,
    thesis: bool,
    fill: str = "mean",
    seed: int = 0,
    fc_runs: int,
    fc_subset: int,
    fc_trials: int,
    saco_groups: int | None = None,
) -> dict[str, list[float]]:
    """Scores per image, computed straight from method.md §5 (thesis=True: the `thesis` column of its table)."""
    height, width = attributions.shape[1:]
    n = height * width
    mean_fill = "scalar" if thesis else "per_channel"
    out = {"saco": [], "faithfulness_correlation": [], "pixel_flipping": []}
    for b in range(pixel_values.shape[0]):
        image = pixel_values[b].double()
        attribution = [float(v) for v in attributions[b].double().flatten()]
        clean_logits = forward(image[None])[0].double()
        clean_p = _probabilities(clean_logits)
        target = int(torch.argmax(clean_logits))
        fill_image = _fill(image, fill, mean_fill)
        order = _ranked(attribution)

        # SaCo: groups of near-equal size, the first (n mod K) groups one patch larger (as numpy.array_split).
        k = math.ceil(n / 4) if thesis else saco_groups
        sizes = [n // k + (1 if g < n % k else 0) for g in range(k)]
        groups, start = [], 0
        for size in sizes:
            groups.append(order[start : start + size])
            start += size
        saliences, drops = [], []
        for group in groups:
            p = _probabilities(forward(_perturb(image, group, fill_image, width, patch)[None])[0])
            saliences.append(sum(attribution[q] for q in group))
            drops.append(clean_p[target] - (max(p) if thesis else p[target]))
        total, total_abs = 0.0, 0.0
        for i in range(k):
            for j in range(i + 1, k):
                w = saliences[i] - saliences[j]
                w = w if drops[i] >= drops[j] else -w
                total += w
                total_abs += abs(w)
        out["saco"].append(total / total_abs if total_abs > 0 else 0.0)

        # Faithfulness Correlation: the seeded subset protocol of the engine, then a plain correlation.
        per_trial = []
        for trial in range(fc_trials):
            rng = np.random.default_rng([seed, b, trial])
            sums, deltas = [], []
            for _ in range(fc_runs):
                subset = [int(q) for q in rng.choice(n, size=fc_subset, replace=False)]
                logits = forward(_perturb(image, subset, fill_image, width, patch)[None])[0].double()
                sums.append(sum(attribution[q] for q in subset))
                deltas.append(float(clean_logits[target] - logits[target]))
            if thesis:
                sums, deltas = _ranks(sums), _ranks(deltas)
            per_trial.append(_pearson(sums, deltas))
        out["faithfulness_correlation"].append(sum(per_trial) / fc_trials)

        # Pixel Flipping: flip cumulatively; the thesis recomputes the scalar mean of the current image each step.
        current = image.clone()
        curve = [clean_p[target]]
        for p in order:
            step_fill = torch.full_like(current, current.mean().item()) if thesis and fill == "mean" else fill_image
            current = _perturb(current, [p], step_fill, width, patch)
            curve.append(_probabilities(forward(current[None])[0])[target])
        area = sum((curve[i - 1] + curve[i]) / 2 for i in range(1, n + 1))
        out["pixel_flipping"].append(area if thesis else area / n)
    return out
