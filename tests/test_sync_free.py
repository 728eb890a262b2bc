"""No host synchronization in a training step: the model's loss (backbone,
padding rows dropped, the head) traces forward and backward on fake tensors
on the CPU, the proxy for "no value read back from the device" (any read of
data raises there); on a GPU one whole step runs
under ``torch.cuda.set_sync_debug_mode("error")`` and its forward and
backward are captured in a CUDA graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfllmer_fast.app.models import build_model
from tfllmer_fast.app.models.base import PAD
from tfllmer_fast.app.config import TrainConfig
from tfllmer_fast.app.train import TrainStep, make_optimizer


def _batch(model, num_items, rows=6, length=9, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, num_items + 1, size=rng.integers(3, length)) for _ in range(rows)]
    return model.make_batch(seqs, rng)


class _Loss(torch.nn.Module):
    """The model's training loss as a module's forward, for functional_call."""

    def __init__(self, model, rows):
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, inputs, targets):
        return self.model.head_loss(self.model.encode(inputs), targets, rows=self.rows)


def _trace_on_fake_tensors(model, inputs, targets, rows):
    """Forward and backward of the loss with every tensor fake (no data): any
    value read back to the host raises. The CPU path's own target checks,
    which CUDA does not run, are left out."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    loss_module = _Loss(model, rows)
    with FakeTensorMode() as mode:
        params = {k: mode.from_tensor(v).requires_grad_(v.requires_grad) for k, v in loss_module.named_parameters()}
        buffers = {k: mode.from_tensor(v) for k, v in loss_module.named_buffers()}
        loss = torch.func.functional_call(loss_module, {**params, **buffers},
                                          (mode.from_tensor(inputs), mode.from_tensor(targets)))
        grads = torch.autograd.grad(loss, [p for p in params.values() if p.requires_grad])
    return loss, grads


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_model_loss_reads_nothing_back(name, monkeypatch):
    from tfllmer_fast.ops import _checks

    monkeypatch.setattr(_checks, "check_rows", lambda *args, **kwargs: None)
    torch.manual_seed(0)
    model = build_model(name, 40, dim=16, max_len=8)
    inputs, targets = _batch(model, 40)
    rows = int((targets != PAD).sum())
    assert 0 < rows < targets.numel()  # some padding to drop
    loss, grads = _trace_on_fake_tensors(model, inputs, targets, rows)
    assert loss.shape == () and len(grads) == len([p for p in model.parameters() if p.requires_grad])


def test_the_count_read_back_fails_the_fake_trace(monkeypatch):
    """Without the host's count the number of real rows is read from the
    device: the fake trace raises (the check above can fail)."""
    from tfllmer_fast.ops import _checks

    monkeypatch.setattr(_checks, "check_rows", lambda *args, **kwargs: None)
    model = build_model("sasrec", 40, dim=16, max_len=8)
    inputs, targets = _batch(model, 40)
    with pytest.raises(Exception, match="_local_scalar_dense|[Dd]ata.dependent"):
        _trace_on_fake_tensors(model, inputs, targets, None)


@pytest.mark.gpu
def test_train_step_never_synchronizes_and_captures_in_a_cuda_graph():
    torch.manual_seed(0)
    model = build_model("sasrec", 5000, dim=64, max_len=20).cuda()
    opt = make_optimizer(model, TrainConfig())
    step = TrainStep(model, opt, "cuda", amp=True)
    inputs, targets = _batch(model, 5000, rows=32, length=21)
    step(inputs.pin_memory(), targets.pin_memory())  # warm-up: compilation, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(inputs.pin_memory(), targets.pin_memory())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()

    rows = int((targets != PAD).sum())
    static_in, static_t = inputs.cuda(), targets.cuda()

    def forward_backward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.head_loss(model.encode(static_in), static_t, rows=rows)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            forward_backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward_backward()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(captured)
