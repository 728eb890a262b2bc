"""tfllmer_fast: fused GPU kernels for large-catalog sequential recommendation."""

from . import graph, reference
from .graph import RecPCAResult, pca, rec_pca
from .head import NormalizedSoftmaxHead
from .ops import NormalizedCEOutput, normalized_softmax_ce

__version__ = "0.1.0"

__all__ = [
    "NormalizedSoftmaxHead",
    "NormalizedCEOutput",
    "normalized_softmax_ce",
    "graph",
    "rec_pca",
    "pca",
    "RecPCAResult",
    "__version__",
]
