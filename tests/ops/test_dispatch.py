"""impl='auto' on CUDA: off the kernels it says so once, and takes GPU-sized chunks."""

from __future__ import annotations

import warnings

import torch

from tfllmer_fast.ops import _checks, normalized_ce_grad_in_forward


def test_leaving_the_kernels_on_cuda_warns_once(monkeypatch):
    monkeypatch.setattr(_checks, "_kernels_serve", lambda dim, device, dtype: False)
    monkeypatch.setattr(_checks, "_WARNED", set())
    cuda = torch.device("cuda", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _checks.resolve_impl("auto", cuda, torch.float32, 128, "torch_grad_in_forward") == "torch_grad_in_forward"
        assert _checks.resolve_impl("auto", torch.device("cpu"), torch.float32, 128, "torch_grad_in_forward") == "torch_grad_in_forward"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "width 128" in messages[0] and "torch.float32" in messages[0] and "'highest'" in messages[0]


def test_chunks_are_gpu_sized_on_cuda():
    """The CPU path's 16-128 rows would be thousands of small matmuls a step on a GPU."""
    assert normalized_ce_grad_in_forward.chunk_rows(200_000) <= 128
    assert normalized_ce_grad_in_forward.chunk_rows(200_000, torch.device("cuda")) >= 1024
    assert normalized_ce_grad_in_forward.chunk_rows(10_000_000, "cuda") >= normalized_ce_grad_in_forward.GPU_MIN_ROWS
