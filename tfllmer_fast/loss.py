"""``NormalizedSoftmaxCELoss``: the fused loss as a module that takes the item table at call time."""

from __future__ import annotations

from torch import Tensor, nn

from .ops import _checks
from .ops.normalized_ce import REDUCTIONS, normalized_softmax_ce
from .options import HeadOptions, LossOptions, resolve_head_options


class NormalizedSoftmaxCELoss(nn.Module):
    """``forward(hidden, item_emb, targets)`` is ``normalized_softmax_ce(hidden,
    item_emb, targets, options=self.options, ...)`` with the settings given here:
    hidden (..., d), item_emb (N, d) (any table the model owns, an
    ``nn.Embedding``'s ``weight`` say), targets (...) -> the loss (per row with
    ``reduction="none"``). The form of ``nn.CrossEntropyLoss`` and of the fused
    linear cross-entropy losses (cut-cross-entropy's ``LinearCrossEntropy``,
    Liger's ``LigerFusedLinearCrossEntropyLoss``), for a model whose item table
    is tied elsewhere. ``normalize_items=False`` is plain cross-entropy over
    ``hidden @ item_emb.T``. Plain torch equivalent::

        F.cross_entropy(normalized_logits(hidden, item_emb, options=options).flatten(0, -2).float(),
                        targets.flatten(), ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing)
    """

    def __init__(self, *, options: HeadOptions | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, impl: str = "auto", check_inputs: bool = False,
                 chunk_size: int | None = None, **head_options):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.options = resolve_head_options(options, head_options)
        self.loss_options = LossOptions.make(ignore_index, label_smoothing)
        self.reduction = reduction
        self.impl = _checks.canonical_impl(impl)
        self.check_inputs = bool(check_inputs)
        self.chunk_size = chunk_size

    def forward(self, hidden: Tensor, item_emb: Tensor, targets: Tensor, *, row_weight: Tensor | None = None,
                return_lse: bool = False):
        return normalized_softmax_ce(
            hidden, item_emb, targets, options=self.options, **self.loss_options._asdict(), reduction=self.reduction,
            row_weight=row_weight, return_lse=return_lse, impl=self.impl, check_inputs=self.check_inputs,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        fields = {**self.options._asdict(), **self.loss_options._asdict(), "reduction": self.reduction,
                  "impl": self.impl}
        return ", ".join(f"{k}={v}" for k, v in fields.items())
