"""``normalized_softmax_ce``: full-softmax cross-entropy against L2-normalized items.

Input checks and dispatch live here; the fused path is in
``normalized_ce_triton`` and the plain torch reference in
``tfllmer_fast.reference.normalized_ce``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..options import HeadOptions, LossOptions, resolve_head_options
from ..reference.normalized_ce import normalized_ce_rows
from . import _checks, normalized_ce_grad_in_forward, normalized_ce_triton

REDUCTIONS = ("mean", "sum", "none")


class NormalizedCEOutput(NamedTuple):
    """``loss`` as reduced; ``lse`` the per-row log-sum-exp (fp32, shape of targets)."""

    loss: Tensor
    lse: Tensor


def normalized_softmax_ce(
    hidden: Tensor,
    item_emb: Tensor,
    targets: Tensor,
    *,
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
    """Cross-entropy over all N items without materializing the (B, N) logits.

    Shapes: ``hidden`` (..., d), ``item_emb`` (N, d), ``targets`` (...) int64
    or int32, ``row_weight`` (...) optional per-row weights (``weight=``, the
    old name, still works). The head options come as ``options=HeadOptions(...)``
    or as its fields' keywords (``temperature``, ``normalize_items``,
    ``normalize_hidden``, ``eps``): the logits are ``<h', e'_j> / temperature``
    with ``e'_j = e_j / max(||e_j||, eps)`` when ``normalize_items`` and ``h'``
    likewise when ``normalize_hidden``. Plain torch equivalent
    (``row_weight=None``)::

        e = F.normalize(item_emb, dim=-1, eps=eps) if normalize_items else item_emb
        h = F.normalize(hidden, dim=-1, eps=eps) if normalize_hidden else hidden
        F.cross_entropy((h @ e.T / temperature).flatten(0, -2).float(), targets.flatten(),
                        ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing)

    With ``row_weight`` the per-row losses are multiplied by it; ``"mean"`` then
    divides by the weight summed over non-ignored rows. ``"mean"`` over only
    ignored rows is NaN, as in torch; ``"sum"`` is a plain sum, so gradients
    accumulated over micro-batches add up exactly. The loss is fp32 whatever
    the input dtype (as ``F.cross_entropy`` gives under autocast). The valid-row
    count stays on the device: the call never synchronizes with the host.

    ``impl``: ``"triton"`` (CUDA tensors, or CPU tensors with
    ``TRITON_INTERPRET=1``), ``"torch"`` (the plain-torch reference under
    autograd, at most ``chunk_size`` x N logits at a time),
    ``"torch_grad_in_forward"`` (plain torch that finishes a reduced loss's
    gradients in the forward, the CPU path), ``"auto"`` (triton on CUDA,
    a torch path otherwise). The Triton gradients are exact: every probability enters dH
    and dE (cut-cross-entropy by default skips gradient blocks whose
    probabilities all fall below a threshold), and they are deterministic (no
    atomics). Gradients for ``item_emb`` are computed only when it requires grad.

    Precision of ``impl="triton"``: the logits accumulate in fp32 from the
    operands rounded once to the compute dtype (the queries as given, or as
    autocast rounds them, one rounding for the log-sum-exp and the target
    logit alike; the item rows ``e_j / ||e_j||`` as one table). In the
    gradients each p meets a 16-bit operand (as in torch's own bf16 / fp16
    backward), except each row's target term ``a p_t - (1 - eps) b``, which is
    formed and applied in fp32, so confident rows keep their gradient; fp16
    probabilities are scaled by 2^15 first (normal down to p = 1.9e-9).
    Measured against fp64 (bf16, B = 16, N = 256, d = 32): the target rows'
    dE median relative error 0.30 / 0.31 / 0.47 % at 1 - p_t = 1e-2 / 1e-3 /
    1e-4, where the torch bf16 path has 0.98 / 0.36 / 1.0 %. The tests hold
    every row of dH and dE within three times the same-dtype torch error plus
    the rounding floor ``4 (u |G| + delta |a| p (1 - p) + 2^-23 |terms|)``
    (``u`` the operand roundoff, ``delta`` = (u + 2^-20) (1 + max |logit|)),
    ``tests/ops/test_properties_ce.py``.

    Out-of-range targets raise on CPU; on CUDA their rows become NaN (no host
    sync) and so do the gradients (an AMP step's inf / NaN check then skips
    the step), unless ``check_inputs=True``, which raises, and also rejects
    NaN/Inf inputs.
    Rows of ``item_emb`` with norm below ``eps`` (a zero padding row) take the
    eps path exactly as ``F.normalize`` does.

    Returns the loss, or ``NormalizedCEOutput(loss, lse)`` when ``return_lse``.
    """
    weight = _checks.row_weight_argument(row_weight, head_options)
    head = resolve_head_options(options, head_options)
    _checks.check_float_tensor("hidden", hidden)
    _checks.check_float_tensor("item_emb", item_emb, ndim_min=2)
    _checks.check_index_tensor("targets", targets)
    if item_emb.dim() != 2:
        raise ValueError(f"item_emb must be 2-D (N, d), got shape {tuple(item_emb.shape)}")
    if hidden.shape[-1] != item_emb.shape[1]:
        raise ValueError(
            f"hidden has last dimension {hidden.shape[-1]} but item_emb rows have {item_emb.shape[1]}"
        )
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {tuple(hidden.shape[:-1])}")
    if weight is not None:
        _checks.check_float_tensor("row_weight", weight, ndim_min=0)
        if weight.shape != targets.shape:
            raise ValueError(f"row_weight has shape {tuple(weight.shape)}, expected {tuple(targets.shape)}")
    _checks.check_same_device(hidden=hidden, item_emb=item_emb, targets=targets, row_weight=weight)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    loss_opts = LossOptions.make(ignore_index, label_smoothing)
    if item_emb.shape[0] == 0:
        raise ValueError("item_emb has no rows")

    dtype = _checks.compute_dtype(hidden, item_emb)
    impl = selected_impl(hidden, item_emb, impl=impl, reduction=reduction, return_lse=return_lse)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    t1 = targets.reshape(-1).long()
    if impl == "torch_grad_in_forward":
        return _grad_in_forward(h2, item_emb, t1, weight, head, loss_opts, reduction, return_lse, check_inputs, chunk_size,
                        targets.shape)
    if impl == "triton":
        compute_o = hidden.requires_grad and torch.is_grad_enabled()
        rows, lse, _, _ = normalized_ce_triton.normalized_ce_fwd(
            h2, item_emb, t1, *head, *loss_opts, dtype, compute_o, bool(check_inputs)
        )
    else:
        rows, lse = _torch_rows(h2, item_emb, t1, head, loss_opts, check_inputs, chunk_size)

    loss = reduce_rows(rows, t1, weight, loss_opts.ignore_index, reduction, targets.shape)
    if return_lse:
        return NormalizedCEOutput(loss, lse.reshape(targets.shape))
    return loss


def selected_impl(hidden: Tensor, item_emb: Tensor, *, impl: str = "auto", reduction: str = "mean",
                  return_lse: bool = False) -> str:
    """The implementation ``normalized_softmax_ce`` runs for these inputs and
    settings (``"triton"``, ``"torch_grad_in_forward"`` or ``"torch"``); an
    explicit ``impl`` that cannot run raises, as the call would."""
    dtype = _checks.compute_dtype(hidden, item_emb)
    # Gradients in the forward serve a reduced loss; per-row losses and the lse,
    # which may carry gradients of their own, take the reference.
    fallback = "torch_grad_in_forward" if reduction != "none" and not return_lse else "torch"
    return _checks.resolve_impl(impl, hidden.device, dtype, hidden.shape[-1], fallback)


def _grad_in_forward(h2, item_emb, t1, weight, head, loss_opts, reduction, return_lse, check_inputs, chunk_size, shape):
    N = item_emb.shape[0]
    _checks.check_rows(h2, item_emb, t1, loss_opts.ignore_index, check_inputs)
    valid = t1 != loss_opts.ignore_index
    bad = _checks.invalid_targets(t1, N, loss_opts.ignore_index)
    work = torch.float64 if h2.dtype == torch.float64 else torch.float32
    coef = valid.to(work) if weight is None else valid * weight.reshape(-1).to(work)
    denom = coef.sum()
    if reduction == "mean":
        coef = coef / denom
    # A row with an out-of-range target makes the loss NaN (CUDA, unchecked), as the other paths do.
    coef = torch.where(bad, float("nan"), coef)
    grad = torch.is_grad_enabled() and reduction != "none"
    loss, rows, lse, _, _ = normalized_ce_grad_in_forward.normalized_ce_grad_in_forward(
        h2, item_emb, torch.where(valid & ~bad, t1, 0), coef, *head, *loss_opts,
        chunk_size or normalized_ce_grad_in_forward.chunk_rows(N, h2.device), grad and h2.requires_grad,
        grad and item_emb.requires_grad,
    )
    if reduction == "mean":
        # A mean over no rows is NaN, as in torch, with zero gradients.
        loss = torch.where(denom != 0, loss, float("nan"))
    if reduction == "none":
        rows = torch.where(valid, rows, 0.0)
        loss = torch.where(bad, float("nan"), rows if weight is None else rows * weight.reshape(-1)).reshape(shape)
    return NormalizedCEOutput(loss, lse.reshape(shape)) if return_lse else loss


def _torch_rows(h2, item_emb, t1, head, loss_opts, check_inputs, chunk_size):
    N = item_emb.shape[0]
    ignore_index = loss_opts.ignore_index
    _checks.check_rows(h2, item_emb, t1, ignore_index, check_inputs)
    bad = _checks.invalid_targets(t1, N, ignore_index)
    rows, lse = normalized_ce_rows(
        h2, item_emb, torch.where(bad, 0, t1), options=head, **loss_opts._asdict(), chunk_size=chunk_size
    )
    return torch.where(bad, float("nan"), rows), lse


def reduce_rows(rows, t1, weight, ignore_index, reduction, shape):
    """The per-row losses reduced as ``reduction`` says (a weighted mean over non-ignored rows for "mean")."""
    if weight is not None:
        rows = rows * weight.reshape(-1).to(rows.dtype)
    if reduction == "none":
        return rows.reshape(shape)
    if reduction == "sum":
        return rows.sum()
    valid = (t1 != ignore_index).to(rows.dtype)
    denom = valid.sum() if weight is None else (valid * weight.reshape(-1).to(rows.dtype)).sum()
    return rows.sum() / denom
