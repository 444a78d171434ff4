"""FastViTHD (MobileCLIP-L image tower, "mci3") in MLX, for the re-parameterized checkpoint.

Layout is NHWC.  Parameter paths are Apple's checkpoint names (``patch_embed.0.reparam_conv``,
``network.7.0.token_mixer.qkv``, ``conv_exp.se.reduce`` ...), so loading keeps keys; the
per-tensor layout changes live in :func:`weights.mapping.vision_keys.mlx_vision`.  The structure follows
timm's ``fastvit_mci3`` with ``inference_mode=True`` (the upstream reference):

    stem (3x3/2, dw 3x3/2, 1x1; GELU)           -> patch_embed.{0,1,2}
    5 stages; stage i>0 starts with a downsample (dw 7x7/2 to 2C + GELU, 1x1 + GELU),
    stages 3 and 4 add a RepCPE (dw 7x7, residual folded in) and use attention blocks
    conv_exp: grouped 3x3 to cls_ratio*C, squeeze-excite, GELU  -> [B, (S/64)^2, 3072]

    tower = VisionTower.from_checkpoint(ckpt)
    feats = tower(pixels)          # [B, S, S, 3] in [0, 1] -> [B, num_tokens, out_dim]
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from weights.core.configs import VisionConfig
from weights.mapping.layout import drop_unused
from weights.mapping.vision_keys import BLOCKS, DOWNSAMPLE, POS_EMB

from mlx_model.components.conv_layers import DepthwiseConv2d, PointwiseConv2d

BN_EPS = VisionConfig.BN_EPS


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """timm's static padding ((stride - 1) + (k - 1)) // 2, i.e. k // 2 for odd k."""
    if k == 1 and stride == 1 and groups == 1:
        return PointwiseConv2d(cin, cout, bias=bias)
    cls = DepthwiseConv2d if (stride == 1 and k > 1 and groups == cin == cout) else nn.Conv2d
    return cls(cin, cout, k, stride=stride, padding=((stride - 1) + (k - 1)) // 2, groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduce = nn.Conv2d(dim, VisionConfig.se_channels(dim), 1)
        self.expand = nn.Conv2d(VisionConfig.se_channels(dim), dim, 1)

    def __call__(self, x):
        s = mx.mean(x, axis=(1, 2), keepdims=True)
        return x * mx.sigmoid(self.expand(nn.relu(self.reduce(s))))


class MobileOneBlock(nn.Module):
    """One re-parameterized conv (+ optional squeeze-excite) and GELU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, se: bool = False):
        super().__init__()
        self.reparam_conv = _conv(cin, cout, k, stride, groups)
        if se:
            self.se = SqueezeExcite(cout)

    def __call__(self, x):
        x = self.reparam_conv(x)
        if "se" in self:
            x = self.se(x)
        return nn.gelu(x)


class LargeKernelConv(nn.Module):
    """Downsample's re-parameterized large-kernel depthwise conv (timm lkc_use_act: GELU)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.lkb_reparam = _conv(cin, cout, k, stride, groups=cin)

    def __call__(self, x):
        return nn.gelu(self.lkb_reparam(x))


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.proj = [LargeKernelConv(cin, cout, k, stride=2), MobileOneBlock(cout, cout, 1)]

    def __call__(self, x):
        for layer in self.proj:
            x = layer(x)
        return x


class RepCPE(nn.Module):
    """Conditional positional encoding; the identity branch is folded into the kernel."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.reparam_conv = _conv(dim, dim, k, groups=dim)

    def __call__(self, x):
        return self.reparam_conv(x)


class BatchNorm(nn.Module):
    """Inference BatchNorm with the checkpoint's five tensors (``num_batches_tracked`` unused)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.bias = mx.zeros((dim,))
        self.running_mean = mx.zeros((dim,))
        self.running_var = mx.ones((dim,))
        self.num_batches_tracked = mx.zeros((), dtype=mx.int64)

    def __call__(self, x):
        w, b, mean, var = (p.astype(x.dtype) for p in (self.weight, self.bias, self.running_mean, self.running_var))
        scale = w * mx.rsqrt(var + BN_EPS)  # in the activations' dtype (the weights may be held in bf16)
        return x * scale + (b - mean * scale)


class ConvBN(nn.Module):
    def __init__(self, dim: int, k: int):
        super().__init__()
        self.conv = _conv(dim, dim, k, groups=dim, bias=False)
        self.bn = BatchNorm(dim)

    def __call__(self, x):
        return self.bn(self.conv(x))


class ConvFFN(nn.Module):
    """dw 7x7 + BN, 1x1 up, GELU, 1x1 down."""

    def __init__(self, dim: int, hidden: int, k: int = 7):
        super().__init__()
        self.conv = ConvBN(dim, k)
        self.fc1 = PointwiseConv2d(dim, hidden)
        self.fc2 = PointwiseConv2d(hidden, dim)

    def __call__(self, x):
        return self.fc2(nn.gelu(self.fc1(self.conv(x))))


class RepMixer(nn.Module):
    def __init__(self, dim: int, k: int):
        super().__init__()
        self.reparam_conv = _conv(dim, dim, k, groups=dim)

    def __call__(self, x):
        return self.reparam_conv(x)


class RepMixerBlock(nn.Module):
    def __init__(self, dim: int, cfg: VisionConfig):
        super().__init__()
        self.token_mixer = RepMixer(dim, cfg.repmixer_kernel_size)
        self.convffn = ConvFFN(dim, int(dim * cfg.mlp_ratio))
        self.layer_scale = mx.ones((dim,))

    def __call__(self, x):
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def __call__(self, x):
        B, H, W, C = x.shape
        qkv = self.qkv(x.reshape(B, H * W, C)).reshape(B, H * W, 3, self.num_heads, -1)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(o.transpose(0, 2, 1, 3).reshape(B, H * W, C)).reshape(B, H, W, C)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, cfg: VisionConfig):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)  # over channels (LayerNorm2d)
        self.token_mixer = Attention(dim, cfg.head_dim)
        self.convffn = ConvFFN(dim, int(dim * cfg.mlp_ratio))
        self.layer_scale_1 = mx.ones((dim,))
        self.layer_scale_2 = mx.ones((dim,))

    def __call__(self, x):
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.convffn(x)


