"""Full-ranking Recall@k and NDCG@k for users with several held-out items.

Each user's top-k comes from the fused ``topk_scores`` over all items with
the user's known items excluded (training items; for the test set also the
validation items); item 0 is never ranked. Recall@k = hits / |held-out|,
NDCG@k = sum over hit positions j of 1 / log2(j + 1), divided by the ideal
DCG of min(k, |held-out|) hits; both averaged over users with a held-out
item. With ``head`` (a bool per item id) the same metrics are also given for
the head and the tail held-out items alone (users with at least one).
"""

from __future__ import annotations

import numpy as np
import torch

from ... import HeadOptions, topk_scores

CUTOFFS = (10, 20)


def _csr(rows, device):
    sizes = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return torch.as_tensor(indptr, device=device), torch.as_tensor(items, device=device)


def _user_metrics(hits: np.ndarray, sizes: np.ndarray, ks) -> dict:
    """Per-user Recall@k / NDCG@k from the (B, K) hit matrix and held-out sizes."""
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    out = {}
    for k in ks:
        found = hits[:, :k].sum(1)
        ideal = np.cumsum(discounts)[np.minimum(sizes, k) - 1]
        out[f"Recall@{k}"] = found / sizes
        out[f"NDCG@{k}"] = (hits[:, :k] * discounts[:k]).sum(1) / ideal
    return out


@torch.no_grad()
def ranking_metrics(user_vecs, item_vecs, heldout, known, *, options: HeadOptions = HeadOptions(normalize_items=False),
                    ks=CUTOFFS, head=None, batch_size: int = 2048) -> dict:
    """user_vecs (U, d), item_vecs (N + 1, d) (row 0 unused); ``heldout[u]`` and
    ``known[u]`` item ids per user. Scores follow ``options`` (raw dot products
    by default). Returns the mean metrics (and ``longtail`` with ``head``)."""
    if len(heldout) != user_vecs.shape[0] or len(known) != user_vecs.shape[0]:
        raise ValueError(f"heldout and known need one entry per user ({user_vecs.shape[0]})")
    users = np.array([u for u in range(len(heldout)) if len(heldout[u])], dtype=np.int64)
    if users.size == 0:
        raise ValueError("no user has a held-out item")
    k_max = max(ks)
    parts = {"all": None} if head is None else {"all": None, "head": head, "tail": ~head}
    sums = {name: {} for name in parts}
    counts = dict.fromkeys(parts, 0)
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        exclude = _csr([np.concatenate([[0], known[u]]) for u in batch], user_vecs.device)
        top = topk_scores(user_vecs[torch.as_tensor(batch, device=user_vecs.device)].float(), item_vecs.float(), k_max,
                          options=options, exclude=exclude).indices.cpu().numpy()
        for name, mask in parts.items():
            targets = [heldout[u] if mask is None else heldout[u][mask[heldout[u]]] for u in batch]
            rows = np.array([len(t) > 0 for t in targets])
            if not rows.any():
                continue
            hits = np.stack([np.isin(top[j], targets[j]) for j in np.nonzero(rows)[0]])
            sizes = np.array([len(targets[j]) for j in np.nonzero(rows)[0]])
            for key, values in _user_metrics(hits, sizes, ks).items():
                sums[name][key] = sums[name].get(key, 0.0) + float(values.sum())
            counts[name] += int(rows.sum())
    out = {key: value / counts["all"] for key, value in sums["all"].items()}
    out["users"] = counts["all"]
    if head is not None:
        out["longtail"] = {name: {**{k: v / counts[name] for k, v in sums[name].items()}, "users": counts[name]}
                           for name in ("head", "tail") if counts[name]}
    return out
