"""Co-occurrence graph construction: NumPy reference vs C++ builder vs CuPy.

Sports scale (103,757 users, 201,957 items, 1.69M interactions, long-tailed),
window 1, top_k 20. The NumPy and C++ rows run on any machine (marked slow);
the CuPy row needs a GPU. CPU tier: a CDs-sized set so CI exercises the suite.
"""

from __future__ import annotations

import time

import pytest

from tfllmer_fast.graph import cooccurrence
from tfllmer_fast.graph.array_module import cupy_available

from .common import DATASET_STATS, device_name, synthetic_interactions


@pytest.fixture(scope="module")
def sports():
    return synthetic_interactions(*DATASET_STATS["sports"])


def _bench(benchmark, backend, data, num_items, rounds):
    if backend == "cupy":
        import cupy

        def run():
            cooccurrence(data, num_items, top_k=20, backend="cupy")
            cupy.cuda.Device().synchronize()
    else:
        def run():
            return cooccurrence(data, num_items, top_k=20, backend=backend)

    graph = cooccurrence(data, num_items, top_k=20, backend=backend)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(backend=backend, edges=int(graph.nnz), device=device_name())
    if benchmark.stats is not None:
        benchmark.extra_info["ms"] = round(benchmark.stats.stats.median * 1e3, 2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_graph_sports_cpu(benchmark, backend, sports):
    benchmark.group = "graph construction, Sports scale"
    _bench(benchmark, backend, sports, DATASET_STATS["sports"][1], rounds=5)


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_graph_sports_cupy(benchmark, sports):
    benchmark.group = "graph construction, Sports scale"
    _bench(benchmark, "cupy", sports, DATASET_STATS["sports"][1], rounds=5)


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_graph_cpu_tier(benchmark, backend):
    users, items, interactions = DATASET_STATS["cds"]
    data = synthetic_interactions(users, items, interactions)
    benchmark.group = "graph construction, CPU tier (CDs size)"
    start = time.perf_counter()
    _bench(benchmark, backend, data, items, rounds=1)
    assert time.perf_counter() - start < 60
