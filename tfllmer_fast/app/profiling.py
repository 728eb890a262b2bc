"""Where a training step's time goes: data, backbone, head, backward, optimizer."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import numpy as np
import torch

from .data import read_interactions, split
from .models import build_model
from ..timing import synchronize
from .config import TrainConfig
from .train import TrainStep, make_optimizer

PHASES = ("data",) + TrainStep.PHASES


def profile_training(data_path, *, model: str = "sasrec", steps: int = 10, batch_size: int = 256,
                     device: str = "cpu", trace: str | None = None, impl: str = "auto") -> str:
    """Run ``steps`` training steps, timing each phase with device
    synchronization; optionally export a torch.profiler Chrome trace."""
    sp = split(read_interactions(data_path), "loo")
    net = build_model(model, sp.num_items, impl=impl).to(device)
    opt = make_optimizer(net, TrainConfig())
    rng = np.random.default_rng(0)
    seqs = [s for s in sp.train if len(s) >= 2]
    dev = torch.device(device)
    train_step = TrainStep(net, opt, device)
    totals = defaultdict(float)

    @contextlib.contextmanager
    def timed(name):
        synchronize(dev)
        tic = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        synchronize(dev)
        totals[name] += time.perf_counter() - tic

    def step():
        batch = [seqs[i] for i in rng.integers(0, len(seqs), batch_size)]
        with timed("data"):
            inputs, targets = net.make_batch(batch, rng)  # TrainStep moves it to the device
        train_step(inputs, targets, phase=timed)

    step()  # warm-up (kernel compilation, allocator)
    totals.clear()
    if trace:
        with torch.profiler.profile() as prof:
            for _ in range(steps):
                step()
        prof.export_chrome_trace(trace)
    else:
        for _ in range(steps):
            step()
    total = sum(totals.values())
    lines = [f"{model} on {data_path}: {sp.num_items} items, batch {batch_size} x {net.max_len}, {device}, "
             f"{steps} steps, {1e3 * total / steps:.1f} ms/step",
             f"{'phase':<18}{'ms/step':>10}{'share':>8}"]
    for name in PHASES:
        lines.append(f"{name:<18}{1e3 * totals[name] / steps:>10.1f}{totals[name] / total:>8.1%}")
    lines.append("(backward includes the head's backward kernels and the backbone's)")
    if trace:
        lines.append(f"Chrome trace written to {trace}")
    return "\n".join(lines)
