"""Pairwise and pointwise losses on user and item vectors (plain torch).

``weight`` (per pair) gives a weighted mean, as the fused head's ``weight``
does, so item-wise SAM can weight any loss the same way."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _weighted_mean(rows: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return rows.mean()
    weight = weight.to(rows.dtype)
    return (rows * weight).sum() / weight.sum()


def bpr_loss(users: Tensor, positives: Tensor, negatives: Tensor, weight: Tensor | None = None) -> Tensor:
    """BPR (Rendle et al., 2009): mean of ``-log sigmoid(u.p - u.n)``; (B, d) each."""
    margin = (users * positives).sum(-1) - (users * negatives).sum(-1)
    return _weighted_mean(-F.logsigmoid(margin), weight)


def positive_only_loss(users: Tensor, items: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``-log sigmoid(u.i)`` over observed pairs only: the loss DirectSpec
    trains with, on its spectrum-balanced batch vectors (without them every
    vector would collapse onto one direction)."""
    return _weighted_mean(-F.logsigmoid((users * items).sum(-1)), weight)
