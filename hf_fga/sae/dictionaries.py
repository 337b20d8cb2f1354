"""
Non-semantic dictionaries of matched fidelity (method.md §10): a PCA dictionary and a random orthonormal dictionary
of a block's patch residuals, each stored as a Top-K [`SparseAutoencoder`] so that every FGA variant runs on them
unchanged, and the search for the k that matches a trained SAE's explained variance.

With orthonormal directions u_1..u_m (the columns of U) and the mean residual μ, the dictionary holds the ± pair of
every direction, W_enc = [U, −U], W_dec = W_encᵀ, b_dec = μ, b_enc = 0. For a token x the coefficients are
c = Uᵀ(x − μ); ReLU keeps exactly one of ±c_i per direction, with value |c_i|, so Top-K keeps the k directions of
largest |c_i| and the reconstruction is x̂ = μ + Σ_{i kept} c_i u_i: the best k-term approximation of x − μ in that
basis. FGA's `combined` score on such a dictionary is g·(x − μ) − g·e: the `mean-centered` control minus the
dictionary's error term, with directions that mean nothing beyond variance (PCA) or nothing at all (random).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .configuration_sae import SparseAutoencoderConfig
from .modeling_sae import SparseAutoencoder
from .quality import sae_quality

DICTIONARY_KINDS = ("pca", "random")
EV_TOLERANCE = 0.005


def _check_activations(activations: Tensor, name: str = "activations") -> Tensor:
    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ValueError(
            f"{name} must be a (tokens, d_in) matrix of at least two residual vectors; got shape "
            f"{tuple(activations.shape)}. Flatten the patch tokens of the images first."
        )
    if not torch.isfinite(activations).all():
        raise ValueError(f"{name} holds NaN or infinite values: check the harvested residuals.")
    return activations.double()


def principal_directions(activations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """
    The principal directions of `activations (n, d)`, in float64: `(mean (d,), directions (d, r), variances (r,))`,
    r = min(n − 1, d), directions as orthonormal columns sorted by decreasing variance (sample variance, n − 1), each
    signed so that its largest-magnitude entry is positive (a deterministic choice; the ± pairs make it irrelevant).
    """
    x = _check_activations(activations)
    mean = x.mean(dim=0)
    _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
    rank = min(x.shape[0] - 1, x.shape[1])
    directions = vh[:rank].T
    flip = directions.gather(0, directions.abs().argmax(dim=0, keepdim=True)).sign()
    return mean, directions * flip, singular[:rank] ** 2 / (x.shape[0] - 1)


def random_orthonormal_directions(d_in: int, num_directions: int | None = None, seed: int = 0) -> Tensor:
    """
    `(d_in, m)` float64 orthonormal columns, uniformly distributed (Haar): the QR factor of a seeded Gaussian matrix
    with the signs of R's diagonal folded into Q (Mezzadri 2007). `m` defaults to `d_in`.
    """
    m = d_in if num_directions is None else num_directions
    if not 0 < m <= d_in:
        raise ValueError(f"num_directions must be in [1, d_in={d_in}]; got {num_directions!r}.")
    gaussian = torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r)))[:, :m]


def dictionary_sae(
    directions: Tensor,
    mean: Tensor,
    k: int,
    *,
    hook_layer: int = 0,
    hook_point: str = "resid_post",
    base_model_name_or_path: str | None = None,
    training_info: dict | None = None,
) -> SparseAutoencoder:
    """
    A Top-K [`SparseAutoencoder`] of orthonormal `directions (d_in, m)` as ± pairs (d_sae = 2m) around `mean (d_in,)`
    (see the module docstring). `k` in [1, m]: the number of directions kept per token.
    """
    d_in, m = directions.shape
    if mean.shape != (d_in,):
        raise ValueError(
            f"mean must have shape ({d_in},) to match directions {tuple(directions.shape)}; got {tuple(mean.shape)}."
        )
    if not (isinstance(k, int) and 0 < k <= m):
        raise ValueError(f"k must be an integer in [1, {m}] (the number of directions); got {k!r}.")
    gram = directions.double().T @ directions.double()
    if not torch.allclose(gram, torch.eye(m, dtype=torch.float64), atol=1e-6):
        raise ValueError("directions must be orthonormal columns (Uᵀ U = I): orthonormalise them first.")
    config = SparseAutoencoderConfig(
        d_in=d_in,
        d_sae=2 * m,
        activation="topk",
        k=k,
        hook_layer=hook_layer,
        hook_point=hook_point,
        token_scope="patches",
        normalize_activations="none",
        apply_b_dec_to_input=True,
        base_model_name_or_path=base_model_name_or_path,
        training_info=training_info,
    )
    sae = SparseAutoencoder(config)
    pairs = torch.cat([directions, -directions], dim=1).to(sae.W_enc.dtype)
    with torch.no_grad():
        sae.W_enc.copy_(pairs)
        sae.W_dec.copy_(pairs.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.to(sae.b_dec.dtype))
    return sae.eval()


def pca_dictionary(
    activations: Tensor, k: int, num_directions: int | None = None, **config_kwargs
) -> SparseAutoencoder:
    """
    The PCA dictionary of a block's patch residuals `activations (n, d_in)`: the top `num_directions` (default all
    available, min(n − 1, d_in)) principal directions as ± pairs, b_dec = the mean residual, Top-`k`.
    `config_kwargs` (`hook_layer`, `hook_point`, `base_model_name_or_path`, `training_info`) go to
    [`dictionary_sae`].

    Example:
    ```python
    >>> import torch
    >>> sae = pca_dictionary(torch.randn(500, 8), k=3)
    >>> sae.config.d_sae, sae.config.k
    (16, 3)

    ```
    """
    mean, directions, _ = principal_directions(activations)
    if num_directions is not None:
        if not 0 < num_directions <= directions.shape[1]:
            raise ValueError(f"num_directions must be in [1, {directions.shape[1]}]; got {num_directions!r}.")
        directions = directions[:, :num_directions]
    return dictionary_sae(directions, mean, k, **config_kwargs)


def random_dictionary(
    activations: Tensor, k: int, num_directions: int | None = None, seed: int = 0, **config_kwargs
) -> SparseAutoencoder:
    """
    A random orthonormal dictionary (seeded, [`random_orthonormal_directions`]) around the mean of `activations
    (n, d_in)`, ± pairs, Top-`k`; `config_kwargs` as in [`pca_dictionary`].
    """
    mean = _check_activations(activations).mean(dim=0)
    directions = random_orthonormal_directions(activations.shape[1], num_directions, seed)
    return dictionary_sae(directions, mean, k, **config_kwargs)


def explained_variance(sae: SparseAutoencoder, activations: Tensor, chunk: int = 8192) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (method.md §4) of `sae` on `activations (n, d_in)` ([`sae_quality`])."""
    return sae_quality(sae, _check_activations(activations).split(chunk))["explained_variance"]


