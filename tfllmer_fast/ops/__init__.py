"""Public ops: argument checks, autograd / torch.library ops and dispatch."""

from ._checks import IMPLS
from .normalized_ce import NormalizedCEOutput, normalized_softmax_ce, selected_impl

__all__ = ["IMPLS", "NormalizedCEOutput", "normalized_softmax_ce", "selected_impl"]
