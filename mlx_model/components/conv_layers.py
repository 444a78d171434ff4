"""Convolution layers shared by the MLX components (NHWC, ``nn.Conv2d``'s parameters and
results), each with a faster form for CPUs, where MLX's own kernels lose most (README,
Benchmark; on Metal each is ``nn.Conv2d``, checked per call):

* :class:`PointwiseConv2d`: 1x1, quantizable as a Linear layer (``-q``);
* :class:`DepthwiseConv2d`: stride-1 "same" depthwise, a compiled sum of shifted products;
* :class:`TapConv2d`: stride-1 "same" ungrouped k x k, a sum of k*k GEMMs over the flattened
  padded input, without MLX's im2col copy.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_model.support import platform


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution (NHWC): a matmul over the channels.  Float, it is
    ``nn.Conv2d`` (same parameters, same result); ``-q`` quantizes it as a Linear layer
    (:meth:`to_quantized`: ``nn.QuantizedLinear`` over the weight [out, in], which multiplies
    the last axis of an NHWC input -- the same product), so an MLX folder stores it packed
    (``weight``, ``scales``, ``biases``; the bias as is).  The vision tower's ConvFFN and the
    DC-AE decoder's Mix-FFN hold most of their weights in these."""

    QUANTIZABLE = True  # mlx_model.support.quant.quantizable: quantized like a Linear layer

    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__(cin, cout, 1, bias=bias)

    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine",
                     **_):
        cout, cin = self.weight.shape[0], self.weight.shape[-1]
        lin = nn.Linear(cin, cout, bias="bias" in self)
        lin.weight = self.weight.reshape(cout, cin)
        if "bias" in self:
            lin.bias = self.bias
        return lin.to_quantized(group_size=group_size, bits=bits, mode=mode)


@mx.compile
def _depthwise_taps(x: mx.array, w: mx.array) -> mx.array:
    """Stride-1 'same' depthwise conv as a sum of k*k shifted products (NHWC, w [C, k, k, 1])."""
    k = w.shape[1]
    p = k // 2
    H, W = x.shape[1], x.shape[2]
    xp = mx.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    out = None
    for i in range(k):
        for j in range(k):
            t = xp[:, i:i + H, j:j + W, :] * w[:, i, j, 0]
            out = t if out is None else out + t
    return out


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1, "same"-padded (k // 2) depthwise convolution, odd k: the parameters and
    result of ``nn.Conv2d(C, C, k, padding=k // 2, groups=C)``.  Without Metal, MLX's grouped
    convolution runs one small product per channel group; the compiled shifted sum is 2-4x
    faster on CPU for FastViTHD's 3x3 and 7x7 kernels."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1,
                 bias: bool = True):
        if not (kernel_size % 2 and stride == 1 and padding == kernel_size // 2 and groups == cin == cout):
            raise ValueError(f"DepthwiseConv2d is stride 1, padding k // 2, groups = channels, odd k; got k={kernel_size}, "
                             f"stride={stride}, padding={padding}, groups={groups}, {cin} -> {cout} channels")
        super().__init__(cin, cout, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)

    def __call__(self, x):
        if platform.metal_available():
            return super().__call__(x)
        y = _depthwise_taps(x, self.weight)
        return y + self.bias if "bias" in self else y


class TapConv2d(nn.Conv2d):
    """A stride-1, "same"-padded (k // 2), ungrouped k x k convolution: ``nn.Conv2d``'s
    parameters and result (to float summation order).  On a CPU, MLX convolves by im2col and
    one GEMM, first copying the input k*k times.  Here the padded input is flattened to rows of
    W + 2p pixels, so tap (i, j) of every output pixel reads one contiguous slice of it,
    starting at row i (W + 2p) + j; the output, on that padded width, is the sum of k*k GEMMs
    [H (W + 2p), Cin] x [Cin, Cout] (``addmm``), and its 2p extra columns are dropped: no
    im2col buffer, and faster than MLX's convolution at the DC-AE decoder's 3x3 shapes
    (README, Benchmark)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, bias: bool = True):
        if not kernel_size % 2:
            raise ValueError(f"TapConv2d takes odd kernel sizes (a 'same' padding of k // 2), got {kernel_size}")
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias)

    def __call__(self, x):
        if platform.metal_available():
            return super().__call__(x)
        b, h, w, c = x.shape
        k = self.weight.shape[1]
        p = k // 2
        row = w + 2 * p
        # one spare row below: the last tap's slice of the last output row stays inside
        flat = mx.pad(x, [(0, 0), (p, p + 1), (p, p), (0, 0)]).reshape(b, -1, c)
        taps = self.weight.astype(x.dtype).transpose(1, 2, 3, 0)  # [k, k, Cin, Cout]
        y = None
        for i in range(k):
            for j in range(k):
                a = flat[:, i * row + j:i * row + j + h * row]
                y = a @ taps[i, j] if y is None else mx.addmm(y, a, taps[i, j])
        y = y.reshape(b, h, row, -1)[:, :, :w]
        return y + self.bias if "bias" in self else y
