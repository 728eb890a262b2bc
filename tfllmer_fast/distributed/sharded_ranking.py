"""Full-ranking evaluation against a sharded item table.

Queries, targets and exclusion lists (global ids) are all-gathered; each rank
scores all rows against its shard. ``sharded_target_rank``: the target's
score comes from the rank that owns it (an all-reduce of B floats), each rank
counts its own items that score at least as high (excluding its share of the
exclusion lists) with the fused counting kernel or the chunked reference,
and one all-reduce of B counts sums them.
``sharded_topk_scores``: each rank's top-k in global ids, one all-gather of
(B, k) candidates, and a merge with ties to the smaller global id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import _checks
from ..ops._kernels import kernels
from ..ops._library import without_autocast_context
from ..ops._scales import item_scale
from ..ops.ranking import TopK, may_score_nan, topk_scores, unique_exclusions
from ..options import HeadOptions, resolve_head_options
from ..reference.ranking import count_against_reference, target_scores_reference
from ._comm import all_reduce_sum, check_shards, gather_rows, group_rank_world


def _gather_exclusions(exclude, num_rows: int, device, group):
    """All ranks' CSR exclusion lists as one CSR over the gathered rows."""
    if exclude is None:
        indptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
        items = torch.zeros(0, dtype=torch.int64, device=device)
    else:
        indptr, items = (torch.as_tensor(x, device=device).long() for x in exclude)
        if indptr.numel() != num_rows + 1:
            raise ValueError(f"exclude indptr must have B + 1 = {num_rows + 1} entries, got {indptr.numel()}")
    lengths, _ = gather_rows(indptr.diff(), group)
    all_items, _ = gather_rows(items, group)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]), all_items


def _prepare(hidden, item_shard, shard_start, num_items, exclude, process_group, head: HeadOptions):
    group, rank, _ = group_rank_world(process_group)
    _checks.check_float_tensor("hidden", hidden, ndim_min=2)
    _checks.check_float_tensor("item_shard", item_shard, ndim_min=2)
    if hidden.dim() != 2 or item_shard.dim() != 2 or hidden.shape[1] != item_shard.shape[1]:
        raise ValueError(f"hidden (B, d) and item_shard (n, d) must be 2-D with one d, got {tuple(hidden.shape)} "
                         f"and {tuple(item_shard.shape)}")
    check_shards(int(shard_start), item_shard.shape[0], int(num_items), item_shard.shape[1], hidden, group)
    h_all, sizes = gather_rows(hidden.detach(), group)
    indptr, items = _gather_exclusions(exclude, hidden.shape[0], hidden.device, group)
    offset = sum(sizes[:rank])
    return group, head, h_all, (indptr, items), slice(offset, offset + hidden.shape[0])


def sharded_target_rank(hidden: Tensor, item_shard: Tensor, targets: Tensor, *, shard_start: int, num_items: int,
                        process_group=None, options: HeadOptions | None = None, exclude=None, impl: str = "auto",
                        chunk_size: int | None = None, **head_options) -> Tensor:
    """``target_rank`` of this rank's rows against the sharded table: (B,) int64.
    ``targets`` and ``exclude`` (CSR ``(indptr, items)``) are in global ids.

    The rank that owns a row's target scores it first (the fused counting
    kernel's own expression, or the chunked reference's matmul), an
    all-reduce of B floats hands the score to every rank, each counts its own
    candidates against it (the same expression, so an item on another shard
    equal to the target ties with it), and an all-reduce of B counts sums
    them. ``impl``: ``"triton"`` (no scores held beyond a tile), ``"torch"``
    (one chunk of scores at a time), ``"auto"``. Memory does not grow with
    the number of rows beyond O(B)."""
    group, head, h_all, (indptr, ex_items), own = _prepare(hidden, item_shard, shard_start, num_items, exclude,
                                                           process_group, resolve_head_options(options, head_options))
    _checks.check_index_tensor("targets", targets)
    _checks.raise_on_invalid_targets(targets, num_items, ignore_index=-(2**62))
    t_all, _ = gather_rows(targets.long(), group)
    n_local = item_shard.shape[0]
    dtype = _checks.compute_dtype(h_all, item_shard)
    impl = _checks.resolve_impl(_checks.ranking_impl(impl), hidden.device, dtype, hidden.shape[-1])
    with torch.no_grad():
        local_t = t_all - shard_start
        t_here = torch.where((local_t >= 0) & (local_t < n_local), local_t, -1)
        local = _local_exclusions(indptr, ex_items, shard_start, n_local, h_all.shape[0])
        if impl == "triton":
            r = item_scale(item_shard, head)
            has_nan = may_score_nan(h_all, item_shard)
            _, score = kernels().target_rank_counts(h_all, item_shard, r, t_here, count=False,
                                                    compute_dtype=dtype)
            score = all_reduce_sum(torch.where(t_here >= 0, score, 0.0), group)
            exclude_local = unique_exclusions(*local, h_all.shape[0], max(n_local, 1))
            counts, _ = kernels().target_rank_counts(h_all, item_shard, r, t_here, exclude=exclude_local,
                                                     target_score=score, has_nan=has_nan, compute_dtype=dtype)
        else:
            with without_autocast_context():
                h_op, e_op = h_all.to(dtype), item_shard.to(dtype)
                score = target_scores_reference(h_op, e_op, t_here, options=head, chunk_size=chunk_size)
                score = all_reduce_sum(torch.where(t_here >= 0, score, 0.0), group)
                counts = count_against_reference(h_op, e_op, t_here, score, options=head, exclude=local,
                                                 chunk_size=chunk_size)
        counts = all_reduce_sum(counts, group)
    return 1 + counts[own]


