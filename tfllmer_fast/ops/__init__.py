"""Public ops: argument checks, autograd / torch.library ops and dispatch."""

from .normalized_ce import NormalizedCEOutput, normalized_softmax_ce

__all__ = ["NormalizedCEOutput", "normalized_softmax_ce"]
