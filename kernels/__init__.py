"""Triton kernels and their launchers (installed as ``tfllmer_fast.kernels``).

Import this package only after deciding on ``TRITON_INTERPRET``: Triton reads
it when the kernels are decorated.
"""

from .normalized_ce_item_grad import normalized_ce_item_grad
from .normalized_lse_fwd import normalized_lse_forward
from .target_rank import target_rank_counts
from .topk import topk_keys
from .topk import unpack as unpack_topk_keys

__all__ = ["normalized_lse_forward", "normalized_ce_item_grad", "target_rank_counts", "topk_keys", "unpack_topk_keys"]
