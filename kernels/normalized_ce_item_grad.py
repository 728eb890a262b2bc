"""Backward kernel of the normalized softmax head: the item-table gradient.

With ``z_ij = s_i * <h_i, v_j>``, ``v_j = r_j * e_j`` and the per-row loss
``l_i = lse_i - (1 - eps_ls) z_{i,t_i} - (eps_ls / N) sum_j z_ij``, the loss
gradient w.r.t. the logits is ``G_ij = a_i p_ij - b_i ((1 - eps_ls) [j = t_i] + eps_ls / N)``
(``a`` = upstream grad of the loss plus of the lse, ``b`` = of the loss alone).
Each program owns an item tile, recomputes its logits row tile by row tile and
accumulates ``dv_j = sum_i G_ij s_i h_i``; it then applies the Jacobian of the
row normalization in fp32, ``de_j = r_j (dv_j - v_j <v_j, dv_j>)``, and writes the
gradient once. The target and smoothing terms are folded into G inside the tile,
so there is no scatter and no atomic: the result is deterministic.

Plain torch equivalent::

    G = a[:, None] * p - b[:, None] * ((1 - eps_ls) * one_hot(t, N) + eps_ls / N)
    dv = (G * s[:, None]).T @ hidden.float()
    de = r[:, None] * (dv - v * (v * dv).sum(1, keepdim=True))
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import load_tile, mma

LOG2E = 1.4426950408889634

_DEFAULTS = {
    64: config.BlockConfig(block_rows=64, block_items=128, num_warps=8, num_stages=3),
    128: config.BlockConfig(block_rows=64, block_items=64, num_warps=4, num_stages=3),
    256: config.BlockConfig(block_rows=32, block_items=64, num_warps=8, num_stages=2),
}
_TUNE = [
    config.BlockConfig(64, 128, 8, 3),
    config.BlockConfig(64, 64, 4, 3),
    config.BlockConfig(128, 64, 8, 3),
    config.BlockConfig(32, 64, 8, 2),
]
_INTERPRETER = config.BlockConfig(block_rows=16, block_items=32, num_warps=1, num_stages=1)


@triton.jit
def _normalized_ce_item_grad_kernel(
    H, E, ROW_SCALE, ITEM_SCALE, LSE, GRAD_P, GRAD_T, TARGETS, DE,
    B, N, D, rows_per_split, target_coef, smooth_coef, eps,
    stride_hb, stride_hd, stride_en, stride_ed, stride_ds, stride_dn, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE_ITEMS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    mask_nd = mask_n[:, None] & mask_d[None, :]

    e = load_tile(E, offs_n, offs_d, mask_n, mask_d, stride_en, stride_ed)
    r = tl.load(ITEM_SCALE + offs_n, mask=mask_n, other=0.0)
    e_t = tl.trans(e.to(DOT_DTYPE))
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    b_start = pid_s * rows_per_split
    b_end = tl.minimum(b_start + rows_per_split, B)
    for b0 in tl.range(b_start, b_end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < b_end
        h = load_tile(H, offs_b, offs_d, mask_b, mask_d, stride_hb, stride_hd)
        s = tl.load(ROW_SCALE + offs_b, mask=mask_b, other=0.0)
        lse = tl.load(LSE + offs_b, mask=mask_b, other=0.0)
        a = tl.load(GRAD_P + offs_b, mask=mask_b, other=0.0)
        b = tl.load(GRAD_T + offs_b, mask=mask_b, other=0.0)
        t = tl.load(TARGETS + offs_b, mask=mask_b, other=-1)

        h = h.to(DOT_DTYPE)
        z = mma(h, e_t, UPCAST, PRECISION)
        p = tl.exp2(z * (s * LOG2E)[:, None] * r[None, :] - (lse * LOG2E)[:, None])
        # The row factors (upstream grads a, b and the row scale s) go into the
        # gradient tile, which is rounded to the dot dtype anyway, so h enters the
        # dot unrounded. A tile-wide max keeps the operand O(1): a 1/B
        # mean-reduction factor left in it would flush fp16 values to zero.
        c = tl.maximum(tl.abs(a), tl.abs(b)) * s
        c_max = tl.max(c, 0)
        c_max = tl.where(c_max > 0, c_max, 1.0)
        a_s = a * s / c_max
        b_s = b * s / c_max
        g = a_s[:, None] * p - b_s[:, None] * smooth_coef
        g = tl.where(offs_n[None, :] == t[:, None], g - (b_s * target_coef)[:, None], g)
        acc += c_max * mma(tl.trans(g.to(DOT_DTYPE)), h, UPCAST, PRECISION)

    if NORMALIZE_ITEMS:
        ef = e.to(tl.float32)
        v = ef * r[:, None]
        norm = tl.sqrt(tl.sum(ef * ef, 1))
        radial = tl.sum(v * acc, 1)
        # Below eps the norm is clamped, so (as in F.normalize) no projection.
        acc = acc - tl.where(norm > eps, radial, 0.0)[:, None] * v
    de = acc * r[:, None]
    tl.store(
        DE + pid_s * stride_ds + offs_n[:, None] * stride_dn + offs_d[None, :] * stride_dd,
        de.to(DE.dtype.element_ty), mask=mask_nd,
    )


def normalized_ce_item_grad(
    hidden: torch.Tensor,
    item_emb: torch.Tensor,
    row_scale: torch.Tensor,
    item_scale: torch.Tensor,
    lse: torch.Tensor,
    grad_p: torch.Tensor,
    grad_t: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float,
    eps: float,
    normalize_items: bool,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the item-gradient kernel; returns dE (N, d) in item_emb's dtype.

    hidden (B, d), item_emb (N, d); row_scale, lse, grad_p, grad_t (B,) fp32;
    item_scale (N,) fp32; targets (B,) int64, rows to ignore have grad 0.
    """
    B, D = hidden.shape
    N = item_emb.shape[0]
    if B == 0:
        return torch.zeros_like(item_emb)
    tune = config.autotune_enabled() and not config.interpreting()
    cfg = config.for_width(_DEFAULTS, _INTERPRETER, D)
    align = config.SPLIT_ALIGN if tune else cfg.block_rows
    item_tiles = triton.cdiv(N, 64 if tune else cfg.block_items)
    rows_per_split, splits = config.split_work(B, align, item_tiles, hidden.device)

    if splits == 1:
        out = torch.empty(N, D, device=item_emb.device, dtype=item_emb.dtype)
        out_strides = (0, out.stride(0), out.stride(1))
    else:
        # Only small catalogs split the rows; partials are summed in a fixed order.
        out = torch.empty(splits, N, D, device=item_emb.device, dtype=torch.float32)
        out_strides = out.stride()
    args = (
        hidden, item_emb, row_scale, item_scale, lse, grad_p, grad_t, targets, out,
        B, N, D, rows_per_split, 1.0 - label_smoothing, label_smoothing / N, eps,
        hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1),
        *out_strides,
    )
    meta = dict(
        BLOCK_D=config.block_d(D),
        NORMALIZE_ITEMS=normalize_items,
        DOT_DTYPE=config.dot_dtype(compute_dtype),
        UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
    )
    if tune:
        grid = lambda m: (triton.cdiv(N, m["BLOCK_N"]), splits)  # noqa: E731
        config.autotuned(_normalized_ce_item_grad_kernel, _TUNE, ["D", "NORMALIZE_ITEMS", "DOT_DTYPE"])[grid](*args, **meta)
    else:
        grid = (triton.cdiv(N, cfg.block_items), splits)
        _normalized_ce_item_grad_kernel[grid](
            *args, BLOCK_B=cfg.block_rows, BLOCK_N=cfg.block_items,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
        )
    if splits == 1:
        return out
    return out.sum(dim=0).to(item_emb.dtype)
