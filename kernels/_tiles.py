"""Small @triton.jit helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` with fp32 accumulation (see config.upcast_dot for UPCAST)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def load_tile(ptr, rows, cols, row_mask, col_mask, stride_row, stride_col):
    """The (len(rows), len(cols)) tile of a strided 2-D tensor, zeros outside the masks."""
    return tl.load(ptr + rows[:, None] * stride_row + cols[None, :] * stride_col,
                   mask=row_mask[:, None] & col_mask[None, :], other=0.0)
