"""Shared data and per-rank bodies for the sharded-op tests."""

from __future__ import annotations

import torch

from tfllmer_fast.distributed import (
    shard_range,
    sharded_normalized_softmax_ce,
    sharded_target_rank,
    sharded_topk_scores,
)

N, D = 23, 8


def rank_rows(world: int, equal: bool) -> list[int]:
    return [6] * world if equal else [5 + r for r in range(world)]


def make_data(world: int, dtype, equal: bool = False, seed: int = 0):
    """Every rank's queries, targets and weights, and the full table. Targets
    avoid the last rank's shard, so one shard holds no target at all; the
    second row of every rank is ignored (unless ``equal``)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = rank_rows(world, equal)
    total = sum(sizes)
    hidden = torch.randn(total, D, generator=gen, dtype=torch.float64)
    table = torch.randn(N, D, generator=gen, dtype=torch.float64)
    last_start, _ = shard_range(N, world - 1, world)
    targets = torch.randint(0, last_start, (total,), generator=gen)
    weight = torch.rand(total, generator=gen, dtype=torch.float64) + 0.5
    if not equal:
        starts = [sum(sizes[:r]) for r in range(world)]
        targets[[s + 1 for s in starts]] = -100
    return hidden.to(dtype), table.to(dtype), targets, weight.to(dtype), sizes


def rows_of(rank: int, sizes: list[int]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def ce_rank(rank, world, dtype, impl, options, equal):
    hidden, table, targets, weight, sizes = make_data(world, dtype, equal)
    own = rows_of(rank, sizes)
    start, stop = shard_range(N, rank, world)
    h = hidden[own].clone().requires_grad_()
    shard = table[start:stop].clone().requires_grad_()
    w = weight[own] if options.pop("use_weight", False) else None
    loss = sharded_normalized_softmax_ce(h, shard, targets[own], shard_start=start, num_items=N, impl=impl,
                                         row_weight=w, **options)
    objective(loss).backward()
    return {"loss": loss_value(loss).detach(), "dh": h.grad, "de": shard.grad, "start": start}


def loss_value(out):
    return out.loss if isinstance(out, tuple) else out


def objective(out):
    """What backward runs on: the loss summed, plus a z-loss on the lse when returned."""
    value = loss_value(out).sum()
    return value + 0.01 * out.lse.square().sum() if isinstance(out, tuple) else value


def ranking_data(world, dtype=torch.float64, ties=False):
    """make_data's queries and table; with ``ties``, copies of targets sit in
    every shard (exact ties with the target, counted against it wherever they are)."""
    hidden, table, targets, _, sizes = make_data(world, dtype)
    targets = targets.clamp_min(0)
    if ties:
        for r in range(world):
            start, stop = shard_range(N, r, world)
            table[stop - 1] = table[targets[r]]
    return hidden, table, targets, sizes


def ranking_rank(rank, world, k, impl="auto", dtype=torch.float64, ties=False):
    hidden, table, targets, sizes = ranking_data(world, dtype, ties)
    own = rows_of(rank, sizes)
    start, stop = shard_range(N, rank, world)
    exclude = exclusions(sizes)
    indptr, items = exclude
    lo, hi = int(indptr[own.start]), int(indptr[own.stop])
    mine = (indptr[own.start : own.stop + 1] - lo, items[lo:hi])
    # Strided views, as a caller slicing a batch passes them.
    t_view = torch.stack([targets[own], targets[own]], 1)[:, 0]
    ranks = sharded_target_rank(hidden[own], table[start:stop], t_view, shard_start=start, num_items=N,
                                exclude=mine, impl=impl)
    top = sharded_topk_scores(hidden[own], table[start:stop], k, shard_start=start, num_items=N, exclude=mine,
                              impl=impl)
    return {"ranks": ranks, "values": top.values, "indices": top.indices}


def rank_memory_rank(rank, world, rows_per_rank):
    """The most score elements the sharded rank holds at once (torch path, 4
    rows a chunk) with ``rows_per_rank`` rows on every rank."""
    from tfllmer_fast.reference import ranking

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(rows_per_rank * world, D, generator=gen)
    table = torch.randn(N, D, generator=gen)
    targets = torch.randint(0, N, (rows_per_rank * world,), generator=gen)
    own = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
    start, stop = shard_range(N, rank, world)
    import weakref

    largest = {"elements": 0}
    alive: list = []
    original = ranking._Scorer.__call__

    def counting(self, *args, **kwargs):
        scores = original(self, *args, **kwargs)
        alive[:] = [ref for ref in alive if ref() is not None] + [weakref.ref(scores)]
        largest["elements"] = max(largest["elements"], sum(ref().numel() for ref in alive))
        return scores

    ranking._Scorer.__call__ = counting
    try:
        sharded_target_rank(hidden[own], table[start:stop], targets[own], shard_start=start, num_items=N,
                            impl="torch", chunk_size=4)
    finally:
        ranking._Scorer.__call__ = original
    return largest


def exclusions(sizes):
    """Row i excludes items i % 5 and (3 i) % N: CSR over all ranks' rows."""
    total = sum(sizes)
    items = torch.tensor([[i % 5, (3 * i) % N] for i in range(total)]).reshape(-1)
    return torch.arange(0, 2 * total + 1, 2), items


def bad_setup_rank(rank, world, what):
    hidden, table, targets, _, sizes = make_data(world, torch.float64)
    own = rows_of(rank, sizes)
    start, stop = shard_range(N, rank, world)
    shard = table[start:stop]
    if what == "gap" and rank == world - 1:
        shard, start = shard[1:], start + 1
    if what == "short" and rank == world - 1:
        shard = shard[:-1]
    if what == "width" and rank == 0:
        shard, hidden = shard[:, :-1], hidden[:, :-1]
    try:
        sharded_normalized_softmax_ce(hidden[own], shard, targets[own], shard_start=start, num_items=N)
    except ValueError as exc:
        return {"raised": str(exc)}
    return {"raised": None}


def counted_ce_rank(rank, world, dtype, label_smoothing):
    """Payload bytes this rank hands to collectives in one forward + backward
    (the shard check runs first, uncounted, as it does once per set-up)."""
    import torch.distributed as dist

    hidden, table, targets, _, sizes = make_data(world, dtype, equal=True)
    own = rows_of(rank, sizes)
    start, stop = shard_range(N, rank, world)
    h = hidden[own].clone().requires_grad_()
    shard = table[start:stop].clone().requires_grad_()
    run = lambda: sharded_normalized_softmax_ce(h, shard, targets[own], shard_start=start, num_items=N,  # noqa: E731
                                                label_smoothing=label_smoothing).backward()
    run()
    counted = {"bytes": 0}
    names = ("all_gather", "all_reduce", "all_to_all", "reduce_scatter", "scatter")
    originals = {name: getattr(dist, name) for name in names}

    def counting(name):
        def call(*args, **kwargs):
            # gloo runs all-to-all as one scatter per source rank: its payload is
            # the source's list (None on the receiving ranks).
            payload = args[1] if name != "all_reduce" else args[0]
            tensors = payload if isinstance(payload, (list, tuple)) else [payload] if payload is not None else []
            counted["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
            return originals[name](*args, **kwargs)
        return call

    for name in originals:
        setattr(dist, name, counting(name))
    try:
        run()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return {"bytes": counted["bytes"], "rows": sizes[rank]}
