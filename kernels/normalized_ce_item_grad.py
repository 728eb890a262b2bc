"""Backward kernel of the normalized softmax head: the item-table gradient.

With ``z_ij = s_i * <h_i, v_j>``, ``v_j = r_j * e_j`` and the per-row loss
``l_i = lse_i - (1 - eps_ls) z_{i,t_i} - (eps_ls / N) sum_j z_ij``, the loss
gradient w.r.t. ``v_j`` is

    dv_j = sum_i a_i p_ij s_i h_i  -  (1 - eps_ls) sum_{i: t_i = j} b_i s_i h_i  -  (eps_ls / N) sum_i b_i s_i h_i

(``a`` = upstream grad of the loss plus of the lse, ``b`` = of the loss alone).
Each program owns an item tile and streams the row tiles: it recomputes the
logits transposed (items x rows, so ``p`` is already the left operand of the
second dot, no transpose through shared memory) and accumulates the first
term with ``a_i s_i h_i`` pre-scaled in torch, so the main loop is one FFMA and
one MUFU.EX2 per logit. The rows whose target falls in the tile are left out
of it: the launcher sorts the rows by target, so they are one range, which
the program adds after the main loop, 16 rows at a time, with G in fp32 and
the target's entry ``a p_t - (1 - eps_ls) b`` computed by the caller (as
p_t -> 1 the two 16-bit products the main loop would round cancel to noise).
In fp16 the probabilities are scaled by 2^15 before they meet the operand
(``p_shift``), so they stay normal down to 1.9e-9. The smoothing term is the
same vector for every item. Then the Jacobian of the row
normalization in fp32, ``de_j = r_j (dv_j - v_j <v_j, dv_j>)``, and one store.
No atomics: the result is deterministic.

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
from ._tiles import LOG2E, mma

# Rows x items per tile (BLOCK_N, the items, is the dots' M), warps, stages,
# per architecture family, operand kind and head width, derived like the
# forward's (``python -m tfllmer_fast.kernels.gate --search``). sm_90 at
# d = 256 takes 32-item tiles (mma.sync): with wgmma every tile tried spills,
# the fp32 accumulator alone being 128 registers a thread.
TABLE = config.KernelTable(
    defaults={
        ("sm_90", "16bit"): {
            32: config.BlockConfig(64, 128, 4, 3),
            64: config.BlockConfig(128, 128, 8, 3),
            128: config.BlockConfig(64, 128, 8, 3),
            256: config.BlockConfig(128, 32, 8, 2),
        },
        ("sm_90", "tf32"): {
            32: config.BlockConfig(64, 128, 8, 2),
            64: config.BlockConfig(64, 128, 8, 3),
            128: config.BlockConfig(64, 32, 4, 2),
            256: config.BlockConfig(64, 32, 8, 2),
        },
        ("sm_90", "tf32x3"): {
            32: config.BlockConfig(64, 128, 8, 3),
            64: config.BlockConfig(64, 128, 8, 3),
        },
        ("sm_80", "16bit"): {
            32: config.BlockConfig(128, 128, 4, 3),
            64: config.BlockConfig(64, 128, 4, 2),
            128: config.BlockConfig(64, 128, 8, 2),
            256: config.BlockConfig(64, 32, 4, 2),
        },
        ("sm_80", "tf32"): {
            32: config.BlockConfig(64, 128, 4, 3),
            64: config.BlockConfig(128, 128, 8, 2),
            128: config.BlockConfig(64, 32, 4, 2),
            256: config.BlockConfig(16, 32, 4, 2),
        },
        ("sm_80", "tf32x3"): {
            32: config.BlockConfig(64, 128, 8, 3),
            64: config.BlockConfig(64, 32, 4, 3),
        },
    },
)
# Target rows per dot of the target term (the dot's K).
TARGET_BLOCK = 16
# FIRST_ROW has one entry per this many items: every BLOCK_N is a multiple.
ITEM_GRAIN = 16


@triton.jit
def _normalized_ce_item_grad_kernel(
    HQ, HS, S2, LSE2, SORTED_T, U, A_COEF, C_COEF, V, E, ITEM_SCALE, FIRST_ROW, SMOOTH, GRAD_SCALE, DE,
    B, N, D, rows_per_split, eps,
    stride_en, stride_ed, stride_ds, stride_dn, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    GRAIN: tl.constexpr, NORMALIZE_ITEMS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    n0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    split = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    item_ok = cols < (N - n0).to(tl.int32)

    item_mask = item_ok[:, None] & d_ok[None, :]
    v_op = tl.load(V + n0 * D + cols[:, None] * D + dcol[None, :], mask=item_mask, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # The row arrays come sorted by target: the rows whose target is in this
    # tile are [t_lo, t_hi). The main loop skips them, so its common tile
    # tests nothing; they are added after it, in fp32.
    b_start = split * rows_per_split
    b_end = tl.minimum(b_start + rows_per_split, B)
    t_lo = tl.load(FIRST_ROW + n0 // GRAIN).to(tl.int64)
    t_hi = tl.load(FIRST_ROW + (tl.minimum(n0 + BLOCK_N, (N + GRAIN - 1) // GRAIN * GRAIN)) // GRAIN).to(tl.int64)
    hit_lo = tl.minimum(tl.maximum(t_lo, b_start), b_end)
    hit_hi = tl.minimum(tl.maximum(t_hi, b_start), b_end)
    before = (hit_lo - b_start + BLOCK_B - 1) // BLOCK_B
    after = (b_end - hit_hi + BLOCK_B - 1) // BLOCK_B
    rows = tl.arange(0, BLOCK_B)
    for k in tl.range(0, before + after):
        b0 = tl.where(k < before, b_start + k * BLOCK_B, hit_hi + (k - before) * BLOCK_B)
        b_stop = tl.where(k < before, hit_lo, b_end)
        # Padding rows load h = 0, s2 = lse2 = 0 and hs = 0: p = 1 there, times 0.
        row_ok = rows < (b_stop - b0).to(tl.int32)
        tile_mask = row_ok[:, None] & d_ok[None, :]
        offs = (b0 + rows)[:, None] * D + dcol[None, :]
        h = tl.load(HQ + offs, mask=tile_mask, other=0.0)
        hs = tl.load(HS + offs, mask=tile_mask, other=0.0)
        s2 = tl.load(S2 + b0 + rows, mask=row_ok, other=0.0)
        lse2 = tl.load(LSE2 + b0 + rows, mask=row_ok, other=0.0)
        z_t = mma(v_op, tl.trans(h), tl.zeros([BLOCK_N, BLOCK_B], tl.float32), UPCAST, PRECISION)
        p_t = tl.exp2(z_t * s2[None, :] - lse2[None, :])
        acc = mma(p_t.to(DOT_DTYPE), hs, acc, UPCAST, PRECISION)

    # The rows with a target here, BLOCK_T at a time: G = a p for the other
    # items and the whole target coefficient (a p_t - (1 - eps_ls) b, from the
    # caller in fp32) for the target, so p_t -> 1 cancels in fp32, not against
    # a 16-bit rounding of p_t; G and the rows u = s h meet in 3-pass TF32.
    ks = tl.arange(0, BLOCK_T)
    for k0 in tl.range(hit_lo, hit_hi, BLOCK_T):
        k_ok = ks < (hit_hi - k0).to(tl.int32)
        k_mask = k_ok[:, None] & d_ok[None, :]
        k_offs = (k0 + ks)[:, None] * D + dcol[None, :]
        h_k = tl.load(HQ + k_offs, mask=k_mask, other=0.0)
        s2 = tl.load(S2 + k0 + ks, mask=k_ok, other=0.0)
        lse2 = tl.load(LSE2 + k0 + ks, mask=k_ok, other=0.0)
        z = mma(v_op, tl.trans(h_k), tl.zeros([BLOCK_N, BLOCK_T], tl.float32), UPCAST, PRECISION)
        p = tl.exp2(z * s2[None, :] - lse2[None, :])
        a = tl.load(A_COEF + k0 + ks, mask=k_ok, other=0.0)
        c = tl.load(C_COEF + k0 + ks, mask=k_ok, other=0.0)
        local = (tl.load(SORTED_T + k0 + ks, mask=k_ok, other=-1) - n0).to(tl.int32)
        g = tl.where(cols[:, None] == local[None, :], c[None, :], p * a[None, :])
        u = tl.load(U + k_offs, mask=k_mask, other=0.0)
        acc = mma(g, u, acc, UPCAST, "tf32x3")

    if split == 0:
        acc += tl.load(SMOOTH + dcol, mask=d_ok, other=0.0)[None, :]

    dv = acc * tl.load(GRAD_SCALE)
    r = tl.load(ITEM_SCALE + n0 + cols, mask=item_ok, other=0.0)
    if NORMALIZE_ITEMS:
        # de = r (dv - v <v, dv>) with v = r e, from the raw rows loaded only now
        # (in fp32 they would stay live through the loop). r = 1 / max(||e||, eps),
        # so r < 1 / eps says ||e|| > eps: below it the norm is clamped and, as
        # in F.normalize, there is no projection.
        e = tl.load(E + (n0 + cols)[:, None] * stride_en + dcol[None, :].to(tl.int64) * stride_ed,
                    mask=item_mask, other=0.0)
        radial = tl.where(r < 1.0 / eps, r * r * tl.sum(e.to(tl.float32) * dv, 1), 0.0)
        dv = dv - radial[:, None] * e.to(tl.float32)
    de = dv * r[:, None]
    tl.store(DE + split * stride_ds + (n0 + cols)[:, None] * stride_dn + dcol[None, :] * stride_dd,
             de.to(DE.dtype.element_ty), mask=item_mask)


def p_shift(compute_dtype: torch.dtype) -> float:
    """log2 of the factor the probabilities are scaled by before they meet the
    16-bit operand: p <= 1 here, and 2^15 keeps fp16's p normal down to 1.9e-9
    (at 1.0 it loses precision below 6.1e-5 and flushes below 6e-8); bf16 and
    fp32 have fp32's exponent range."""
    return 15.0 if compute_dtype == torch.float16 else 0.0


