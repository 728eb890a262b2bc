"""Full ranking: top-10 and target rank, fused Triton vs chunked torch.

GPU tier: 100,000 users x 201,957 items, d = 64, bf16, each user's 10 seen items
excluded. Baseline in the same run: chunked torch matmul + mask + topk (and
+ compare/count for ranks), i.e. ``impl="torch"``. CPU tier: tiny shapes.
"""

from __future__ import annotations

import pytest
import torch

from tfllmer_fast.ops.ranking import target_rank, topk_scores

from .common import GPU, NO_GPU_REASON, head_inputs, run_benchmark

GPU_SHAPE = (100_000, 201_957, 64)
SEEN = 10


def _problem(B, N, D, dtype, device):
    hidden, items, targets = head_inputs(B, N, D, dtype, device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    seen = torch.randint(1, N, (B * SEEN,), generator=gen).to(device)
    indptr = torch.arange(0, B * SEEN + 1, SEEN, device=device)
    return hidden, items, targets, (indptr, seen)


def _bench(benchmark, op, impl, shape, device, dtype, rounds):
    B, N, D = shape
    hidden, items, targets, exclude = _problem(B, N, D, dtype, device)
    if op == "topk10":
        fn = lambda: topk_scores(hidden, items, 10, exclude=exclude, impl=impl)  # noqa: E731
    else:
        fn = lambda: target_rank(hidden, items, targets, exclude=exclude, impl=impl)  # noqa: E731
    benchmark.group = f"ranking {op} B={B} N={N} d={D}"
    benchmark.extra_info.update(op=op, impl=impl, B=B, N=N, d=D)
    run_benchmark(benchmark, fn, device, rounds=rounds, flops=2.0 * B * N * D)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=NO_GPU_REASON)
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("op", ["topk10", "target_rank"])
def test_ranking_gpu(benchmark, op, impl):
    _bench(benchmark, op, impl, GPU_SHAPE, "cuda", torch.bfloat16, rounds=5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("op", ["topk10", "target_rank"])
def test_ranking_cpu_tier(benchmark, op, impl):
    _bench(benchmark, op, impl, (32, 300, 16), "cpu", torch.float32, rounds=1)
