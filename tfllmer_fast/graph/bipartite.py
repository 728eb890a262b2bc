"""Distances on the user-item bipartite graph, for a batch of nodes of one side.

Two users are at distance 2 when they share an item, 4 when a third user
links them, and so on (same-side distances are even); items likewise.
``UserItemGraph`` keeps the binary graph in both orientations (built once),
and a query expands only the batch's rows and their neighbourhood. SciPy on
CPU, cupyx on GPU (the array module of ``graph.array_module``).
"""

from __future__ import annotations

from .adjacency import sparse_backend, sparse_to_backend
from .array_module import modules, to_backend

SIDES = ("users", "items")


class UserItemGraph:
    """The nonzero pattern of a users x items matrix (SciPy or cupyx sparse;
    explicit zeros are not edges), rows by user and rows by item."""

    def __init__(self, interactions, backend: str | None = None):
        backend = backend or sparse_backend(interactions)
        xp, sparse = modules(backend)
        graph = sparse.csr_matrix(sparse_to_backend(sparse.csr_matrix(interactions), backend), dtype=xp.float32,
                                  copy=True)
        graph.eliminate_zeros()
        graph.data[:] = 1.0
        self.backend = backend
        self.rows = {"users": graph, "items": graph.T.tocsr()}

    def within_distance(self, batch, max_distance: int, *, side: str = "users"):
        """(B, B) bool array of the backend: ``True`` where batch nodes a and b
        of ``side`` are at most ``max_distance`` hops apart; the diagonal
        (distance 0) is ``True``. Plain equivalent for ``max_distance = 2``,
        users: ``(R[b] @ R[b].T) > 0`` with the diagonal set."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        xp, _ = modules(self.backend)
        graph = self.rows[side]
        batch = to_backend(batch, self.backend).astype(xp.int64)
        if batch.ndim != 1:
            raise ValueError(f"batch must be one-dimensional, got shape {batch.shape}")
        if batch.size and (int(batch.min()) < 0 or int(batch.max()) >= graph.shape[0]):
            raise ValueError(f"batch ids must lie in [0, {graph.shape[0]}) for side {side!r}")
        rows = graph[batch]  # (B, other side): the batch's neighbours
        reach = rows  # other-side nodes within 1, 3, 5, ... hops of each batch node
        other = self.rows["items" if side == "users" else "users"]
        for _ in range(max_distance // 2 - 1):
            reach = _binary(reach @ other @ graph)
        if max_distance >= 2:
            close = (reach @ rows.T).toarray() > 0
        else:
            close = xp.zeros((batch.size, batch.size), dtype=bool)
        return close | (batch[:, None] == batch[None, :])


def within_distance(interactions, batch, max_distance: int, *, side: str = "users"):
    """``UserItemGraph(interactions).within_distance(batch, max_distance, side=side)``
    for a one-off query (a training loop keeps the graph)."""
    return UserItemGraph(interactions).within_distance(batch, max_distance, side=side)


def _binary(matrix):
    matrix = matrix.tocsr()
    matrix.data[:] = 1.0
    return matrix
