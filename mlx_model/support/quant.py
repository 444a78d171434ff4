"""Quantization and dtype helpers shared by the MLX model files: the supported bit widths,
the group size, Linear-layer quantization (with the CPU dequantized variant) and casting.
MLX is imported inside the functions, so the CLIs can read the constants without it."""

from __future__ import annotations

import functools

from weights.core.errors import MobileOError, SettingError

QUANTIZE_CHOICES = (0, 4, 8)  # bits for the LLM and DiT Linear layers; 0 = float
DEFAULT_QUANTIZE = 4  # every entry point's default (-q 4): the one place it is written
QUANT_GROUP_SIZE = 64  # MLX / mlx-lm default; Mobile-O ships its LLM 4-bit with group 64
GROUP_SIZES = (32, 64, 128)  # the group sizes mx.quantize takes
QMM_MAX_ROWS = 16  # on CPU: up to this many input rows, MLX's quantized matmul; above, JIT dequantize
JIT_CHUNK_BYTES = 64 * 2**20  # on CPU: a JIT-dequantized weight larger than this is dequantized in row blocks
# scales and biases are kept (in memory and in an MLX folder) in bfloat16, as mlx-community's
# conversions of bf16 models hold them: half the bytes of fp32 (~1 bit per 4-bit weight at group 64)
SCALES_DTYPE = "bfloat16"
# -q N (N > 0) also quantizes the matmul layers (Linear layers and 1x1 convolutions) of these
# float parts, with at least these bits (group: the folder's), chosen by the drift measured
# against their float path (README "MLX folder": vision features and decoded image, demo and
# full size); their spatial and depthwise convolutions, norms and squeeze-excite layers stay
# float (bf16 in a folder)
PART_BITS = {"vision": 4, "vae": 8}


def part_bits(part: str, quantize: int) -> int:
    """The bits ``-q quantize`` gives checkpoint part ``part``'s matmul layers: ``quantize``
    for the LLM and DiT, :data:`PART_BITS` (never fewer than ``quantize``) for the vision tower
    and the VAE decoder, 0 (float) for the rest or when ``quantize`` is 0."""
    from weights.core.components import QUANTIZED_PARTS

    if not quantize:
        return 0
    if part in QUANTIZED_PARTS:
        return quantize
    return max(quantize, PART_BITS[part]) if part in PART_BITS else 0


def check_bits(quantize: int) -> int:
    """``quantize`` (bits of the quantized Linear layers, 0 = float) is one MLX supports here."""
    if quantize not in QUANTIZE_CHOICES:
        raise SettingError("quantize", f"{{name}} must be one of {QUANTIZE_CHOICES}, got {quantize!r}.",
                           fix="use {name} 0 (float), 4 or 8.")
    return quantize


def quantize_linears(module, quantize: int, group_size: int = QUANT_GROUP_SIZE,
                     dequantize: bool | None = None, embeddings: bool = False, dtype=None):
    """Affine ``quantize``-bit quantization of the Linear layers (and, with ``embeddings``, the
    Embedding tables, as mlx-lm: a tied LM head then multiplies by the quantized table through
    ``QuantizedEmbedding.as_linear``) whose input dim is a multiple of ``group_size`` (the
    others stay float).  ``quantize`` 0: unchanged.  Quantized from the float weights; scales
    and biases then rounded to :data:`SCALES_DTYPE` (bf16), exactly what an MLX folder stores.

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
    nn.quantize(module, group_size=group_size, bits=quantize, class_predicate=quantizable(group_size, embeddings))
    scales_to_stored(module)
    return finish_quantized(module, dequantize, dtype)


def quantizable(group_size: int = QUANT_GROUP_SIZE, embeddings: bool = False):
    """``nn.quantize``'s predicate: the Linear layers, the layers that say they are one
    (``QUANTIZABLE``: 1x1 convolutions) and, with ``embeddings``, the Embedding tables, whose
    input width is a multiple of the group."""
    import mlx.nn as nn

    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    return lambda _, m: ((isinstance(m, kinds) or getattr(m, "QUANTIZABLE", False))
                         and m.weight.shape[-1] % group_size == 0)


def quantized_modules(module) -> dict:
    """{dotted name: module} of the quantized layers (QuantizedLinear, QuantizedEmbedding)."""
    import mlx.nn as nn

    return {n: m for n, m in module.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


def scales_to_stored(module):
    """Round every quantized layer's scales and biases to :data:`SCALES_DTYPE` (kept so)."""
    import mlx.core as mx

    low = getattr(mx, SCALES_DTYPE)
    for _, m in quantized_modules(module).items():
        m.scales = m.scales.astype(low)
        m.biases = m.biases.astype(low)
    return module


