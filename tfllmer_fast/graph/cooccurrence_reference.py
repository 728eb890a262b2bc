"""Co-occurrence graph by sort-based pair counting, written once against an
array module: NumPy is the reference, CuPy runs the same code on the GPU."""

from __future__ import annotations


def cooccurrence_xp(indptr, items, num_items: int, window: int, top_k: int | None, xp, sparse):
    """CSR (num_items + 1)^2 float32 graph: counts of item pairs within
    ``window`` positions in one sequence, no self loops, each row's ``top_k``
    heaviest kept (ties to the smaller id), then max(A, A^T)."""
    size = num_items + 1
    indptr = xp.asarray(indptr, dtype=xp.int64)
    items = xp.asarray(items).astype(xp.int64)
    # searchsorted rather than repeat: cupy.repeat takes no array of counts.
    seq_id = xp.searchsorted(indptr[1:], xp.arange(items.size, dtype=xp.int64), side="right")

    rows, cols = [], []
    for k in range(1, window + 1):
        if items.size <= k:
            break
        same = (seq_id[k:] == seq_id[:-k]) & (items[k:] != items[:-k])
        a, b = items[:-k][same], items[k:][same]
        rows += [a, b]
        cols += [b, a]
    if not rows:
        return sparse.csr_matrix((size, size), dtype=xp.float32)
    keys = xp.concatenate(rows) * size + xp.concatenate(cols)
    keys, weights = xp.unique(keys, return_counts=True)
    row, col = keys // size, keys % size

    if top_k is not None:
        # unique() sorted by (row, col); a stable sort on (row, -weight) keeps the
        # smaller column first among equal weights.
        order = xp.lexsort(xp.stack([-weights, row]))
        row, col, weights = row[order], col[order], weights[order]
        first = xp.searchsorted(row, row, side="left")
        keep = (xp.arange(row.size) - first) < top_k
        row, col, weights = row[keep], col[keep], weights[keep]
        row, col = xp.concatenate([row, col]), xp.concatenate([col, row])
        weights = xp.concatenate([weights, weights])
        keys = row * size + col
        order = xp.lexsort(xp.stack([weights, keys]))
        keys, weights = keys[order], weights[order]
        last = xp.concatenate([keys[1:] != keys[:-1], xp.ones(1, dtype=bool)])
        keys, weights = keys[last], weights[last]
        row, col = keys // size, keys % size

    indptr_out = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(xp.bincount(row, minlength=size))])
    return sparse.csr_matrix(
        (weights.astype(xp.float32), col.astype(xp.int32), indptr_out), shape=(size, size)
    )
