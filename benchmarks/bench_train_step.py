"""One SASRec training step (forward, backward, Adam) with the fused head vs
the plain torch head (dense logits + F.cross_entropy).

GPU tier: Sports scale (201,957 items), batch 256 x length 50, d = 64, bf16
autocast; ``extra_info`` has ms per step, peak memory and the implied epoch
time for 103,757 users. CPU tier: a tiny catalog.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfllmer_fast.app.models import build_model
from tfllmer_fast.app.models.base import real_rows
from tfllmer_fast.reference import plain_normalized_ce
from tfllmer_fast.timing import peak_extra_memory, synchronize
from tfllmer_fast.app.config import TrainConfig
from tfllmer_fast.app.train import TrainStep, make_optimizer

from .common import DATASET_STATS, GPU, NO_GPU_REASON, device_name, synthetic_interactions


def _step_fn(head, num_items, batch, device, amp):
    torch.manual_seed(0)
    model = build_model("sasrec", num_items, dim=64, max_len=50).to(device)
    opt = make_optimizer(model, TrainConfig())
    users = min(batch * 4, 20_000)
    indptr, items = synthetic_interactions(users, num_items, users * 20, min_length=51)
    seqs = [items[indptr[u] : indptr[u + 1]].astype(np.int64) for u in range(batch)]
    inputs, targets = model.make_batch(seqs, np.random.default_rng(0))  # TrainStep moves the batch

    def plain_head(hidden, targets, rows=None):
        hidden, targets = real_rows(hidden, targets, rows)  # the rows the fused head_loss takes, the same work
        return plain_normalized_ce(hidden, model.item_table, targets, options=model.head.options)

    step = TrainStep(model, opt, device, amp, head=None if head == "fused" else plain_head)
    return lambda: step(inputs, targets)


def _bench(benchmark, head, num_items, batch, device, amp, rounds):
    step = _step_fn(head, num_items, batch, device, amp)
    step()
    dev = torch.device(device)
    with peak_extra_memory(dev) as mem:
        step()
    benchmark.group = f"SASRec train step N={num_items} batch={batch}x50"
    benchmark.pedantic(lambda: (step(), synchronize(dev)), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(head=head, device=device_name() if device == "cuda" else "cpu")
    if mem["bytes"] is not None:
        benchmark.extra_info["peak_extra_GiB"] = round(mem["bytes"] / 2**30, 3)
    if benchmark.stats is not None:
        ms = benchmark.stats.stats.median * 1e3
        benchmark.extra_info["ms"] = round(ms, 2)
        benchmark.extra_info["epoch_s_sports"] = round(ms * DATASET_STATS["sports"][0] / batch / 1e3, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=NO_GPU_REASON)
@pytest.mark.parametrize("head", ["fused", "plain_torch"])
def test_train_step_sports_gpu(benchmark, head):
    try:
        _bench(benchmark, head, DATASET_STATS["sports"][1], 256, "cuda", True, rounds=10)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{head} head ran out of GPU memory")


@pytest.mark.parametrize("head", ["fused", "plain_torch"])
def test_train_step_cpu_tier(benchmark, head):
    _bench(benchmark, head, 500, 8, "cpu", False, rounds=1)
