"""Process-group plumbing for the sharded ops: checks, shard ranges, row gathers."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def group_rank_world(process_group=None) -> tuple[object, int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group() first "
            "(torchrun sets the environment it reads)"
        )
    return process_group, dist.get_rank(process_group), dist.get_world_size(process_group)


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's rows: contiguous, the first ``num_items % world_size``
    shards one row longer."""
    if num_items < world_size:
        raise ValueError(f"num_items ({num_items}) must be at least the world size ({world_size})")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _comm_device(x: Tensor, group) -> torch.device:
    return x.device if dist.get_backend(group) != "gloo" else torch.device("cpu")


def all_gather_ints(values: list[int], like: Tensor, group) -> list[list[int]]:
    """Every rank's ``values`` (one small collective)."""
    _, _, world = group_rank_world(group)
    mine = torch.tensor(values, dtype=torch.int64, device=_comm_device(like, group))
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [t.tolist() for t in out]


_CHECKED: set = set()


def check_shards(shard_start: int, shard_rows: int, num_items: int, dim: int, like: Tensor, group) -> None:
    """The shards must tile [0, num_items) in rank order with one width; checked
    once per set-up (a small collective), then remembered."""
    key = (id(group), shard_start, shard_rows, num_items, dim)
    if key in _CHECKED:
        return
    everyone = all_gather_ints([shard_start, shard_rows, num_items, dim], like, group)
    expected = 0
    for rank, (start, rows, n, d) in enumerate(everyone):
        if n != num_items:
            raise ValueError(f"num_items differs across ranks: rank {rank} has {n}, this rank {num_items}")
        if d != dim:
            raise ValueError(f"item_shard width differs across ranks: rank {rank} has d={d}, this rank d={dim}")
        if start != expected:
            raise ValueError(f"item shards must tile [0, {num_items}) in rank order: rank {rank} starts at {start}, "
                             f"expected {expected}")
        expected = start + rows
    if expected != num_items:
        raise ValueError(f"item shards cover {expected} rows, but num_items is {num_items}")
    _CHECKED.add(key)


class _GatherRows(torch.autograd.Function):
    """(W, rows, ...) every rank's ``x``; backward sums each rank's slice of
    the gradient over ranks and returns this rank's (a reduce-scatter; gloo,
    which has none, all-reduces and slices: the same payload per rank)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "gloo":
            dist.all_reduce(grad, group=ctx.group)
            return grad[dist.get_rank(ctx.group)], None
        out = torch.empty_like(grad[0])
        dist.reduce_scatter_tensor(out, grad, group=ctx.group)
        return out, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def gather_rows(x: Tensor, group) -> tuple[Tensor, list[int]]:
    """All ranks' rows of ``x`` concatenated in rank order (differentiable: the
    gradient of each rank's rows comes back to that rank), and every rank's
    row count. Ranks may hold different numbers of rows."""
    sizes = [s[0] for s in all_gather_ints([x.shape[0]], x, group)]
    padded = x
    if max(sizes) != x.shape[0]:
        padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0],) + tuple(x.shape[1:]))])
    parts = _GatherRows.apply(padded, group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


def all_reduce_sum(x: Tensor, group) -> Tensor:
    """Differentiable sum over ranks (its gradient is summed over ranks too)."""
    return _AllReduceSum.apply(x, group)
