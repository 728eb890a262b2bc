"""Per-row and per-item logit scales shared by the fused ops."""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import HeadOptions


def item_scale(item_emb: Tensor, head: HeadOptions, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) in ``dtype`` (fp32 or fp64): 1 / max(||e_j||, eps), or ones."""
    if not head.normalize_items:
        return torch.ones(item_emb.shape[0], device=item_emb.device, dtype=dtype)
    norms = torch.linalg.vector_norm(item_emb, dim=1, dtype=dtype)
    return norms.clamp_min(head.eps).reciprocal()


def row_scale(hidden: Tensor, head: HeadOptions, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) in ``dtype`` (fp32 or fp64): 1/temperature, divided by max(||h_i||, eps) when normalizing."""
    if not head.normalize_hidden:
        return torch.full((hidden.shape[0],), 1.0 / head.temperature, device=hidden.device, dtype=dtype)
    norms = torch.linalg.vector_norm(hidden, dim=1, dtype=dtype)
    return norms.clamp_min(head.eps).reciprocal() / head.temperature


def scaled_items(item_emb: Tensor, scale: Tensor, dtype: torch.dtype, chunk: int = 1 << 16) -> Tensor:
    """(N, d) contiguous ``item_emb * scale[:, None]`` in ``dtype``: the rows the
    fused kernels multiply with, the product taken in fp32 and rounded once
    (as a kernel would), chunked so no fp32 copy of the whole table is made."""
    out = torch.empty(item_emb.shape, device=item_emb.device, dtype=dtype)
    for start in range(0, item_emb.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = item_emb[start:stop].float() * scale[start:stop, None]
    return out