def finish_quantized(module, dequantize: bool | None = None, dtype=None):
    """The compute form of a module's quantized layers (see :func:`quantize_linears`);
    ``dtype``: the float dtype of dequantized weights (default fp32)."""
    if dequantize is None:
        from mlx_model.support.platform import metal_available

        if not metal_available():
            return jit_linears(module)
        return module
    if dequantize:
        dequantize_linears(module, dtype)
    return module


@functools.cache
def _kernels():
    """The compiled elementwise kernels of :func:`dequantize` (compiled once, shapeless)."""
    import mlx.core as mx

    def words(packed, shifts, mask, scales, biases):  # 32 // bits values per uint32, low bits first
        return ((packed >> shifts) & mask).astype(scales.dtype) * scales + biases

    def octets(packed, scales, biases):  # 8 bits: one value per byte
        return packed.astype(scales.dtype) * scales + biases

    return mx.compile(words, shapeless=True), mx.compile(octets, shapeless=True)


def dequantize(weight, scales, biases, group_size: int, bits: int, dtype, mode: str = "affine"):
    """``mx.dequantize``'s values (``scales``, ``biases`` upcast to ``dtype`` first, as MLX's
    quantized matmul does), computed by one compiled elementwise kernel over the packed words:
    bit-identical (``tests/test_part_quantization.py``) and faster on a CPU, where
    ``mx.dequantize`` unpacks one value at a time (README, Benchmark).  Other modes, or bit
    widths that do not divide 32: ``mx.dequantize``."""
    import mlx.core as mx

    if mode != "affine" or 32 % bits or group_size % (32 // bits):
        return mx.dequantize(weight, scales.astype(dtype), None if biases is None else biases.astype(dtype),
                             group_size=group_size, bits=bits, mode=mode)
    s, b = scales.astype(dtype)[..., None], biases.astype(dtype)[..., None]
    rows = weight.shape[0]
    words, octets = _kernels()
    if bits == 8:
        return octets(weight.view(mx.uint8).reshape(rows, -1, group_size), s, b).reshape(rows, -1)
    packed = weight.reshape(rows, -1, group_size * bits // 32, 1)
    shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
    return words(packed, shifts, mx.array(2**bits - 1, dtype=mx.uint32), s[..., None], b[..., None]).reshape(rows, -1)


def _dequantized_matmul(m, x):
    """``x @ W.T`` with W = ``m``'s weight dequantized in ``x``'s dtype just for this call
    (:func:`dequantize`: the same values as MLX's quantized matmul), in blocks of output rows
    when W would be over :data:`JIT_CHUNK_BYTES` (an LM head: 136M weights, 0.5 GB in fp32)."""
    import mlx.core as mx

    rows = m.weight.shape[0]
    step = max(1, min(rows, JIT_CHUNK_BYTES // max(1, x.shape[-1] * x.itemsize)))
    outs = []
    for i in range(0, rows, step):
        w = dequantize(m.weight[i:i + step], m.scales[i:i + step], m.biases[i:i + step], m.group_size, m.bits,
                       x.dtype, m.mode)
        outs.append(x @ w.T)
        if len(outs) > 1:
            mx.eval(outs[-1])  # one block's dequantized weight alive at a time
    return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)


def _jit_classes():
    import mlx.core as mx
    import mlx.nn as nn

    class JITQuantizedLinear(nn.QuantizedLinear):
        """A QuantizedLinear (same parameters: packed weight, scales, biases) for CPUs: inputs
        of more than :data:`QMM_MAX_ROWS` rows are multiplied by the weight dequantized just
        for this call (a temporary, freed after the matmul; in blocks when large), fewer rows
        go through MLX's quantized matmul.  Memory holds the packed weights; the values are
        those of the dequantized model."""

        def __call__(self, x):
            if x.size // x.shape[-1] <= QMM_MAX_ROWS:
                return super().__call__(x)
            y = _dequantized_matmul(self, x)
            return y + self.bias if "bias" in self else y

    class JITQuantizedEmbedding(nn.QuantizedEmbedding):
        """A QuantizedEmbedding whose ``as_linear`` (a tied LM head) takes the same JIT path."""

        def as_linear(self, x):
            if x.size // x.shape[-1] <= QMM_MAX_ROWS:
                return super().as_linear(x)
            return _dequantized_matmul(self, x)

    return {nn.QuantizedLinear: JITQuantizedLinear, nn.QuantizedEmbedding: JITQuantizedEmbedding}


_JIT = None


def jit_linears(module):
    """Make every quantized layer of ``module`` its JIT form (:class:`JITQuantizedLinear`,
    :class:`JITQuantizedEmbedding`; no copy)."""
    global _JIT
    if _JIT is None:
        _JIT = _jit_classes()
    for _, m in quantized_modules(module).items():
        for base, jit in _JIT.items():
            if type(m) is base:
                m.__class__ = jit
    return module


def has_jit_layers(module) -> bool:
    """Whether ``module`` holds quantized layers in their JIT form (CPU).  A model made of
    such layers is best evaluated layer by layer: each call's dequantized weight depends on no
    input, so in one lazy graph MLX may dequantize several layers' weights before their
    products run (full size, one 35-token LLM prompt: +457 MB over the resident weights
    as one graph, +109 MB layer by layer; one DiT call +462 MB vs +106 MB; same values)."""
    jit = tuple((_JIT or {}).values())  # none made yet: no layer can be one
    return bool(jit) and any(isinstance(m, jit) for m in quantized_modules(module).values())


def dequantize_linears(module, dtype=None):
    """Replace every QuantizedLinear by a Linear with its dequantized weight (same values) in
    ``dtype`` (default fp32)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map_with_path

    dtype = mx.float32 if dtype is None else dtype

    def swap(_, m):
        if not isinstance(m, nn.QuantizedLinear):
            return m
        w = dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits, dtype, m.mode)
        lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
        lin.weight = w
        if "bias" in m:
            lin.bias = m.bias
        return lin

    module.update_modules(tree_map_with_path(swap, module.leaf_modules(), is_leaf=nn.Module.is_module))
    return module


def cast(module, dtype, keep: tuple[str, ...] = ()):
    """Cast the floating-point parameters to ``dtype``, except the quantized layers' scales and
    biases (kept in :data:`SCALES_DTYPE`) and the dotted parameter paths in ``keep``."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    if dtype is None:
        return module
    qnames = set(quantized_modules(module))

    def one(path, x):
        owner, _, leaf = path.rpartition(".")
        stays = path in keep or (owner in qnames and leaf in ("scales", "biases"))
        return x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) and x.dtype != dtype and not stays else x

    module.update(tree_map_with_path(one, module.parameters()))
    return module



def hold_exact(module, low="bfloat16"):
    """Hold every fp32 parameter that ``low`` (bf16) represents exactly in ``low``: half the
    memory, the same values.  Activations stay whatever the caller feeds (fp32 on CPU): MLX
    widens each weight inside its op, so results are bit-identical (the VAE decoder, the
    vision tower of a bf16 checkpoint or MLX folder)."""
    import mlx.core as mx
    from mlx.utils import tree_map

    low = getattr(mx, low)

    def one(x):
        if x.dtype != mx.float32:
            return x
        y = x.astype(low)
        return y if mx.array_equal(y.astype(mx.float32), x).item() else x

    module.update(tree_map(one, module.parameters()))
    mx.eval(module.parameters())
    return module
