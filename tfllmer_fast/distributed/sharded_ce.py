"""The catalog-parallel head: each rank owns a contiguous slice of the item table.

Forward, per step: the ranks' queries and targets are all-gathered (data-
parallel backbones, B = the sum of every rank's rows); each rank runs the
single-process op (``normalized_softmax_ce``, fused kernel or reference) on
its shard for all B rows, the rows' targets that it owns as targets; the
global log-sum-exp is the log-sum-exp of the ranks' pieces (an all-gather of B
floats per rank), the target logit (the owner's lse minus its row loss, so the
op's own arithmetic) comes from the rank that owns the target (an all-reduce
of B floats) and, with label smoothing, the table's sum of
normalized rows from an all-reduce of d floats. Nothing of size B x N, or
N x d, ever crosses ranks.

Backward runs through the same collectives: each rank's share of the queries'
gradient is summed back to the rank that owns those rows (a reduce-scatter
on NCCL), and the shard's gradient stays local. ``item_shard`` receives the
gradient of the mean of the ranks' losses, the average DDP takes of the
backbone's gradients: W ranks at batch b update exactly as one process at
batch W b does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..head import HeadOptionsView
from ..ops import _checks
from ..ops.normalized_ce import REDUCTIONS, NormalizedCEOutput, normalized_softmax_ce, reduce_rows
from ..options import HeadOptions, LossOptions, resolve_head_options
from ._comm import all_reduce_sum, check_shards, gather_rows, group_rank_world, shard_range


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def sharded_normalized_softmax_ce(
    hidden: Tensor,
    item_shard: Tensor,
    targets: Tensor,
    *,
    shard_start: int,
    num_items: int,
    process_group=None,
    options: HeadOptions | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    row_weight: Tensor | None = None,
    return_lse: bool = False,
    impl: str = "auto",
    check_inputs: bool = False,
    chunk_size: int | None = None,
    **head_options,
):
    """``normalized_softmax_ce`` of this rank's rows against a table sharded over ranks.

    ``item_shard`` (n_r, d) holds rows ``[shard_start, shard_start + n_r)`` of
    the ``num_items``-row table (the shards tile it in rank order; uneven sizes
    are fine); ``hidden`` (..., d), ``targets`` (...) global item ids and
    ``row_weight`` are this rank's own rows (ranks may hold different numbers).
    Every other option means what it does in ``normalized_softmax_ce``
    (``label_smoothing``'s 1/N is the global N). The result on each rank is
    what ``normalized_softmax_ce(hidden, full_table, targets, ...)`` gives;
    ``hidden`` gets that result's gradient and ``item_shard`` the gradient of
    the mean of all ranks' results (DDP's convention). Every rank must call it
    (and run backward) together. Plain torch equivalent on one process::

        normalized_softmax_ce(hidden, torch.cat(all_shards), targets, ...)
    """
    weight = _checks.row_weight_argument(row_weight, head_options)
    head = resolve_head_options(options, head_options)
    group, rank, world = group_rank_world(process_group)
    _checks.check_float_tensor("hidden", hidden)
    _checks.check_float_tensor("item_shard", item_shard, ndim_min=2)
    _checks.check_index_tensor("targets", targets)
    if item_shard.dim() != 2 or hidden.shape[-1] != item_shard.shape[1]:
        raise ValueError(f"item_shard must be (n, d) with d = hidden's last dimension {hidden.shape[-1]}, "
                         f"got {tuple(item_shard.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {tuple(hidden.shape[:-1])}")
    if weight is not None and weight.shape != targets.shape:
        raise ValueError(f"row_weight has shape {tuple(weight.shape)}, expected {tuple(targets.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if _checks.canonical_impl(impl) == "torch_grad_in_forward":
        raise ValueError("impl='torch_grad_in_forward' finishes the gradient of a local loss; the sharded head "
                         "needs impl='auto', 'triton' or 'torch'")
    loss_opts = LossOptions.make(ignore_index, label_smoothing)
    check_shards(int(shard_start), item_shard.shape[0], int(num_items), item_shard.shape[1], hidden, group)

    h_own = hidden.reshape(-1, hidden.shape[-1])
    t_own = targets.reshape(-1).long()
    valid_own = t_own != loss_opts.ignore_index
    if check_inputs or h_own.device.type == "cpu":
        _checks.raise_on_invalid_targets(t_own, num_items, loss_opts.ignore_index)
    h_all, sizes = gather_rows(h_own, group)
    t_all, _ = gather_rows(t_own, group)
    offset = sum(sizes[:rank])

    shard = _ScaleGrad.apply(item_shard, 1.0 / world) if item_shard.requires_grad else item_shard
    n_local = shard.shape[0]
    local_t = t_all - shard_start
    owned = (t_all != loss_opts.ignore_index) & (local_t >= 0) & (local_t < n_local)
    if n_local:
        # One call gives the shard's log-sum-exp and, for the rows whose target
        # this shard owns, lse - target logit: the target logit then comes from
        # the op's own arithmetic (its roundings, its fp32 treatment of p_t),
        # not from a second computation beside it.
        local = normalized_softmax_ce(
            h_all, shard, torch.where(owned, local_t, -100), options=head, ignore_index=-100,
            reduction="none", return_lse=True, impl=impl, check_inputs=check_inputs, chunk_size=chunk_size,
        )
        local_lse = local.lse
        target_logit = all_reduce_sum(torch.where(owned, local.lse - local.loss, 0.0), group)
    else:
        work = torch.float64 if h_all.dtype == torch.float64 else torch.float32
        local_lse = h_all.new_full((h_all.shape[0],), float("-inf"), dtype=work)
        target_logit = all_reduce_sum(h_all.new_zeros(h_all.shape[0], dtype=work), group)
    pieces, _ = gather_rows(local_lse[None, :], group)
    lse = torch.logsumexp(pieces, dim=0)

    row_loss = lse - (1.0 - loss_opts.label_smoothing) * target_logit
    if loss_opts.label_smoothing > 0:
        table_sum = all_reduce_sum(_normalized(shard, head).sum(0), group)
        row_loss = row_loss - (loss_opts.label_smoothing / num_items) * (_scaled_queries(h_all, head) @ table_sum)
    own = slice(offset, offset + h_own.shape[0])
    rows = torch.where(valid_own, row_loss[own], 0.0)
    loss = reduce_rows(rows, t_own, weight, loss_opts.ignore_index, reduction, targets.shape)
    if return_lse:
        return NormalizedCEOutput(loss, lse[own].reshape(targets.shape))
    return loss


def _normalized(rows: Tensor, head: HeadOptions) -> Tensor:
    rows = rows.float() if rows.dtype != torch.float64 else rows
    return F.normalize(rows, dim=-1, eps=head.eps) if head.normalize_items else rows


def _scaled_queries(hidden: Tensor, head: HeadOptions) -> Tensor:
    h = hidden.float() if hidden.dtype != torch.float64 else hidden
    if head.normalize_hidden:
        h = F.normalize(h, dim=-1, eps=head.eps)
    return h / head.temperature


class ShardedNormalizedSoftmaxHead(HeadOptionsView, nn.Module):
    """``NormalizedSoftmaxHead`` with its table sharded over ``process_group``:
    this rank holds rows ``[shard_start, shard_stop)`` (``shard_range``) as
    ``weight``. ``forward(hidden, targets)`` is ``sharded_normalized_softmax_ce``;
    ``embed(ids)`` looks up global ids for the backbone's input (each rank
    serves the ids it owns, summed over ranks), so the table stays tied.
    Keep it out of DistributedDataParallel: each rank's shard is its own."""

    def __init__(self, num_items: int, dim: int, *, process_group=None, options: HeadOptions | None = None,
                 padding_idx: int | None = None, impl: str = "auto", device=None, dtype=None, **head_options):
        super().__init__()
        _, rank, world = group_rank_world(process_group)
        self.process_group = process_group
        self.num_items, self.dim = num_items, dim
        self.options = resolve_head_options(options, head_options)
        self.padding_idx, self.impl = padding_idx, impl
        self.shard_start, self.shard_stop = shard_range(num_items, rank, world)
        self.weight = nn.Parameter(torch.empty(self.shard_stop - self.shard_start, dim, device=device, dtype=dtype))
        self.reset_parameters(std=dim**-0.5)
        if padding_idx is not None and self.owns(padding_idx):
            with torch.no_grad():
                self.weight[padding_idx - self.shard_start].zero_()
            self.weight.register_post_accumulate_grad_hook(self._zero_padding_grad)

    def reset_parameters(self, std: float) -> None:
        """Normal(0, std) rows drawn for the whole table, this rank keeping its
        own: the random stream advances as it does for the one-process table,
        so every rank's later draws (the backbone's) match a one-process run's."""
        with torch.no_grad():
            full = torch.empty(self.num_items, self.dim, dtype=self.weight.dtype).normal_(0.0, std)
            self.weight.copy_(full[self.shard_start : self.shard_stop])

    def owns(self, item: int) -> bool:
        return self.shard_start <= item < self.shard_stop

    def _zero_padding_grad(self, weight: Tensor) -> None:
        # In place once accumulated, not a copy of the shard's gradient per step.
        weight.grad[self.padding_idx - self.shard_start] = 0

    def forward(self, hidden: Tensor, targets: Tensor, *, reduction: str = "mean", label_smoothing: float = 0.0,
                row_weight: Tensor | None = None, return_lse: bool = False, **deprecated):
        return sharded_normalized_softmax_ce(
            hidden, self.weight, targets, shard_start=self.shard_start, num_items=self.num_items,
            process_group=self.process_group, options=self.options,
            ignore_index=-100 if self.padding_idx is None else self.padding_idx, reduction=reduction,
            label_smoothing=label_smoothing, row_weight=_checks.row_weight_argument(row_weight, deprecated),
            return_lse=return_lse, impl=self.impl, **deprecated,
        )

    def embed(self, ids: Tensor) -> Tensor:
        """(..., dim) rows of the global ids ``ids`` (this rank's own lookups).
        All ranks call it together: ids are all-gathered, each rank fills the rows
        it owns, and an all-reduce sums them (its backward sends each row's
        gradient to the owning shard)."""
        _, rank, world = group_rank_world(self.process_group)
        flat = ids.reshape(-1)
        all_ids, sizes = gather_rows(flat, self.process_group)
        local = all_ids - self.shard_start
        owned = (local >= 0) & (local < self.weight.shape[0])
        table = _ScaleGrad.apply(self.weight, 1.0 / world) if self.weight.requires_grad else self.weight
        rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), table) * owned[:, None].to(table.dtype)
        rows = all_reduce_sum(rows, self.process_group)
        offset = sum(sizes[:rank])
        return rows[offset : offset + flat.shape[0]].reshape(*ids.shape, self.dim)

    def extra_repr(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.options._asdict().items())
        return (f"num_items={self.num_items}, dim={self.dim}, shard=[{self.shard_start}, {self.shard_stop}), "
                f"{fields}, padding_idx={self.padding_idx}")