def normalized_ce_item_grad(
    hidden: torch.Tensor,
    items: torch.Tensor,
    item_emb: torch.Tensor,
    row_scale: torch.Tensor,
    item_scale: torch.Tensor,
    lse: torch.Tensor,
    grad_p: torch.Tensor,
    target_coef: torch.Tensor,
    smooth_coef: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float,
    normalize_items: bool,
) -> torch.Tensor:
    """Launch the item-gradient kernel; returns dE (N, d) in item_emb's dtype, contiguous.

    hidden (B, d) any strides, the queries in the compute dtype (rounded once,
    as the forward used them); items (N, d) the scaled rows ``v = r e`` in the
    compute dtype (``ops._scales.scaled_items``); item_emb (N, d) any strides;
    row_scale ``s``, lse, grad_p (``a``, the weight of p) (B,) fp32;
    target_coef (B,) fp32, the whole weight of each row's target logit,
    ``a p_t - (1 - eps_ls) b``; smooth_coef (B,) fp32, the weight of every
    logit, ``-(eps_ls / N) b``; item_scale (N,) fp32; targets (B,) int64, -1
    for rows without a target term. So ``G = a p - (a p_t) onehot + target_coef
    onehot + smooth_coef``. The O(B d) preparation is plain torch and never
    synchronizes with the host.
    """
    B, D = hidden.shape
    N = item_emb.shape[0]
    compute_dtype = items.dtype
    if B == 0:
        return torch.zeros(N, D, device=item_emb.device, dtype=item_emb.dtype)
    choice = config.pick(TABLE, D, hidden.device, compute_dtype)
    cfg = choice.config
    align = config.SPLIT_ALIGN if cfg is None else cfg.block_rows
    item_tiles = triton.cdiv(N, 64 if cfg is None else cfg.block_items)
    rows_per_split, splits = config.split_work(B, align, item_tiles, hidden.device)

    with_target = torch.where((targets >= 0) & (targets < N), targets, -1)
    order = torch.argsort(with_target, stable=True)
    sorted_t = with_target[order]
    boundaries = torch.arange(0, triton.cdiv(N, ITEM_GRAIN) + 1, device=hidden.device, dtype=torch.int64)
    first_row = torch.searchsorted(sorted_t, boundaries * ITEM_GRAIN).to(torch.int32)

    u = hidden.float() * row_scale[:, None]  # s h, each row as the logits see it
    # One scale for the whole batch keeps the pre-scaled rows O(1) in the
    # 16-bit operand (a 1/B mean factor left in them would flush fp16 to
    # zero); it is taken from the rows' values, so a zero or tiny query row
    # with a huge 1/||h|| cannot push the others out of range.
    pscale = 2.0 ** p_shift(compute_dtype)
    grad_scale = (torch.maximum(grad_p.abs(), target_coef.abs()) * u.abs().amax(1)).amax().clamp_min(1e-30)
    grad_scale = grad_scale.reshape(1)
    hs = (u * (grad_p / grad_scale)[:, None]).to(compute_dtype)
    smooth = (smooth_coef * (pscale / grad_scale)) @ u
    rows_sorted = (
        hidden.index_select(0, order).to(compute_dtype), hs.index_select(0, order),
        (row_scale * LOG2E.value).index_select(0, order),
        (lse * LOG2E.value - p_shift(compute_dtype)).index_select(0, order), sorted_t,
        u.index_select(0, order), (grad_p / grad_scale).index_select(0, order),
        (target_coef * (pscale / grad_scale)).index_select(0, order),
    )

    if splits == 1:
        out = config.output((N, D), item_emb.dtype, item_emb.device)
        out_strides = (0, out.stride(0), out.stride(1))
    else:
        # Only small catalogs split the rows; partials are summed in a fixed order.
        out = config.output((splits, N, D), torch.float32, item_emb.device)
        out_strides = out.stride()
    args = (
        *rows_sorted, items, item_emb, item_scale, first_row, smooth, grad_scale / pscale, out,
        B, N, D, rows_per_split, eps,
        item_emb.stride(0), item_emb.stride(1), *out_strides,
    )
    meta = dict(
        BLOCK_D=config.block_d(D),
        BLOCK_T=TARGET_BLOCK,
        GRAIN=ITEM_GRAIN,
        NORMALIZE_ITEMS=normalize_items,
        DOT_DTYPE=config.dot_dtype(compute_dtype),
        UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
    )
    config.launch(_normalized_ce_item_grad_kernel, choice, lambda m: (triton.cdiv(N, m["BLOCK_N"]), splits), args,
                  meta, tune_key=("D", "NORMALIZE_ITEMS", "DOT_DTYPE", "PRECISION"))
    if splits == 1:
        return out
    return out.sum(dim=0).to(item_emb.dtype)
