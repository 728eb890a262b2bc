"""The fused (Triton) path of ``normalized_softmax_ce`` as torch.library custom ops.

``tfllmer_fast::normalized_ce_fwd(hidden, item_emb, targets, *HeadOptions,
*LossOptions, compute_dtype, compute_o, check_inputs)`` returns per-row losses, the log-sum-exp,
the softmax-weighted mean ``o`` of the items other than each row's target and
the target logit as the kernel computed it, which the backward reuses for dH;
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
from ._library import HEAD_FIELDS, LOSS_FIELDS, define_op, head_options, loss_options, without_autocast
from ._scales import item_scale, row_scale, scaled_items


def _item_sum(item_emb: Tensor, scale: Tensor, dtype: torch.dtype, chunk: int = 1 << 16) -> Tensor:
    """sum_j v_j in fp32 (d,), each ``v_j = r_j e_j`` rounded to ``dtype`` as the
    kernels' rows are (so the smoothing term cancels the target's exactly where
    it should), chunked so no fp32 copy of the table is made."""
    total = torch.zeros(item_emb.shape[1], device=item_emb.device, dtype=torch.float32)
    for start in range(0, item_emb.shape[0], chunk):
        block = scaled_items(item_emb[start : start + chunk], scale[start : start + chunk], dtype)
        total += block.float().sum(0)
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


def _fwd(hidden: Tensor, item_emb: Tensor, targets: Tensor, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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

    # The queries rounded once (fp32 queries under bf16 autocast, say): the
    # kernel's log-sum-exp and the target logit below see the same values.
    hq = hidden.to(compute_dtype)
    s = row_scale(hidden, head)
    r = item_scale(item_emb, head)
    lse, target_logit, o = kernels().normalized_lse_forward(
        hq, _kernel_items(item_emb, r, head.normalize_items, compute_dtype), s, kernel_targets(targets, N, ignore_index),
        compute_o=compute_o,
    )
    # The target logit comes from the kernel's own dot: the same rounding as
    # the log-sum-exp's term for it, so a confident row's loss and p_t agree.
    valid = targets != ignore_index
    loss = lse - (1.0 - label_smoothing) * target_logit
    if label_smoothing > 0:
        loss = loss - (label_smoothing / N) * s * (hq.float() @ _item_sum(item_emb, r, compute_dtype))
    loss = torch.where(valid, loss, 0.0)
    loss = torch.where(_checks.invalid_targets(targets, N, ignore_index), float("nan"), loss)
    if o is None:
        o = hidden.new_empty((0, hidden.shape[1]), dtype=torch.float32)
    return loss, lse, o, target_logit


def kernel_targets(targets: Tensor, num_items: int, ignore_index: int) -> Tensor:
    """(B,) int64 contiguous: each row's target where it has one in range, else -1."""
    keep = (targets != ignore_index) & ~_checks.invalid_targets(targets, num_items, ignore_index)
    return torch.where(keep, targets, -1).long().contiguous()


def _fwd_fake(hidden, item_emb, targets, *args):
    B, D = hidden.shape
    o_rows = B if args[HEAD_FIELDS + LOSS_FIELDS + 1] else 0
    return (
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty((o_rows, D), dtype=torch.float32),
        hidden.new_empty(B, dtype=torch.float32),
    )


normalized_ce_fwd = define_op(
    "normalized_ce_fwd",
    "(Tensor hidden, Tensor item_emb, Tensor targets, {head}, {loss}, ScalarType compute_dtype, bool compute_o, "
    "bool check_inputs) -> (Tensor, Tensor, Tensor, Tensor)",
    _fwd, _fwd_fake,
)


def _item_grad(hidden, item_emb, targets, lse, grad_p, target_coef, smooth_coef, *args) -> Tensor:
    head, compute_dtype = head_options(args, 0), args[HEAD_FIELDS]
    r = item_scale(item_emb, head)
    return kernels().normalized_ce_item_grad(
        hidden.to(compute_dtype), _kernel_items(item_emb, r, head.normalize_items, compute_dtype), item_emb,
        row_scale(hidden, head), r, lse, grad_p, target_coef, smooth_coef, targets,
        eps=head.eps, normalize_items=head.normalize_items,
    )


normalized_ce_item_grad = define_op(
    "normalized_ce_item_grad",
    "(Tensor hidden, Tensor item_emb, Tensor targets, Tensor lse, Tensor grad_p, Tensor target_coef, "
    "Tensor smooth_coef, {head}, ScalarType compute_dtype) -> Tensor",
    # The real op returns a contiguous table gradient whatever item_emb's layout.
    _item_grad, lambda hidden, item_emb, *args: item_emb.new_empty(item_emb.shape),
)


def _setup_context(ctx, inputs, output):
    hidden, item_emb, targets, *args = inputs
    _, lse, o, target_logit = output
    ctx.save_for_backward(hidden, item_emb, targets, lse, o, target_logit)
    ctx.options = tuple(args[: HEAD_FIELDS + LOSS_FIELDS + 1])
    ctx.mark_non_differentiable(o, target_logit)
    ctx.num_inputs = len(inputs)


def _backward(ctx, grad_loss, grad_lse, grad_o, grad_target_logit):
    hidden, item_emb, targets, lse, o, target_logit = ctx.saved_tensors
    head, (ignore_index, label_smoothing) = head_options(ctx.options, 0), loss_options(ctx.options, HEAD_FIELDS)
    compute_dtype = ctx.options[-1]
    N = item_emb.shape[0]
    valid = targets != ignore_index
    zeros = torch.zeros_like(lse)
    # d row_loss / d z = p - (1-ls) onehot - ls/N, and d lse / d z = p: a multiplies p,
    # b the target and smoothing terms. Ignored rows have zero loss gradient; a
    # row with an out-of-range target (CUDA, unchecked) has a NaN loss and gets
    # NaN gradients, so an AMP step's inf/NaN check skips the step.
    b = torch.where(valid, grad_loss, 0.0) if grad_loss is not None else zeros
    a = b + grad_lse if grad_lse is not None else b
    bad = _checks.invalid_targets(targets, N, ignore_index)
    a, b = torch.where(bad, float("nan"), a), torch.where(bad, float("nan"), b)

    # The target's own term in fp32: the kernels leave p_t out of their 16-bit
    # products, where a p_t - b would cancel to nothing as p_t -> 1.
    r = item_scale(item_emb, head)
    t = kernel_targets(targets, N, ignore_index)
    p_t = torch.exp(target_logit - lse)
    target_coef = torch.where(t >= 0, a * p_t - (1.0 - label_smoothing) * b, 0.0)
    smooth_coef = -(label_smoothing / N) * b

    grad_hidden = grad_items = None
    if ctx.needs_input_grad[0]:
        v_t = _target_rows(item_emb, r, t.clamp_min(0), compute_dtype)
        q = a[:, None] * o + target_coef[:, None] * v_t
        if label_smoothing > 0:
            q = q + smooth_coef[:, None] * _item_sum(item_emb, r, compute_dtype)[None, :]
        grad_hidden = hidden_grad(hidden, q, head).to(hidden.dtype)
    if ctx.needs_input_grad[1]:
        grad_items = normalized_ce_item_grad(
            hidden, item_emb, t, lse, a.contiguous(), target_coef.contiguous(), smooth_coef.contiguous(),
            *head, compute_dtype,
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


torch.library.register_autograd("tfllmer_fast::normalized_ce_fwd", without_autocast(_backward),
                                setup_context=_setup_context)
