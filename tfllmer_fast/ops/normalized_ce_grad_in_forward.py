"""``impl="torch_grad_in_forward"``: the CPU path of ``normalized_softmax_ce``, gradients in the forward.

When the loss is reduced (``"mean"`` or ``"sum"``) its upstream gradient is
one scalar, so the forward can finish the whole gradient while each chunk of
logits is still in memory: per chunk of rows one matmul makes the logits, the
softmax is taken in place, and two matmuls give that chunk's dH and its
contribution to dE. The backward only multiplies by the scalar. That is three
matmuls in all, as plain torch does, with no (B, N) tensor and no
recomputation (the checkpointed reference, ``impl="torch"``, recomputes every
chunk's logits in the backward and stays the independent test oracle).

``tfllmer_fast::normalized_ce_grad_in_forward(hidden, item_emb, targets, coef,
*HeadOptions, *LossOptions, chunk_rows, grad_hidden, grad_items)`` returns
``(loss, rows, lse, dH, dE)``: ``loss = sum_i coef_i rows_i`` (``coef`` folds
the reduction, the weights and the ignored rows), the per-row losses, the
log-sum-exp (these three fp32, fp64 for fp64 inputs), and the gradients of
``loss`` (empty when not asked for).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import HeadOptions
from ._library import HEAD_FIELDS, LOSS_FIELDS, define_op, head_options, loss_options, without_autocast
from ._scales import item_scale, row_scale
from .normalized_ce_triton import hidden_grad

# Rows per chunk: 128 was fastest on a 2-core EPYC from N = 12k to 100k (64
# to 1,024 tried: more rows leave cache, fewer re-read the (N, d) gradient
# accumulator more often); past 64 MiB of fp32 logits the chunk shrinks, to
# no fewer than 16 rows, so memory stays bounded for 10M-item catalogs.
CPU_CHUNK_BYTES = 64 * 2**20
EXP_FLOOR = -60.0
CHUNK_ROWS = (16, 128)
# On a GPU (a width or dtype the kernels do not serve) each chunk is a large
# matmul: about this many bytes of fp32 logits, at least 256 rows.
GPU_CHUNK_BYTES = 2**30
GPU_MIN_ROWS = 256


def chunk_rows(num_items: int, device: torch.device | None = None) -> int:
    """Rows per chunk: tuned for a 2-core CPU there, GPU-sized on CUDA."""
    if device is not None and torch.device(device).type == "cuda":
        return max(GPU_MIN_ROWS, GPU_CHUNK_BYTES // (4 * max(num_items, 1)))
    low, high = CHUNK_ROWS
    return max(low, min(high, CPU_CHUNK_BYTES // (4 * max(num_items, 1))))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp64 stays fp64 (the tests' oracle precision); everything else runs in
    # fp32, which CPU matmuls are fastest in and which bounds the error.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_in_forward(hidden: Tensor, item_emb: Tensor, targets: Tensor, coef: Tensor, *args):
    head, (_, label_smoothing) = head_options(args, 0), loss_options(args, HEAD_FIELDS)
    step, want_dh, want_de = args[HEAD_FIELDS + LOSS_FIELDS :]
    B, N = hidden.shape[0], item_emb.shape[0]
    work = _work_dtype(hidden.dtype)
    r = item_scale(item_emb, head, work)
    v = item_emb.to(work) * r[:, None]  # e'_j, (N, d)
    hs = hidden.to(work) * row_scale(hidden, head, work)[:, None]  # logits are hs @ v.T
    coef = coef.to(work)
    keep = 1.0 - label_smoothing
    v_mean = v.mean(0) if label_smoothing > 0 else None

    rows = hidden.new_empty(B, dtype=work)
    lse = hidden.new_empty(B, dtype=work)
    q = hidden.new_zeros((B, hidden.shape[1]), dtype=work) if want_dh else None
    dv = item_emb.new_zeros((N, item_emb.shape[1]), dtype=work) if want_de else None
    for start in range(0, B, step):
        stop = min(start + step, B)
        h, t, c = hs[start:stop], targets[start:stop], coef[start:stop]
        z = h @ v.T
        target_logit = z.gather(1, t[:, None]).squeeze(1)
        top = z.amax(1, keepdim=True)
        # z is not needed again: the softmax is taken in its memory. The floor
        # keeps exp and the gradient matmuls out of subnormal numbers, which
        # made a sharp softmax (T = 0.05) 18x slower on x86; it moves the lse
        # by at most N e^-60 (1e-19 relative at N = 10M).
        p = z.sub_(top).clamp_(min=EXP_FLOOR).exp_()
        total = p.sum(1)
        chunk_lse = top.squeeze(1) + total.log()
        lse[start:stop] = chunk_lse
        row = chunk_lse - keep * target_logit
        if v_mean is not None:
            row = row - label_smoothing * (h @ v_mean)
        rows[start:stop] = row
        if not (want_dh or want_de):
            continue
        # G = coef (p - keep onehot - ls / N): the last term is rank one and
        # is added after the loop rather than to every entry here.
        g = p.mul_((c / total)[:, None])
        g[torch.arange(stop - start, device=g.device), t] -= keep * c
        if want_dh:
            q[start:stop] = g @ v
        if want_de:
            dv.addmm_(g.T, h)
    if label_smoothing > 0:
        smooth = coef * (label_smoothing / N)
        if want_dh:
            q -= smooth[:, None] * v.sum(0)[None, :]
        if want_de:
            dv -= (smooth @ hs)[None, :]

    loss = (coef * rows).sum()
    dh = hidden_grad(hidden, q, head).to(hidden.dtype) if want_dh else hidden.new_empty(0)
    de = item_grad(dv, item_emb, r, head).to(item_emb.dtype) if want_de else item_emb.new_empty(0)
    return loss, rows, lse, dh, de


def item_grad(dv: Tensor, item_emb: Tensor, r: Tensor, head: HeadOptions) -> Tensor:
    """dL/de from dv = dL/de' (e' = e r): the normalization's Jacobian, and the
    eps path (dv / eps) for rows with norm below eps, as ``F.normalize`` defines it."""
    if not head.normalize_items:
        return dv
    n = item_emb.to(dv.dtype) * r[:, None]
    radial = torch.where(r < 1.0 / head.eps, (dv * n).sum(1), 0.0)
    return (dv - radial[:, None] * n) * r[:, None]


def _grad_in_forward_fake(hidden, item_emb, targets, coef, *args):
    want_dh, want_de = args[-2:]
    B, work = hidden.shape[0], _work_dtype(hidden.dtype)
    return (
        hidden.new_empty((), dtype=work),
        hidden.new_empty(B, dtype=work),
        hidden.new_empty(B, dtype=work),
        # The real op returns contiguous gradients whatever the inputs' layouts.
        hidden.new_empty(hidden.shape) if want_dh else hidden.new_empty(0),
        item_emb.new_empty(item_emb.shape) if want_de else item_emb.new_empty(0),
    )


normalized_ce_grad_in_forward = define_op(
    "normalized_ce_grad_in_forward",
    "(Tensor hidden, Tensor item_emb, Tensor targets, Tensor coef, {head}, {loss}, int chunk_rows, "
    "bool grad_hidden, bool grad_items) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _grad_in_forward, _grad_in_forward_fake,
)


def _setup_context(ctx, inputs, output):
    _, rows, _, dh, de = output
    ctx.save_for_backward(rows, dh, de)
    ctx.mark_non_differentiable(dh, de)
    # Outputs nobody backpropagates through arrive as None, not as zeros the
    # check below would have to read back from the device.
    ctx.set_materialize_grads(False)
    ctx.num_inputs = len(inputs)


def _backward(ctx, grad_loss, grad_rows, grad_lse, grad_dh, grad_de):
    rows, dh, de = ctx.saved_tensors
    unused = [g for g in (grad_rows, grad_lse) if g is not None]
    if unused and not torch.compiler.is_compiling() and any(bool(g.any()) for g in unused):
        raise RuntimeError(
            "impl='torch_grad_in_forward' finishes the gradient in the forward for the reduced loss only; a "
            "gradient through the per-row losses or the log-sum-exp needs impl='torch' (or 'triton')"
        )
    if grad_loss is None:
        grad_loss = torch.zeros((), device=rows.device, dtype=rows.dtype)
    grad_hidden = (grad_loss * dh).to(dh.dtype) if ctx.needs_input_grad[0] else None
    grad_items = (grad_loss * de).to(de.dtype) if ctx.needs_input_grad[1] else None
    grad_coef = grad_loss * rows if ctx.needs_input_grad[3] else None
    return (grad_hidden, grad_items, None, grad_coef) + (None,) * (ctx.num_inputs - 4)


torch.library.register_autograd("tfllmer_fast::normalized_ce_grad_in_forward", without_autocast(_backward),
                                setup_context=_setup_context)
