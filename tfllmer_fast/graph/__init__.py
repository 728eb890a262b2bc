"""Item co-occurrence graph, its normalization and Rec-PCA (NumPy, C++ and CuPy backends)."""

from .adjacency import normalized_adjacency
from .builder import cooccurrence
from .chebyshev import chebyshev_coefficients, truncation_bound
from .rec_pca import RecPCAResult, pca, rec_pca

__all__ = [
    "cooccurrence",
    "normalized_adjacency",
    "rec_pca",
    "pca",
    "RecPCAResult",
    "chebyshev_coefficients",
    "truncation_bound",
]