ATTENTION_STAGES = tuple(POS_EMB)  # stages with RepCPE + attention blocks (3, 4)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        d = cfg.embed_dims
        self.patch_embed = [MobileOneBlock(3, d[0], 3, stride=2),
                            MobileOneBlock(d[0], d[0], 3, stride=2, groups=d[0]),
                            MobileOneBlock(d[0], d[0], 1)]
        net: list = [None] * (max(BLOCKS.values()) + 1)
        for stage, depth in enumerate(cfg.layers):
            if stage in DOWNSAMPLE:
                net[DOWNSAMPLE[stage]] = PatchEmbed(d[stage - 1], d[stage], cfg.down_patch_size)
            if stage in POS_EMB:
                net[POS_EMB[stage]] = RepCPE(d[stage], cfg.pos_emb_kernel_size)
            block = AttentionBlock if stage in ATTENTION_STAGES else RepMixerBlock
            net[BLOCKS[stage]] = [block(d[stage], cfg) for _ in range(depth)]
        self.network = net
        self.conv_exp = MobileOneBlock(d[-1], cfg.out_dim, 3, groups=d[-1], se=True)
        self.eval_blocks = False  # evaluate block by block (quant.has_jit_layers; set at load)

    @classmethod
    def from_tensors(cls, cfg: VisionConfig, tensors: dict, ckpt=None) -> "VisionTower":
        """Build and fill from component-local checkpoint tensors (numpy); the CLIP head
        (``weights.mapping.layout.UNUSED``) is not built."""
        from weights.mapping.mlx_map import load_component, to_mlx

        tower = cls(cfg)
        tensors = drop_unused("vision", tensors)
        if ckpt is not None:
            load_component(tower, ckpt, "vision", tensors=tensors)
        else:
            tower.load_weights(list(to_mlx("vision", tensors).items()), strict=True)
        tower.eval()
        mx.eval(tower.parameters())
        return tower

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 0, group_size: int | None = None) -> "VisionTower":
        """From a checkpoint or an MLX folder (:func:`mlx_model.support.mlx_folder.load_part`).
        The weights are held in bf16 where that is exact (an MLX folder's as stored, a bf16
        checkpoint's): 0.25 GB instead of 0.5 GB at full size, activations fp32, the same result.
        ``quantize`` (``-q``; 0 = float): the attention projections and 1x1 convolutions
        quantized to ``part_bits("vision", quantize)`` bits (an MLX folder's are as stored)."""
        from mlx.utils import tree_flatten

        from mlx_model.support.mlx_folder import load_part
        from mlx_model.support.quant import QUANT_GROUP_SIZE, hold_exact, part_bits

        tower = cls(ckpt.config.vision)
        keep = tuple(k for k, _ in tree_flatten(tower.parameters()))
        return hold_exact(load_part(tower, ckpt, "vision", used="", keep_stored=keep,
                                    quantize=part_bits("vision", quantize), group_size=group_size or QUANT_GROUP_SIZE))

    def features(self, x: mx.array) -> mx.array:
        """[B, S, S, 3] pixels -> [B, S/64, S/64, out_dim] (timm ``forward_features``)."""
        for layer in self.patch_embed:
            x = layer(x)
        for item in self.network:
            for layer in (item if isinstance(item, list) else [item]):
                x = layer(x)
                if self.eval_blocks:  # JIT layers: one block's dequantized weights alive at a time
                    mx.eval(x)
        return self.conv_exp(x)

    def __call__(self, pixels: mx.array) -> mx.array:
        """[B, S, S, 3] pixels in [0, 1] -> [B, num_tokens, out_dim] image tokens (row-major)."""
        x = self.features(pixels)
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C)
