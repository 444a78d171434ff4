"""Quantization and dtype helpers shared by the MLX model files: the supported bit widths,
the group size, Linear-layer quantization (with the CPU dequantized variant) and casting.
MLX is imported inside the functions, so the CLIs can read the constants without it."""

from __future__ import annotations

from weights.core.errors import MobileOError, SettingError

QUANTIZE_CHOICES = (0, 4, 8)  # bits for the LLM and DiT Linear layers; 0 = float
DEFAULT_QUANTIZE = 4  # every entry point's default (-q 4): the one place it is written
QUANT_GROUP_SIZE = 64  # MLX / mlx-lm default; Mobile-O ships its LLM 4-bit with group 64
GROUP_SIZES = (32, 64, 128)  # the group sizes mx.quantize takes
QMM_MAX_ROWS = 16  # on CPU: up to this many input rows, MLX's quantized matmul; above, JIT dequantize


def check_bits(quantize: int) -> int:
    """``quantize`` (bits of the quantized Linear layers, 0 = float) is one MLX supports here."""
    if quantize not in QUANTIZE_CHOICES:
        raise SettingError("quantize", f"{{name}} must be one of {QUANTIZE_CHOICES}, got {quantize!r}.",
                           fix="use {name} 0 (float), 4 or 8.")
    return quantize


def quantize_linears(module, quantize: int, group_size: int = QUANT_GROUP_SIZE,
                     dequantize: bool | None = None):
    """Affine ``quantize``-bit quantization of the Linear layers whose input dim is a multiple of
    ``group_size`` (the others stay float).  ``quantize`` 0: unchanged.

    ``dequantize`` True turns the quantized layers back into float Linear layers holding the
    *dequantized* 4/8-bit values (float memory); False keeps MLX's ``QuantizedLinear``; None
    (default) keeps them on Metal and, without Metal, makes them :class:`JITQuantizedLinear`:
    packed weights resident, dequantized per call for prompt-sized inputs (on CPU, MLX's
    quantized matmul is ~40x slower than an OpenBLAS fp32 matmul there: 5760x1152 weight,
    512 rows, 10.6 s vs 0.24 s), MLX's quantized matmul for a few rows (token decoding).
    """
    import mlx.nn as nn

    if not quantize:
        return module
    nn.quantize(module, group_size=group_size, bits=quantize, class_predicate=quantizable(group_size))
    return finish_quantized(module, dequantize)


def quantizable(group_size: int = QUANT_GROUP_SIZE):
    """``nn.quantize``'s predicate: the Linear layers whose input width is a multiple of the group."""
    import mlx.nn as nn

    return lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % group_size == 0


def finish_quantized(module, dequantize: bool | None = None):
    """The compute form of a module's QuantizedLinear layers (see :func:`quantize_linears`)."""
    if dequantize is None:
        from mlx_model.support.platform import metal_available

        if not metal_available():
            return jit_linears(module)
        return module
    if dequantize:
        dequantize_linears(module)
    return module


def _jit_class():
    import mlx.core as mx
    import mlx.nn as nn

    class JITQuantizedLinear(nn.QuantizedLinear):
        """A QuantizedLinear (same parameters: packed weight, scales, biases) for CPUs: inputs
        of more than :data:`QMM_MAX_ROWS` rows are multiplied by the weight dequantized just
        for this call (a temporary, freed after the matmul), fewer rows go through MLX's
        quantized matmul.  Memory holds the packed weights; the values are those of the
        dequantized model."""

        def __call__(self, x):
            if x.size // x.shape[-1] <= QMM_MAX_ROWS:
                return super().__call__(x)
            w = mx.dequantize(self.weight, self.scales, self.biases, group_size=self.group_size,
                              bits=self.bits, mode=self.mode).astype(self.scales.dtype)
            if "bias" in self:
                return mx.addmm(self.bias, x, w.T)
            return x @ w.T

    return JITQuantizedLinear


_JIT = None


def jit_linears(module):
    """Make every QuantizedLinear of ``module`` a :class:`JITQuantizedLinear` (no copy)."""
    import mlx.nn as nn

    global _JIT
    if _JIT is None:
        _JIT = _jit_class()
    for _, m in module.named_modules():
        if isinstance(m, nn.QuantizedLinear) and not isinstance(m, _JIT):
            m.__class__ = _JIT
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
