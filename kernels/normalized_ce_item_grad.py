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
one MUFU.EX2 per logit. The target term touches only the rows whose target
falls in the tile: the launcher sorts the rows by target and the program
adds them with one small dot per 16 rows, after the main loop. The smoothing
term is the same vector for every item. Then the Jacobian of the row
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
            32: config.BlockConfig(64, 128, 4, 2),
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


@triton.jit
def _normalized_ce_item_grad_kernel(
    H, HS, S2, LSE2, V, E, ITEM_SCALE, ORDER, FIRST_ROW, TARGETS, TARGET_COEF, SMOOTH, GRAD_SCALE, DE,
    B, N, D, rows_per_split, eps,
    stride_hb, stride_hd, stride_en, stride_ed, stride_ds, stride_dn, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    NORMALIZE_ITEMS: tl.constexpr, DOT_DTYPE: tl.constexpr,
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

    b_start = split * rows_per_split
    b_end = tl.minimum(b_start + rows_per_split, B)
    rows = tl.arange(0, BLOCK_B)
    for b0 in tl.range(b_start, b_end, BLOCK_B):
        # Padding rows load h = 0, s2 = lse2 = 0 and hs = 0: p = 1 there, times 0.
        row_ok = rows < (b_end - b0).to(tl.int32)
        tile_mask = row_ok[:, None] & d_ok[None, :]
        h = tl.load(H + b0 * stride_hb + rows[:, None] * stride_hb + dcol[None, :] * stride_hd,
                    mask=tile_mask, other=0.0).to(DOT_DTYPE)
        hs = tl.load(HS + b0 * D + rows[:, None] * D + dcol[None, :], mask=tile_mask, other=0.0)
        s2 = tl.load(S2 + b0 + rows, mask=row_ok, other=0.0)
        lse2 = tl.load(LSE2 + b0 + rows, mask=row_ok, other=0.0)
        z_t = mma(v_op, tl.trans(h), tl.zeros([BLOCK_N, BLOCK_B], tl.float32), UPCAST, PRECISION)
        p_t = tl.exp2(z_t * s2[None, :] - lse2[None, :])
        acc = mma(p_t.to(DOT_DTYPE), hs, acc, UPCAST, PRECISION)

    if split == 0:
        # Rows whose target is in this tile: ORDER[FIRST_ROW[n0] : FIRST_ROW[n0 + BLOCK_N]].
        t_lo = tl.load(FIRST_ROW + n0)
        t_hi = tl.load(FIRST_ROW + tl.minimum(n0 + BLOCK_N, N))
        ks = tl.arange(0, BLOCK_T)
        for k0 in tl.range(t_lo, t_hi, BLOCK_T):
            k_ok = ks < t_hi - k0
            row = tl.load(ORDER + k0 + ks, mask=k_ok, other=0).to(tl.int64)
            local = (tl.load(TARGETS + row, mask=k_ok, other=-1) - n0).to(tl.int32)
            coef = tl.load(TARGET_COEF + row, mask=k_ok, other=0.0)
            h_t = tl.load(H + row[:, None] * stride_hb + dcol[None, :] * stride_hd,
                          mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)
            onehot = tl.where(cols[:, None] == local[None, :], coef[None, :], 0.0).to(DOT_DTYPE)
            acc = mma(onehot, h_t, acc, UPCAST, PRECISION)
        acc += tl.load(SMOOTH + dcol, mask=d_ok, other=0.0)[None, :]

    dv = acc * tl.load(GRAD_SCALE)
    r = tl.load(ITEM_SCALE + n0 + cols, mask=item_ok, other=0.0)
    if NORMALIZE_ITEMS:
        # de = r (dv - v <v, dv>) with v = r e, from the raw rows loaded only now
        # (in fp32 they would stay live through the loop). r = 1 / max(||e||, eps),
        # so r < 1 / eps says ||e|| > eps: below it the norm is clamped and, as
        # in F.normalize, there is no projection.
        e = tl.load(E + n0 * stride_en + cols[:, None] * stride_en + dcol[None, :] * stride_ed,
                    mask=item_mask, other=0.0)
        radial = tl.where(r < 1.0 / eps, r * r * tl.sum(e.to(tl.float32) * dv, 1), 0.0)
        dv = dv - radial[:, None] * e.to(tl.float32)
    de = dv * r[:, None]
    tl.store(DE + split * stride_ds + n0 * stride_dn + cols[:, None] * stride_dn + dcol[None, :] * stride_dd,
             de.to(DE.dtype.element_ty), mask=item_mask)


def normalized_ce_item_grad(
    hidden: torch.Tensor,
    items: torch.Tensor,
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
) -> torch.Tensor:
    """Launch the item-gradient kernel; returns dE (N, d) in item_emb's dtype.

    hidden (B, d), item_emb (N, d) any strides; items (N, d) the scaled rows
    ``v = r e`` in the compute dtype (``ops._scales.scaled_items``); row_scale, lse, grad_p (``a``), grad_t
    (``b``) (B,) fp32; item_scale (N,) fp32; targets (B,) int64, -1 for rows
    without a target term. The O(B d) preparation is plain torch and never
    synchronizes with the host.
    """
    B, D = hidden.shape
    N = item_emb.shape[0]
    compute_dtype = items.dtype
    if B == 0:
        return torch.zeros_like(item_emb)
    choice = config.pick(TABLE, D, hidden.device, compute_dtype)
    cfg = choice.config
    align = config.SPLIT_ALIGN if cfg is None else cfg.block_rows
    item_tiles = triton.cdiv(N, 64 if cfg is None else cfg.block_items)
    rows_per_split, splits = config.split_work(B, align, item_tiles, hidden.device)

    # One scale for the whole batch keeps the pre-scaled rows O(1) (a 1/B mean
    # factor left in them would flush fp16 values to zero).
    grad_scale = (torch.maximum(grad_p.abs(), grad_t.abs()) * row_scale).amax().clamp_min(1e-30).reshape(1)
    hs = (hidden.float() * (grad_p * row_scale / grad_scale)[:, None]).to(compute_dtype).contiguous()
    target_coef = -(1.0 - label_smoothing) * grad_t * row_scale / grad_scale
    smooth = -(label_smoothing / N) * ((grad_t * row_scale / grad_scale) @ hidden.float())
    with_target = torch.where((targets >= 0) & (targets < N), targets, -1)
    order = torch.argsort(with_target, stable=True).to(torch.int32)
    first_row = torch.cumsum(torch.bincount(with_target + 1, minlength=N + 1)[: N + 1], 0).to(torch.int32)

    if splits == 1:
        out = torch.empty(N, D, device=item_emb.device, dtype=item_emb.dtype)
        out_strides = (0, out.stride(0), out.stride(1))
    else:
        # Only small catalogs split the rows; partials are summed in a fixed order.
        out = torch.empty(splits, N, D, device=item_emb.device, dtype=torch.float32)
        out_strides = out.stride()
    args = (
        hidden, hs, row_scale * LOG2E.value, lse * LOG2E.value, items, item_emb, item_scale, order, first_row,
        with_target, target_coef, smooth, grad_scale, out,
        B, N, D, rows_per_split, eps,
        hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1), *out_strides,
    )
    meta = dict(
        BLOCK_D=config.block_d(D),
        BLOCK_T=TARGET_BLOCK,
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
