"""Full-ranking metrics from target ranks."""

from __future__ import annotations

import numpy as np
import torch

CUTOFFS = (5, 10, 20)


def metrics_from_ranks(ranks, cutoffs=CUTOFFS) -> dict:
    """HR@k, NDCG@k (one relevant item: 1 / log2(rank + 1) when rank <= k) and MRR."""
    r = torch.as_tensor(ranks).double().cpu().numpy() if not isinstance(ranks, np.ndarray) else ranks.astype(float)
    if r.size == 0:
        raise ValueError("no ranks to evaluate")
    out = {}
    for k in cutoffs:
        hit = r <= k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean())
    out["MRR"] = float((1.0 / r).mean())
    return out


def exclusion_csr(histories, num_rows: int, device, *, exclude_history: bool = True, always=(0,)):
    """CSR pair of items to exclude per example: the padding id(s) in ``always``
    and, with ``exclude_history``, the user's earlier items."""
    rows = []
    for j in range(num_rows):
        extra = np.asarray(histories[j], dtype=np.int64) if exclude_history else np.zeros(0, np.int64)
        rows.append(np.unique(np.concatenate([np.asarray(always, dtype=np.int64), extra])))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    items = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return torch.as_tensor(indptr, device=device), torch.as_tensor(items, device=device)
