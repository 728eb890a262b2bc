"""cooccurrence: every backend gives the NumPy reference's graph exactly."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from tests.graph.conftest import BACKENDS, random_sequences
from tfllmer_fast.graph import cooccurrence, normalized_adjacency
from tfllmer_fast.graph import native as native_module


def _to_scipy(matrix):
    return matrix.get() if hasattr(matrix, "get") else matrix


def _assert_same_graph(a, b):
    a, b = _to_scipy(a).tocsr(), _to_scipy(b).tocsr()
    assert a.shape == b.shape
    assert (a != b).nnz == 0


def _brute_force(sequences, num_items, window, top_k):
    """Dense counting straight from the definition."""
    counts = np.zeros((num_items + 1, num_items + 1), dtype=np.int64)
    for s in sequences:
        s = [x for x in s if x != 0]
        for p in range(len(s)):
            for q in range(p + 1, min(len(s), p + window + 1)):
                if s[p] != s[q]:
                    counts[s[p], s[q]] += 1
                    counts[s[q], s[p]] += 1
    if top_k is None:
        return counts
    kept = np.zeros_like(counts)
    for r in range(counts.shape[0]):
        nz = np.nonzero(counts[r])[0]
        order = sorted(nz, key=lambda c: (-counts[r, c], c))[:top_k]
        kept[r, order] = counts[r, order]
    return np.maximum(kept, kept.T)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [1, 2, 5])
@pytest.mark.parametrize("top_k", [None, 1, 3, 20])
def test_matches_definition(backend, window, top_k):
    rng = np.random.default_rng(window * 31 + (top_k or 0))
    sequences = random_sequences(rng, 60, 40, 15)
    graph = cooccurrence(sequences, 40, window=window, top_k=top_k, backend=backend)
    expected = _brute_force(sequences, 40, window, top_k)
    np.testing.assert_array_equal(_to_scipy(graph).toarray(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_keep_smaller_ids(backend):
    # Item 1 meets 2, 3, 4, 5 once each: top_k=2 keeps 2 and 3 in row 1; then
    # A = max(A, A^T) adds 1 back into the rows of 4 and 5 (their own top pick).
    sequences = [[2, 1, 3], [4, 1, 5]]
    graph = _to_scipy(cooccurrence(sequences, 5, top_k=2, backend=backend)).toarray()
    assert list(np.nonzero(graph[1])[0]) == [2, 3, 4, 5]
    assert graph[4, 1] == 1 and graph[1, 4] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    sequences = [[], [7], [3, 3, 3], [0, 2, 0, 4], [5, 6]]
    graph = _to_scipy(cooccurrence(sequences, 8, top_k=5, backend=backend)).toarray()
    assert graph[3].sum() == 0  # repeated items: no self loops
    assert graph[7].sum() == 0 and graph[8].sum() == 0  # length-1 sequence, isolated item
    assert graph[0].sum() == 0 and graph[:, 0].sum() == 0  # padding stays empty
    assert graph[2, 4] == 1  # padding dropped before pairing
    assert graph[5, 6] == graph[6, 5] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_csr_pair_and_int64_input(backend):
    rng = np.random.default_rng(1)
    sequences = random_sequences(rng, 30, 25, 10)
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    items = np.concatenate(sequences).astype(np.int64)
    a = cooccurrence((indptr, items), 25, top_k=4, backend=backend)
    b = cooccurrence((indptr, items.astype(np.int32)), 25, top_k=4, backend=backend)
    c = cooccurrence(sequences, 25, top_k=4, backend="numpy")
    _assert_same_graph(a, c)
    _assert_same_graph(b, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beauty_graph_identical_to_reference(backend, beauty_sequences):
    sequences, num_items = beauty_sequences
    reference = cooccurrence(sequences, num_items, top_k=20, backend="numpy")
    graph = cooccurrence(sequences, num_items, top_k=20, backend=backend)
    _assert_same_graph(graph, reference)
    assert reference.nnz > 100_000 and abs(reference - reference.T).max() == 0


def test_missing_native_builder_falls_back_with_warning(monkeypatch):
    monkeypatch.setattr(native_module, "load", lambda: None)
    monkeypatch.setattr(native_module, "_WARNED", False)
    monkeypatch.setattr("tfllmer_fast.graph.builder.cupy_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="native .* graph builder is not built"):
        graph = cooccurrence([[1, 2, 3]], 3)
    assert isinstance(graph, scipy.sparse.csr_matrix) and graph.nnz == 4
    with pytest.raises(RuntimeError, match="backend='cpp' needs the native extension"):
        cooccurrence([[1, 2, 3]], 3, backend="cpp")


def test_native_builder_is_built():
    """pip install builds the extension on a machine with a compiler (CI has one)."""
    assert native_module.load() is not None


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (([[1, 9]], 5), {}, ValueError, "item id 9 is outside 1..num_items=5"),
        (([[1, -2]], 5), {}, ValueError, "item id -2 is outside"),
        (([[1.5, 2.0]], 5), {}, TypeError, "sequence items must be integers"),
        (([[1, 2]], 0), {}, ValueError, "num_items must be positive"),
        (([[1, 2]], 5), {"window": 0}, ValueError, "window must be a positive integer"),
        (([[1, 2]], 5), {"top_k": 0}, ValueError, "top_k must be a positive integer or None"),
        (([[1, 2]], 5), {"backend": "gpu"}, ValueError, "backend must be one of"),
        (((np.array([0, 3]), np.array([1, 2])), 5), {}, ValueError, "indptr ends at 3 but there are 2 items"),
    ],
)
def test_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        cooccurrence(*args, **kwargs)


def test_normalized_adjacency():
    a = scipy.sparse.csr_matrix(np.array([[0, 2, 0, 0], [2, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    a_hat = normalized_adjacency(a).toarray()
    deg = np.array([2.0, 3.0, 1.0, 0.0])
    expected = np.zeros((4, 4))
    for i, j in [(0, 1), (1, 0), (1, 2), (2, 1)]:
        expected[i, j] = a[i, j] / np.sqrt(deg[i] * deg[j])
    np.testing.assert_allclose(a_hat, expected, rtol=1e-6)
    assert (a_hat[3] == 0).all()
    with pytest.raises(ValueError, match="adjacency must be square"):
        normalized_adjacency(scipy.sparse.csr_matrix(np.ones((2, 3))))
    with pytest.raises(ValueError, match="adjacency has negative weights"):
        normalized_adjacency(scipy.sparse.csr_matrix(-np.ones((2, 2))))
