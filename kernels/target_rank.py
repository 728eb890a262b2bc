"""Full-ranking kernel: for each query row, how many items score >= its target.

One pass over the item table, no B x N tensor: each program owns a row tile
and a range of items, recomputes the scores tile by tile and counts. Ranking
within a row ignores the positive row scale, so scores are ``<h_i, e_j> r_j``.
The target score comes from the same ``tl.dot`` as the item tiles (the
diagonal of ``h @ e_t^T``), so items identical to the target tie with it
exactly.

Plain torch equivalent::

    s = item_scale[None, :] * (hidden.float() @ item_emb.float().T)
    ((s >= s.gather(1, t[:, None])) & (arange(N) != t[:, None])).sum(1)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import mma

# Rows x items per tile, warps, stages, per architecture family, operand kind
# and head width (``python -m tfllmer_fast.kernels.gate --search``).
TABLE = config.KernelTable(
    autotune=False,  # the grid depends on the config
    defaults={
        ("sm_90", "16bit"): {
            32: config.BlockConfig(128, 128, 4, 2),
            64: config.BlockConfig(128, 128, 4, 2),
            128: config.BlockConfig(128, 128, 8, 2),
            256: config.BlockConfig(64, 128, 4, 2),
        },
        ("sm_90", "tf32"): {
            32: config.BlockConfig(128, 128, 4, 2),
            64: config.BlockConfig(128, 128, 8, 2),
            128: config.BlockConfig(64, 128, 4, 2),
            256: config.BlockConfig(64, 32, 4, 2),
        },
        ("sm_90", "tf32x3"): {
            32: config.BlockConfig(128, 128, 8, 2),
            64: config.BlockConfig(128, 128, 8, 2),
        },
        ("sm_80", "16bit"): {
            32: config.BlockConfig(128, 128, 4, 2),
            64: config.BlockConfig(128, 64, 4, 2),
            128: config.BlockConfig(128, 32, 4, 2),
            256: config.BlockConfig(64, 64, 8, 2),
        },
        ("sm_80", "tf32"): {
            32: config.BlockConfig(128, 64, 4, 2),
            64: config.BlockConfig(128, 32, 4, 2),
            128: config.BlockConfig(64, 64, 8, 2),
            256: config.BlockConfig(64, 32, 8, 2),
        },
        ("sm_80", "tf32x3"): {
            32: config.BlockConfig(128, 64, 4, 2),
            64: config.BlockConfig(64, 32, 4, 2),
        },
    },
)


@triton.jit
def _count_tile(E, ITEM_SCALE, n0, n_valid, D, stride_en, stride_ed, h, target, t, count,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
                DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    cols = tl.arange(0, BLOCK_N)
    dcol = tl.arange(0, BLOCK_D)
    ptrs = E + n0 * stride_en + cols[:, None] * stride_en + dcol[None, :] * stride_ed
    if MASKED:
        valid = cols < n_valid
        e = tl.load(ptrs, mask=valid[:, None] & (dcol < D)[None, :], other=0.0)
        r = tl.load(ITEM_SCALE + n0 + cols, mask=valid, other=0.0)
    else:
        e = tl.load(ptrs, mask=(dcol < D)[None, :], other=0.0)
        r = tl.load(ITEM_SCALE + n0 + cols)
    z = mma(h, tl.trans(e.to(DOT_DTYPE)), tl.zeros([h.shape[0], BLOCK_N], tl.float32), UPCAST, PRECISION)
    z = z * r[None, :]
    ge = (z >= target[:, None]) & (cols[None, :] != (t - n0).to(tl.int32)[:, None])
    if MASKED:
        ge = ge & valid[None, :]
    return count + tl.sum(ge.to(tl.int32), 1)


@triton.jit
def _target_rank_kernel(
    H, E, ITEM_SCALE, TARGETS, COUNT_PART, TARGET_SCORE,
    B, N, D, items_per_split,
    stride_hb, stride_hd, stride_en, stride_ed,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    split = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_B)
    dcol = tl.arange(0, BLOCK_D)
    row_ok = rows < (B - row0).to(tl.int32)
    d_ok = dcol < D
    h = tl.load(H + row0 * stride_hb + rows[:, None] * stride_hb + dcol[None, :] * stride_hd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)
    t = tl.load(TARGETS + row0 + rows, mask=row_ok, other=0)

    e_t = tl.load(E + t[:, None] * stride_en + dcol[None, :] * stride_ed, mask=row_ok[:, None] & d_ok[None, :],
                  other=0.0).to(DOT_DTYPE)
    r_t = tl.load(ITEM_SCALE + t, mask=row_ok, other=0.0)
    z_tt = mma(h, tl.trans(e_t), tl.zeros([BLOCK_B, BLOCK_B], tl.float32), UPCAST, PRECISION)
    diag = rows[:, None] == rows[None, :]
    target = tl.sum(tl.where(diag, z_tt, 0.0), 1) * r_t
    if split == 0:
        tl.store(TARGET_SCORE + row0 + rows, target, mask=row_ok)

    count = tl.zeros([BLOCK_B], tl.int32)
    n_start = split * items_per_split
    n_end = tl.maximum(tl.minimum(n_start + items_per_split, N), n_start)
    n_full = n_start + (n_end - n_start) // BLOCK_N * BLOCK_N
    for n0 in tl.range(n_start, n_full, BLOCK_N):
        count = _count_tile(E, ITEM_SCALE, n0, BLOCK_N, D, stride_en, stride_ed, h, target, t, count,
                            BLOCK_N, BLOCK_D, False, DOT_DTYPE, UPCAST, PRECISION)
    if n_full < n_end:
        count = _count_tile(E, ITEM_SCALE, n_full, (n_end - n_full).to(tl.int32), D, stride_en, stride_ed, h,
                            target, t, count, BLOCK_N, BLOCK_D, True, DOT_DTYPE, UPCAST, PRECISION)
    tl.store(COUNT_PART + split * B + row0 + rows, count, mask=row_ok)


def target_rank_counts(hidden, item_emb, item_scale, targets, *, compute_dtype):
    """For each row: the number of items other than the target scoring >= it
    ((B,) int64), and the target's score ``<h, e_t> r_t`` ((B,) fp32) as the
    kernel computed it (no row scale: it does not change a row's order)."""
    B, D = hidden.shape
    N = item_emb.shape[0]
    choice = config.pick(TABLE, D, hidden.device, compute_dtype)
    cfg = choice.config
    row_tiles = triton.cdiv(B, cfg.block_rows)
    items_per_split, splits = config.split_work(N, cfg.block_items, row_tiles, hidden.device)
    part = torch.empty(splits, B, device=hidden.device, dtype=torch.int32)
    target_score = torch.empty(B, device=hidden.device, dtype=torch.float32)
    args = (hidden, item_emb, item_scale, targets, part, target_score,
            B, N, D, items_per_split,
            hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1))
    meta = dict(BLOCK_D=config.block_d(D), DOT_DTYPE=config.dot_dtype(compute_dtype),
                UPCAST=config.upcast_dot(), PRECISION=config.dot_precision(compute_dtype))
    config.launch(_target_rank_kernel, choice, lambda m: (row_tiles, splits), args, meta)
    return part.sum(dim=0, dtype=torch.int64), target_score
