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
def _exact_dot(a, b):
    # Every output element summed over K in the same order wherever it sits in
    # the tile: BLAS (behind the interpreter's tl.dot) rounds an element
    # differently by its position, which would split exact ties.
    return tl.sum(a[:, :, None] * b[None, :, :], 1)


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation.

    On a GPU this is one ``tl.dot``, whose tensor-core arithmetic gives an
    element the same bits wherever it sits in a tile. Under the interpreter
    (UPCAST, see config.upcast_dot) the operands are rounded the way the tensor
    cores round them and multiplied in fp32, each element summed in one fixed
    order: TF32 keeps 10 mantissa bits, and TF32x3 splits each operand into a
    TF32 head and tail and sums the three largest products, as Triton lowers
    it. So the interpreter tests measure the GPU's error, and its exact ties.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        if PRECISION == "tf32x3":
            a_hi = _round_tf32(a)
            b_hi = _round_tf32(b)
            acc = acc + _exact_dot(_round_tf32(a - a_hi), b_hi)
            acc = acc + _exact_dot(a_hi, _round_tf32(b - b_hi))
            return acc + _exact_dot(a_hi, b_hi)
        if PRECISION == "tf32":
            return acc + _exact_dot(_round_tf32(a), _round_tf32(b))
        return acc + _exact_dot(a, b)
    return tl.dot(a, b, acc, input_precision=PRECISION)
