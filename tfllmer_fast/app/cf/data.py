"""Implicit feedback as per-user item sets, and the random per-user split.

Item ids are 1..num_items (0 is unused, as in the sequential side, so the
same tables, heads and ranking ops serve both); users 0..U-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse

from ..data import Interactions


@dataclass
class CFSplit:
    """Each user's training, validation and test items (sorted, disjoint)."""

    num_users: int
    num_items: int
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    counts: dict = field(default_factory=dict)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of every training interaction, user-major."""
        users = np.repeat(np.arange(self.num_users), [len(t) for t in self.train])
        items = np.concatenate(self.train) if self.train else np.zeros(0, np.int64)
        return users.astype(np.int64), items.astype(np.int64)

    def matrix(self) -> scipy.sparse.csr_matrix:
        """users x (num_items + 1) CSR of the training interactions (column 0 empty)."""
        users, items = self.pairs()
        return scipy.sparse.csr_matrix((np.ones(len(items), np.float32), (users, items)),
                                       shape=(self.num_users, self.num_items + 1))


def random_split(data: Interactions, *, test: float = 0.2, valid: float = 0.1, seed: int = 0) -> CFSplit:
    """Per user, a random ``test`` share of the distinct items is held out for
    testing and a ``valid`` share of the rest for validation (rounded; every
    user keeps at least one training item), as DirectSpec's 80/20 protocol
    with 10% of training held for validation."""
    if not (0.0 <= test < 1.0 and 0.0 <= valid < 1.0):
        raise ValueError(f"test and valid shares must lie in [0, 1), got {test} and {valid}")
    rng = np.random.default_rng(seed)
    train, val, tst = [], [], []
    for seq in data.sequences:
        items = rng.permutation(np.unique(np.asarray(seq, dtype=np.int64)))
        n_test = min(int(round(test * len(items))), max(len(items) - 1, 0))
        n_valid = min(int(round(valid * (len(items) - n_test))), max(len(items) - n_test - 1, 0))
        tst.append(np.sort(items[:n_test]))
        val.append(np.sort(items[n_test : n_test + n_valid]))
        train.append(np.sort(items[n_test + n_valid :]))
    counts = {"users": len(train), "train": int(sum(map(len, train))), "valid": int(sum(map(len, val))),
              "test": int(sum(map(len, tst)))}
    return CFSplit(len(train), data.num_items, train, val, tst, counts)
