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
