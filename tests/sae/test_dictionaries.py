"""The matched non-semantic dictionaries (method.md §10) against float64 references written from their definitions."""

import numpy as np
import pytest
import torch

from hf_fga.attribution.methods.fga import FeatureCodes, block_scores
from hf_fga.sae import SparseAutoencoder
from hf_fga.sae.dictionaries import (
    dictionary_sae,
    explained_variance,
    match_explained_variance,
    pca_dictionary,
    principal_directions,
    random_dictionary,
    random_orthonormal_directions,
)


def _data(n: int = 400, d: int = 8, seed: int = 0) -> np.ndarray:
    """Anisotropic Gaussian data with distinct variances (so the principal directions are unique up to sign)."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.3, d)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return rng.normal(size=(n, d)) * scales @ basis.T + rng.normal(size=d)


def _reference_reconstruction(x: np.ndarray, directions: np.ndarray, mean: np.ndarray, k: int) -> np.ndarray:
    """Keep, per row, the k coefficients of largest |c| in the orthonormal basis; float64."""
    c = (x - mean) @ directions
    keep = np.argsort(-np.abs(c), axis=1)[:, :k]
    mask = np.zeros_like(c, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    return mean + (c * mask) @ directions.T


def test_principal_directions_match_the_covariance_eigenvectors():
    x = _data()
    mean, directions, variances = principal_directions(torch.from_numpy(x))
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(variances.numpy(), eigenvalues[order], rtol=1e-10)
    overlap = directions.numpy().T @ eigenvectors[:, order]
    np.testing.assert_allclose(np.abs(overlap), np.eye(x.shape[1]), atol=1e-8)  # equal up to sign
    top = directions.numpy()[np.abs(directions.numpy()).argmax(0), np.arange(x.shape[1])]
    assert np.all(top > 0)  # the deterministic sign convention


def test_pca_dictionary_reconstructs_like_the_reference():
    x = _data()
    sae = pca_dictionary(torch.from_numpy(x), k=3, hook_layer=2, hook_point="resid_pre")
    assert isinstance(sae, SparseAutoencoder)
    assert (sae.config.d_sae, sae.config.k, sae.config.hook_layer, sae.config.hook_point) == (16, 3, 2, "resid_pre")
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False))
    reference = _reference_reconstruction(x, eigenvectors[:, np.argsort(eigenvalues)[::-1]], x.mean(0), 3)
    out = sae(torch.from_numpy(x).float())
    np.testing.assert_allclose(out.reconstruction.detach().double().numpy(), reference, atol=2e-5)
    assert int((out.features > 0).sum(-1).max()) == 3
    truncated = pca_dictionary(torch.from_numpy(x), k=2, num_directions=4)
    assert truncated.config.d_sae == 8
    with pytest.raises(ValueError, match="num_directions must be in"):
        pca_dictionary(torch.from_numpy(x), k=2, num_directions=9)


def test_random_directions_are_orthonormal_and_seeded():
    q = random_orthonormal_directions(12, seed=3)
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(12), atol=1e-12)
    assert torch.equal(q, random_orthonormal_directions(12, seed=3))
    assert not torch.allclose(q, random_orthonormal_directions(12, seed=4))
    part = random_orthonormal_directions(12, num_directions=5, seed=3)
    assert part.shape == (12, 5) and torch.equal(part, q[:, :5])
    with pytest.raises(ValueError, match="num_directions"):
        random_orthonormal_directions(4, num_directions=5)


def test_random_dictionary_reconstructs_like_the_reference_and_has_pairs():
    x = _data(seed=1)
    sae = random_dictionary(torch.from_numpy(x), k=5, seed=7)
    w = sae.W_dec.detach().double().numpy()
    np.testing.assert_allclose(w[8:], -w[:8], atol=0)  # ± pairs
    np.testing.assert_allclose(w[:8] @ w[:8].T, np.eye(8), atol=1e-6)
    np.testing.assert_allclose(sae.b_dec.detach().double().numpy(), x.mean(0), atol=1e-6)
    directions = random_orthonormal_directions(8, seed=7).numpy()
    reference = _reference_reconstruction(x, directions, x.mean(0), 5)
    reconstruction = sae(torch.from_numpy(x).float()).reconstruction.detach().double().numpy()
    np.testing.assert_allclose(reconstruction, reference, atol=2e-5)


def test_explained_variance_by_hand_and_full_basis_is_exact():
    x = _data(seed=2)
    sae = pca_dictionary(torch.from_numpy(x), k=2)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False))
    reference = _reference_reconstruction(x, eigenvectors[:, np.argsort(eigenvalues)[::-1]], x.mean(0), 2)
    expected = 1 - ((x - reference) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert explained_variance(sae, torch.from_numpy(x)) == pytest.approx(expected, abs=1e-6)
    full = pca_dictionary(torch.from_numpy(x), k=8)
    assert explained_variance(full, torch.from_numpy(x)) == pytest.approx(1, abs=1e-6)


def test_match_explained_variance_finds_the_known_k():
    fit, held_out = torch.from_numpy(_data(seed=3)), torch.from_numpy(_data(seed=4))
    curve = {k: explained_variance(pca_dictionary(fit, k=k), held_out) for k in range(1, 9)}
    assert all(curve[k] < curve[k + 1] for k in range(1, 8))  # grows with k
    target = curve[5] + 0.001
    sae, ev = match_explained_variance(lambda k: pca_dictionary(fit, k=k), held_out, target, k_max=8)
    assert sae.config.k == 5 and ev == pytest.approx(curve[5])
    sae, _ = match_explained_variance(lambda k: random_dictionary(fit, k=k), held_out, 0.9999, k_max=8, tolerance=0.01)
    assert sae.config.k == 8


def test_match_explained_variance_errors_when_the_steps_are_too_coarse():
    fit = torch.from_numpy(_data(seed=5))
    curve = {k: explained_variance(pca_dictionary(fit, k=k), fit) for k in (3, 4)}
    between = (curve[3] + curve[4]) / 2
    assert curve[4] - curve[3] > 0.02  # the target lies > 0.005 from both neighbours
    with pytest.raises(ValueError, match=r"No k in \[1, 8\].*k=3: .*k=4: "):
        match_explained_variance(lambda k: pca_dictionary(fit, k=k), fit, between, k_max=8)
    with pytest.raises(ValueError, match="tolerance must be"):
        match_explained_variance(lambda k: pca_dictionary(fit, k=k), fit, 0.5, k_max=8, tolerance=0)


def test_dictionary_sae_validates_its_inputs():
    q = random_orthonormal_directions(6, num_directions=3)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        dictionary_sae(q, torch.zeros(6), k=4)
    with pytest.raises(ValueError, match="orthonormal"):
        dictionary_sae(2 * q, torch.zeros(6), k=1)
    with pytest.raises(ValueError, match="mean must have shape"):
        dictionary_sae(q, torch.zeros(5), k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pca_dictionary(torch.full((4, 3), float("nan")), k=1)
    with pytest.raises(ValueError, match=r"\(tokens, d_in\) matrix"):
        pca_dictionary(torch.zeros(8), k=1)


def test_fga_combined_on_a_dictionary_is_g_dot_its_centred_reconstruction():
    # the FGA variants take the dictionary like any Top-K SAE: combined = g · (x̂ − μ), in float64 from the definition
    x = _data(n=300, seed=6)
    g = np.random.default_rng(7).normal(size=x.shape)
    sae = pca_dictionary(torch.from_numpy(x[:200]), k=3)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x[:200], rowvar=False))
    mean = x[:200].mean(0)
    reference = _reference_reconstruction(x, eigenvectors[:, np.argsort(eigenvalues)[::-1]], mean, 3)
    xt, gt = torch.from_numpy(x).float(), torch.from_numpy(g).float()
    codes = FeatureCodes.encode(sae, xt)
    scores = block_scores("combined", xt, gt, sae, codes)
    np.testing.assert_allclose(scores.detach().double().numpy(), ((reference - mean) * g).sum(-1), atol=1e-4)
    centered = block_scores("centered", xt, gt, sae)
    np.testing.assert_allclose(centered.detach().double().numpy(), ((x - mean) * g).sum(-1), atol=1e-4)
