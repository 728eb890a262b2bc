"""Per-row and per-item logit scales shared by the fused ops."""

from __future__ import annotations

import torch
from torch import Tensor


def item_scale(item_emb: Tensor, normalize_items: bool, eps: float) -> Tensor:
    """(N,) fp32: 1 / max(||e_j||, eps), or ones."""
    if not normalize_items:
        return torch.ones(item_emb.shape[0], device=item_emb.device, dtype=torch.float32)
    norms = torch.linalg.vector_norm(item_emb, dim=1, dtype=torch.float32)
    return norms.clamp_min(eps).reciprocal()


def row_scale(hidden: Tensor, temperature: float, normalize_hidden: bool, eps: float) -> Tensor:
    """(B,) fp32: 1/temperature, divided by max(||h_i||, eps) when normalizing."""
    if not normalize_hidden:
        return torch.full((hidden.shape[0],), 1.0 / temperature, device=hidden.device, dtype=torch.float32)
    norms = torch.linalg.vector_norm(hidden, dim=1, dtype=torch.float32)
    return norms.clamp_min(eps).reciprocal() / temperature


def scaled_items(item_emb: Tensor, scale: Tensor, dtype: torch.dtype, chunk: int = 1 << 16) -> Tensor:
    """(N, d) contiguous ``item_emb * scale[:, None]`` in ``dtype``: the rows the
    fused kernels multiply with, the product taken in fp32 and rounded once
    (as a kernel would), chunked so no fp32 copy of the whole table is made."""
    out = torch.empty(item_emb.shape, device=item_emb.device, dtype=dtype)
    for start in range(0, item_emb.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = item_emb[start:stop].float() * scale[start:stop, None]
    return out