def _local_exclusions(indptr: Tensor, items: Tensor, shard_start: int, n_local: int, num_rows: int):
    """The gathered rows' exclusion lists cut to this shard's items, in local ids (CSR)."""
    local = items - shard_start
    keep = (local >= 0) & (local < n_local)
    rows = torch.repeat_interleave(torch.arange(num_rows, device=items.device), indptr.diff(),
                                   output_size=items.numel())
    counts = torch.bincount(rows[keep], minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), local[keep]


def sharded_topk_scores(hidden: Tensor, item_shard: Tensor, k: int, *, shard_start: int, num_items: int,
                        process_group=None, options: HeadOptions | None = None, exclude=None, impl: str = "auto",
                        **head_options) -> TopK:
    """``topk_scores`` of this rank's rows against the sharded table: values and
    global item ids, sorted by score with ties to the smaller global id."""
    if int(k) != k or not 1 <= k <= num_items:
        raise ValueError(f"k must lie in 1..N = {num_items}, got {k}")
    group, head, h_all, (indptr, ex_items), own = _prepare(hidden, item_shard, shard_start, num_items, exclude,
                                                           process_group, resolve_head_options(options, head_options))
    n_local = item_shard.shape[0]
    B = h_all.shape[0]
    with torch.no_grad():
        if n_local:
            local_exclude = _local_exclusions(indptr, ex_items, shard_start, n_local, B)
            top = topk_scores(h_all, item_shard, min(int(k), n_local), options=head, exclude=local_exclude,
                              impl=impl)
            values = top.values
            ids = torch.where(top.indices >= 0, top.indices + shard_start, top.indices)
        else:
            values = torch.full((B, 0), float("-inf"), device=hidden.device)
            ids = torch.full((B, 0), -1, dtype=torch.int64, device=hidden.device)
        width = int(k)
        pad = width - values.shape[1]
        if pad:
            values = torch.cat([values, values.new_full((B, pad), float("-inf"))], 1)
            ids = torch.cat([ids, ids.new_full((B, pad), -1)], 1)
        # Every rank's candidates for every row; each rank merges its own rows'.
        all_values, _ = gather_rows(values[None], group)
        all_ids, _ = gather_rows(ids[None], group)
        mine = (all_values[:, own], all_ids[:, own])
        merged_values, merged_ids = (x.permute(1, 0, 2).reshape(x.shape[1], -1) for x in mine)
    return _merge(merged_values, merged_ids, width, num_items)


def _merge(values: Tensor, ids: Tensor, k: int, num_items: int) -> TopK:
    """Top-k of the candidates by score, ties to the smaller id, padding (-1) last."""
    order_ids = torch.where(ids >= 0, ids, num_items)
    by_id = torch.argsort(order_ids, dim=1, stable=True)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return TopK(values.gather(1, by_value), ids.gather(1, by_value))
