"""DC-AE (diffusers ``AutoencoderDC``) in MLX: encoder and decoder.

Parameter paths are the diffusers names (``decoder.up_blocks.5.0.attn.to_qkv_multiscale.0
.proj_in.weight``...), convolutions OHWI (``weights.mapping.mlx_map``).  Public methods take and
return NCHW arrays like diffusers; inside, everything runs NHWC.
Supported (``VAEConfig.check_supported``): the SANA configuration (docs/model-facts.md
section 2) -- ResBlock / EfficientViTBlock,
RMSNorm, "conv" downsampling, "interpolate" (nearest) upsampling, in/out shortcuts.

Memory (``AutoencoderDC.decode``).  Built as one lazy graph and evaluated once, the 512x512
decoder peaked at 13.6 GB on CPU: every intermediate of 23 blocks stays reachable until the
single ``eval``, and MLX's 3x3 convolution unfolds its input (im2col, 9x the activation: 2.4 GB
for the 512x512 up-sampling conv alone; on a CPU the 3x3 convolutions here are
``conv_layers.TapConv2d``, which does not).  ``decode`` therefore evaluates block by block, runs
the spatially local blocks (ResBlock, UpBlock, the output head) in row bands with a halo
(exact: a band's border rows, the only ones its zero padding touches, are cropped), and
decodes the images of a batch one at a time.  ``decode(..., tile=True)`` (or ``"auto"`` for
images too large for that) decodes overlapping latent tiles and blends them linearly, as
diffusers' ``AutoencoderDC.tiled_decode``; that is not exact (the linear attention is global).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from weights.core.configs import RES_BLOCK, VAEConfig, per_block
from weights.mapping.layout import VAE_DECODER

from mlx_model.components.conv_layers import DepthwiseConv2d, PointwiseConv2d, TapConv2d
from mlx_model.support.activations import silu

NORM_EPS = VAEConfig.NORM_EPS
ATTN_EPS = VAEConfig.LINEAR_ATTN_EPS
ACTIVATIONS = {"silu": silu, "relu": nn.relu, "relu6": nn.relu6, "gelu": nn.gelu}  # VAEConfig.ACTIVATIONS


class RMSNorm(nn.Module):
    """RMSNorm over the channel (last) axis with weight and bias (diffusers RMSNorm(bias=True))."""

    def __init__(self, dims: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))

    def __call__(self, x):
        return mx.fast.rms_norm(x, self.weight, self.eps) + self.bias


class ResBlock(nn.Module):
    HALO, SCALE = 2, 1  # two 3x3 convolutions; same size out (see ``banded``)

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.conv1 = TapConv2d(channels, channels, 3)
        self.conv2 = TapConv2d(channels, channels, 3, bias=False)
        self.norm = RMSNorm(channels)

    def __call__(self, x):
        return self.norm(self.conv2(self.act(self.conv1(x)))) + x

    def band_bytes_per_row(self, x) -> int:  # an im2col's 9x: an upper bound (TapConv2d needs less)
        return x.shape[2] * 9 * x.shape[3] * x.itemsize


class MultiscaleProjection(nn.Module):
    def __init__(self, channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = DepthwiseConv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                       groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)
        self.groups = 3 * heads

    def __call__(self, x):
        """proj_out, a grouped 1x1 convolution, as one batched matmul over the groups (MLX's
        CPU grouped convolution runs a small product per group: ~3x slower here)."""
        y = self.proj_in(x)
        b, h, w, c = y.shape
        g = self.groups
        wt = self.proj_out.weight.reshape(g, c // g, c // g)  # [g, out, in] (OHWI, 1x1)
        y = y.reshape(-1, g, c // g).transpose(1, 0, 2) @ wt.transpose(0, 2, 1)  # [g, N, out]
        return y.transpose(1, 0, 2).reshape(b, h, w, c)


class MultiscaleLinearAttention(nn.Module):
    """ReLU linear attention over q/k/v and their multi-scale (depthwise-conv) aggregates."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        self.head_dim = head_dim
        heads = channels // head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = [MultiscaleProjection(3 * inner, heads, k) for k in scales]
        self.to_out = nn.Linear(inner * (1 + len(scales)), channels, bias=False)
        self.norm_out = RMSNorm(channels)

    def __call__(self, x):
        b, h, w, _ = x.shape
        n, d = h * w, self.head_dim
        qkv = mx.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
        qkv = mx.concatenate([qkv] + [m(qkv) for m in self.to_qkv_multiscale], axis=-1)
        dtype = x.dtype
        # channel c of the concatenation belongs to head c // (3d), row c % (3d): [q | k | v]
        qkv = qkv.reshape(b, n, -1, 3 * d).transpose(0, 2, 1, 3)  # [B, H, N, 3d]
        linear = n > d
        if linear:
            qkv = qkv.astype(mx.float32)
        q, k, v = mx.split(qkv, 3, axis=-1)
        q, k = nn.relu(q), nn.relu(k)
        if linear:
            num = q @ (k.transpose(0, 1, 3, 2) @ v)  # [B, H, N, d]
            den = q @ k.sum(axis=2, keepdims=True).transpose(0, 1, 3, 2)  # [B, H, N, 1]
            out = (num / (den + ATTN_EPS)).astype(dtype)
        else:  # quadratic, as diffusers for maps with at most head_dim pixels
            scores = (q @ k.transpose(0, 1, 3, 2)).astype(mx.float32)  # [B, H, Nq, Nk]
            scores = scores / (scores.sum(axis=-1, keepdims=True) + ATTN_EPS)
            out = scores.astype(v.dtype) @ v
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.norm_out(self.to_out(out)) + x


