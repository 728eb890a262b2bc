"""tfllmer_fast: fused GPU kernels for large-catalog sequential recommendation.

``import tfllmer_fast`` loads the output head and the ranking ops only (torch
and the kernels' launchers). The sharded ops (``distributed``), the graph
builders and Rec-PCA (``graph``, which need SciPy), the plain-torch
references (``reference``) and the research application (``app``) are
imported on first use.
"""

import importlib

from .head import NormalizedSoftmaxHead
from .loss import NormalizedSoftmaxCELoss
from .ops import NormalizedCEOutput, normalized_softmax_ce
from .ops.ranking import TopK, target_rank, topk_scores
from .options import DEFAULT_TEMPERATURE, HeadOptions

__version__ = "0.1.0"

_SUBPACKAGES = ("app", "distributed", "graph", "reference")
_FROM_GRAPH = ("RecPCAResult", "pca", "rec_pca")

__all__ = [
    "NormalizedSoftmaxHead",
    "NormalizedSoftmaxCELoss",
    "NormalizedCEOutput",
    "HeadOptions",
    "DEFAULT_TEMPERATURE",
    "normalized_softmax_ce",
    "target_rank",
    "topk_scores",
    "TopK",
    *_SUBPACKAGES,
    *_FROM_GRAPH,
    "__version__",
]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FROM_GRAPH:
        return getattr(importlib.import_module(".graph", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
