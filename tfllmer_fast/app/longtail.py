"""Long-tail evaluation: metrics split by the target item's training popularity.

The head is the smallest set of most popular items (ties to the smaller id)
that holds ``head_share`` of the training interactions (80% by default, the
Pareto split common in long-tail recommendation); every other item, including
items never seen in training, is tail. A metric on the tail is the metric over
the evaluation examples whose target is a tail item.
"""

from __future__ import annotations


import numpy as np

from .config import LongTailSettings



def item_counts(sequences, num_items: int) -> np.ndarray:
    """(num_items + 1,) int64: how often each item id occurs in ``sequences``."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > num_items):
        raise ValueError(f"item ids must lie in [0, {num_items}]")
    return np.bincount(flat, minlength=num_items + 1)


def head_mask(counts, head_share: float = LongTailSettings.head_share) -> np.ndarray:
    """(N,) bool: ``True`` for the head items of ``counts`` (per item id).

    Items sorted by count (descending, ties to the smaller id) join the head
    until it holds at least ``head_share`` of all interactions."""
    counts = np.asarray(counts, dtype=np.int64)
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative counts")
    order = np.lexsort((np.arange(counts.size), -counts))
    total = counts.sum()
    mask = np.zeros(counts.size, dtype=bool)
    if total == 0 or head_share == 0.0:
        return mask
    cumulative = np.cumsum(counts[order])
    size = int(np.searchsorted(cumulative, head_share * total - 1e-9 * total)) + 1
    mask[order[:size]] = True
    mask &= counts > 0
    return mask


def split_metrics(metric_fn, values, targets, head: np.ndarray) -> dict:
    """``{"head": metric_fn(values[head targets]), "tail": ..., "tail_share": ...}``;
    a part with no examples is left out. ``values`` and ``targets`` align row by row."""
    targets = np.asarray(targets, dtype=np.int64)
    in_head = head[targets]
    out = {"tail_share": float(1.0 - in_head.mean()) if targets.size else 0.0}
    for name, rows in (("head", in_head), ("tail", ~in_head)):
        if rows.any():
            out[name] = metric_fn(values[rows])
    return out
