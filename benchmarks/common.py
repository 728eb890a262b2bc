"""Shared generators and measurement helpers for the benchmark suite."""

from __future__ import annotations

import torch

from tfllmer_fast.timing import peak_extra_memory, synchronize

GPU = torch.cuda.is_available()
NO_GPU_REASON = "no CUDA device: GPU benchmark rows need one (the CPU tier runs instead)"


def device_name() -> str:
    return torch.cuda.get_device_name() if GPU else "cpu"


def head_inputs(batch: int, num_items: int, dim: int, dtype: torch.dtype, device, seed: int = 0):
    """Random queries, item table (row 0 zero, as a padding row) and targets in 1..N-1."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(batch, dim, generator=gen, dtype=torch.float32).to(device, dtype)
    items = torch.randn(num_items, dim, generator=gen, dtype=torch.float32).to(device, dtype)
    items[0] = 0
    targets = torch.randint(1, num_items, (batch,), generator=gen).to(device)
    return hidden, items, targets


def run_benchmark(benchmark, fn, device, *, rounds: int, flops: float | None = None, extra_bytes_ignored: int = 0):
    """Time ``fn`` with pytest-benchmark (CUDA-synchronized), record ms,
    TFLOP/s and the peak extra memory in ``extra_info``."""
    dev = torch.device(device)
    fn()  # compilation, autotuning and first-touch allocations are not the op's memory
    with peak_extra_memory(dev) as mem:
        fn()
    if mem["bytes"] is not None:
        benchmark.extra_info["peak_extra_GiB"] = round((mem["bytes"] - extra_bytes_ignored) / 2**30, 4)

    def synced():
        fn()
        synchronize(dev)

    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["device"] = device_name()
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return
    median_s = benchmark.stats.stats.median
    benchmark.extra_info["ms"] = round(median_s * 1e3, 3)
    if flops is not None:
        benchmark.extra_info["TFLOP/s"] = round(flops / median_s / 1e12, 2)


# (users, items, interactions) of the paper's datasets.
DATASET_STATS = {
    "yelp": (236_482, 128_727, 3_590_000),
    "sports": (103_757, 201_957, 1_690_000),
    "cds": (7_685, 5_841, 61_564),
}


def synthetic_interactions(num_users: int, num_items: int, num_interactions: int, *, seed: int = 0,
                           zipf: float = 1.0, min_length: int = 5):
    """CSR pair (indptr int64, items int32 in 1..num_items) with ``num_users``
    sequences of at least ``min_length`` items (5-core-like), geometric extra
    lengths, and long-tailed item popularity p(rank) ~ 1 / (rank + 10)^zipf
    over shuffled item ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    extra_mean = max(num_interactions / num_users - min_length, 0.0)
    extra = rng.geometric(1.0 / (1.0 + extra_mean), size=num_users) - 1 if extra_mean > 0 else np.zeros(num_users, int)
    lengths = min_length + extra
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    weights = 1.0 / (np.arange(num_items) + 10.0) ** zipf
    cdf = np.cumsum(weights / weights.sum())
    ranks = np.searchsorted(cdf, rng.random(int(indptr[-1])), side="right").clip(max=num_items - 1)
    item_of_rank = rng.permutation(num_items) + 1
    return indptr, item_of_rank[ranks].astype(np.int32)