def match_explained_variance(
    build: Callable[[int], SparseAutoencoder],
    activations: Tensor,
    target: float,
    k_max: int,
    tolerance: float = EV_TOLERANCE,
) -> tuple[SparseAutoencoder, float]:
    """
    The k in [1, `k_max`] whose dictionary `build(k)` has the explained variance on `activations` closest to
    `target`, required within ±`tolerance` (method.md §10: ±0.005 of the trained SAE's).

    The explained variance of an orthonormal Top-k dictionary grows with k (each token keeps its k largest
    coefficients), so a bisection finds the first k reaching `target` and the closer of it and k − 1 is returned.

    Returns:
        `(sae, explained_variance)`.

    Raises:
        `ValueError` when no k comes within the tolerance, naming the explained variance of the two k that bracket the
        target (raise `k_max`, fit the dictionary on more tokens, or accept a wider tolerance explicitly).
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), e.g. 0.005; got {tolerance!r}.")
    if not isinstance(k_max, int) or k_max < 1:
        raise ValueError(f"k_max must be a positive integer; got {k_max!r}.")
    cache: dict[int, tuple[SparseAutoencoder, float]] = {}

    def at(k: int) -> float:
        if k not in cache:
            sae = build(k)
            cache[k] = (sae, explained_variance(sae, activations))
        return cache[k][1]

    low, high = 1, k_max
    while low < high:  # the first k with EV >= target (k_max if none)
        middle = (low + high) // 2
        if at(middle) >= target:
            high = middle
        else:
            low = middle + 1
    candidates = [k for k in (low - 1, low) if 1 <= k <= k_max]
    best = min(candidates, key=lambda k: abs(at(k) - target))
    if abs(at(best) - target) > tolerance:
        bracket = ", ".join(f"k={k}: {at(k):.4f}" for k in candidates)
        raise ValueError(
            f"No k in [1, {k_max}] gives an explained variance within ±{tolerance} of {target:.4f} ({bracket}): the "
            "dictionary's fidelity moves in steps larger than the tolerance here, or cannot reach the target. Raise "
            "k_max, fit the dictionary on more tokens, or pass a wider tolerance (and report it)."
        )
    return cache[best]
