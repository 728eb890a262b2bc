"""Shared parts of the sequential backbones: the item table tied to the
normalized softmax head, batching, and prediction at the last position."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed
from torch import Tensor, nn

from ... import HeadOptions, NormalizedSoftmaxHead
from ...distributed import ShardedNormalizedSoftmaxHead

PAD = 0


def left_pad(sequences, length: int) -> np.ndarray:
    """(len(sequences), length) int64: the last ``length`` items of each sequence,
    right-aligned, zeros (padding) in front."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq[-length:], dtype=np.int64)
        if tail.size:
            out[row, length - tail.size :] = tail
    return out


def real_rows(hidden: Tensor, targets: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
    """The (rows, d) hidden states and (rows,) targets of the non-padding
    positions, in order. With ``rows`` given (a host integer) no value is read
    back from the device: the kept positions are the first ``rows`` of a
    stable sort of the padding mask."""
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    keep = flat_t != PAD
    if rows is None:
        rows = int(keep.sum())
    order = torch.argsort((~keep).to(torch.uint8), stable=True)[:rows]
    return flat_h.index_select(0, order), flat_t.index_select(0, order)

class SequentialRecommender(nn.Module):
    """Backbone + ``NormalizedSoftmaxHead`` over items 1..num_items (row 0 is
    padding). The input embedding *is* the head's table (``head.weight``).

    Subclasses implement ``encode(seq) -> (B, L, dim)`` and may override
    ``make_batch`` (next-item targets by default) and ``prediction_input``.
    """

    def __init__(self, num_items: int, dim: int, max_len: int, *, options: HeadOptions | None = None,
                 loss_on: str = "all", impl: str = "auto", sharded: bool = False, **head_options):
        super().__init__()
        if loss_on not in ("all", "last"):
            raise ValueError(f"loss_on must be 'all' or 'last', got {loss_on!r}")
        self.num_items = num_items
        self.dim = dim
        self.max_len = max_len
        self.loss_on = loss_on
        # sharded: the table is split over torch.distributed ranks (catalog
        # parallelism); this rank holds rows [head.shard_start, head.shard_stop).
        self.sharded = sharded
        head_type = ShardedNormalizedSoftmaxHead if sharded else NormalizedSoftmaxHead
        self.head = head_type(num_items + 1, dim, options=options, padding_idx=PAD, impl=impl, **head_options)
        # Unit-norm-sized rows, like the pca/recpca initializations below.
        if sharded:
            self.head.reset_parameters(std=1.0 / math.sqrt(dim))
        else:
            with torch.no_grad():
                self.head.weight.normal_(0.0, 1.0 / math.sqrt(dim))
        self._zero_padding_row()

    @property
    def item_table(self) -> Tensor:
        """The item table, or this rank's shard of it when ``sharded``."""
        return self.head.weight

    @property
    def table_rows(self) -> tuple[int, int]:
        """[start, stop) of the global rows ``item_table`` holds."""
        return (self.head.shard_start, self.head.shard_stop) if self.sharded else (0, self.num_items + 1)

    def _zero_padding_row(self) -> None:
        start, stop = self.table_rows
        if start <= PAD < stop:
            with torch.no_grad():
                self.head.weight[PAD - start].zero_()

    def embed_items(self, seq: Tensor) -> Tensor:
        if self.sharded:
            return self.head.embed(seq)
        return nn.functional.embedding(seq, self.item_table, padding_idx=PAD)

    def init_items(self, matrix, *, freeze: bool = False) -> None:
        """Set item rows 1..N from ``matrix`` (N, dim) or (N + 1, dim) with row 0
        ignored; rows are scaled to unit norm. ``freeze`` stops their training."""
        matrix = torch.as_tensor(np.asarray(matrix), dtype=torch.float32)
        if matrix.shape == (self.num_items + 1, self.dim):
            matrix = matrix[1:]
        if matrix.shape != (self.num_items, self.dim):
            raise ValueError(f"item init matrix has shape {tuple(matrix.shape)}, expected ({self.num_items}, {self.dim})")
        if not torch.isfinite(matrix).all():
            raise ValueError("item init matrix contains NaN or Inf")
        matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
        full = torch.cat([matrix.new_zeros(1, self.dim), matrix])
        start, stop = self.table_rows
        with torch.no_grad():
            self.head.weight.copy_(full[start:stop].to(self.head.weight))
        self._zero_padding_row()
        self.head.weight.requires_grad_(not freeze)

    def encode(self, seq: Tensor) -> Tensor:
        raise NotImplementedError

    def make_batch(self, sequences, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Next-item training pairs: input s[:-1], targets s[1:] (last max_len),
        padding targets ignored; with ``loss_on="last"`` only the final position."""
        inputs = left_pad([s[:-1] for s in sequences], self.max_len)
        targets = left_pad([s[1:] for s in sequences], self.max_len)
        if self.loss_on == "last":
            targets[:, :-1] = PAD
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.head_loss(self.encode(inputs), targets)

    def head_loss(self, hidden: Tensor, targets: Tensor, row_weight=None, rows: int | None = None) -> Tensor:
        """Mean cross-entropy over the non-padding targets. Only those rows go to
        the head: on short-sequence data (Amazon: ~6 real positions of 50) the
        padding rows would otherwise be most of the head's work.
        ``row_weight(targets) -> (R,)`` weights the rows (a weighted mean).
        ``rows``: how many targets are not padding, read off the batch on the
        host before it moved (``TrainStep`` does); without it the count is read
        back from the device, a synchronization."""
        hidden, targets = real_rows(hidden, targets, rows)
        if self.sharded:
            if row_weight is not None:
                raise ValueError("row weights are not supported with a sharded table")
            # Each rank's share of the global mean (its sum over the global row
            # count, times the world size): averaged over ranks, as the gradients
            # are, it is the one-process mean over the whole batch, however the
            # real rows fall across ranks.
            world = torch.distributed.get_world_size()
            count = torch.full((), targets.shape[0], device=targets.device, dtype=torch.int64)
            torch.distributed.all_reduce(count)
            return self.head(hidden, targets, reduction="sum") * (world / count.clamp_min(1))
        return self.head(hidden, targets, row_weight=None if row_weight is None else row_weight(targets))

    def prediction_input(self, histories) -> Tensor:
        return torch.from_numpy(left_pad(histories, self.max_len))

    def predict_hidden(self, histories, device) -> Tensor:
        """(B, dim) hidden state that scores the next item after each history."""
        return self.encode(self.prediction_input(histories).to(device))[:, -1]
