"""The catalog-parallel head over torch.distributed.

GPU tier (needs 2+ GPUs; skips with the reason otherwise): forward + backward
of ``sharded_normalized_softmax_ce`` at B = 12,800 (batch 256 x length 50),
d = 64, bf16 autocast, N = 2M and 10M items split over every visible GPU
(NCCL, one process per GPU); ``extra_info`` has the per-step ms (CUDA
events, median of 10 after 2 warm-ups, slowest rank) and each rank's peak
memory. CPU tier: the bytes each rank hands to collectives per step at the
paper's shapes (``tfllmer_fast.distributed.volume``; the multi-process tests
count the real payload and check it equals this), against the table's bytes.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from tfllmer_fast.distributed.volume import head_collective_bytes, table_bytes

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
B, D = 12_800, 64


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("num_items", [2_000_000, 10_000_000], ids=lambda n: f"N{n // 1_000_000}M")
def test_collective_volume(benchmark, num_items, world):
    """SASRec's final LayerNorm hands fp32 queries to the head even under bf16 autocast."""
    parts = benchmark.pedantic(lambda: head_collective_bytes(B, D, world, hidden_bytes=4, grad_bytes=4),
                               rounds=1, iterations=1)
    benchmark.group = f"sharded head collective bytes per rank per step, B={B} d={D}"
    benchmark.extra_info.update(
        world=world, N=num_items, collective_MB=round(parts["total"] / 1e6, 3),
        table_shard_MB=round(table_bytes(num_items, D) / world / 1e6, 1),
        ratio_to_table=parts["total"] / table_bytes(num_items, D),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, num_items, out_dir):
    import torch.distributed as dist

    from tfllmer_fast.distributed import shard_range, sharded_normalized_softmax_ce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    start, stop = shard_range(num_items, rank, world)
    gen = torch.Generator(device="cuda").manual_seed(rank)
    rows = B // world
    hidden = torch.randn(rows, D, device="cuda", generator=gen, requires_grad=True)
    shard = torch.randn(stop - start, D, device="cuda", generator=gen, requires_grad=True)
    targets = torch.randint(0, num_items, (rows,), device="cuda", generator=gen)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sharded_normalized_softmax_ce(hidden, shard, targets, shard_start=start, num_items=num_items)
        loss.backward()

    for _ in range(2):
        step()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(10):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    slowest = torch.tensor([sorted(times)[len(times) // 2]], device="cuda")
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save({"ms": slowest.item(), "peak_GiB": torch.cuda.max_memory_allocated() / 2**30},
                   os.path.join(out_dir, "result.pt"))
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 2, reason=f"needs 2 or more CUDA devices (found {GPUS})")
@pytest.mark.parametrize("num_items", [2_000_000, 10_000_000], ids=lambda n: f"N{n // 1_000_000}M")
def test_sharded_head_gpu(benchmark, num_items, tmp_path):
    import torch.multiprocessing as mp

    def run():
        mp.start_processes(_worker, args=(GPUS, _free_port(), num_items, str(tmp_path)), nprocs=GPUS,
                           start_method="spawn")
        return torch.load(tmp_path / "result.pt")

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = f"sharded head fwd+bwd B={B} d={D} bf16"
    benchmark.extra_info.update(gpus=GPUS, N=num_items, device=torch.cuda.get_device_name(), **result)
