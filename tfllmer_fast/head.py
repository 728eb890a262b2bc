"""``NormalizedSoftmaxHead``: the item table plus the fused full-softmax loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .ops import _checks
from .ops.normalized_ce import normalized_softmax_ce
from .options import HeadOptions, resolve_head_options
from .reference.normalized_ce import normalized_logits


class HeadOptionsView:
    """The heads' ``HeadOptions`` fields as read-only attributes."""

    options: HeadOptions

    @property
    def temperature(self) -> float:
        return self.options.temperature

    @property
    def normalize_items(self) -> bool:
        return self.options.normalize_items

    @property
    def normalize_hidden(self) -> bool:
        return self.options.normalize_hidden


class NormalizedSoftmaxHead(HeadOptionsView, nn.Module):
    """Output head over ``num_items`` items with an owned (shareable) item table.

    ``forward(hidden, targets)`` is ``normalized_softmax_ce(hidden, self.weight,
    targets, ...)``: hidden (..., dim), targets (...) -> scalar loss (or per-row
    with ``reduction="none"``). With ``padding_idx`` the padding row starts at
    zero and never receives gradient (as in ``nn.Embedding``), and targets equal
    to it are ignored. Tie the table to a backbone's input embedding with
    ``embedding.weight = head.weight``; for a table the model already owns,
    ``NormalizedSoftmaxCELoss`` takes it at call time instead. The head
    options come as ``options=HeadOptions(...)`` or as its fields' keywords.
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        *,
        options: HeadOptions | None = None,
        padding_idx: int | None = None,
        impl: str = "auto",
        device=None,
        dtype=None,
        **head_options,
    ):
        super().__init__()
        if num_items <= 0 or dim <= 0:
            raise ValueError(f"num_items and dim must be positive, got {num_items} and {dim}")
        if padding_idx is not None and not 0 <= padding_idx < num_items:
            raise ValueError(f"padding_idx must lie in [0, {num_items}), got {padding_idx}")
        self.num_items = num_items
        self.dim = dim
        self.options = resolve_head_options(options, head_options)
        self.padding_idx = padding_idx
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(num_items, dim, device=device, dtype=dtype))
        self.reset_parameters()
        if padding_idx is not None:
            self.weight.register_post_accumulate_grad_hook(self._zero_padding_grad)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.dim))
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()

    def _zero_padding_grad(self, weight: Tensor) -> None:
        # In place, once the gradient is accumulated: a hook returning a new
        # gradient would copy the whole (N, d) table gradient every step.
        weight.grad[self.padding_idx] = 0

    def forward(
        self,
        hidden: Tensor,
        targets: Tensor,
        *,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        row_weight: Tensor | None = None,
        return_lse: bool = False,
        **deprecated,
    ):
        return normalized_softmax_ce(
            hidden,
            self.weight,
            targets,
            options=self.options,
            ignore_index=-100 if self.padding_idx is None else self.padding_idx,
            reduction=reduction,
            label_smoothing=label_smoothing,
            row_weight=_checks.row_weight_argument(row_weight, deprecated),
            return_lse=return_lse,
            impl=self.impl,
            **deprecated,
        )

    def scores(self, hidden: Tensor) -> Tensor:
        """Dense logits (..., num_items), for small catalogs and debugging."""
        return normalized_logits(hidden, self.weight, options=self.options)

    def extra_repr(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.options._asdict().items())
        return f"num_items={self.num_items}, dim={self.dim}, {fields}, padding_idx={self.padding_idx}"
