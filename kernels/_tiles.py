"""Small @triton.jit helpers shared by the kernels.

Constants that kernels read are ``tl.constexpr`` globals: the compiler rejects
a plain module float (the interpreter does not, hence the compile gate).
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _round_tf32(x):
    # cvt.rna.tf32.f32: round to nearest (ties away) at 10 mantissa bits.
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation.

    On a GPU this is one ``tl.dot``. Under the interpreter (UPCAST, see
    config.upcast_dot) the operands are rounded the way the tensor cores round
    them and multiplied in fp32: TF32 keeps 10 mantissa bits, and TF32x3 splits
    each operand into a TF32 head and tail and sums the three largest products,
    as Triton lowers it. So the interpreter tests measure the GPU's error.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        if PRECISION == "tf32x3":
            a_hi = _round_tf32(a)
            b_hi = _round_tf32(b)
            acc = tl.dot(_round_tf32(a - a_hi), b_hi, acc, input_precision="ieee")
            acc = tl.dot(a_hi, _round_tf32(b - b_hi), acc, input_precision="ieee")
            return tl.dot(a_hi, b_hi, acc, input_precision="ieee")
        if PRECISION == "tf32":
            return tl.dot(_round_tf32(a), _round_tf32(b), acc, input_precision="ieee")
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)
