"""``cooccurrence``: the sparse, symmetric, top-K item co-occurrence graph (backend dispatch)."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from . import native
from .array_module import cupy_available, modules
from .cooccurrence_reference import cooccurrence_xp
from .sequences import as_csr_pair

BACKENDS = ("auto", "numpy", "cpp", "cupy")


def resolve_backend(backend: str) -> str:
    """'auto': CuPy when a GPU is usable, else the C++ builder, else NumPy (with a
    warning). An explicit backend that cannot run raises and says why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if cupy_available():
            return "cupy"
        if native.load() is not None:
            return "cpp"
        native.warn_fallback()
        return "numpy"
    if backend == "cpp" and native.load() is None:
        raise RuntimeError(
            "backend='cpp' needs the native extension tfllmer_fast._native, which was not built "
            "(no C++ compiler or pybind11 at install time)"
        )
    if backend == "cupy" and not cupy_available():
        raise RuntimeError("backend='cupy' needs CuPy and a CUDA device; neither is usable here")
    return backend


def cooccurrence(sequences, num_items: int, *, window: int = 1, top_k: int | None = 20, backend: str = "auto"):
    """Item-item co-occurrence graph of shape (num_items + 1, num_items + 1).

    ``sequences``: a list of integer arrays, or a CSR pair ``(indptr, items)``;
    items are 1..num_items, 0 is padding (row and column 0 stay empty). Entry
    (a, b) counts how often a and b occur within ``window`` positions of each
    other in one sequence (no self loops). Each row keeps its ``top_k``
    heaviest neighbours (ties to the smaller item id, so every backend gives
    the same graph; ``None`` keeps all), then A = max(A, A^T). Returns a
    ``scipy.sparse.csr_matrix`` of float32 counts (``cupyx.scipy.sparse`` for
    the CuPy backend). Plain equivalent for ``top_k=None``, ``window=1``::

        A[a, b] = A[b, a] = #{(s, p): s[p], s[p+1] == a, b or b, a; a != b}
    """
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    indptr, items = as_csr_pair(sequences, num_items)
    backend = resolve_backend(backend)
    if backend == "cpp":
        out_indptr, indices, data = native.load().cooccurrence_csr(
            indptr, np.ascontiguousarray(items), int(num_items), int(window), -1 if top_k is None else int(top_k)
        )
        size = num_items + 1
        return scipy.sparse.csr_matrix((data, indices, out_indptr), shape=(size, size))
    xp, sparse = modules(backend)
    return cooccurrence_xp(indptr, items, int(num_items), int(window), top_k, xp, sparse)
