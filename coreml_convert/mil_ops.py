"""Numpy implementations of the MIL ops that converted Mobile-O programs use.

Each entry of :data:`OPS` is ``fn(a) -> value | tuple`` where ``a`` is an :class:`Args`: the op's
input values with floats already upcast to float32 (the executor rounds every result to the
dtype the program declares, so an fp16 program is emulated op by op). Ops listed in
:data:`DELEGATED` are run through coremltools' own ``value_inference`` (``mil_exec`` does that);
ops whose ``value_inference`` is missing, symbolic-only, buggy or far too slow (``gelu`` and ``erf``
use ``np.vectorize(math.erf)``, ``cumsum(exclusive=True)`` is broken, ``band_part`` loops in
Python, ``reshape``/``shape`` reason on symbols) are implemented here.

Semantics follow the op definitions in ``coremltools/converters/mil/mil/ops/defs``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import special  # scipy: a direct dependency of the `convert` extra


class Args:
    """The input values of one op, by input name; ``a.x`` or ``a.get("bias")`` (None if absent)."""

    def __init__(self, op, values: dict):
        self.op = op
        self._values = values

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self.op.op_type} {self.op.name!r} has no input {name!r}") from None

    def get(self, name, default=None):
        value = self._values.get(name)
        return default if value is None else value

    def scalar(self, name, default=None):
        """A const input as a Python scalar or string."""
        value = self._values.get(name)
        if value is None:
            return default
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.reshape(-1)[0].item()

    def ints(self, name, default=None) -> list[int] | None:
        value = self._values.get(name)
        return default if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


# ---------------------------------------------------------------- activations and elementwise


def _gelu(a: Args):
    x = a.x
    mode = a.scalar("mode", "EXACT")
    if mode == "EXACT":
        return 0.5 * x * (1.0 + special.erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * special.expit(1.702 * x)
    raise ValueError(f"gelu: unknown mode {mode!r}")


def _thresholded_relu(a: Args):
    return np.where(a.x < a.scalar("alpha", 1.0), 0.0, a.x)


# ---------------------------------------------------------------- convolution and pooling


def _spatial_pads(pad_type, pad, in_sizes, kernel, strides, dilations, ceil_mode=False):
    """[(begin, end)] per spatial axis for MIL pad_type valid / custom / same / same_lower."""
    rank = len(in_sizes)
    pad_type = (pad_type or "valid").lower()
    if pad_type == "valid":
        pads = [(0, 0)] * rank
    elif pad_type == "custom":
        pad = list(pad) if pad is not None else [0] * (2 * rank)
        pads = [(pad[2 * i], pad[2 * i + 1]) for i in range(rank)]
    elif pad_type in ("same", "same_lower"):
        pads = []
        for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if pad_type == "same" else (big, small))
    else:
        raise ValueError(f"unknown pad_type {pad_type!r}")
    if ceil_mode:  # extra end padding so the last partial window is kept
        out = []
        for (b, e), n, k, s, d in zip(pads, in_sizes, kernel, strides, dilations):
            span = n + b + e - ((k - 1) * d + 1)
            extra = (-span) % s if span > 0 else 0
            out.append((b, e + extra))
        pads = out
    return pads


def _windows(x, kernel, strides, dilations):
    """Yield (kernel index, strided view [N, C, *out]) over every kernel position."""
    rank = len(kernel)
    out = [
        (x.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(rank)
    ]
    for k in itertools.product(*(range(n) for n in kernel)):
        sl = tuple(
            slice(k[i] * dilations[i], k[i] * dilations[i] + (out[i] - 1) * strides[i] + 1, strides[i])
            for i in range(rank)
        )
        yield k, x[(slice(None), slice(None)) + sl]


def _conv(a: Args):
    x, w = a.x, a.weight
    rank = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = a.ints("strides", [1] * rank)
    dilations = a.ints("dilations", [1] * rank)
    groups = int(a.scalar("groups", 1))
    pads = _spatial_pads(a.scalar("pad_type", "valid"), a.ints("pad"), x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    wg = w.reshape(groups, og, cg, *kernel)
    out, out_sizes = None, None
    for k, patch in _windows(x, kernel, strides, dilations):
        out_sizes = patch.shape[2:]
        patch = patch.reshape(n, groups, cg, -1)  # [N, G, cg, P]
        wk = wg[(Ellipsis,) + k]  # [G, og, cg]
        term = wk[None, :, :, :1] * patch if cg == 1 else np.matmul(wk, patch)
        out = term if out is None else out + term
    out = out.reshape(n, o, *out_sizes)
    bias = a.get("bias")
    if bias is not None:
        out = out + bias.reshape((1, o) + (1,) * rank)
    return out


def _conv_transpose(a: Args):
    x, w = a.x, a.weight  # w: [C_in, C_out / groups, *K]
    rank = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = a.ints("strides", [1] * rank)
    dilations = a.ints("dilations", [1] * rank)
    groups = int(a.scalar("groups", 1))
    n, c = x.shape[:2]
    cg, og = c // groups, w.shape[1]
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(rank)]
    out = np.zeros((n, groups, og, *full), np.float32)
    xg = x.reshape(n, groups, cg, -1)  # [N, G, cg, P]
    wg = w.reshape(groups, cg, og, *kernel)
    for k in itertools.product(*(range(s) for s in kernel)):
        contrib = np.matmul(np.swapaxes(wg[(Ellipsis,) + k], 1, 2), xg)  # [N, G, og, P]
        sl = tuple(
            slice(k[i] * dilations[i], k[i] * dilations[i] + (x.shape[2 + i] - 1) * strides[i] + 1, strides[i])
            for i in range(rank)
        )
        out[(slice(None), slice(None), slice(None)) + sl] += contrib.reshape(n, groups, og, *x.shape[2:])
    out = out.reshape(n, groups * og, *full)
    pad_type = (a.scalar("pad_type", "valid") or "valid").lower()
    output_shape = a.ints("output_shape")
    if pad_type == "custom":
        pad = a.ints("pad", [0] * (2 * rank))
        begins = [pad[2 * i] for i in range(rank)]
        ends = [full[i] - pad[2 * i + 1] for i in range(rank)]
    elif pad_type == "valid":
        begins, ends = [0] * rank, list(full)
    elif pad_type in ("same", "same_lower"):
        targets = [x.shape[2 + i] * strides[i] for i in range(rank)]
        begins, ends = [], []
        for i in range(rank):
            total = max(full[i] - targets[i], 0)
            b = total // 2 if pad_type == "same" else total - total // 2
            begins.append(b)
            ends.append(b + targets[i])
    else:
        raise ValueError(f"unknown pad_type {pad_type!r}")
    if output_shape is not None:
        sizes = output_shape[-rank:]
        ends = [begins[i] + sizes[i] for i in range(rank)]
    out = out[(slice(None), slice(None)) + tuple(slice(b, e) for b, e in zip(begins, ends))]
    bias = a.get("bias")
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * rank)
    return out


def _pool(a: Args, kind: str):
    x = a.x
    kernel = a.ints("kernel_sizes")
    rank = len(kernel)
    strides = a.ints("strides", [1] * rank)
    dil = [1] * rank
    pads = _spatial_pads(
        a.scalar("pad_type", "valid"), a.ints("pad"), x.shape[2:], kernel, strides, dil,
        ceil_mode=bool(a.scalar("ceil_mode", False)),
    )
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
    acc = None
    for _, patch in _windows(xp, kernel, strides, dil):
        acc = patch.copy() if acc is None else (np.maximum(acc, patch) if kind == "max" else acc + patch)
    if kind == "max":
        return acc
    if a.scalar("exclude_padding_from_average", False):
        ones = np.pad(np.ones((1, 1) + x.shape[2:], np.float32), [(0, 0), (0, 0)] + pads)
        count = sum(p for _, p in _windows(ones, kernel, strides, dil))
        return acc / count
    return acc / float(np.prod(kernel))


# ---------------------------------------------------------------- normalization


def _scale_shift(a: Args, y):
    """Optional per-channel gamma / beta of the norm ops, channels on axis 1."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if a.get("gamma") is not None:
        y = y * a.gamma.reshape(shape)
    if a.get("beta") is not None:
        y = y + a.beta.reshape(shape)
    return y


