"""Forward kernel of the normalized softmax head.

For query rows h_i and item rows e_j the logits are
``z_ij = s_i * <h_i, v_j>`` with ``v_j = r_j * e_j``, a per-row scale ``s``
(1/temperature, and 1/||h_i|| when the queries are normalized) and a per-item
scale ``r`` (1/max(||e_j||, eps), or 1). The scaled rows ``v`` come in
already rounded to the compute dtype (``ops._scales.scaled_items``: one pass
over the table per call, shared with the backward), so item tiles go straight from
global to shared memory to the tensor cores. The kernel streams item tiles through
an online log-sum-exp, so the B x N logits never exist, and optionally
accumulates the softmax-weighted item mean without the row's target,
``o_i = sum_{j != t_i} p_ij v_j``: with ``p_it v_t`` added back in fp32 it is
d lse_i / d(s_i h_i), and it lets the backward skip a second pass for dH.

Per logit the main loop does one FMNMX (row max), one FFMA (``z * s*log2e -
m*s*log2e``, the scale folded into the exp2 argument), one MUFU.EX2, one FADD
(row sum) and half a conversion for the second dot; the running max is
rescaled only when it grows by more than 2^8, and only the last item tile of
a split is masked.

Plain torch equivalent::

    v = scaled_items(item_emb, item_scale, compute_dtype)
    z = row_scale[:, None] * (hidden.to(compute_dtype) @ v.T).float()
    lse = z.logsumexp(-1); o = (z.softmax(-1) * (arange(N) != t[:, None])) @ v.float()
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import LN2, LOG2E, mma

# Rows x items per tile, warps, pipeline stages, per architecture family,
# operand kind and head width (``python -m tfllmer_fast.kernels.gate --search``
# derives them: the spill-free config with the fewest main-loop instructions
# per logit). fp32 with 3-pass TF32 is served up to d = 64: wider, every tile
# spills (the split operands triple the registers); torch's fp32 matmul takes
# those shapes. On sm_90 a 64-row tile keeps to one warpgroup (4 warps).
TABLE = config.KernelTable(
    defaults={
        ("sm_90", "16bit"): {
            32: config.BlockConfig(128, 128, 8, 3),
            64: config.BlockConfig(128, 128, 8, 3),
            128: config.BlockConfig(128, 128, 8, 3),
            256: config.BlockConfig(128, 64, 8, 3),
        },
        ("sm_90", "tf32"): {
            32: config.BlockConfig(128, 128, 8, 3),
            64: config.BlockConfig(128, 128, 8, 3),
            128: config.BlockConfig(128, 64, 8, 3),
            256: config.BlockConfig(128, 16, 8, 3),
        },
        ("sm_90", "tf32x3"): {
            32: config.BlockConfig(128, 64, 8, 3),
            64: config.BlockConfig(128, 32, 8, 3),
        },
        ("sm_80", "16bit"): {
            32: config.BlockConfig(128, 64, 4, 3),
            64: config.BlockConfig(128, 64, 8, 2),
            128: config.BlockConfig(128, 32, 8, 2),
            256: config.BlockConfig(16, 32, 4, 2),
        },
        ("sm_80", "tf32"): {
            32: config.BlockConfig(128, 64, 4, 3),
            64: config.BlockConfig(128, 64, 8, 3),
            128: config.BlockConfig(32, 32, 4, 2),
            256: config.BlockConfig(16, 16, 4, 2),
        },
        ("sm_80", "tf32x3"): {
            32: config.BlockConfig(128, 32, 8, 3),
            64: config.BlockConfig(64, 16, 4, 2),
        },
    },
)


@triton.jit
def _online_tile(V, n0, n_valid, D, h, s2, t, m, row_sum, acc,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, COMPUTE_O: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, P_SHIFT: tl.constexpr):
    """One item tile of the online log-sum-exp; ``n_valid`` items from ``n0``
    are real (checked only when MASKED)."""
    cols = tl.arange(0, BLOCK_N)
    dcol = tl.arange(0, BLOCK_D)
    # 64-bit tile base, 32-bit offsets inside the tile (V is contiguous).
    ptrs = V + n0 * D + cols[:, None] * D + dcol[None, :]
    if MASKED:
        valid = cols < n_valid
        v = tl.load(ptrs, mask=valid[:, None] & (dcol < D)[None, :], other=0.0)
    else:
        v = tl.load(ptrs, mask=(dcol < D)[None, :], other=0.0)
    z = mma(h, tl.trans(v), tl.zeros([h.shape[0], BLOCK_N], tl.float32), UPCAST, PRECISION)
    if MASKED:
        z = tl.where(valid[None, :], z, float("-inf"))
    # s2 > 0, so the row max of z is the row max of the logits. The running max
    # moves only when some row's max grew by more than 2^8 (in exp2 units):
    # p stays below 2^(8 + P_SHIFT), harmless in fp32 sums and in bf16 / fp16
    # operands, and the rescale of row_sum and acc leaves the common tile. With
    # o, the same reduction says whether a row's target lies in this tile (the
    # growth test reads 1e9 there), so the common tile pays no second one.
    z_max = tl.max(z, 1)
    growth = (z_max - m) * s2
    if COMPUTE_O:
        local_t = (t - n0).to(tl.int32)
        growth = tl.where((local_t >= 0) & (local_t < BLOCK_N), 1e9, growth)
    flag = tl.max(growth, 0)
    if flag > 8.0:
        m_new = tl.maximum(m, z_max)
        alpha = tl.exp2((m - m_new) * s2)
        row_sum = row_sum * alpha
        if COMPUTE_O:
            acc = acc * alpha[:, None]
        m = m_new
    # P_SHIFT scales p by 2^P_SHIFT (fp16: small p stay normal in the operand);
    # lse subtracts it again, and o divides it out through row_sum.
    p = tl.exp2(z * s2[:, None] - (m * s2 - P_SHIFT)[:, None])
    row_sum = row_sum + tl.sum(p, 1)
    if COMPUTE_O:
        if flag > 1e8:
            # o leaves each row's target out: the caller adds p_t v_t in fp32,
            # so that p_t -> 1 does not cancel against a 16-bit rounding of itself.
            p = tl.where(cols[None, :] == local_t[:, None], 0.0, p)
        acc = mma(p.to(DOT_DTYPE), v, acc, UPCAST, PRECISION)
    return m, row_sum, acc


@triton.jit
def _normalized_lse_fwd_kernel(
    H, V, ROW_SCALE, TARGETS, LSE_PART, O_PART, TARGET_Z,
    B, N, D, items_per_split,
    stride_hb, stride_hd,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COMPUTE_O: tl.constexpr, DOT_DTYPE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, P_SHIFT: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    split = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_B)
    dcol = tl.arange(0, BLOCK_D)
    row_ok = rows < (B - row0).to(tl.int32)
    # Index x stride products in 64 bits: a transposed (B, d) view has
    # stride_hd = B, and d * B passes 2^31 long before B * d elements do.
    h = tl.load(H + (row0 + rows)[:, None] * stride_hb + dcol[None, :].to(tl.int64) * stride_hd,
                mask=row_ok[:, None] & (dcol < D)[None, :], other=0.0).to(DOT_DTYPE)
    # exp2 is the native instruction: log2(e) rides on the row scale. Padding
    # rows get scale 1 so that -inf * 0 never makes a NaN.
    s2 = tl.load(ROW_SCALE + row0 + rows, mask=row_ok, other=1.0) * LOG2E
    t = tl.load(TARGETS + row0 + rows, mask=row_ok, other=-1)

    if split == 0:
        # The targets' scores by the same dot as the tiles' (a tile of the
        # targets' rows against the row tile, read off its diagonal), so the
        # target logit and its term in the log-sum-exp share one rounding.
        cols = tl.arange(0, BLOCK_N)
        z_target = tl.zeros([BLOCK_B], tl.float32)
        for c0 in tl.range(0, BLOCK_B, BLOCK_N):
            sel = c0 + cols
            t_sel = tl.load(TARGETS + row0 + sel, mask=(sel < BLOCK_B) & (sel < (B - row0).to(tl.int32)), other=-1)
            v_t = tl.load(V + tl.maximum(t_sel, 0)[:, None] * D + dcol[None, :],
                          mask=(t_sel >= 0)[:, None] & (dcol < D)[None, :], other=0.0)
            z = mma(h, tl.trans(v_t), tl.zeros([BLOCK_B, BLOCK_N], tl.float32), UPCAST, PRECISION)
            z_target += tl.sum(tl.where(rows[:, None] == sel[None, :], z, 0.0), 1)
        tl.store(TARGET_Z + row0 + rows, z_target, mask=row_ok & (t >= 0))

    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_B], tl.float32)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)

    n_start = split * items_per_split
    n_end = tl.maximum(tl.minimum(n_start + items_per_split, N), n_start)
    n_full = n_start + (n_end - n_start) // BLOCK_N * BLOCK_N
    for n0 in tl.range(n_start, n_full, BLOCK_N):
        m, row_sum, acc = _online_tile(V, n0, BLOCK_N, D, h, s2, t, m, row_sum, acc,
                                       BLOCK_N, BLOCK_D, False, COMPUTE_O, DOT_DTYPE, UPCAST, PRECISION, P_SHIFT)
    if n_full < n_end:
        m, row_sum, acc = _online_tile(V, n_full, (n_end - n_full).to(tl.int32), D, h, s2, t, m, row_sum, acc,
                                       BLOCK_N, BLOCK_D, True, COMPUTE_O, DOT_DTYPE, UPCAST, PRECISION, P_SHIFT)

    # An empty split (possible only when N is tiny) leaves m = -inf, row_sum = 0:
    # lse = -inf gets zero weight in the merge.
    lse = (m * s2 - P_SHIFT + tl.log2(row_sum)) * LN2
    out_rows = split * B + row0 + rows
    tl.store(LSE_PART + out_rows, lse, mask=row_ok)

    if COMPUTE_O:
        o = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
        tl.store(O_PART + out_rows[:, None] * D + dcol[None, :], o, mask=row_ok[:, None] & (dcol < D)[None, :])


def p_shift(compute_dtype: torch.dtype) -> float:
    """log2 of the factor the forward's probabilities are scaled by before they
    meet the 16-bit operand: fp16's normal range ends at 6.1e-5, and p up to
    2^8 * 2^7 stays below its 65504; bf16 and fp32 have fp32's exponent range."""
    return 7.0 if compute_dtype == torch.float16 else 0.0


