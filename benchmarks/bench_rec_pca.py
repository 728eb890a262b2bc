"""Rec-PCA end to end: SciPy/NumPy vs CuPy.

Sports scale: the graph of the synthetic Sports interactions (201,957 items,
top_k 20) and D = 4,096 random features already on the device for CuPy, dim 64,
beta 0.3, order 2. Both rows are GPU-tier (the SciPy row is the baseline measured
in the same run). CPU tier: 2,000 items x 256 features.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfllmer_fast as tf
from tfllmer_fast.graph import cooccurrence
from tfllmer_fast.graph.array_module import cupy_available

from .common import DATASET_STATS, device_name, synthetic_interactions


def _problem(num_users, num_items, interactions, dim_features, seed=0):
    graph = cooccurrence(synthetic_interactions(num_users, num_items, interactions, seed=seed), num_items,
                         top_k=20, backend="cpp")[1:, 1:]
    features = np.random.default_rng(seed).standard_normal((num_items, dim_features), dtype=np.float32)
    return features, graph


def _bench(benchmark, backend, features, graph, rounds):
    if backend == "cupy":
        import cupy
        import cupyx.scipy.sparse

        features = cupy.asarray(features)
        graph = cupyx.scipy.sparse.csr_matrix(graph)

        def run():
            tf.rec_pca(features, graph, 64, beta=0.3, backend="cupy")
            cupy.cuda.Device().synchronize()
    else:
        def run():
            tf.rec_pca(features, graph, 64, beta=0.3, backend="numpy")

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1 if backend == "cupy" else 0)
    benchmark.extra_info.update(backend=backend, N=features.shape[0], D=features.shape[1], device=device_name())
    if benchmark.stats is not None:
        benchmark.extra_info["ms"] = round(benchmark.stats.stats.median * 1e3, 1)


@pytest.fixture(scope="module")
def sports_problem():
    users, items, interactions = DATASET_STATS["sports"]
    return _problem(users, items, interactions, 4096)


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("backend", ["numpy", "cupy"])
def test_rec_pca_sports(benchmark, backend, sports_problem):
    benchmark.group = "Rec-PCA end to end, Sports scale, D=4096, dim=64"
    _bench(benchmark, backend, *sports_problem, rounds=1 if backend == "numpy" else 5)


def test_rec_pca_cpu_tier(benchmark):
    benchmark.group = "Rec-PCA, CPU tier"
    _bench(benchmark, "numpy", *_problem(3_000, 2_000, 30_000, 256), rounds=1)
