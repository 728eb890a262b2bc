"""Full-ranking kernel: for each query row, how many items score >= its target.

One pass over the item table, no B x N tensor: each program owns a row tile
and a range of items, recomputes the scores tile by tile and counts. Ranking
within a row ignores the positive row scale, so scores are ``<h_i, e_j> r_j``.
Every score, the target's included, comes from one expression (``_scores``:
a tile of item rows against the row tile, one ``tl.dot``), so items identical
to the target tie with it exactly. Excluded items are counted in their tiles
and taken back out after the loop: the program scores its rows' exclusion
lists, gathered into tiles, with that same expression, so the correction
decides each near-tie as the count did.

Plain torch equivalent::

    s = item_scale[None, :] * (hidden.float() @ item_emb.float().T); s[excluded] = -inf
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
            32: config.BlockConfig(64, 128, 4, 2),
            64: config.BlockConfig(64, 128, 4, 2),
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
            32: config.BlockConfig(128, 32, 4, 2),
            64: config.BlockConfig(64, 32, 4, 2),
        },
    },
)


@triton.jit
def _scores(E, ITEM_SCALE, items, item_ok, D, stride_en, stride_ed, h,
            BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr,
            PRECISION: tl.constexpr):
    """``<h, e_j> r_j`` for the rows of ``h`` against the items ``items`` (a
    vector of ids, ``item_ok`` the real ones, read only when MASKED): the one
    expression every score comes from, so an item scores the same wherever it
    is met (its tile, the targets' diagonal, an exclusion list)."""
    dcol = tl.arange(0, BLOCK_D)
    ptrs = E + items[:, None] * stride_en + dcol[None, :].to(tl.int64) * stride_ed
    if MASKED:
        e = tl.load(ptrs, mask=item_ok[:, None] & (dcol < D)[None, :], other=0.0)
        r = tl.load(ITEM_SCALE + items, mask=item_ok, other=0.0)
    else:
        e = tl.load(ptrs, mask=(dcol < D)[None, :], other=0.0)
        r = tl.load(ITEM_SCALE + items)
    z = mma(h, tl.trans(e.to(DOT_DTYPE)), tl.zeros([h.shape[0], items.shape[0]], tl.float32), UPCAST, PRECISION)
    return z * r[None, :]


@triton.jit
def _at_least(z, target, HAS_NAN: tl.constexpr):
    """Whether each score counts against its row's target. NaN never helps a
    row: a NaN item counts against it, and a NaN target loses to every item."""
    ge = z >= target[:, None]
    if HAS_NAN:
        ge = ge | (z != z) | (target != target)[:, None]
    return ge


@triton.jit
def _count_tile(E, ITEM_SCALE, n0, n_valid, D, stride_en, stride_ed, h, target, t, count,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, HAS_NAN: tl.constexpr,
                DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    cols = tl.arange(0, BLOCK_N)
    valid = cols < n_valid
    z = _scores(E, ITEM_SCALE, n0 + cols, valid, D, stride_en, stride_ed, h,
                BLOCK_D, MASKED, DOT_DTYPE, UPCAST, PRECISION)
    ge = _at_least(z, target, HAS_NAN) & (cols[None, :] != (t - n0).to(tl.int32)[:, None])
    if MASKED:
        ge = ge & valid[None, :]
    return count + tl.sum(ge.to(tl.int32), 1)


@triton.jit
def _target_rank_kernel(
    H, E, ITEM_SCALE, TARGETS, TARGET_SCORE, EXCL_INDPTR, EXCL_ITEMS, EXCL_ROWS, COUNT_PART,
    B, N, D, items_per_split,
    stride_hb, stride_hd, stride_en, stride_ed,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COUNT: tl.constexpr, GIVEN_SCORE: tl.constexpr, HAS_EXCLUDE: tl.constexpr, HAS_NAN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    split = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    dcol = tl.arange(0, BLOCK_D)
    row_ok = rows < (B - row0).to(tl.int32)
    d_ok = dcol < D
    # Index x stride products in 64 bits (a transposed view has stride_hd = B).
    h = tl.load(H + (row0 + rows)[:, None] * stride_hb + dcol[None, :].to(tl.int64) * stride_hd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)
    # -1: this row's target is not among these items (another shard's).
    t = tl.load(TARGETS + row0 + rows, mask=row_ok, other=-1)

    if GIVEN_SCORE:
        target = tl.load(TARGET_SCORE + row0 + rows, mask=row_ok, other=0.0)
    else:
        # The diagonal of h against tiles of the targets' rows: the same
        # expression, and the same tile shape, as every item tile's.
        target = tl.zeros([BLOCK_B], tl.float32)
        for c0 in tl.static_range(0, BLOCK_B, BLOCK_N):
            sel = c0 + cols
            t_sel = tl.load(TARGETS + row0 + sel, mask=(sel < BLOCK_B) & (sel < (B - row0).to(tl.int32)), other=-1)
            z = _scores(E, ITEM_SCALE, tl.maximum(t_sel, 0), t_sel >= 0, D, stride_en, stride_ed, h,
                        BLOCK_D, True, DOT_DTYPE, UPCAST, PRECISION)
            target += tl.sum(tl.where(rows[:, None] == sel[None, :], z, 0.0), 1)
        if split == 0:
            tl.store(TARGET_SCORE + row0 + rows, target, mask=row_ok & (t >= 0))

    if COUNT:
        count = tl.zeros([BLOCK_B], tl.int32)
        n_start = split * items_per_split
        n_end = tl.maximum(tl.minimum(n_start + items_per_split, N), n_start)
        n_full = n_start + (n_end - n_start) // BLOCK_N * BLOCK_N
        for n0 in tl.range(n_start, n_full, BLOCK_N):
            count = _count_tile(E, ITEM_SCALE, n0, BLOCK_N, D, stride_en, stride_ed, h, target, t, count,
                                BLOCK_N, BLOCK_D, False, HAS_NAN, DOT_DTYPE, UPCAST, PRECISION)
        if n_full < n_end:
            count = _count_tile(E, ITEM_SCALE, n_full, (n_end - n_full).to(tl.int32), D, stride_en, stride_ed, h,
                                target, t, count, BLOCK_N, BLOCK_D, True, HAS_NAN, DOT_DTYPE, UPCAST, PRECISION)
        if HAS_EXCLUDE:
            if split == 0:
                # Excluded items (each row's list without repeats) counted above
                # are taken back out, scored by the same expression, so a tie
                # decided in a tile is decided alike here.
                x_lo = tl.load(EXCL_INDPTR + row0)
                x_hi = tl.load(EXCL_INDPTR + tl.minimum(row0 + BLOCK_B, B))
                for x0 in tl.range(x_lo, x_hi, BLOCK_N, num_stages=1):
                    x_ok = cols < (x_hi - x0).to(tl.int32)
                    item = tl.load(EXCL_ITEMS + x0 + cols, mask=x_ok, other=0).to(tl.int64)
                    owner = tl.load(EXCL_ROWS + x0 + cols, mask=x_ok, other=-1)
                    z = _scores(E, ITEM_SCALE, item, x_ok, D, stride_en, stride_ed, h,
                                BLOCK_D, True, DOT_DTYPE, UPCAST, PRECISION)
                    mine = owner[None, :] == (row0 + rows).to(tl.int32)[:, None]
                    back = _at_least(z, target, HAS_NAN) & mine & (item[None, :] != t[:, None])
                    count -= tl.sum(back.to(tl.int32), 1)
        tl.store(COUNT_PART + split * B + row0 + rows, count, mask=row_ok)


def target_rank_counts(hidden, item_emb, item_scale, targets, *, exclude=None, target_score=None, count=True,
                       has_nan=False, compute_dtype):
    """Count, for each row, the items other than its target that score at least as
    high, leaving out excluded items: ((B,) int64 counts or None, (B,) fp32 target scores).

    Scores are ``<h, e_j> r_j`` (no row scale: it does not change a row's
    order). hidden (B, d), item_emb (N, d) any strides; item_scale (N,) fp32;
    targets (B,) int64, an index into item_emb or -1 where the target lies
    elsewhere (a sharded table), in which case ``target_score`` (B,) fp32 must
    give it. Without ``target_score`` the kernel computes the scores itself
    (returned, so a shard that owns a target can hand it to the others; with
    ``count=False`` that is all it does). ``exclude``: ``(indptr (B + 1,) int64,
    items int32, rows int32)``, each row's list sorted without repeats, ``rows``
    the row of each entry. ``has_nan``: some score may be NaN (non-finite inputs):
    a NaN item then counts against every target and a NaN target against
    every item (NaN never makes a hit).
    """
    B, D = hidden.shape
    N = item_emb.shape[0]
    choice = config.pick(TABLE, D, hidden.device, compute_dtype)
    cfg = choice.config
    row_tiles = triton.cdiv(B, cfg.block_rows)
    items_per_split, splits = config.split_work(N, cfg.block_items, row_tiles, hidden.device)
    if not count:
        splits = 1
    part = config.output((splits if count else 0, B), torch.int32, hidden.device)
    given = target_score is not None
    if target_score is None:
        target_score = config.output((B,), torch.float32, hidden.device, zero=True)
    indptr, items, owners = exclude if exclude is not None else (part, part, part)  # unread without exclusions
    args = (hidden, item_emb, item_scale, targets.contiguous(), target_score.contiguous(), indptr.contiguous(),
            items.contiguous(), owners.contiguous(), part,
            B, N, D, items_per_split,
            hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1))
    meta = dict(BLOCK_D=config.block_d(D), COUNT=count, GIVEN_SCORE=given, HAS_EXCLUDE=exclude is not None,
                HAS_NAN=bool(has_nan),
                DOT_DTYPE=config.dot_dtype(compute_dtype), UPCAST=config.upcast_dot(),
                PRECISION=config.dot_precision(compute_dtype))
    if B:
        config.launch(_target_rank_kernel, choice, lambda m: (row_tiles, splits), args, meta)
    counts = part.sum(dim=0, dtype=torch.int64) if count else None
    return counts, target_score
