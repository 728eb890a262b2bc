"""MF and LightGCN: user and item tables, LightGCN's propagation a sparse matmul."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from ...graph import normalized_adjacency


class MF(nn.Module):
    """Matrix factorization: a user table (U, d) and an item table (N + 1, d),
    row 0 unused and zero. ``embeddings()`` returns both."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64):
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        for table in (self.users, self.items):
            nn.init.xavier_uniform_(table.weight)  # as the DirectSpec and LightGCN code
        with torch.no_grad():
            self.items.weight[0].zero_()

    @property
    def item_table(self) -> Tensor:
        return self.items.weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.users.weight, self.items.weight


class LightGCN(MF):
    """LightGCN (He et al., SIGIR 2020): the mean of the layer-0..L embeddings
    propagated through the normalized user-item graph D^(-1/2) A D^(-1/2)
    (``graph.normalized_adjacency``), one sparse matmul per layer."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, *, interactions, layers: int = 3):
        super().__init__(num_users, num_items, dim)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.layers = layers
        r = scipy.sparse.csr_matrix(interactions, dtype=np.float32)
        if r.shape != (num_users, num_items + 1):
            raise ValueError(f"interactions must be ({num_users}, {num_items + 1}), got {r.shape}")
        coo = normalized_adjacency(scipy.sparse.bmat([[None, r], [r.T, None]]).tocsr()).tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        adjacency = torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape, check_invariants=True)
        self.register_buffer("adjacency", adjacency.coalesce(), persistent=False)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.users.weight, self.items.weight])
        total = x
        for _ in range(self.layers):
            x = torch.sparse.mm(self.adjacency, x)
            total = total + x
        out = total / (self.layers + 1)
        return out[: self.users.num_embeddings], out[self.users.num_embeddings :]


def build_cf_model(name: str, num_users: int, num_items: int, *, dim: int = 64, layers: int = 3,
                   interactions=None) -> MF:
    if name == "mf":
        return MF(num_users, num_items, dim)
    if name == "lightgcn":
        return LightGCN(num_users, num_items, dim, interactions=interactions, layers=layers)
    raise ValueError(f"model must be 'mf' or 'lightgcn', got {name!r}")
