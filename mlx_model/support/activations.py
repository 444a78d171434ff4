"""SiLU for the MLX components, with a form for CPUs.

On a CPU, MLX computes ``exp`` one element at a time, so ``nn.silu`` costs many times
torch's (README, Benchmark).  :func:`silu` computes the same function as
x / (1 + 2^(-x log2 e)): 2^y = 2^n * 2^f with n = round(y) taken from the float's own
rounding (adding 1.5 * 2^23 leaves n in the low mantissa bits, which become the exponent
field of 2^n) and 2^f, |f| <= 1/2, from its degree-7 Taylor polynomial; two compiled
elementwise kernels, within 3e-7 relative of ``nn.silu`` (``tests/test_activations.py``).
Unlike ``nn.silu``, silu(-inf) is -inf, not nan.  On Metal, or for non-fp32 activations,
``nn.silu``.
"""

from __future__ import annotations

import functools
import math

_ROUND = 1.5 * 2**23  # y + _ROUND rounds y to an integer held in the mantissa's low bits
_ROUND_BITS = 0x4B400000  # the bits of _ROUND as a float32
_EXP2 = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))  # 2^f = sum (f ln 2)^k / k!


@functools.cache
def _kernels():
    """The two compiled kernels (not shapeless: ``view`` cannot infer shapes there; a new
    shape re-traces, the compiled code is reused)."""
    import mlx.core as mx

    def reduce(x):  # y = -x log2 e (clipped: 2^n stays a normal float) -> (y + _ROUND, 2^f)
        y = mx.clip(x * -math.log2(math.e), -126.0, 126.0)
        r = y + _ROUND
        f = y - (r - _ROUND)
        p = _EXP2[-1]
        for c in reversed(_EXP2[:-1]):
            p = p * f + c
        return r, p

    def combine(x, r_bits, p):  # 2^n from n's bits, then x / (1 + 2^n 2^f)
        two_n = mx.left_shift(r_bits - (_ROUND_BITS - 127), 23).view(mx.float32)
        return x / (1 + p * two_n)

    return mx.compile(reduce), mx.compile(combine)


def silu(x):
    """``x * sigmoid(x)``: ``nn.silu`` on Metal and for non-fp32 ``x``; on a CPU for fp32, the
    compiled form of the module docstring."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_model.support.platform import metal_available

    if x.dtype != mx.float32 or metal_available():
        return nn.silu(x)
    reduce, combine = _kernels()
    r, p = reduce(x)
    return combine(x, r.view(mx.int32), p)
