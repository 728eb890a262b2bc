"""Top-K items per query row in one pass, no B x N tensor.

Scores and item ids are packed into one int64 key: the fp32 score's bits mapped
to an order-preserving integer in the high half, the complemented item id in
the low half, so sorting keys descending sorts scores descending with ties to
the smaller id. Each program keeps a running top-K for its item range; a tile is
sorted (``tl.topk``) and merged only when some row in it beats that row's
current K-th key, which after the first tiles is rare.

Plain torch equivalent::

    s = row_scale[:, None] * item_scale[None, :] * (hidden.float() @ item_emb.float().T)
    torch.sort(s, dim=1, descending=True, stable=True)[:, :K]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import load_tile, mma

LOWEST_KEY = -(2**63)


def supported() -> bool:
    """tl.topk appeared in Triton 3.x; older versions take the torch path."""
    return hasattr(tl, "topk")


@triton.jit
def _pack(z, offs_n):
    bits = (z + 0.0).to(tl.int32, bitcast=True)  # + 0.0 turns -0.0 into +0.0
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
    return (ordered << 32) | ((~offs_n.to(tl.int64)) & 0xFFFFFFFF)


@triton.jit
def _topk_kernel(
    H, E, ROW_SCALE, ITEM_SCALE, KEYS_PART,
    B, N, D, items_per_split,
    stride_hb, stride_hd, stride_en, stride_ed,
    K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    h = load_tile(H, offs_b, offs_d, mask_b, offs_d < D, stride_hb, stride_hd).to(DOT_DTYPE)
    s = tl.load(ROW_SCALE + offs_b, mask=mask_b, other=0.0)

    best = tl.full([BLOCK_B, K], -9223372036854775807 - 1, tl.int64)
    threshold = tl.full([BLOCK_B], -9223372036854775807 - 1, tl.int64)
    n_start = pid_s * items_per_split
    n_end = tl.minimum(n_start + items_per_split, N)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        e = load_tile(E, offs_n, offs_d, mask_n, offs_d < D, stride_en, stride_ed).to(DOT_DTYPE)
        r = tl.load(ITEM_SCALE + offs_n, mask=mask_n, other=0.0)
        z = mma(h, tl.trans(e), UPCAST, PRECISION) * s[:, None] * r[None, :]
        key = tl.where(mask_n[None, :], _pack(z, offs_n[None, :]), -9223372036854775807 - 1)
        if tl.sum((tl.max(key, 1) > threshold).to(tl.int32)) > 0:
            tile_top = tl.topk(key, K, dim=1)
            best = tl.topk(tl.reshape(tl.join(best, tile_top), [BLOCK_B, 2 * K]), K, dim=1)
            threshold = tl.min(best, 1)
    tl.store(KEYS_PART + (pid_s * B + offs_b)[:, None] * K + tl.arange(0, K)[None, :], best,
             mask=mask_b[:, None])


def _config(k: int):
    if config.interpreting():
        return config.BlockConfig(block_rows=16, block_items=max(32, k), num_warps=1, num_stages=1)
    if k <= 64:
        return config.BlockConfig(block_rows=64, block_items=128, num_warps=8, num_stages=2)
    if k <= 256:
        return config.BlockConfig(block_rows=32, block_items=k, num_warps=8, num_stages=2)
    return config.BlockConfig(block_rows=16, block_items=k, num_warps=8, num_stages=1)


def topk_keys(hidden, item_emb, row_scale, item_scale, k: int, *, compute_dtype) -> torch.Tensor:
    """(B, K) int64 packed keys of the top K = next_pow2(k) items, best first."""
    B, D = hidden.shape
    N = item_emb.shape[0]
    K = max(triton.next_power_of_2(k), 2)
    cfg = _config(K)
    row_tiles = triton.cdiv(B, cfg.block_rows)
    items_per_split, splits = config.split_work(N, cfg.block_items, row_tiles, hidden.device)
    part = torch.empty(splits, B, K, device=hidden.device, dtype=torch.int64)
    _topk_kernel[(row_tiles, splits)](
        hidden, item_emb, row_scale, item_scale, part,
        B, N, D, items_per_split,
        hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1),
        K=K, BLOCK_B=cfg.block_rows, BLOCK_N=cfg.block_items, BLOCK_D=config.block_d(D),
        DOT_DTYPE=config.dot_dtype(compute_dtype), UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if splits == 1:
        return part[0]
    merged = part.permute(1, 0, 2).reshape(B, splits * K)
    return torch.topk(merged, K, dim=1).values


def unpack(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed keys -> (fp32 scores, int64 item ids); empty slots give (-inf, -1)."""
    empty = keys == LOWEST_KEY
    items = (~keys) & 0xFFFFFFFF
    high = (keys >> 32).to(torch.int32)
    bits = torch.where(high >= 0, high, high ^ 0x7FFFFFFF)
    values = bits.view(torch.float32)
    return values.masked_fill(empty, float("-inf")), items.masked_fill(empty, -1)
