"""Same-side distances on the user-item graph against breadth-first search."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import scipy.sparse as sp

from tfllmer_fast.graph.array_module import cupy_available
from tfllmer_fast.graph.bipartite import within_distance


def _bfs_distances(R, start, side):
    """Hop distances from one node of ``side`` to every node of that side."""
    users, items = R.shape
    adj = {("u", u): [("i", i) for i in R[u].indices] for u in range(users)}
    for i in range(items):
        adj[("i", i)] = [("u", u) for u in R[:, i].nonzero()[0]]
    tag = "u" if side == "users" else "i"
    dist = {(tag, start): 0}
    queue = deque([(tag, start)])
    while queue:
        node = queue.popleft()
        for nxt in adj[node]:
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return {n: d for (t, n), d in dist.items() if t == tag}


def test_path_graph_by_hand():
    # u0 - i0 - u1 - i1 - u2 - i2 - u3
    R = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]]))
    assert within_distance(R, [0, 1, 2, 3], 2).astype(int).tolist() == [
        [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    assert within_distance(R, [0, 3], 4).astype(int).tolist() == [[1, 0], [0, 1]]
    assert within_distance(R, [0, 3], 6).all()
    assert within_distance(R, [0, 2], 2, side="items").astype(int).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("side", ["users", "items"])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 6])
def test_random_graph_matches_bfs(side, k):
    rng = np.random.default_rng(k)
    R = sp.random(30, 40, density=0.04, random_state=rng, format="csr")
    batch = rng.choice(R.shape[0] if side == "users" else R.shape[1], size=12, replace=False)
    got = within_distance(R, batch, k, side=side)
    for a, u in enumerate(batch):
        dist = _bfs_distances(R, u, side)
        expected = [dist.get(v, np.inf) <= k for v in batch]
        assert got[a].tolist() == expected


def test_the_callers_matrix_is_left_alone_and_stored_zeros_are_no_edges():
    R = sp.csr_matrix((np.array([2.0, 0.0, 3.0], np.float32), np.array([0, 1, 1]), np.array([0, 2, 3])),
                      shape=(2, 2))  # user 0 -> item 1 is a stored zero
    assert within_distance(R, [0, 1], 2).astype(int).tolist() == [[1, 0], [0, 1]]
    assert R.data.tolist() == [2.0, 0.0, 3.0]


def test_bad_arguments_are_named():
    R = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="side must be"):
        within_distance(R, [0], 2, side="both")
    with pytest.raises(ValueError, match=r"batch ids must lie in \[0, 3\)"):
        within_distance(R, [5], 2)
    with pytest.raises(ValueError, match="max_distance"):
        within_distance(R, [0], -1)


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_cupy_matches_scipy():
    import cupyx.scipy.sparse as csp

    rng = np.random.default_rng(9)
    R = sp.random(50, 70, density=0.05, random_state=rng, format="csr")
    batch = rng.choice(50, size=20, replace=False)
    for k in (2, 4):
        assert (within_distance(csp.csr_matrix(R), batch, k).get() == within_distance(R, batch, k)).all()
