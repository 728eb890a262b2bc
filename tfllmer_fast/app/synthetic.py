"""A small built-in dataset with planted sequential structure and informative
item features, for the demo and tests (no download)."""

from __future__ import annotations

import numpy as np

from .data import Interactions


def planted_dataset(num_users: int = 2000, num_items: int = 1000, *, clusters: int = 50, feature_dim: int = 128,
                    min_len: int = 8, max_len: int = 30, follow: float = 0.6, stay: float = 0.3, seed: int = 0):
    """Items fall into ``clusters`` groups; each item has a fixed successor in its
    group. A user's next item is that successor with probability ``follow``,
    another item of the same group with probability ``stay``, else any item.
    Features are the group centroid plus noise, so they carry the group (but
    not the order). Returns (Interactions, features (num_items + 1, feature_dim))."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, clusters, size=num_items + 1)
    members = [np.nonzero(group[1:] == c)[0] + 1 for c in range(clusters)]
    successor = np.zeros(num_items + 1, dtype=np.int64)
    for items in members:
        cycle = rng.permutation(items)
        successor[cycle] = np.roll(cycle, -1)
    sequences = []
    for _ in range(num_users):
        length = int(rng.integers(min_len, max_len + 1))
        seq = [int(rng.integers(1, num_items + 1))]
        for _ in range(length - 1):
            u = rng.random()
            cur = seq[-1]
            if u < follow:
                nxt = successor[cur]
            elif u < follow + stay:
                nxt = rng.choice(members[group[cur]])
            else:
                nxt = rng.integers(1, num_items + 1)
            seq.append(int(nxt))
        sequences.append(np.array(seq, dtype=np.int64))
    centroids = rng.normal(size=(clusters, feature_dim))
    features = centroids[group] + 0.5 * rng.normal(size=(num_items + 1, feature_dim))
    features[0] = 0
    ids = np.arange(num_items + 1)
    return Interactions(sequences, num_items, None, np.arange(num_users), ids), features.astype(np.float32)
