"""Distances on the user-item bipartite graph, for a batch of nodes of one side.

Two users are at distance 2 when they share an item, 4 when a third user
links them, and so on (same-side distances are even); items likewise. Only the
batch's rows are expanded, so the cost follows the batch and its
neighbourhood, not the whole graph. SciPy on CPU, cupyx on GPU (the array
module of ``graph.array_module``).
"""

from __future__ import annotations

from .adjacency import sparse_backend
from .array_module import modules

SIDES = ("users", "items")


def within_distance(interactions, batch, max_distance: int, *, side: str = "users"):
    """(B, B) bool: ``True`` where batch nodes a and b of ``side`` are at most
    ``max_distance`` hops apart on the bipartite graph of ``interactions``
    (a SciPy / cupyx sparse users x items matrix; nonzero = interaction).
    The diagonal (distance 0) is ``True``.

    Plain equivalent for ``max_distance = 2``, users: ``(R[b] @ R[b].T) > 0``
    with the diagonal set."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    xp, sparse = modules(sparse_backend(interactions))
    graph = sparse.csr_matrix(interactions, dtype=xp.float32)
    graph.data[:] = 1.0
    if side == "items":
        graph = graph.T.tocsr()
    batch = xp.asarray(batch, dtype=xp.int64)
    if batch.ndim != 1:
        raise ValueError(f"batch must be one-dimensional, got shape {batch.shape}")
    if batch.size and (int(batch.min()) < 0 or int(batch.max()) >= graph.shape[0]):
        raise ValueError(f"batch ids must lie in [0, {graph.shape[0]}) for side {side!r}")
    rows = graph[batch]  # (B, other side): the batch's neighbours
    reach = rows  # other-side nodes within 1, 3, 5, ... hops of each batch node
    for _ in range(max_distance // 2 - 1):
        reach = _binary((reach @ graph.T) @ graph)
    close = (reach @ rows.T).toarray() > 0 if max_distance >= 2 else xp.zeros((batch.size, batch.size), dtype=bool)
    return close | (batch[:, None] == batch[None, :])


def _binary(matrix):
    matrix = matrix.tocsr()
    matrix.data[:] = 1.0
    matrix.eliminate_zeros()
    return matrix
