"""Rec-PCA against its definition: Chebyshev vs exact, PCA at beta = 0, backends."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

import tfllmer_fast as tf
from tests.graph.conftest import random_sequences
from tfllmer_fast.graph import chebyshev_coefficients, cooccurrence, truncation_bound
from tfllmer_fast.graph.array_module import cupy_available

FP32_FLOOR = 1e-5


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    sequences = random_sequences(rng, 400, 300, 30)
    adjacency = cooccurrence(sequences, 300, top_k=10, backend="numpy")[1:, 1:]
    features = rng.normal(size=(300, 48)).astype(np.float32)
    return features, adjacency


def test_chebyshev_coefficients_check_values():
    np.testing.assert_allclose(chebyshev_coefficients(0.3, 2), [0.826605, 0.182600, -0.010212], atol=1e-6)
    np.testing.assert_allclose(chebyshev_coefficients(0.0, 3), [1, 0, 0, 0], atol=1e-12)


def _exact_reference(features, adjacency, dim, beta):
    """Dense float64 evaluation of the definition."""
    x = features.astype(np.float64) - features.mean(0)
    a = adjacency.toarray().astype(np.float64)
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    a_hat = inv[:, None] * a * inv[None, :]
    lap = np.eye(len(a)) - a_hat
    m = x.T @ (np.eye(len(a)) - beta * lap) @ x
    w = np.linalg.eigh(m)[1][:, ::-1][:, :dim]
    w = w * np.sign(w[np.abs(w).argmax(0), np.arange(dim)])
    lam, u = np.linalg.eigh(a_hat)
    return u @ np.diag(np.sqrt(1 - beta + beta * lam)) @ u.T @ x @ w, w, x @ w


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.5])
def test_exact_method_matches_definition(problem, beta):
    features, adjacency = problem
    got = tf.rec_pca(features, adjacency, 8, beta=beta, method="exact", return_basis=True)
    expected, w, _ = _exact_reference(features, adjacency, 8, beta)
    np.testing.assert_allclose(got.basis, w, atol=1e-4)
    assert np.linalg.norm(got.embeddings - expected) / np.linalg.norm(expected) < FP32_FLOOR


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.5])
@pytest.mark.parametrize("order", [1, 2, 3, 6])
def test_chebyshev_within_truncation_bound(problem, beta, order):
    features, adjacency = problem
    exact, _, z = _exact_reference(features, adjacency, 8, beta)
    got = tf.rec_pca(features, adjacency, 8, beta=beta, order=order)
    err = np.linalg.norm(got - exact) / np.linalg.norm(z)
    assert err <= truncation_bound(beta, order) + FP32_FLOOR
    if truncation_bound(beta, order) > 1e-3:
        assert err > 0  # the truncation is real, not silently exact


def test_beta_zero_is_pca(problem):
    features, adjacency = problem
    a = tf.rec_pca(features, adjacency, 6, beta=0.0)
    b = tf.pca(features, 6)
    x = features - features.mean(0)
    vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)[2][:6]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.abs(b), np.abs(x @ vt.T), atol=1e-3)


def test_deterministic_signs(problem):
    features, adjacency = problem
    w = tf.rec_pca(features, adjacency, 8, return_basis=True).basis
    pivots = np.abs(w).argmax(0)
    assert (w[pivots, np.arange(8)] > 0).all()


def test_isolated_items(problem):
    features, adjacency = problem
    a = adjacency.tolil()
    a[5, :] = 0
    a[:, 5] = 0
    a = a.tocsr()
    y = tf.rec_pca(features, a, 8, beta=0.3, order=2)
    exact, _, z = _exact_reference(features, a, 8, beta=0.3)
    assert np.isfinite(y).all()
    # An isolated row of Â is zero, so its filtered row is f(0) z = sqrt(1 - beta) z.
    np.testing.assert_allclose(exact[5], np.sqrt(0.7) * z[5], rtol=1e-6)
    assert np.linalg.norm(y - exact) / np.linalg.norm(z) <= truncation_bound(0.3, 2) + FP32_FLOOR


def test_input_types_follow_features(problem):
    features, adjacency = problem
    y_np = tf.rec_pca(features, adjacency, 4)
    y_t = tf.rec_pca(torch.from_numpy(features), adjacency, 4)
    assert isinstance(y_t, torch.Tensor) and y_t.dtype == torch.float32
    np.testing.assert_allclose(y_t.numpy(), y_np, atol=1e-6)
    assert y_np.dtype == np.float32 and y_np.shape == (300, 4)


@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_cupy_backend_matches_numpy(problem):
    import cupy

    features, adjacency = problem
    y_np = tf.rec_pca(features, adjacency, 8, beta=0.3, backend="numpy")
    y_cp = tf.rec_pca(cupy.asarray(features), adjacency, 8, beta=0.3, backend="cupy")
    assert np.linalg.norm(y_cp.get() - y_np) / np.linalg.norm(y_np) < 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 0.6}, r"beta must lie in \[0, 0.5\]"),
        ({"beta": -0.1}, r"beta must lie in \[0, 0.5\]"),
        ({"dim": 49}, r"dim must lie in 1..min\(N, D\) = 48"),
        ({"method": "lanczos"}, "method must be one of"),
        ({"order": -1}, "order must be a non-negative integer"),
        ({"backend": "jax"}, "backend must be"),
    ],
)
def test_bad_arguments(problem, kwargs, message):
    features, adjacency = problem
    args = dict(dim=8)
    args.update(kwargs)
    dim = args.pop("dim")
    with pytest.raises(ValueError, match=message):
        tf.rec_pca(features, adjacency, dim, **args)


def test_bad_inputs(problem):
    features, adjacency = problem
    with pytest.raises(ValueError, match=r"features has 299 rows but adjacency has shape \(300, 300\)"):
        tf.rec_pca(features[:-1], adjacency, 8)
    bad = features.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="features contain NaN or Inf"):
        tf.rec_pca(bad, adjacency, 8)
    with pytest.raises(ValueError, match="adjacency is required when beta > 0"):
        tf.rec_pca(features, None, 8)
    with pytest.raises(ValueError, match="dim must lie in 1..min"):
        tf.rec_pca(features[:5], scipy.sparse.eye(5, format="csr"), 8)
