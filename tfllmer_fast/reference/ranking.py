"""Chunked plain-torch full ranking: target ranks and top-k with excluded items.

Each chunk of rows builds its (chunk, N) scores, masks the excluded items and
reduces; nothing larger than one chunk of scores is ever held. Scores are
those the kernels rank by, ``<h_i, e_j> / max(||e_j||, eps)`` in fp32 (fp64
for fp64 inputs) from the inputs as given: a row's positive scale (the
temperature, its norm) does not change its order and multiplies the top-k
values only, and 16-bit inputs are exact in fp32, so the order is not that of
scores rounded to 16 bits.
"""

from __future__ import annotations

import torch

from ..options import HeadOptions, resolve_head_options
from .normalized_ce import REFERENCE_CHUNK_BYTES


def _work_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def item_scales(item_emb, *, normalize_items=True, eps=1e-12, dtype=torch.float32):
    """(N,): 1 / max(||e_j||, eps), or ones."""
    if not normalize_items:
        return torch.ones(item_emb.shape[0], device=item_emb.device, dtype=dtype)
    return torch.linalg.vector_norm(item_emb, dim=1, dtype=dtype).clamp_min(eps).reciprocal()


def row_scales(hidden, *, temperature=1.0, normalize_hidden=False, eps=1e-12, dtype=torch.float32):
    """(B,): 1 / temperature, divided by max(||h_i||, eps) when normalizing."""
    if not normalize_hidden:
        return torch.full((hidden.shape[0],), 1.0 / temperature, device=hidden.device, dtype=dtype)
    return torch.linalg.vector_norm(hidden, dim=1, dtype=dtype).clamp_min(eps).reciprocal() / temperature


class _Scorer:
    """The order scores ``<h_i, e_j> r_j`` of a chunk of rows, one table cast per call."""

    def __init__(self, hidden, item_emb, options: HeadOptions):
        temperature, normalize_items, normalize_hidden, eps = options
        self.work = _work_dtype(hidden, item_emb)
        self.hidden = hidden
        self.items = item_emb.to(self.work)
        self.r = item_scales(item_emb, normalize_items=normalize_items, eps=eps, dtype=self.work)
        self.s = row_scales(hidden, temperature=temperature, normalize_hidden=normalize_hidden, eps=eps,
                            dtype=self.work)

    def __call__(self, start, stop, exclude=None):
        scores = (self.hidden[start:stop].to(self.work) @ self.items.T) * self.r[None, :]
        if exclude is not None:
            _mask(scores, start, stop, exclude)
        return scores


def _chunk_scores(hidden, item_emb, start, stop, exclude, options: HeadOptions):
    """Order scores of rows [start, stop) with their excluded items at -inf."""
    return _Scorer(hidden, item_emb, options)(start, stop, exclude)


def _mask(scores, start, stop, exclude, value=float("-inf")):
    indptr, items = exclude
    lo, hi = int(indptr[start]), int(indptr[stop])
    rows = torch.repeat_interleave(
        torch.arange(stop - start, device=scores.device), indptr[start + 1 : stop + 1] - indptr[start:stop]
    )
    scores[rows, items[lo:hi]] = value


def _row_chunks(hidden, item_emb, chunk_size: int | None):
    """(start, stop) of each chunk of rows; one chunk's fp32 scores stay near ``REFERENCE_CHUNK_BYTES``."""
    n_rows = hidden.shape[0]
    step = chunk_size or max(1, REFERENCE_CHUNK_BYTES // (4 * max(item_emb.shape[0], 1)))
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def target_rank_reference(hidden, item_emb, targets, *, options=None, exclude=None, chunk_size=None, **head_options):
    """(B,) int64: 1 + the number of non-excluded items other than the target
    whose score is >= the target's (ties count against the target; a NaN item
    counts, and a NaN target is counted against by every candidate)."""
    scorer = _Scorer(hidden, item_emb, resolve_head_options(options, head_options))
    ranks = []
    for start, stop in _row_chunks(hidden, item_emb, chunk_size):
        scores = scorer(start, stop)
        t = targets[start:stop]
        target_score = scores[torch.arange(stop - start, device=scores.device), t]
        ranks.append(1 + _count_against(scores, target_score, t, start, stop, exclude))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64, device=hidden.device)