def _batch_norm(a: Args):
    x = a.x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = a.scalar("epsilon", 1e-5)
    return _scale_shift(a, (x - a.mean.reshape(shape)) / np.sqrt(a.variance.reshape(shape) + eps))


def _instance_norm(a: Args):
    x = a.x
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return _scale_shift(a, (x - mean) / np.sqrt(var + a.scalar("epsilon", 1e-5)))


# ---------------------------------------------------------------- shape ops


def _reshape(a: Args):
    shape = a.ints("shape")
    if 0 in shape and len(shape) == a.x.ndim:
        shape = [a.x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(a.x, shape)


def _concat(a: Args):
    values = [np.asarray(v) for v in a.values]
    axis = int(a.scalar("axis"))
    if a.scalar("interleave", False):
        axis = axis % values[0].ndim
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] = -1
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


def _cumsum(a: Args):
    x = a.x
    axis = int(a.scalar("axis", 0))
    if a.scalar("reverse", False):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if a.scalar("exclusive", False):
        y = y - x
    if a.scalar("reverse", False):
        y = np.flip(y, axis)
    return y


def _band_part(a: Args):
    x = a.x
    m, n = x.shape[-2:]
    lower, upper = int(a.scalar("lower", -1)), int(a.scalar("upper", -1))
    rows = np.arange(m)[:, None]
    cols = np.arange(n)[None, :]
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


