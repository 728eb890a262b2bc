"""Wall-clock and memory measurement shared by the demo, the profiler and the benchmarks."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, *, repeats: int = 3, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` with device synchronization."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


@contextmanager
def peak_extra_memory(device: torch.device):
    """Yields a dict whose ``"bytes"`` is set on exit to the peak CUDA memory
    allocated inside the block beyond what was allocated on entry (None on CPU,
    where torch keeps no allocator statistics)."""
    result = {"bytes": None}
    if device.type != "cuda":
        yield result
        return
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    synchronize(device)
    result["bytes"] = torch.cuda.max_memory_allocated(device) - base
