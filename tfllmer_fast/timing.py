"""Wall-clock and memory measurement shared by the demo, the profiler and the benchmarks."""

from __future__ import annotations

import ctypes
import functools
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
    """Yields a dict whose ``"bytes"`` is set on exit to the peak memory
    allocated inside the block beyond what was allocated on entry: CUDA
    allocator statistics on a GPU; on Linux CPUs the process's peak resident
    set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident
    set on entry. None where neither is available."""
    result = {"bytes": None}
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    if device.type != "cpu" or not _reset_cpu_peak():
        yield result
        return
    base = _proc_status_kib("VmRSS")
    yield result
    result["bytes"] = max(0, _proc_status_kib("VmHWM") - base) * 1024


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    # A fixed mmap threshold (glibc otherwise raises it to the largest freed
    # block, up to 32 MiB) sends every large tensor to mmap, so a freed tensor
    # leaves the resident set and the next measurement starts clean.
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    return libc


def _reset_cpu_peak() -> bool:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        _proc_status_kib("VmHWM")
    except (OSError, KeyError):
        return False
    return True