def _range_1d(a: Args):
    return np.arange(a.scalar("start"), a.scalar("end"), a.scalar("step"))


def _pixel_shuffle(a: Args):
    x = a.x
    r = int(a.scalar("upscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


def _pixel_unshuffle(a: Args):
    x = a.x
    r = int(a.scalar("downscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


def _depth_to_space(a: Args):
    x = a.x
    b = int(a.scalar("block_size"))
    n, c, h, w = x.shape
    return x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(a: Args):
    x = a.x
    b = int(a.scalar("block_size"))
    n, c, h, w = x.shape
    return x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


# ---------------------------------------------------------------- resampling


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Source coordinates for MIL sampling modes (resize_bilinear's docstring)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.full(1, (n_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1) if n_out > 1 else 0.0)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        s = n_in / n_out
        g = i * s + 0.5 * s - 0.5
    else:
        raise ValueError(f"unknown sampling_mode {mode!r}")
    return np.clip(g, 0, n_in - 1)


def _lerp_axis(x, axis: int, coords: np.ndarray):
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    frac = (coords - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _bilinear(x, out_h: int, out_w: int, mode: str):
    x = _lerp_axis(x, -2, _grid(x.shape[-2], out_h, mode))
    return _lerp_axis(x, -1, _grid(x.shape[-1], out_w, mode))


def _nearest(x, out_h: int, out_w: int, scale_h=None, scale_w=None):
    sh = scale_h if scale_h else out_h / x.shape[-2]
    sw = scale_w if scale_w else out_w / x.shape[-1]
    rows = np.minimum(np.floor(np.arange(out_h) / sh).astype(np.int64), x.shape[-2] - 1)
    cols = np.minimum(np.floor(np.arange(out_w) / sw).astype(np.int64), x.shape[-1] - 1)
    return x[..., rows, :][..., cols]


def _upsample_nearest(a: Args):
    x = a.x
    sh, sw = float(a.scalar("scale_factor_height", 1)), float(a.scalar("scale_factor_width", 1))
    return _nearest(x, int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw)), sh, sw)


def _upsample_bilinear(a: Args):
    x = a.x
    sh, sw = float(a.scalar("scale_factor_height", 1)), float(a.scalar("scale_factor_width", 1))
    out_h, out_w = int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw))
    if a.scalar("align_corners", True):
        return _bilinear(x, out_h, out_w, "STRICT_ALIGN_CORNERS")
    if a.scalar("half_pixel_centers", not a.scalar("align_corners", True)):
        # src = (dst + 0.5) / scale - 0.5, clamped (tf half_pixel_centers)
        def coords(n_in, n_out, s):
            return np.clip((np.arange(n_out) + 0.5) / s - 0.5, 0, n_in - 1)

        x = _lerp_axis(x, -2, coords(x.shape[-2], out_h, sh))
        return _lerp_axis(x, -1, coords(x.shape[-1], out_w, sw))
    def coords0(n_in, n_out, s):
        return np.clip(np.arange(n_out) / s, 0, n_in - 1)

    x = _lerp_axis(x, -2, coords0(x.shape[-2], out_h, sh))
    return _lerp_axis(x, -1, coords0(x.shape[-1], out_w, sw))


def _resize_bilinear(a: Args):
    return _bilinear(
        a.x, int(a.scalar("target_size_height", 1)), int(a.scalar("target_size_width", 1)),
        a.scalar("sampling_mode", "DEFAULT"),
    )


def _resize_nearest(a: Args):
    return _nearest(a.x, int(a.scalar("target_size_height", 1)), int(a.scalar("target_size_width", 1)))


def _resize(a: Args):
    x = a.x
    dims = int(a.scalar("resized_dims"))
    shape = a.ints("shape")
    if dims not in (1, 2):
        raise ValueError(f"resize: resized_dims {dims} not supported (1 or 2)")
    target = [s if s != 0 else x.shape[x.ndim - dims + i] for i, s in enumerate(shape[-dims:])]
    squeeze = dims == 1
    if squeeze:
        x = x[..., None, :]
        target = [1] + target
    if a.scalar("interpolation_mode", "LINEAR") == "NEAREST_NEIGHBOR":
        y = _nearest(x, target[0], target[1])
    else:
        y = _bilinear(x, target[0], target[1], a.scalar("sampling_mode", "DEFAULT"))
    return y[..., 0, :] if squeeze else y


# ---------------------------------------------------------------- compressed constants


def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Indices packed LSB-first, ``nbits`` each, as in constexpr_lut_to_dense (iOS16)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: count * nbits]
    weights = (1 << np.arange(nbits)).astype(np.uint16)
    return (bits.reshape(count, nbits).astype(np.uint16) * weights).sum(axis=1)


def _lut_to_dense(a: Args):
    if a.get("shape") is not None:  # iOS16: flat LUT, packed uint8 indices, explicit shape
        shape = a.ints("shape")
        lut = np.asarray(a.lut)
        nbits = int(round(math.log2(lut.size)))
        return lut[_unpack_bits(a.indices, nbits, int(np.prod(shape)))].reshape(shape)
    # iOS18: indices of shape S (sub-byte ints unpacked), lut [*G, NUM_PALETTES, VECTOR_SIZE]
    indices = np.asarray(a.indices).astype(np.int64)
    lut = np.asarray(a.lut)
    rank = indices.ndim
    vec = lut.shape[-1]
    blocks = [indices.shape[i] // lut.shape[i] for i in range(rank)]
    # one LUT per block of indices: each element's LUT by its block number on every axis (open
    # grids, broadcast by the indexing), never a LUT repeated to the weight's shape (that was
    # weight elements x palette size: gigabytes for a 6-bit 1536 x 6144 weight)
    grid = np.ix_(*(np.arange(s) // block for s, block in zip(indices.shape, blocks)))
    picked = lut[grid + (indices,)]  # [*S, VECTOR_SIZE]
    if vec == 1:
        return picked[..., 0]
    axis = int(a.scalar("vector_axis")) % rank
    picked = np.moveaxis(picked, -1, axis + 1)  # [..., S_axis, VEC, ...]
    shape = list(indices.shape)
    shape[axis] *= vec
    return picked.reshape(shape)


def _affine_dequantize(a: Args):
    data = np.asarray(a.quantized_data).astype(np.float32)
    axis = int(a.scalar("axis"))
    shape = [1] * data.ndim

    def expand(v):
        v = np.asarray(v).astype(np.float32)
        if v.ndim == 0 or v.size == 1:
            return v.reshape(())
        s = list(shape)
        s[axis] = -1
        return v.reshape(s)

    return expand(a.scale) * (data - expand(a.zero_point))


def _blockwise_shift_scale(a: Args):
    data = np.asarray(a.data).astype(np.float32)
    scale = np.asarray(a.scale).astype(np.float32)
    offset = a.get("offset")
    offset = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis in range(data.ndim):
        block = data.shape[axis] // scale.shape[axis]
        if block > 1:
            scale = np.repeat(scale, block, axis=axis)
            if offset is not None:
                offset = np.repeat(offset, block, axis=axis)
    if offset is not None:
        data = data - offset
    return scale * data


def _sparse_to_dense(a: Args):
    nonzero = np.asarray(a.nonzero_data)
    if a.get("shape") is not None:  # iOS16: packed bitmask, explicit shape
        shape = a.ints("shape")
        mask = _unpack_bits(a.mask, 1, int(np.prod(shape))).astype(bool)
    else:
        mask = np.asarray(a.mask).astype(bool)
        shape = mask.shape
        mask = mask.reshape(-1)
    out = np.zeros(mask.size, nonzero.dtype)
    out[mask] = nonzero
    return out.reshape(shape)


def _identity(a: Args):
    return a.x


OPS = {
    # activations the executor computes itself
    "gelu": _gelu,
    "silu": lambda a: a.x * special.expit(a.x),
    "sigmoid": lambda a: special.expit(a.x),
    "erf": lambda a: special.erf(a.x),
    "thresholded_relu": _thresholded_relu,
    # conv / pool
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "avg_pool": lambda a: _pool(a, "avg"),
    "max_pool": lambda a: _pool(a, "max"),
    # norms
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    # shape / tensor
    "reshape": _reshape,
    "shape": lambda a: np.array(a.x.shape, np.int32),
    "concat": _concat,
    "cumsum": _cumsum,
    "band_part": _band_part,
    "range_1d": _range_1d,
    "fill_like": lambda a: np.full(a.ref_tensor.shape, a.scalar("value", 0.0)),
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
    "depth_to_space": _depth_to_space,
    "space_to_depth": _space_to_depth,
    "cast": _identity,  # the executor rounds to the declared output dtype
    "identity": _identity,
    # resampling
    "upsample_nearest_neighbor": _upsample_nearest,
    "upsample_bilinear": _upsample_bilinear,
    "resize_bilinear": _resize_bilinear,
    "resize_nearest_neighbor": _resize_nearest,
    "resize": _resize,
    # compressed weights
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_sparse_to_dense": _sparse_to_dense,
    "constexpr_cast": lambda a: a.source_val,
}

# Ops whose coremltools `value_inference` is numpy on concrete values and correct; mil_exec runs
# them with the op's input Vars replaced by concrete values (see mil_exec._value_inference).
DELEGATED = frozenset(
    """
    abs acos asin atan atanh ceil clip cos cosh exp exp2 floor inverse log logical_not round rsqrt
    sign sin sinh sqrt square tan tanh threshold
    add sub mul real_div floor_div mod pow maximum minimum equal not_equal less less_equal greater
    greater_equal logical_and logical_or logical_xor
    relu relu6 leaky_relu elu prelu clamped_relu linear_activation scaled_tanh sigmoid_hard
    softplus softplus_parametric softsign softmax
    linear matmul einsum layer_norm l2_norm scaled_dot_product_attention
    reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_l1_norm reduce_l2_norm
    reduce_log_sum reduce_log_sum_exp reduce_sum_square reduce_argmax reduce_argmin
    transpose expand_dims squeeze reverse slice_by_index slice_by_size slice_update split stack tile
    pad fill gather gather_along_axis scatter_along_axis select flatten2d topk argsort non_zero
    """.split()
)
