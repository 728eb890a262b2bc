"""The training job across processes: start-up from torchrun's environment,
the data-parallel side (backbone gradients averaged, parameters broadcast),
and who writes files."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL
    with one GPU per process on CUDA, gloo on CPU. Returns this process's
    device. Without torchrun nothing happens."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


def shutdown(wait: bool = True) -> None:
    """Leave the process group (before the interpreter tears down, so no
    communication thread outlives it); ``wait`` first lets every rank finish."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(params, src: int = 0) -> None:
    """Start every rank from rank ``src``'s values (what DDP does at wrap time)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src)


def average_gradients(params) -> None:
    """Mean of each parameter's gradient over ranks, in one flat all-reduce:
    DDP's averaging for the replicated (backbone) parameters. A parameter a
    rank did not use contributes zeros."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()


def gather_ranks(ranks: torch.Tensor) -> torch.Tensor:
    """Every rank's evaluation ranks, concatenated in rank order."""
    from ._comm import gather_rows

    return gather_rows(ranks, None)[0]
