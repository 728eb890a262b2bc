"""tl.dot wrapper shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` with fp32 accumulation (see config.upcast_dot for UPCAST)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)
