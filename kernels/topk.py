"""Top-K items per query row in one pass, no B x N tensor.

A score and its item id pack into one int64 key: the fp32 score's bits mapped
to an order-preserving integer in the high half, the complemented id in the
low half, so a larger key is a better item with ties to the smaller id. Each
program keeps, per row, an unsorted set of its K best keys and their minimum,
the row's threshold. Items arrive in increasing id order, so a later item
enters the set only with a score strictly above the threshold's: the common
tile costs one row max of its scores and one comparison per row, no sort. A
tile where some row beats its threshold inserts one candidate per such row
per step (its best remaining item replaces the row's worst key), until no row
has a candidate left; excluded items (a row's CSR list, sorted, found by
binary search) are dropped instead of inserted, so K never grows with the
exclusion lists. Ranking ignores the positive row scale: scores are
``<h_i, e_j> r_j``.

Plain torch equivalent::

    s = item_scale[None, :] * (hidden.float() @ item_emb.float().T); s[excluded] = -inf
    torch.sort(s, dim=1, descending=True, stable=True)[:, :K]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import mma

LOWEST_KEY = -(2**63)
_LOWEST = tl.constexpr(LOWEST_KEY)
_NAN_ORDER = tl.constexpr(0x7F800001)

# Keyed by K (a power of two): rows x items per tile, warps, stages, per
# architecture family and operand kind, each fitting every served width
# (``python -m tfllmer_fast.kernels.gate --search``). The running set is
# BLOCK_B x K int64 in registers, so larger K takes fewer rows. sm_80 has its
# own entry for K <= 32, where ptxas otherwise spills to fit three blocks.
TABLE = config.KernelTable(
    autotune=False,  # the grid depends on the config
    defaults={
        ("sm_90", "16bit"): {
            64: config.BlockConfig(64, 32, 4, 2, max_registers=255),
            128: config.BlockConfig(64, 32, 4, 2),
            256: config.BlockConfig(32, 64, 8, 2),
            512: config.BlockConfig(32, 64, 8, 2),
        },
        ("sm_90", "tf32"): {
            64: config.BlockConfig(64, 32, 4, 2),
            128: config.BlockConfig(32, 32, 4, 2, max_registers=255),
            256: config.BlockConfig(32, 64, 8, 2),
            512: config.BlockConfig(16, 64, 8, 2, max_registers=255),
        },
        ("sm_90", "tf32x3"): {
            64: config.BlockConfig(64, 64, 4, 2),
            128: config.BlockConfig(64, 32, 4, 2),
            256: config.BlockConfig(32, 64, 8, 2),
            512: config.BlockConfig(16, 64, 8, 2),
        },
        ("sm_80", "16bit"): {
            32: config.BlockConfig(64, 64, 4, 2, max_registers=255),
            64: config.BlockConfig(64, 64, 4, 2),
            128: config.BlockConfig(64, 64, 8, 2),
            256: config.BlockConfig(64, 32, 8, 2, max_registers=255),
            512: config.BlockConfig(32, 64, 8, 2),
        },
        ("sm_80", "tf32"): {
            32: config.BlockConfig(64, 32, 4, 2, max_registers=255),
            64: config.BlockConfig(32, 64, 4, 2, max_registers=255),
            128: config.BlockConfig(32, 64, 4, 2),
            256: config.BlockConfig(64, 32, 8, 2),
            512: config.BlockConfig(32, 64, 8, 2),
        },
        ("sm_80", "tf32x3"): {
            32: config.BlockConfig(64, 32, 4, 2, max_registers=255),
            64: config.BlockConfig(32, 64, 8, 2, max_registers=255),
            128: config.BlockConfig(32, 64, 4, 2),
            256: config.BlockConfig(32, 64, 8, 2),
            512: config.BlockConfig(16, 32, 4, 2),
        },
    },
    interpreter=config.BlockConfig(block_rows=16, block_items=32, num_warps=1, num_stages=1),
)


def supported() -> bool:
    """The kernel needs tl.argmax with tie_break_left (Triton 3.x)."""
    return hasattr(tl, "argmax")


def max_k() -> int:
    """The largest K every architecture family and operand kind serves."""
    return min(max(by_k) for by_k in TABLE.defaults.values())


@triton.jit
def _pack(score, item, is_nan):
    bits = (score + 0.0).to(tl.int32, bitcast=True)  # + 0.0 turns -0.0 into +0.0
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    # NaN ranks first (as a descending torch.sort puts it): one above +inf,
    # itself a NaN bit pattern, so it unpacks as NaN.
    ordered = tl.where(is_nan, _NAN_ORDER, ordered).to(tl.int64)
    return (ordered << 32) | ((~item.to(tl.int64)) & 0xFFFFFFFF)


@triton.jit
def _threshold(key, row_ok, K: tl.constexpr):
    """The score a new item must beat: that of the row's worst key, -inf while
    the set still holds sentinels, +inf for padding rows (never insert)."""
    high = (key >> 32).to(tl.int32)
    score = tl.where(high >= 0, high, high ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
    score = tl.where(key < _LOWEST + K, float("-inf"), score)
    return tl.where(row_ok, score, float("inf"))


@triton.jit
def _is_excluded(EXCL_ITEMS, lo, hi, item, search_steps):
    """Whether ``item`` is in the sorted list EXCL_ITEMS[lo:hi) (per row)."""
    end = hi
    for _ in range(search_steps):
        live = lo < hi
        mid = (lo + hi) // 2
        x = tl.load(EXCL_ITEMS + mid, mask=live, other=0)
        lo = tl.where(live & (x < item), mid + 1, lo)
        hi = tl.where(live & (x >= item), mid, hi)
    return tl.load(EXCL_ITEMS + lo, mask=lo < end, other=-1) == item


@triton.jit
def _topk_kernel(
    H, E, ITEM_SCALE, EXCL_INDPTR, EXCL_ITEMS, KEYS_PART,
    B, N, D, items_per_split, search_steps,
    stride_hb, stride_hd, stride_en, stride_ed,
    K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr, HAS_NAN: tl.constexpr, DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    split = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_B)
    dcol = tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_N)
    slots = tl.arange(0, K)
    row_ok = rows < (B - row0).to(tl.int32)
    d_ok = dcol < D
    # Index x stride products in 64 bits (a transposed view has stride_hd = B).
    h = tl.load(H + (row0 + rows)[:, None] * stride_hb + dcol[None, :].to(tl.int64) * stride_hd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)
    if HAS_EXCLUDE:
        excl_lo = tl.load(EXCL_INDPTR + row0 + rows, mask=row_ok, other=0)
        excl_hi = tl.load(EXCL_INDPTR + row0 + rows + 1, mask=row_ok, other=0)

    # Distinct sentinels, so "the slot holding the minimum" is always one slot.
    best = tl.full([BLOCK_B, K], _LOWEST, tl.int64) + slots.to(tl.int64)[None, :]
    worst = tl.min(best, 1)
    threshold = _threshold(worst, row_ok, K)

    n_start = split * items_per_split
    n_end = tl.minimum(n_start + items_per_split, N)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        valid = cols < (n_end - n0).to(tl.int32)
        e = tl.load(E + (n0 + cols)[:, None] * stride_en + dcol[None, :].to(tl.int64) * stride_ed,
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        r = tl.load(ITEM_SCALE + n0 + cols, mask=valid, other=0.0)
        z = mma(h, tl.trans(e.to(DOT_DTYPE)), tl.zeros([BLOCK_B, BLOCK_N], tl.float32), UPCAST, PRECISION)
        z = z * r[None, :]
        if HAS_NAN:
            # Row maxima skip NaN: a NaN counts as +inf for the test.
            z_max = tl.max(tl.where(z != z, float("inf"), z), 1)
        else:
            z_max = tl.max(z, 1)
        if tl.max((z_max > threshold).to(tl.int32), 0) > 0:
            if HAS_NAN:
                # Selected as +inf, and remembered so its key says NaN.
                nan = z != z
                z = tl.where(nan, float("inf"), z)
            z = tl.where(valid[None, :], z, float("-inf"))
            z_max = tl.max(z, 1)
            need = z_max > threshold
            while tl.max(need.to(tl.int32), 0) > 0:
                col = tl.argmax(z, 1, tie_break_left=True)
                item = n0 + col
                take = need
                if HAS_EXCLUDE:
                    take = take & ~_is_excluded(EXCL_ITEMS, excl_lo, excl_hi, item, search_steps)
                if HAS_NAN:
                    is_nan = tl.max((nan & (cols[None, :] == col[:, None])).to(tl.int32), 1) > 0
                else:
                    is_nan = col < 0  # never
                key = _pack(z_max, item, is_nan)
                best = tl.where(take[:, None] & (best == worst[:, None]), key[:, None], best)
                worst = tl.min(best, 1)
                threshold = _threshold(worst, row_ok, K)
                z = tl.where(cols[None, :] == col[:, None], float("-inf"), z)
                z_max = tl.max(z, 1)
                need = z_max > threshold
    tl.store(KEYS_PART + (split * B + row0 + rows)[:, None] * K + slots[None, :], best, mask=row_ok[:, None])


def topk_keys(hidden, item_emb, item_scale, k: int, *, exclude=None, has_nan=False, compute_dtype) -> torch.Tensor:
    """(B, k) int64 packed keys of the top k items per row, best first (see
    ``unpack``). ``exclude``: ``(indptr (B + 1,), items, longest)`` in CSR form,
    ``longest`` the longest row's count; excluded items are never returned.
    ``has_nan``: some score may be NaN (non-finite inputs); NaN then ranks
    first, as in a descending ``torch.sort``, instead of being skipped."""
    B, D = hidden.shape
    N = item_emb.shape[0]
    K = max(triton.next_power_of_2(k), 2)
    choice = config.pick(TABLE, K, hidden.device, compute_dtype)
    cfg = choice.config
    row_tiles = triton.cdiv(B, cfg.block_rows)
    items_per_split, splits = config.split_work(N, cfg.block_items, row_tiles, hidden.device)
    part = config.output((splits, B, K), torch.int64, hidden.device)
    if exclude is None:
        indptr = items = part  # unread
        search_steps = 0
    else:
        indptr, items, longest = exclude
        rows = torch.repeat_interleave(torch.arange(B, device=hidden.device), indptr.diff(),
                                       output_size=items.numel())
        items = torch.sort(rows * N + items).values % N  # each row's list sorted
        search_steps = max(int(longest), 1).bit_length()
    args = (hidden, item_emb, item_scale, indptr.contiguous(), items, part,
            B, N, D, items_per_split, search_steps,
            hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1))
    meta = dict(K=K, BLOCK_D=config.block_d(D), HAS_EXCLUDE=exclude is not None, HAS_NAN=bool(has_nan),
                DOT_DTYPE=config.dot_dtype(compute_dtype), UPCAST=config.upcast_dot(),
                PRECISION=config.dot_precision(compute_dtype))
    config.launch(_topk_kernel, choice, lambda m: (row_tiles, splits), args, meta)
    merged = part.permute(1, 0, 2).reshape(B, splits * K)
    return torch.topk(merged, k, dim=1).values  # keys are distinct: this is the sorted order


def unpack(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed keys -> (fp32 scores, int64 item ids); empty slots give (-inf, -1)."""
    empty = keys < LOWEST_KEY + 2**20
    items = (~keys) & 0xFFFFFFFF
    high = (keys >> 32).to(torch.int32)
    bits = torch.where(high >= 0, high, high ^ 0x7FFFFFFF)
    values = bits.view(torch.float32)
    return values.masked_fill(empty, float("-inf")), items.masked_fill(empty, -1)
