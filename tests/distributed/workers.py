"""Process bodies for the multi-process tests: gloo on CPU, a file store.

Each worker builds the same data from one seed, runs the sharded op on its
rank's rows and shard, and writes what it saw to ``out_dir/rank{r}.pt``; the
test compares those files with the single-process op."""

from __future__ import annotations

import datetime
import os
import traceback

import torch
import torch.distributed as dist


def run_workers(world: int, tmp_path, target, *args) -> list[dict]:
    """Spawn ``world`` processes running ``target(rank, world, out_dir, *args)``
    and return each rank's saved dict."""
    import torch.multiprocessing as mp

    store = str(tmp_path / "store")
    mp.start_processes(_entry, args=(world, store, str(tmp_path), target, args), nprocs=world, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        if "error" in res:
            raise AssertionError(f"rank {r} failed:\n{res['error']}")
    return results


def _entry(rank, world, store, out_dir, target, args):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    # A rank that fails leaves the others waiting in a collective: the timeout ends them.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = target(rank, world, *args)
    except Exception:  # the parent reports it with the rank
        result = {"error": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # Skip the interpreter's teardown: a gloo thread still being destroyed
    # there has aborted a worker ("terminate called without an active
    # exception") after its results were written.
    os._exit(0)
