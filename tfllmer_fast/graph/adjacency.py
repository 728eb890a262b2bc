"""Symmetric normalization of a graph: Â = D^(-1/2) A D^(-1/2)."""

from __future__ import annotations

from .array_module import is_cupy_array, modules, to_backend


def sparse_backend(matrix) -> str:
    return "cupy" if is_cupy_array(matrix.data) else "numpy"


def sparse_to_backend(matrix, backend: str):
    """The CSR matrix as SciPy (``"numpy"``) or cupyx (``"cupy"``), copied only when it moves."""
    if sparse_backend(matrix) == backend:
        return matrix
    _, sparse = modules(backend)
    csr = matrix.tocsr()
    parts = (to_backend(csr.data, backend), to_backend(csr.indices, backend), to_backend(csr.indptr, backend))
    return sparse.csr_matrix(parts, shape=csr.shape)


def normalized_adjacency(adjacency):
    """Â = D^(-1/2) A D^(-1/2) as CSR float32 (SciPy or cupyx, as given); rows
    of isolated items stay zero. ``A`` must be square with non-negative weights."""
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {adjacency.shape}")
    xp, sparse = modules(sparse_backend(adjacency))
    coo = sparse.coo_matrix(adjacency)
    if coo.data.size and float(coo.data.min()) < 0:
        raise ValueError("adjacency has negative weights")
    degree = xp.bincount(coo.row, weights=coo.data.astype(xp.float64), minlength=adjacency.shape[0])
    inv_sqrt = xp.where(degree > 0, 1.0 / xp.sqrt(xp.maximum(degree, 1e-300)), 0.0)
    data = (coo.data * inv_sqrt[coo.row] * inv_sqrt[coo.col]).astype(xp.float32)
    return sparse.csr_matrix((data, (coo.row, coo.col)), shape=adjacency.shape)
