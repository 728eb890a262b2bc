"""Chunked plain-torch full ranking: target ranks and top-k with excluded items.

Each chunk of rows builds its (chunk, N) scores, masks the excluded items and
reduces; nothing larger than one chunk of scores is ever held.
"""

from __future__ import annotations

import torch

from .normalized_ce import CHUNK_BYTES, normalized_logits


def _chunk_scores(hidden, item_emb, start, stop, exclude, options):
    """fp32 scores of rows [start, stop) with their excluded items at -inf."""
    scores = normalized_logits(hidden[start:stop], item_emb, **options).float()
    if exclude is not None:
        _mask(scores, start, stop, exclude)
    return scores


def _mask(scores, start, stop, exclude):
    indptr, items = exclude
    lo, hi = int(indptr[start]), int(indptr[stop])
    rows = torch.repeat_interleave(
        torch.arange(stop - start, device=scores.device), indptr[start + 1 : stop + 1] - indptr[start:stop]
    )
    scores[rows, items[lo:hi]] = float("-inf")


def _chunk_rows(n_items: int, chunk_size: int | None) -> int:
    return chunk_size or max(1, CHUNK_BYTES // (4 * max(n_items, 1)))


def target_rank_reference(hidden, item_emb, targets, *, exclude=None, chunk_size=None, **options):
    """(B,) int64: 1 + the number of non-excluded items other than the target
    whose score is >= the target's (ties count against the target)."""
    n_rows = hidden.shape[0]
    step = _chunk_rows(item_emb.shape[0], chunk_size)
    ranks = []
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        scores = _chunk_scores(hidden, item_emb, start, stop, None, options)
        rows = torch.arange(stop - start, device=scores.device)
        t = targets[start:stop]
        target_score = scores[rows, t].clone()
        if exclude is not None:
            _mask(scores, start, stop, exclude)
        scores[rows, t] = float("-inf")  # the target is never counted against itself
        ranks.append(1 + (scores >= target_score[:, None]).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64, device=hidden.device)


def topk_reference(hidden, item_emb, k, *, exclude=None, chunk_size=None, **options):
    """(values, indices), each (B, k), sorted by score descending with ties to the
    smaller item id; excluded items are never returned (slots beyond a row's
    candidates hold score -inf and index -1). Plain torch equivalent per chunk:
    a stable descending ``torch.sort`` of the scores, first k."""
    n_rows, n_items = hidden.shape[0], item_emb.shape[0]
    step = _chunk_rows(n_items, chunk_size)
    values, indices = [], []
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        v, i = _top_k_ties_to_smaller_id(_chunk_scores(hidden, item_emb, start, stop, exclude, options), k)
        values.append(v)
        indices.append(i.masked_fill(v == float("-inf"), -1))
    if not values:
        empty = torch.zeros(0, k, device=hidden.device)
        return empty, empty.long()
    return torch.cat(values), torch.cat(indices)


def _top_k_ties_to_smaller_id(scores, k):
    """The first k of a stable descending sort, without sorting all N: every
    score above the k-th value is in, and of those equal to it the smallest
    ids fill the rest; then only those k are sorted (stably, by id first)."""
    key = scores.nan_to_num(nan=float("inf"))  # NaN first, as torch.sort puts it; never fewer than k chosen
    kth = torch.topk(key, k, dim=1, sorted=True).values[:, -1:]
    above = key > kth
    tied = key == kth
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    ids = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: increasing id within a row
    v, order = torch.sort(scores.gather(1, ids), dim=1, descending=True, stable=True)
    return v, ids.gather(1, order)
