"""tfllmer_fast: fused GPU kernels for large-catalog sequential recommendation."""

from . import distributed, graph, reference, spectral
from .graph import RecPCAResult, pca, rec_pca
from .head import NormalizedSoftmaxHead
from .ops import NormalizedCEOutput, normalized_softmax_ce
from .ops.ranking import TopK, target_rank, topk_scores
from .options import DEFAULT_TEMPERATURE, HeadOptions

__version__ = "0.1.0"

__all__ = [
    "NormalizedSoftmaxHead",
    "NormalizedCEOutput",
    "HeadOptions",
    "DEFAULT_TEMPERATURE",
    "normalized_softmax_ce",
    "target_rank",
    "topk_scores",
    "TopK",
    "distributed",
    "graph",
    "rec_pca",
    "pca",
    "RecPCAResult",
    "reference",
    "spectral",
    "__version__",
]
