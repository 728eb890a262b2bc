"""The fused (Triton) path of ``normalized_softmax_ce`` as torch.library custom ops.

``tfllmer_fast::normalized_ce_fwd`` returns per-row losses, the log-sum-exp and
the softmax-weighted item mean ``o`` that the backward reuses for dH;
``tfllmer_fast::normalized_ce_item_grad`` computes dE. Both have fake (meta)
implementations, so ``torch.compile(fullgraph=True)`` traces through them. The
small O(B d) and O(N d) pieces around the kernels (scales, the target logit,
dH) are plain torch in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks
from ._scales import item_scale, row_scale, scaled_items


def _kernels():
    # Imported lazily: Triton reads TRITON_INTERPRET when kernels are decorated.
    from tfllmer_fast import kernels

    return kernels


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


@torch.library.custom_op("tfllmer_fast::normalized_ce_fwd", mutates_args=())
def normalized_ce_fwd(
    hidden: Tensor,
    item_emb: Tensor,
    targets: Tensor,
    temperature: float,
    normalize_items: bool,
    normalize_hidden: bool,
    eps: float,
    ignore_index: int,
    label_smoothing: float,
    compute_dtype: torch.dtype,
    compute_o: bool,
    check_inputs: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    N = item_emb.shape[0]
    # CPU checks are free of device syncs, so they always run; on CUDA a bad
    # target poisons its row with NaN instead of stalling the stream.
    if check_inputs or hidden.device.type == "cpu":
        _checks.raise_on_invalid_targets(targets, N, ignore_index)
    if check_inputs:
        _checks.raise_on_non_finite("hidden", hidden)
        _checks.raise_on_non_finite("item_emb", item_emb)

    s = row_scale(hidden, temperature, normalize_hidden, eps)
    r = item_scale(item_emb, normalize_items, eps)
    lse, o = _kernels().normalized_lse_forward(
        hidden, _kernel_items(item_emb, r, normalize_items, compute_dtype), s, compute_o=compute_o
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


@normalized_ce_fwd.register_fake
def _(hidden, item_emb, targets, temperature, normalize_items, normalize_hidden, eps, ignore_index,
      label_smoothing, compute_dtype, compute_o, check_inputs):
    B, D = hidden.shape
    o_rows = B if compute_o else 0
    return (
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty(B, dtype=torch.float32),
        hidden.new_empty((o_rows, D), dtype=torch.float32),
    )


@torch.library.custom_op("tfllmer_fast::normalized_ce_item_grad", mutates_args=())
def normalized_ce_item_grad(
    hidden: Tensor,
    item_emb: Tensor,
    targets: Tensor,
    lse: Tensor,
    grad_p: Tensor,
    grad_t: Tensor,
    temperature: float,
    normalize_items: bool,
    normalize_hidden: bool,
    eps: float,
    label_smoothing: float,
    compute_dtype: torch.dtype,
) -> Tensor:
    r = item_scale(item_emb, normalize_items, eps)
    return _kernels().normalized_ce_item_grad(
        hidden, _kernel_items(item_emb, r, normalize_items, compute_dtype), item_emb,
        row_scale(hidden, temperature, normalize_hidden, eps), r,
        lse, grad_p, grad_t, targets,
        label_smoothing=label_smoothing, eps=eps, normalize_items=normalize_items,
    )


@normalized_ce_item_grad.register_fake
def _(hidden, item_emb, targets, lse, grad_p, grad_t, temperature, normalize_items, normalize_hidden,
      eps, label_smoothing, compute_dtype):
    return torch.empty_like(item_emb)


def _setup_context(ctx, inputs, output):
    (hidden, item_emb, targets, temperature, normalize_items, normalize_hidden, eps, ignore_index,
     label_smoothing, compute_dtype, compute_o, check_inputs) = inputs
    _, lse, o = output
    ctx.save_for_backward(hidden, item_emb, targets, lse, o)
    ctx.options = (temperature, normalize_items, normalize_hidden, eps, ignore_index, label_smoothing, compute_dtype)
    ctx.mark_non_differentiable(o)


def _backward(ctx, grad_loss, grad_lse, grad_o):
    hidden, item_emb, targets, lse, o = ctx.saved_tensors
    temperature, normalize_items, normalize_hidden, eps, ignore_index, label_smoothing, compute_dtype = ctx.options
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
        r = item_scale(item_emb, normalize_items, eps)
        q = a[:, None] * o - ((1.0 - label_smoothing) * b)[:, None] * _target_rows(item_emb, r, safe_t, compute_dtype)
        if label_smoothing > 0:
            q = q - (label_smoothing / N) * b[:, None] * _item_sum(item_emb, r)[None, :]
        if normalize_hidden:
            hf = hidden.float()
            norms = torch.linalg.vector_norm(hf, dim=1, keepdim=True)
            n = hf / norms.clamp_min(eps)
            radial = torch.where(norms > eps, (n * q).sum(1, keepdim=True), 0.0)
            grad_hidden = (q - radial * n) / (norms.clamp_min(eps) * temperature)
        else:
            grad_hidden = q / temperature
        grad_hidden = grad_hidden.to(hidden.dtype)
    if ctx.needs_input_grad[1]:
        grad_items = normalized_ce_item_grad(
            hidden, item_emb, torch.where(valid, targets, -1), lse, a.contiguous(), b.contiguous(),
            temperature, normalize_items, normalize_hidden, eps, label_smoothing, compute_dtype,
        )
    return (grad_hidden, grad_items) + (None,) * 10


torch.library.register_autograd(
    "tfllmer_fast::normalized_ce_fwd", _backward, setup_context=_setup_context
)