def _count_against(scores, target_score, t, start, stop, exclude):
    """Per row of a chunk: the candidates (not excluded, not the row's own
    target ``t``, -1 for none here) that count against ``target_score``."""
    # NaN never makes a hit: a NaN item counts against the target, a NaN
    # target loses to every candidate.
    against = (scores >= target_score[:, None]) | scores.isnan() | target_score.isnan()[:, None]
    if exclude is not None:
        _mask(against, start, stop, exclude, False)
    mine = t >= 0
    against[torch.arange(stop - start, device=scores.device)[mine], t[mine]] = False
    return against.sum(dim=1)


def target_scores_reference(hidden, item_emb, targets, *, options=None, chunk_size=None, **head_options):
    """(B,) the order score <h, e_t> r_t of each row's target (``targets`` -1:
    none here, score 0), from the same chunked matmul that counts, so an item
    elsewhere equal to the target ties with it exactly."""
    scorer = _Scorer(hidden, item_emb, resolve_head_options(options, head_options))
    out = torch.zeros(hidden.shape[0], dtype=scorer.work, device=hidden.device)
    for start, stop in _row_chunks(hidden, item_emb, chunk_size):
        t = targets[start:stop]
        picked = scorer(start, stop)[torch.arange(stop - start, device=hidden.device), t.clamp_min(0)]
        out[start:stop] = torch.where(t >= 0, picked, 0.0)
    return out


def count_against_reference(hidden, item_emb, targets, target_score, *, options=None, exclude=None, chunk_size=None,
                            **head_options):
    """(B,) int64: for each row, the candidates of this table (not excluded, not
    ``targets``, -1 where the target lies elsewhere) that count against the
    given ``target_score`` (a shard's part of a rank). One chunk of scores at a time."""
    scorer = _Scorer(hidden, item_emb, resolve_head_options(options, head_options))
    counts = torch.zeros(hidden.shape[0], dtype=torch.int64, device=hidden.device)
    for start, stop in _row_chunks(hidden, item_emb, chunk_size):
        counts[start:stop] = _count_against(scorer(start, stop), target_score[start:stop].to(scorer.work),
                                            targets[start:stop], start, stop, exclude)
    return counts


def topk_reference(hidden, item_emb, k, *, options=None, exclude=None, chunk_size=None, **head_options):
    """(values, indices), each (B, k), sorted by score descending with ties to the
    smaller item id; excluded items are never returned (slots beyond a row's
    candidates hold score -inf and index -1). Plain torch equivalent per chunk:
    a stable descending ``torch.sort`` of the scores, first k."""
    scorer = _Scorer(hidden, item_emb, resolve_head_options(options, head_options))
    values, indices = [], []
    for start, stop in _row_chunks(hidden, item_emb, chunk_size):
        v, i = _top_k_ties_to_smaller_id(scorer(start, stop, exclude), k)
        values.append(v * scorer.s[start:stop, None])
        indices.append(i.masked_fill(v == float("-inf"), -1))
    if not values:
        empty = torch.zeros(0, k, device=hidden.device)
        return empty, empty.long()
    return torch.cat(values), torch.cat(indices)


def _top_k_ties_to_smaller_id(scores, k):
    """The first k of a stable descending sort, without sorting all N: every
    score above the k-th value is in, and of those equal to it the smallest
    ids fill the rest; then only those k are sorted (stably, by id first)."""
    nan = scores.isnan()
    key = scores.nan_to_num(nan=float("inf"))  # never fewer than k chosen
    kth = torch.topk(key, k, dim=1, sorted=True).values[:, -1:]
    above = key > kth
    room = k - above.sum(dim=1, keepdim=True)
    # Of the scores tied with the k-th, NaN first (it ranks above +inf, as a
    # descending torch.sort puts it), then the smallest ids.
    tied_nan = (key == kth) & nan
    take_nan = tied_nan & (tied_nan.cumsum(dim=1) <= room)
    tied = (key == kth) & ~nan
    chosen = above | take_nan | (tied & (tied.cumsum(dim=1) <= room - take_nan.sum(dim=1, keepdim=True)))
    ids = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: increasing id within a row
    v, order = torch.sort(scores.gather(1, ids), dim=1, descending=True, stable=True)
    return v, ids.gather(1, order)
