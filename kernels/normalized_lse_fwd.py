"""Forward kernel of the normalized softmax head.

For query rows h_i and item rows e_j the logits are
``z_ij = s_i * r_j * <h_i, e_j>`` with a per-row scale ``s`` (1/temperature, and
1/||h_i|| when the queries are normalized) and a per-item scale ``r``
(1/max(||e_j||, eps), or 1). The kernel streams item tiles through an online
log-sum-exp, so the B x N logits never exist, and optionally accumulates the
softmax-weighted item mean ``o_i = sum_j p_ij * r_j * e_j``, which is exactly
d lse_i / d(s_i h_i) and lets the backward skip a second pass for dH.

Plain torch equivalent::

    v = item_emb.float() * item_scale[:, None]
    z = row_scale[:, None] * (hidden.float() @ (item_emb.float() * item_scale[:, None]).T)
    lse = z.logsumexp(-1); o = z.softmax(-1) @ v
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from ._tiles import load_tile, mma

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

_DEFAULTS = {
    64: config.BlockConfig(block_rows=128, block_items=64, num_warps=4, num_stages=3),
    128: config.BlockConfig(block_rows=64, block_items=64, num_warps=4, num_stages=3),
    256: config.BlockConfig(block_rows=64, block_items=32, num_warps=8, num_stages=2),
}
_TUNE = [
    config.BlockConfig(128, 64, 4, 3),
    config.BlockConfig(128, 128, 8, 3),
    config.BlockConfig(64, 64, 4, 4),
    config.BlockConfig(64, 32, 8, 2),
]
_INTERPRETER = config.BlockConfig(block_rows=16, block_items=32, num_warps=1, num_stages=1)


@triton.jit
def _normalized_lse_fwd_kernel(
    H, E, ROW_SCALE, ITEM_SCALE, LSE_PART, O_PART,
    B, N, D, items_per_split,
    stride_hb, stride_hd, stride_en, stride_ed,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COMPUTE_O: tl.constexpr, DOT_DTYPE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D

    h = load_tile(H, offs_b, offs_d, mask_b, mask_d, stride_hb, stride_hd).to(DOT_DTYPE)
    # exp2 is the native instruction; fold log2(e) into the row scale once.
    s2 = tl.load(ROW_SCALE + offs_b, mask=mask_b, other=0.0) * LOG2E

    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_B], tl.float32)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)

    n_start = pid_s * items_per_split
    n_end = tl.minimum(n_start + items_per_split, N)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        e = load_tile(E, offs_n, offs_d, mask_n, mask_d, stride_en, stride_ed)
        r = tl.load(ITEM_SCALE + offs_n, mask=mask_n, other=0.0)
        # Logits from the raw rows, scaled after the fp32 accumulation: no rounded
        # normalized copy of the table enters the log-sum-exp.
        z = mma(h, tl.trans(e.to(DOT_DTYPE)), UPCAST, PRECISION)
        z = z * s2[:, None] * r[None, :]
        z = tl.where(mask_n[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 1))
        p = tl.exp2(z - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        if COMPUTE_O:
            # Unit-norm rows are well scaled for bf16/fp16 operands whatever the
            # raw norms (the eps rows included, whose r is 1/eps).
            v = (e.to(tl.float32) * r[:, None]).to(DOT_DTYPE)
            acc = acc * alpha[:, None] + mma(p.to(DOT_DTYPE), v, UPCAST, PRECISION)
        m = m_new

    # An empty split (possible only when N is tiny) leaves m = -inf, l = 0:
    # lse = -inf gets zero weight in the merge.
    lse = (m + tl.log2(l)) * LN2
    tl.store(LSE_PART + pid_s * B + offs_b, lse, mask=mask_b)
    if COMPUTE_O:
        o = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(
            O_PART + (pid_s * B + offs_b)[:, None] * D + offs_d[None, :], o,
            mask=mask_b[:, None] & mask_d[None, :],
        )


def normalized_lse_forward(
    hidden: torch.Tensor,
    item_emb: torch.Tensor,
    row_scale: torch.Tensor,
    item_scale: torch.Tensor,
    *,
    compute_dtype: torch.dtype,
    compute_o: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel.

    hidden (B, d), item_emb (N, d) any strides; row_scale (B,), item_scale (N,)
    fp32. Returns lse (B,) fp32 and, when ``compute_o``, o (B, d) fp32.
    """
    B, D = hidden.shape
    N = item_emb.shape[0]
    tune = config.autotune_enabled() and not config.interpreting()
    cfg = config.for_width(_DEFAULTS, _INTERPRETER, D)
    align = config.SPLIT_ALIGN if tune else cfg.block_items
    row_tiles = triton.cdiv(B, 64 if tune else cfg.block_rows)
    items_per_split, splits = config.split_work(N, align, row_tiles, hidden.device)

    lse_part = torch.empty(splits, B, device=hidden.device, dtype=torch.float32)
    o_part = (
        torch.empty(splits, B, D, device=hidden.device, dtype=torch.float32)
        if compute_o
        else lse_part
    )
    args = (
        hidden, item_emb, row_scale, item_scale, lse_part, o_part,
        B, N, D, items_per_split,
        hidden.stride(0), hidden.stride(1), item_emb.stride(0), item_emb.stride(1),
    )
    meta = dict(
        BLOCK_D=config.block_d(D),
        COMPUTE_O=compute_o,
        DOT_DTYPE=config.dot_dtype(compute_dtype),
        UPCAST=config.upcast_dot(),
        PRECISION=config.dot_precision(compute_dtype),
    )
    if tune:
        grid = lambda m: (triton.cdiv(B, m["BLOCK_B"]), splits)  # noqa: E731
        config.autotuned(_normalized_lse_fwd_kernel, _TUNE, ["D", "COMPUTE_O", "DOT_DTYPE"])[grid](*args, **meta)
    else:
        grid = (triton.cdiv(B, cfg.block_rows), splits)
        _normalized_lse_fwd_kernel[grid](
            *args, BLOCK_B=cfg.block_rows, BLOCK_N=cfg.block_items,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
        )

    if splits == 1:
        return lse_part[0], (o_part[0] if compute_o else None)
    lse = torch.logsumexp(lse_part, dim=0)
    if not compute_o:
        return lse, None
    weights = torch.exp(lse_part - lse).unsqueeze(-1)
    return lse, (weights * o_part).sum(dim=0)
