"""Item co-occurrence graph, its normalization, Rec-PCA and user-item graph distances (NumPy, C++ and CuPy backends)."""

from .adjacency import normalized_adjacency, sparse_to_backend
from .array_module import cupy_available, like_input
from .bipartite import UserItemGraph, within_distance
from .builder import cooccurrence
from .chebyshev import chebyshev_coefficients, truncation_bound
from .rec_pca import RecPCAResult, pca, rec_pca

__all__ = [
    "cooccurrence",
    "normalized_adjacency",
    "within_distance",
    "UserItemGraph",
    "rec_pca",
    "pca",
    "RecPCAResult",
    "chebyshev_coefficients",
    "truncation_bound",
    "cupy_available",
    "like_input",
    "sparse_to_backend",
]
