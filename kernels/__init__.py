"""Triton kernels and their launchers (installed as ``tfllmer_fast.kernels``).

Import this package only after deciding on ``TRITON_INTERPRET``: Triton reads
it when the kernels are decorated. ``python -m tfllmer_fast.kernels.gate``
compiles every kernel config for sm_80 and sm_90 without a GPU;
``python -m tfllmer_fast.kernels.report`` prints the static performance table.
"""

from . import normalized_ce_item_grad as _item_grad
from . import normalized_lse_fwd as _lse_fwd
from . import target_rank as _target_rank
from .normalized_ce_item_grad import normalized_ce_item_grad
from .normalized_lse_fwd import normalized_lse_forward
from .target_rank import target_rank_counts
from .topk import max_k as topk_max_k
from .topk import supported as topk_supported
from .topk import topk_keys
from .topk import unpack as unpack_topk_keys


def serves_width(dim: int, device, dtype) -> bool:
    """Whether the head and ranking kernels have configs for a width ``dim`` on
    ``device`` with compute dtype ``dtype`` (fp32 follows torch's matmul precision)."""
    from .config import served

    return all(served(module.TABLE, dim, device, dtype) for module in (_lse_fwd, _item_grad, _target_rank))


__all__ = [
    "serves_width",
    "normalized_lse_forward",
    "normalized_ce_item_grad",
    "target_rank_counts",
    "topk_keys",
    "unpack_topk_keys",
    "topk_max_k",
    "topk_supported",
]