class GLUMBConv(nn.Module):
    """1x1 expand, SiLU, depthwise 3x3, gated SiLU, 1x1, RMSNorm, residual."""

    HALO, SCALE = 1, 1  # one depthwise 3x3 convolution: spatially local, band-able (``banded``)

    def __init__(self, channels: int):
        super().__init__()
        hidden = VAEConfig.GLU_EXPAND_RATIO * channels
        self.conv_inverted = PointwiseConv2d(channels, 2 * hidden)
        self.conv_depth = DepthwiseConv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = PointwiseConv2d(hidden, channels, bias=False)
        self.norm = RMSNorm(channels)

    def __call__(self, x):
        y = self.conv_depth(silu(self.conv_inverted(x)))
        y, gate = mx.split(y, 2, axis=-1)
        return self.norm(self.conv_point(y * silu(gate))) + x

    def band_bytes_per_row(self, x) -> int:  # ~4 live [W, 2 * hidden] rows (expand, act, taps, gate)
        return 4 * x.shape[2] * self.conv_inverted.weight.shape[0] * x.itemsize


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, scales)
        self.conv_out = GLUMBConv(channels)

    def __call__(self, x):
        return self.conv_out(self.attn(x))


def _block(kind: str, channels: int, head_dim: int, act: str, scales):
    """``kind`` is RES_BLOCK or VIT_BLOCK (VAEConfig.check_supported)."""
    if kind == RES_BLOCK:
        return ResBlock(channels, act)
    return EfficientViTBlock(channels, head_dim, tuple(scales))


def pixel_unshuffle(x, f: int = 2):
    """NHWC version of torch pixel_unshuffle: channel c*f*f + i*f + j."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // f, w // f, c * f * f)


def pixel_shuffle(x, f: int = 2):
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (f * f), f, f).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * f, w * f, c // (f * f))


def group_mean(x, group: int):
    """Mean over consecutive channel groups (torch ``unflatten(1, (-1, g)).mean(2)``)."""
    *lead, c = x.shape
    return x.reshape(*lead, c // group, group).mean(axis=-1)


class DownBlock(nn.Module):
    """Stride-2 3x3 conv plus the space-to-channel averaging shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.group = cin * 4 // cout
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def __call__(self, x):
        return self.conv(x) + group_mean(pixel_unshuffle(x), self.group)


class UpBlock(nn.Module):
    """Nearest x2 upsampling + 3x3 conv plus the channel-to-space repeating shortcut."""

    HALO, SCALE = 1, 2  # input rows; one input row becomes two output rows

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.repeats = cout * 4 // cin
        self.conv = TapConv2d(cin, cout, 3)

    def __call__(self, x):
        up = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(up) + pixel_shuffle(mx.repeat(x, self.repeats, axis=-1))

    def band_bytes_per_row(self, x) -> int:  # per input row: two output rows of 2W pixels, im2col
        return 2 * (2 * x.shape[2]) * 9 * x.shape[3] * x.itemsize


class OutputHead:
    """The decoder's norm_out -> activation -> conv_out, as one local (band-able) step."""

    HALO, SCALE = 1, 1

    def __init__(self, decoder: "Decoder"):
        self.decoder = decoder

    def __call__(self, x):
        d = self.decoder
        return d.conv_out(d.conv_act(d.norm_out(x)))

    def band_bytes_per_row(self, x) -> int:
        return x.shape[2] * 9 * x.shape[3] * x.itemsize


