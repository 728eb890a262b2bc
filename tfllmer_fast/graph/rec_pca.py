"""Rec-PCA: PCA of item features filtered through the co-occurrence graph."""

from __future__ import annotations

from typing import Any, NamedTuple

from .adjacency import normalized_adjacency, sparse_to_backend
from .array_module import cupy_available, like_input, modules, to_backend
from .chebyshev import apply_chebyshev, chebyshev_coefficients, filter_function

METHODS = ("chebyshev", "exact")
EXACT_MAX_ITEMS = 20_000
# Column block for X^T (I - beta L) X, bounding the (N, block) temporaries.
_COLUMN_BLOCK = 512


class RecPCAResult(NamedTuple):
    embeddings: Any  # (N, dim) float32
    basis: Any  # (D, dim) projection W


def _resolve_backend(backend):
    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {backend!r}")
    if backend == "auto":
        return "cupy" if cupy_available() else "numpy"
    if backend == "cupy" and not cupy_available():
        raise RuntimeError("backend='cupy' needs CuPy and a CUDA device; neither is usable here")
    return backend


def _top_eigenvectors(matrix, dim, xp):
    """Top-``dim`` eigenvectors of a symmetric matrix, largest first, each with
    its largest-magnitude entry positive."""
    _, vectors = xp.linalg.eigh(matrix)
    top = vectors[:, ::-1][:, :dim]
    pivot = xp.abs(top).argmax(axis=0)
    signs = xp.sign(top[pivot, xp.arange(dim)])
    return top * xp.where(signs == 0, 1.0, signs)


def filtered_covariance(x, adjacency_hat, beta, xp):
    """M = X^T (I - beta L) X = X^T ((1 - beta) X + beta Â X), in column blocks, fp64."""
    d = x.shape[1]
    m = xp.empty((d, d), dtype=xp.float64)
    for start in range(0, d, _COLUMN_BLOCK):
        block = x[:, start : start + _COLUMN_BLOCK]
        mixed = block if beta == 0 else (1.0 - beta) * block + beta * (adjacency_hat @ block)
        m[:, start : start + _COLUMN_BLOCK] = (x.T @ mixed).astype(xp.float64)
    return (m + m.T) / 2.0


def _exact_filter(adjacency_hat, z, beta, xp):
    n = adjacency_hat.shape[0]
    if n > EXACT_MAX_ITEMS:
        raise ValueError(f"method='exact' builds a dense {n} x {n} eigendecomposition; use it for N <= {EXACT_MAX_ITEMS}")
    dense = adjacency_hat.toarray().astype(xp.float64)
    values, vectors = xp.linalg.eigh((dense + dense.T) / 2.0)
    gains = filter_function(beta)(values)
    return (vectors * gains) @ (vectors.T @ z.astype(xp.float64))


def rec_pca(features, adjacency, dim: int, *, beta: float = 0.3, order: int = 2, method: str = "chebyshev",
            center: bool = True, backend: str = "auto", return_basis: bool = False):
    """Rec-PCA item embeddings.

    features (N, D) (NumPy, torch CPU/CUDA or CuPy), adjacency (N, N) sparse
    co-occurrence counts (from ``graph.cooccurrence``; normalized here). With X
    the centered features, Â = D^-1/2 A D^-1/2 and L = I - Â:
    W = top-``dim`` eigenvectors of M = X^T (I - beta L) X (largest entry of each
    positive), and the result is Y = (I - beta L)^(1/2) X W, the square root
    applied through its order-``order`` Chebyshev expansion (``"chebyshev"``)
    or a dense eigendecomposition (``"exact"``, small N). beta = 0 is plain PCA
    (adjacency may then be None). Plain NumPy equivalent (exact)::

        M = X.T @ ((1 - beta) * X + beta * (Ahat @ X)); W = eigh(M)[1][:, ::-1][:, :dim]
        lam, U = eigh(Ahat); Y = U @ diag(sqrt(1 - beta + beta * lam)) @ U.T @ X @ W

    Returns float32 (N, dim) in the input's array type, or
    ``RecPCAResult(embeddings, basis)`` with ``return_basis``.
    """
    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"beta must lie in [0, 0.5], got {beta}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(order) != order or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order}")
    if getattr(features, "ndim", None) != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {getattr(features, 'shape', None)}")
    n, d = features.shape
    if int(dim) != dim or not 1 <= dim <= min(n, d):
        raise ValueError(f"dim must lie in 1..min(N, D) = {min(n, d)}, got {dim}")
    if adjacency is None and beta > 0:
        raise ValueError("adjacency is required when beta > 0")
    if adjacency is not None and adjacency.shape != (n, n):
        raise ValueError(f"features has {n} rows but adjacency has shape {adjacency.shape}")

    backend = _resolve_backend(backend)
    xp, _ = modules(backend)
    x = to_backend(features, backend).astype(xp.float32, copy=True)
    if not bool(xp.isfinite(x).all()):
        raise ValueError("features contain NaN or Inf")
    if center:
        x -= x.mean(axis=0, keepdims=True)
    a_hat = None
    if beta > 0:
        a_hat = normalized_adjacency(sparse_to_backend(adjacency, backend))

    basis = _top_eigenvectors(filtered_covariance(x, a_hat, beta, xp), dim, xp)
    z = x @ basis.astype(xp.float32)
    if beta > 0:
        if method == "exact":
            z = _exact_filter(a_hat, z, beta, xp)
        else:
            z = apply_chebyshev(a_hat, z, [float(c) for c in chebyshev_coefficients(beta, order)])
    embeddings = like_input(z.astype(xp.float32), features)
    if return_basis:
        return RecPCAResult(embeddings, like_input(basis, features))
    return embeddings


def pca(features, dim: int, *, center: bool = True, backend: str = "auto", return_basis: bool = False):
    """Plain PCA projection, the beta = 0 ablation of ``rec_pca``."""
    return rec_pca(features, None, dim, beta=0.0, center=center, backend=backend, return_basis=return_basis)
