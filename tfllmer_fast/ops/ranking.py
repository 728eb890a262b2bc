"""``target_rank`` and ``topk_scores``: full-ranking evaluation over all items.

Input checks and dispatch; the plain-torch chunked reference does the work
(one chunk of scores at a time, never B x N).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..reference.ranking import target_rank_reference, topk_reference
from . import _checks


class TopK(NamedTuple):
    values: Tensor  # (B, k) scores, descending
    indices: Tensor  # (B, k) item ids


def _check_common(hidden, item_emb, exclude):
    _checks.check_float_tensor("hidden", hidden, ndim_min=2)
    _checks.check_float_tensor("item_emb", item_emb, ndim_min=2)
    if hidden.dim() != 2 or item_emb.dim() != 2:
        raise ValueError(f"hidden (B, d) and item_emb (N, d) must be 2-D, got {tuple(hidden.shape)} and "
                         f"{tuple(item_emb.shape)}")
    if hidden.shape[1] != item_emb.shape[1]:
        raise ValueError(f"hidden has last dimension {hidden.shape[1]} but item_emb rows have {item_emb.shape[1]}")
    _checks.check_same_device(hidden=hidden, item_emb=item_emb)
    if exclude is None:
        return None
    indptr, items = (torch.as_tensor(x, device=hidden.device) for x in exclude)
    _checks.check_index_tensor("exclude indptr", indptr)
    _checks.check_index_tensor("exclude items", items)
    if indptr.dim() != 1 or indptr.numel() != hidden.shape[0] + 1:
        raise ValueError(f"exclude indptr must have B + 1 = {hidden.shape[0] + 1} entries, got {indptr.numel()}")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= item_emb.shape[0]):
        raise ValueError(f"exclude items must lie in [0, {item_emb.shape[0]})")
    if int(indptr[0]) != 0 or int(indptr[-1]) != items.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("exclude indptr must start at 0, never decrease and end at len(items)")
    return indptr.long(), items.long()


def target_rank(hidden: Tensor, item_emb: Tensor, targets: Tensor, *, exclude=None, normalize_items: bool = True,
                normalize_hidden: bool = False, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Rank of each row's target among all items: (B,) int64.

    hidden (B, d), item_emb (N, d), targets (B,); ``exclude`` a CSR pair
    ``(indptr (B + 1,), items)`` of items to leave out per row (the target is
    never excluded). rank = 1 + the number of other candidates whose score is
    >= the target's: ties count against the target. Plain torch equivalent::

        s = normalized_logits(hidden, item_emb, ...); s[excluded] = -inf
        1 + (s >= s.gather(1, t[:, None])).sum(1) - 1
    """
    exclude = _check_common(hidden, item_emb, exclude)
    _checks.check_index_tensor("targets", targets)
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({hidden.shape[0]},)")
    _checks.raise_on_invalid_targets(targets, item_emb.shape[0], ignore_index=-(2**62))
    with torch.no_grad():
        return target_rank_reference(
            hidden, item_emb, targets.long(), exclude=exclude, chunk_size=chunk_size,
            normalize_items=normalize_items, normalize_hidden=normalize_hidden, temperature=temperature,
        )


def topk_scores(hidden: Tensor, item_emb: Tensor, k: int, *, exclude=None, normalize_items: bool = True,
                normalize_hidden: bool = False, temperature: float = 1.0, chunk_size: int | None = None) -> TopK:
    """The k best items per row: ``TopK(values, indices)``, each (B, k), sorted
    by score (ties to the smaller item id); excluded items never appear (a row
    with fewer than k candidates pads with -inf scores)."""
    exclude = _check_common(hidden, item_emb, exclude)
    if int(k) != k or not 1 <= k <= item_emb.shape[0]:
        raise ValueError(f"k must lie in 1..N = {item_emb.shape[0]}, got {k}")
    with torch.no_grad():
        values, indices = topk_reference(
            hidden, item_emb, int(k), exclude=exclude, chunk_size=chunk_size,
            normalize_items=normalize_items, normalize_hidden=normalize_hidden, temperature=temperature,
        )
    return TopK(values, indices)
