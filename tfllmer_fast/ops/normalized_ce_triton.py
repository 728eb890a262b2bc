"""The fused (Triton) path of ``normalized_softmax_ce`` as torch.library custom ops.

``tfllmer_fast::normalized_ce_fwd(hidden, item_emb, targets, *HeadOptions,
*LossOptions, compute_dtype, compute_o, check_inputs)`` returns per-row losses, the log-sum-exp and
the softmax-weighted item mean ``o`` that the backward reuses for dH;
``tfllmer_fast::normalized_ce_item_grad`` computes dE. Both have fake (meta)
implementations, so ``torch.compile(fullgraph=True)`` traces through them. The
small O(B d) and O(N d) pieces around the kernels (scales, the target logit,
dH) are plain torch in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import HeadOptions
from . import _checks
from ._kernels import kernels
from ._library import HEAD_FIELDS, LOSS_FIELDS, define_op, head_options, loss_options
from ._scales import item_scale, row_scale, scaled_items


def _item_sum(item_emb: Tensor, scale: Tensor, chunk: int = 1 << 16) -> Tensor:
    """sum_j r_j e_j in fp32 (d,), chunked so no fp32 copy of the table is made."""
    total = torch.zeros(item_emb.shape[1], device=item_emb.device, dtype=torch.float32)
    for start in range(0, item_emb.shape[0], chunk):
        block = item_emb[start : start + chunk].float()
        total += scale[start : start + chunk] @ block
    return total


def _kernel_items(item_emb: Tensor, scale: Tensor, normalize_items: bool, dtype: torch.dtype) -> Tensor:
    """The rows the kernels multiply with: ``r_j e_j`` rounded once to the
    compute dtype, contiguous (recomputed in the backward rather than kept)."""
    if not normalize_items and item_emb.dtype == dtype and item_emb.is_contiguous():
        return item_emb
    return scaled_items(item_emb, scale, dtype)


def _target_rows(item_emb: Tensor, scale: Tensor, targets: Tensor, dtype: torch.dtype) -> Tensor:
    """v_t in fp32 (B, d) for the (clamped) targets, rounded exactly as the
    kernels' rows are, so the target logit matches the log-sum-exp's terms."""
    return scaled_items(item_emb.index_select(0, targets), scale.index_select(0, targets), dtype).float()


def _fwd(hidden: Tensor, item_emb: Tensor, targets: Tensor, *args) -> tuple[Tensor, Tensor, Tensor]:
    head, loss_opts = head_options(args, 0), loss_options(args, HEAD_FIELDS)
    compute_dtype, compute_o, check_inputs = args[HEAD_FIELDS + LOSS_FIELDS :]
    N = item_emb.shape[0]
    ignore_index, label_smoothing = loss_opts
    # CPU checks are free of device syncs, so they always run; on CUDA a bad
    # target poisons its row with NaN instead of stalling the stream.
    if check_inputs or hidden.device.type == "cpu":
        _checks.raise_on_invalid_targets(targets, N, ignore_index)
    if check_inputs:
        _checks.raise_on_non_finite("hidden", hidden)
        _checks.raise_on_non_finite("item_emb", item_emb)

    s = row_scale(hidden, head)
    r = item_scale(item_emb, head)
    lse, o = kernels().normalized_lse_forward(
        hidden, _kernel_items(item_emb, r, head.normalize_items, compute_dtype), s, compute_o=compute_o
    )

    valid = targets != ignore_index
    safe_t = torch.where(valid & (targets >= 0) & (targets < N), targets, 0)
    dots = (hidden.float() * _target_rows(item_emb, r, safe_t, compute_dtype)).sum(1)
    loss = lse - (1.0 - label_smoothing) * s * dots
    if label_smoothing > 0:
        loss = loss - (label_smoothing / N) * s * (hidden.float() @ _item_sum(item_emb, r))
    loss = torch.where(valid, loss, 0.0)
    loss = torch.where(_checks.invalid_targets(targets, N, ignore_index), float("nan"), loss)
    if o is None:
        o = hidden.new_empty((0, hidden.shape[1]), dtype=torch.float32)
    return loss, lse, o


def _fwd_fake(hidden, item_emb, targets, *args):
    B, D = hidden.shape
    o_rows = B if args[HEAD_FIELDS + LOSS_FIELDS + 1] else 0
    return (
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty((o_rows, D), dtype=torch.float32),
    )


normalized_ce_fwd = define_op(
    "normalized_ce_fwd",
    "(Tensor hidden, Tensor item_emb, Tensor targets, {head}, {loss}, ScalarType compute_dtype, bool compute_o, "
    "bool check_inputs) -> (Tensor, Tensor, Tensor)",
    _fwd, _fwd_fake,
)


def _item_grad(hidden, item_emb, targets, lse, grad_p, grad_t, *args) -> Tensor:
    head, (_, label_smoothing) = head_options(args, 0), loss_options(args, HEAD_FIELDS)
    compute_dtype = args[HEAD_FIELDS + LOSS_FIELDS]
    r = item_scale(item_emb, head)
    return kernels().normalized_ce_item_grad(
        hidden, _kernel_items(item_emb, r, head.normalize_items, compute_dtype), item_emb, row_scale(hidden, head), r,
        lse, grad_p, grad_t, targets,
        label_smoothing=label_smoothing, eps=head.eps, normalize_items=head.normalize_items,
    )


normalized_ce_item_grad = define_op(
    "normalized_ce_item_grad",
    "(Tensor hidden, Tensor item_emb, Tensor targets, Tensor lse, Tensor grad_p, Tensor grad_t, {head}, {loss}, "
    "ScalarType compute_dtype) -> Tensor",
    _item_grad, lambda hidden, item_emb, *args: torch.empty_like(item_emb),
)


def _setup_context(ctx, inputs, output):
    hidden, item_emb, targets, *args = inputs
    _, lse, o = output
    ctx.save_for_backward(hidden, item_emb, targets, lse, o)
    ctx.options = tuple(args[: HEAD_FIELDS + LOSS_FIELDS + 1])
    ctx.mark_non_differentiable(o)
    ctx.num_inputs = len(inputs)


def _backward(ctx, grad_loss, grad_lse, grad_o):
    hidden, item_emb, targets, lse, o = ctx.saved_tensors
    head, (ignore_index, label_smoothing) = head_options(ctx.options, 0), loss_options(ctx.options, HEAD_FIELDS)
    compute_dtype = ctx.options[-1]
    N = item_emb.shape[0]
    valid = targets != ignore_index
    zeros = torch.zeros_like(lse)
    # d row_loss / d z = p - (1-ls) onehot - ls/N, and d lse / d z = p: a multiplies p,
    # b the target and smoothing terms. Ignored rows have zero loss gradient.
    b = torch.where(valid, grad_loss, 0.0) if grad_loss is not None else zeros
    a = b + grad_lse if grad_lse is not None else b
    safe_t = torch.where(valid & (targets >= 0) & (targets < N), targets, 0)

    grad_hidden = grad_items = None
    if ctx.needs_input_grad[0]:
        r = item_scale(item_emb, head)
        q = a[:, None] * o - ((1.0 - label_smoothing) * b)[:, None] * _target_rows(item_emb, r, safe_t, compute_dtype)
        if label_smoothing > 0:
            q = q - (label_smoothing / N) * b[:, None] * _item_sum(item_emb, r)[None, :]
        grad_hidden = hidden_grad(hidden, q, head).to(hidden.dtype)
    if ctx.needs_input_grad[1]:
        grad_items = normalized_ce_item_grad(
            hidden, item_emb, torch.where(valid, targets, -1), lse, a.contiguous(), b.contiguous(), *ctx.options,
        )
    return (grad_hidden, grad_items) + (None,) * (ctx.num_inputs - 2)


def hidden_grad(hidden: Tensor, q: Tensor, head: HeadOptions) -> Tensor:
    """dL/dh in fp32 from q = sum_j G_ij e'_j (G = dL/dlogits, fp32 (B, d)): the
    1/temperature and, with ``normalize_hidden``, the normalization's Jacobian
    (the eps path below the threshold, as ``F.normalize`` defines it)."""
    if not head.normalize_hidden:
        return q / head.temperature
    hf = hidden.to(q.dtype)
    norms = torch.linalg.vector_norm(hf, dim=1, keepdim=True)
    n = hf / norms.clamp_min(head.eps)
    radial = torch.where(norms > head.eps, (n * q).sum(1, keepdim=True), 0.0)
    return (q - radial * n) / (norms.clamp_min(head.eps) * head.temperature)


torch.library.register_autograd("tfllmer_fast::normalized_ce_fwd", _backward, setup_context=_setup_context)
