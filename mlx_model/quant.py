"""Quantization and dtype helpers shared by the MLX model files: the supported bit widths,
the group size, Linear-layer quantization (with the CPU dequantized variant) and casting.
MLX is imported inside the functions, so the CLIs can read the constants without it."""

from __future__ import annotations

from weights.errors import MobileOError

QUANTIZE_CHOICES = (0, 4, 8)  # bits for the LLM and DiT Linear layers; 0 = float
QUANT_GROUP_SIZE = 64  # MLX / mlx-lm default; Mobile-O ships its LLM 4-bit with group 64


def check_bits(bits: int) -> int:
    if bits not in QUANTIZE_CHOICES:
        raise MobileOError(f"quantize must be one of {QUANTIZE_CHOICES}, got {bits!r}.",
                           fix="use -q 0 (float), 4 or 8.")
    return bits


def quantize_linears(module, bits: int | None, group_size: int = QUANT_GROUP_SIZE,
                     dequantize: bool | None = None):
    """Affine ``bits``-bit quantization of the Linear layers whose input dim is a multiple of
    ``group_size`` (the others stay float).  ``bits`` None or 0: unchanged.

    ``dequantize`` (default: when Metal is unavailable) turns the quantized layers back into
    float Linear layers holding the *dequantized* 4/8-bit values: the numbers of the quantized
    model, computed with float matmuls.  On CPU, MLX's quantized matmul is ~40x slower than an
    OpenBLAS fp32 matmul for prompt-sized inputs (5760x1152 weight, 512 rows: 10.6 s vs 0.24 s).
    """
    import mlx.nn as nn

    if not bits:
        return module
    nn.quantize(module, group_size=group_size, bits=bits,
                class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % group_size == 0)
    if dequantize is None:
        from .platform import metal_available

        dequantize = not metal_available()
    if dequantize:
        dequantize_linears(module)
    return module


def dequantize_linears(module):
    """Replace every QuantizedLinear by a Linear with its dequantized weight (same values)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map_with_path

    def swap(_, m):
        if not isinstance(m, nn.QuantizedLinear):
            return m
        w = mx.dequantize(m.weight, m.scales, m.biases, group_size=m.group_size, bits=m.bits, mode=m.mode)
        lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
        lin.weight = w.astype(m.scales.dtype)
        if "bias" in m:
            lin.bias = m.bias
        return lin

    module.update_modules(tree_map_with_path(swap, module.leaf_modules(), is_leaf=nn.Module.is_module))
    return module


def cast(module, dtype):
    """Cast the floating-point parameters (not quantized weights) to ``dtype``."""
    import mlx.core as mx

    if dtype is not None and dtype != mx.float32:
        module.apply(lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x)
    return module
