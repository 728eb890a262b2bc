"""Full-ranking kernel: for each query row, how many items score >= its target.

One pass over the item table, no B x N tensor: each program owns a row tile
and a range of items, recomputes the scores tile by tile and counts. The target
score is taken from the same ``tl.dot`` as the item tiles (the diagonal of
``h @ e_t^T``), so items identical to the target tie with it exactly.

Plain torch equivalent::

    s = row_scale[:, None] * item_scale[None, :] * (hidden.float() @ item_emb.float().T)
    ((s >= s.gather(1, t[:, None])) & (arange(N) != t[:, None])).sum(1)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import load_tile, mma

_DEFAULT = config.BlockConfig(block_rows=128, block_items=128, num_warps=8, num_stages=3)
_INTERPRETER = config.BlockConfig(block_rows=16, block_items=32, num_warps=1, num_stages=1)


@triton.jit
def _target_rank_kernel(
    H, E, ROW_SCALE, ITEM_SCALE, TARGETS, COUNT_PART, TARGET_SCORE,
    B, N, D, items_per_split,
    stride_hb, stride_hd, stride_en, stride_ed,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    h = load_tile(H, offs_b, offs_d, mask_b, mask_d, stride_hb, stride_hd).to(DOT_DTYPE)
    s = tl.load(ROW_SCALE + offs_b, mask=mask_b, other=0.0)
    t = tl.load(TARGETS + offs_b, mask=mask_b, other=0)

    e_t = load_tile(E, t, offs_d, mask_b, mask_d, stride_en, stride_ed).to(DOT_DTYPE)
    r_t = tl.load(ITEM_SCALE + t, mask=mask_b, other=0.0)
    z_tt = mma(h, tl.trans(e_t), UPCAST, PRECISION)
    diag = tl.arange(0, BLOCK_B)[:, None] == tl.arange(0, BLOCK_B)[None, :]
    target = tl.sum(tl.where(diag, z_tt, 0.0), 1) * s * r_t
    if pid_s == 0:
        tl.store(TARGET_SCORE + offs_b, target, mask=mask_b)

    count = tl.zeros([BLOCK_B], tl.int32)
    n_start = pid_s * items_per_split
    n_end = tl.minimum(n_start + items_per_split, N)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        e = load_tile(E, offs_n, offs_d, mask_n, mask_d, stride_en, stride_ed).to(DOT_DTYPE)
        r = tl.load(ITEM_SCALE + offs_n, mask=mask_n, other=0.0)
        z = mma(h, tl.trans(e), UPCAST, PRECISION) * s[:, None] * r[None, :]
        ge = (z >= target[:, None]) & mask_n[None, :] & (offs_n[None, :] != t[:, None])
        count += tl.sum(ge.to(tl.int32), 1)
    tl.store(COUNT_PART + pid_s * B + offs_b, count, mask=mask_b)


def target_rank_counts(hidden, item_emb, row_scale, item_scale, targets, *, compute_dtype):
    """For each row: the number of items other than the target scoring >= it
    ((B,) int64), and the target's score ((B,) fp32) as the kernel computed it."""
    B, D = hidden.shape
    N = item_emb.shape[0]
    cfg = _INTERPRETER if config.interpreting() else _DEFAULT
    row_tiles = triton.cdiv(B, cfg.block_rows)
    items_per_split, splits = config.split_work(N, cfg.block_items, row_tiles, hidden.device)
    part = torch.empty(splits, B, device=hidden.device, dtype=torch.int32)
    target_score = torch.empty(B, device=hidden.device, dtype=torch.float32)
    _target_rank_kernel[(row_tiles, splits)](
        hidden, item_emb, row_scale, item_scale, targets, part, target_score,
        B, N, D, items_per_split,
        hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1),
        BLOCK_B=cfg.block_rows, BLOCK_N=cfg.block_items, BLOCK_D=config.block_d(D),
        DOT_DTYPE=config.dot_dtype(compute_dtype), UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return part.sum(dim=0, dtype=torch.int64), target_score