# temporaries budget of one band of a local block (bytes; ``band_bytes_per_row``, which counts a
# 3x3 convolution's im2col, 9x its input: an upper bound whatever the kernel; on a CPU TapConv2d
# needs less, and taller bands measured no faster): 64 MB puts the full-size 512x512 decode's
# activations at ~0.45 GB (192 MB: ~0.78 GB) for no measurable time (#24)
BAND_BYTES = 64 * 2**20


def banded_in_place(block, x, band_bytes: int = BAND_BYTES):
    """:func:`banded` for a block whose output has the input's shape (``SCALE`` 1, same
    channels: ResBlock, the Mix-FFN), writing each band's result over ``x`` itself: the rows a
    later band still reads above its start (``HALO`` of them) are kept aside first, so the
    result is :func:`banded`'s while one full-size activation lives instead of two (the last
    512x512 stage: 134 MB less).  ``x`` must be an array nothing else reads afterwards."""
    h, halo = x.shape[1], block.HALO
    rows = max(halo, band_bytes // max(1, block.band_bytes_per_row(x) * x.shape[0]))
    if rows >= h:
        return banded(block, x, band_bytes)
    above = None  # input rows [r0 - halo, r0), saved before they were overwritten
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band = x[:, r0:min(h, r1 + halo)]
        y = block(band if above is None else mx.concatenate([above, band], axis=1))
        skip = 0 if above is None else above.shape[1]
        y = y[:, skip:skip + r1 - r0]
        above = mx.contiguous(x[:, r1 - halo:r1]) if r1 < h else None
        mx.eval(y, *([above] if above is not None else []))
        del band
        x[:, r0:r1] = y  # the only reference to x's buffer: updated in place
        del y
        mx.eval(x)
    return x


def banded(block, x, band_bytes: int = BAND_BYTES):
    """``block(x)`` for a spatially local block, evaluated in row bands of ``x`` [B, H, W, C].

    ``block.HALO``: input rows each side that an output row depends on; ``block.SCALE``: output
    rows per input row.  A band of input rows [r0, r1) is computed from rows [r0 - HALO,
    r1 + HALO) and cropped back, so the zero padding at a band's inner edges never reaches
    the kept rows: the result equals the unbanded one (up to float summation order).  Each
    band is evaluated into its rows of the result (a slice update, in place) before the next
    one starts, so at most one band's temporaries live at a time beside
    the input and the result.  Returns an evaluated array."""
    h = x.shape[1]
    per_row = max(1, block.band_bytes_per_row(x) * x.shape[0])
    rows = max(1, band_bytes // per_row)
    if rows >= h:
        out = block(x)
        mx.eval(out)
        return out
    halo, scale = block.HALO, block.SCALE
    out = None
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        a, b = max(0, r0 - halo), min(h, r1 + halo)
        y = block(x[:, a:b])[:, (r0 - a) * scale:(r1 - a) * scale]
        if out is None:  # written band by band in place: no list of bands beside the result
            out = mx.zeros((y.shape[0], h * scale, *y.shape[2:]), dtype=y.dtype)
        out[:, r0 * scale:r1 * scale] = y
        mx.eval(out)
        del y
    return out


def _apply(seq, x):
    for m in seq:
        x = m(x)
    return x


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.encoder_block_out_channels
        self.conv_in = TapConv2d(c.in_channels, ch[0], 3)
        self.down_blocks = []
        for i, (cout, n) in enumerate(zip(ch, c.encoder_layers_per_block)):
            blocks = [_block(c.encoder_block_types[i], cout, c.attention_head_dim, "silu",
                             c.encoder_qkv_multiscales[i]) for _ in range(n)]
            if i < len(ch) - 1 and n > 0:
                blocks.append(DownBlock(cout, ch[i + 1]))
            self.down_blocks.append(blocks)
        self.conv_out = TapConv2d(ch[-1], c.latent_channels, 3)
        self.out_group = ch[-1] // c.latent_channels

    def __call__(self, x):
        x = self.conv_in(x)
        for blocks in self.down_blocks:
            x = _apply(blocks, x)
        return self.conv_out(x) + group_mean(x, self.out_group)


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.decoder_block_out_channels
        nblocks = len(ch)
        acts = per_block(c.decoder_act_fns, nblocks)
        self.conv_in = TapConv2d(c.latent_channels, ch[-1], 3)
        self.in_repeats = ch[-1] // c.latent_channels
        self.up_blocks = []
        for i, (cout, n) in enumerate(zip(ch, c.decoder_layers_per_block)):
            blocks = [UpBlock(ch[i + 1], cout)] if i < nblocks - 1 and n > 0 else []
            blocks += [_block(c.decoder_block_types[i], cout, c.attention_head_dim, acts[i],
                              c.decoder_qkv_multiscales[i]) for _ in range(n)]
            self.up_blocks.append(blocks)
        self.norm_out = RMSNorm(ch[0])
        self.conv_act = ACTIVATIONS[c.decoder_conv_act_fn]
        self.conv_out = TapConv2d(ch[0], c.in_channels, 3)

    def __call__(self, z):
        """One lazy graph (for ``mx.compile`` and small inputs); see :meth:`stepwise`."""
        x = self.conv_in(z) + mx.repeat(z, self.in_repeats, axis=-1)
        for blocks in reversed(self.up_blocks):
            x = _apply(blocks, x)
        return self.conv_out(self.conv_act(self.norm_out(x)))

    def stepwise(self, z, band_bytes: int = BAND_BYTES):
        """Same result as ``self(z)``, evaluated block by block, local blocks in row bands
        (:func:`banded`): peak memory is a few activations plus one band, not the graph."""
        x = self.conv_in(z) + mx.repeat(z, self.in_repeats, axis=-1)
        mx.eval(x)
        for blocks in reversed(self.up_blocks):
            for block in blocks:
                if isinstance(block, EfficientViTBlock):  # global attention, then its local Mix-FFN in bands
                    x = block.attn(x)
                    mx.eval(x)
                    block = block.conv_out
                if isinstance(block, (ResBlock, GLUMBConv)):  # same shape out: over x itself
                    x = banded_in_place(block, x, band_bytes)
                elif hasattr(block, "HALO"):
                    x = banded(block, x, band_bytes)
                else:
                    x = block(x)
                    mx.eval(x)
        return banded(OutputHead(self), x, band_bytes)


HOLD = "bf16"  # fp32 activations: hold the VAE weights in bf16 where exact (AutoencoderDC.from_checkpoint)
TILE_LATENT = 16  # diffusers' default tile: 512 pixels at f32
TILE_STRIDE_LATENT = 14  # 448 pixels: 64 blended
EXACT_DECODE_BYTES = 2 * 2**30


class AutoencoderDC(nn.Module):
    def __init__(self, config: VAEConfig, encoder: bool = True):
        super().__init__()
        config.check_supported()
        self.config = config
        if encoder:
            self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.compute_dtype = None  # activations; None: the weights' dtype

    @classmethod
    def from_checkpoint(cls, ckpt, dtype=mx.float32, encoder: bool = True, tensors=None,
                        config: VAEConfig | None = None, hold: str | None = None, quantize: int = 0,
                        group_size: int | None = None):
        """``encoder=False`` loads only the decoder (generation does not need the encoder:
        the ``vae_decoder`` component of weights.core.components).  An MLX folder holds the
        decoder only (no Mobile-O inference path encodes; docs/upstream.md section H).

        ``hold="bf16"`` (default :data:`HOLD` for fp32 activations): the weights stay bf16 in
        memory where that holds their values exactly (an MLX folder's bf16 tensors as stored,
        a bf16 checkpoint's after the fp32 load) while activations run in ``dtype``: MLX widens
        each weight inside its op, the result is bit-identical, and the decoder's 0.64 GB of
        fp32 weights (full size) are 0.32 GB.

        ``quantize`` (``-q``; 0 = float): the decoder's matmul layers (attention projections,
        the Mix-FFN's 1x1 convolutions) quantized to ``part_bits("vae", quantize)`` bits, group
        ``group_size`` (:func:`mlx_model.support.quant.part_bits`); an MLX folder's are as stored."""
        from weights.core.errors import WeightsError

        from mlx_model.support.mlx_folder import load_part, native

        if encoder and tensors is None and native(ckpt) and not ckpt.meta.get("vae_encoder", True):
            raise WeightsError(f"the MLX folder {ckpt.folder} holds the VAE decoder only; the encoder is left out "
                               "because no Mobile-O inference path runs it.",
                               fix="load the VAE encoder from the original checkpoint (--model SOURCE), not the MLX folder.")
        from mlx.utils import tree_flatten

        from mlx_model.support.quant import QUANT_GROUP_SIZE, hold_exact, part_bits

        model = cls(config or ckpt.config.vae, encoder=encoder)
        hold = HOLD if hold is None and dtype == mx.float32 else hold
        keep = tuple(k for k, _ in tree_flatten(model.parameters())) if hold == "bf16" else ()
        # only what this module holds (shapes are checked on those)
        model = load_part(model, ckpt, "vae", dtype=dtype, tensors=tensors, used="" if encoder else VAE_DECODER,
                          keep_stored=keep, quantize=part_bits("vae", quantize),
                          group_size=group_size or QUANT_GROUP_SIZE)
        if hold == "bf16":
            hold_exact(model)
            model.compute_dtype = dtype
        return model

    @property
    def dtype(self):
        """The activations' dtype (the weights may be held in bf16: see ``from_checkpoint``)."""
        return self.compute_dtype or self.decoder.conv_in.weight.dtype

    def encode(self, images: mx.array) -> mx.array:
        """[B, 3, H, W] in [-1, 1] -> unscaled latents [B, C, H/f, W/f]."""
        z = self.encoder(images.transpose(0, 2, 3, 1).astype(self.dtype))
        return z.transpose(0, 3, 1, 2)

    def decode(self, latents: mx.array, *, tile: bool | str = False, tile_latent: int = TILE_LATENT,
               stride_latent: int = TILE_STRIDE_LATENT, band_bytes: int = BAND_BYTES) -> mx.array:
        """Unscaled latents [B, C, h, w] -> images [B, 3, h*f, w*f] (about [-1, 1]), evaluated.

        Exact by default: image by image, block by block, local blocks in row bands (see the
        module docstring).  ``tile=True``: overlapping ``tile_latent`` tiles every
        ``stride_latent`` latents, blended linearly (diffusers' ``tiled_decode``; not exact);
        ``tile="auto"``: tiles only when the exact decode's activations would exceed
        :data:`EXACT_DECODE_BYTES` (images larger than about 1024x1024)."""
        if tile == "auto":
            tile = self.exact_decode_bytes(latents.shape) > EXACT_DECODE_BYTES
        z = latents.transpose(0, 2, 3, 1).astype(self.dtype)
        out = []
        for i in range(z.shape[0]):
            if tile and max(z.shape[1:3]) > tile_latent:
                x = self._decode_tiled(z[i:i + 1], tile_latent, stride_latent, band_bytes)
            else:
                x = self.decoder.stepwise(z[i:i + 1], band_bytes)
            out.append(x.transpose(0, 3, 1, 2))
        out = out[0] if len(out) == 1 else mx.concatenate(out, axis=0)
        mx.eval(out)
        return out

    def exact_decode_bytes(self, latent_shape) -> int:
        """About what the exact decode keeps alive at once: three full-resolution activations
        of the widest first stage (input, output, the bands being joined)."""
        f = self.config.spatial_compression
        h, w = latent_shape[-2] * f, latent_shape[-1] * f
        return 3 * h * w * self.config.decoder_block_out_channels[0] * self.dtype.size

    def _decode_tiled(self, z, tile: int, stride: int, band_bytes: int):
        """diffusers' ``AutoencoderDC.tiled_decode`` on NHWC: tiles of ``tile`` latents every
        ``stride``, each blended with the tile above and then the one to its left over
        ``(tile - stride) * f`` pixels, then cropped to ``stride * f``."""
        if not 0 < stride <= tile:
            raise ValueError(f"stride_latent must be in 1..tile_latent ({tile}), got {stride}")
        f = self.config.spatial_compression
        blend, keep = (tile - stride) * f, stride * f
        h, w = z.shape[1:3]
        rows = []
        for i in range(0, h, stride):
            row = []
            for j in range(0, w, stride):
                t = self.decoder.stepwise(z[:, i:i + tile, j:j + tile], band_bytes)
                if i > 0:
                    t = _blend(rows[-1][len(row)], t, blend, axis=1)
                if j > 0:
                    t = _blend(row[-1], t, blend, axis=2)
                mx.eval(t)
                row.append(t)
            rows.append(row)
        out = mx.concatenate([mx.concatenate([t[:, :keep, :keep] for t in row], axis=2) for row in rows], axis=1)
        mx.eval(out)
        return out



def _blend(a, b, extent: int, axis: int):
    """diffusers' blend_v / blend_h: the first ``extent`` rows (axis 1) or columns (axis 2) of
    ``b`` fade in linearly from the last ``extent`` of ``a``."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent == 0:
        return b
    shape = [1, 1, 1, 1]
    shape[axis] = extent
    wgt = (mx.arange(extent, dtype=mx.float32) / extent).reshape(shape).astype(b.dtype)
    idx_a = [slice(None)] * 4
    idx_a[axis] = slice(a.shape[axis] - extent, None)
    idx_b = [slice(None)] * 4
    idx_b[axis] = slice(0, extent)
    rest = [slice(None)] * 4
    rest[axis] = slice(extent, None)
    head = a[tuple(idx_a)] * (1 - wgt) + b[tuple(idx_b)] * wgt
    return mx.concatenate([head, b[tuple(rest)]], axis=axis)

