"""Turn user sequences into the CSR pair (indptr, items) all builders take."""

from __future__ import annotations

import numpy as np


def as_csr_pair(sequences, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``sequences``: a list of integer arrays, or a pair ``(indptr, items)``.

    Returns int64 ``indptr`` (U + 1,) and the items (int32 when they fit, else
    int64). Items must lie in 0..num_items; 0 is padding and is dropped.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    if isinstance(sequences, tuple) and len(sequences) == 2 and not np.isscalar(sequences[0]):
        indptr = np.asarray(sequences[0], dtype=np.int64)
        items = np.asarray(sequences[1])
        if indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise ValueError("sequences indptr must be 1-D, start at 0 and never decrease")
        if indptr[-1] != items.size:
            raise ValueError(f"sequences indptr ends at {indptr[-1]} but there are {items.size} items")
    else:
        # An empty list is float64 to NumPy; it must not turn the concatenation float.
        seqs = [np.asarray(s).reshape(-1) for s in sequences]
        seqs = [s if s.size else s.astype(np.int64) for s in seqs]
        lengths = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if items.size and not np.issubdtype(items.dtype, np.integer):
        raise TypeError(f"sequence items must be integers, got {items.dtype}")
    if items.size:
        lo, hi = int(items.min()), int(items.max())
        if lo < 0 or hi > num_items:
            bad = lo if lo < 0 else hi
            raise ValueError(f"item id {bad} is outside 1..num_items={num_items} (0 is padding)")
    dtype = np.int32 if num_items < 2**31 - 1 else np.int64
    items = items.astype(dtype, copy=False)
    if (items == 0).any():
        keep = items != 0
        seq_id = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
        counts = np.bincount(seq_id[keep], minlength=indptr.size - 1)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        items = items[keep]
    return indptr, items