def normalized_lse_forward(
    hidden: torch.Tensor,
    items: torch.Tensor,
    row_scale: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_o: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel.

    hidden (B, d) any strides; items (N, d) contiguous, the scaled rows
    ``v = r e`` in the compute dtype (``ops._scales.scaled_items``); row_scale (B,) fp32;
    targets (B,) int64, -1 for rows without one. Returns lse (B,) fp32; the
    target logit ``s_i <h_i, v_t>`` (B,) fp32 from the kernel's own dot, in the
    same base-2 steps as the lse (so a lone item's p_t is exactly 1; 0 where
    targets is -1); and, when ``compute_o``, o (B, d) fp32: the
    softmax-weighted mean of the items other than each row's target,
    ``sum_{j != t} p_j v_j``.
    """
    B, D = hidden.shape
    N = items.shape[0]
    compute_dtype = items.dtype
    choice = config.pick(TABLE, D, hidden.device, compute_dtype)
    cfg = choice.config
    align = config.SPLIT_ALIGN if cfg is None else cfg.block_items
    row_tiles = triton.cdiv(B, 64 if cfg is None else cfg.block_rows)
    items_per_split, splits = config.split_work(N, align, row_tiles, hidden.device)

    lse_part = config.output((splits, B), torch.float32, hidden.device)
    o_part = config.output((splits, B, D), torch.float32, hidden.device) if compute_o else lse_part
    target_z = config.output((B,), torch.float32, hidden.device, zero=True)
    args = (
        hidden, items, row_scale.contiguous(), targets.contiguous(), lse_part, o_part, target_z,
        B, N, D, items_per_split,
        hidden.stride(0), hidden.stride(1),
    )
    meta = dict(
        BLOCK_D=config.block_d(D),
        COMPUTE_O=compute_o,
        DOT_DTYPE=config.dot_dtype(compute_dtype),
        UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
        P_SHIFT=p_shift(compute_dtype),
    )
    config.launch(_normalized_lse_fwd_kernel, choice, lambda m: (triton.cdiv(B, m["BLOCK_B"]), splits), args, meta,
                  tune_key=("D", "COMPUTE_O", "DOT_DTYPE", "PRECISION"))
    target_logit = target_z * (row_scale * LOG2E.value) * LN2.value
    if splits == 1:
        return lse_part[0], target_logit, (o_part[0] if compute_o else None)
    lse = torch.logsumexp(lse_part, dim=0)
    if not compute_o:
        return lse, target_logit, None
    weights = torch.exp(lse_part - lse).unsqueeze(-1)
    return lse, target_logit, (weights * o_part).sum(dim=0)
