"""vision_encoder: FastViTHD + the mlp2x_gelu projector, Neural-Engine layout.

    image (1, 3, S, S) in [0, 1]  ->  image_features (1, hidden, 1, N)   N = (S / 64)**2

FastViTHD is convolutional up to its two attention stages; those run on (B, C, 1, N)
activations with 1x1 convolutions for the projections, a channel-axis LayerNorm and
per-head attention.  Parameter names are Apple's checkpoint names (``patch_embed.0.
reparam_conv.weight``, ``network.7.0.token_mixer.qkv.weight``) and the projector's
(``0.weight`` ...), so ``weights.mapping.torch_map`` loads the checkpoint with no key table.
Apple's CLIP head (``weights.mapping.layout.UNUSED``) is not part of the bundle: the tower loads
``Checkpoint.load_used``.  The I/O is ``contract.vision_encoder_io``.
Reference (gate 1): timm ``fastvit_mci3.forward_features`` -> tokens -> the upstream
projector (``weights.references.upstream``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from coreml_convert import ane
from weights.bundles.contract import vision_encoder_io
from coreml_convert.spec import ComponentSpec, reference_first
from weights.core.configs import VisionConfig
from weights.mapping.vision_keys import BLOCKS, DOWNSAMPLE, POS_EMB


class ConvAct(nn.Module):
    """A re-parameterized MobileOne conv (``reparam_conv``) and optional GELU."""

    def __init__(self, cin, cout, k, stride=1, groups=1, act=True, name="reparam_conv"):
        super().__init__()
        self.name = name
        self.add_module(name, nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True))
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x):
        return self.act(getattr(self, self.name)(x))


class ConvNorm(nn.Module):
    def __init__(self, dim: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim, eps=VisionConfig.BN_EPS)

    def forward(self, x):
        return self.bn(self.conv(x))


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.conv = ConvNorm(dim, 7)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    def __init__(self, dim: int, cfg: VisionConfig):
        super().__init__()
        self.token_mixer = ConvAct(dim, dim, cfg.repmixer_kernel_size, groups=dim, act=False)
        self.convffn = ConvFFN(dim, int(dim * cfg.mlp_ratio))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x):
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class Attention(nn.Module):
    """Multi-head self-attention on (1, C, 1, N): 1x1-conv projections, split per head."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = ane.Linear(dim, 3 * dim, bias=False)
        self.proj = ane.Linear(dim, dim, bias=True)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        q, k, v = self.qkv(ane.to_sequence(x)).chunk(3, dim=1)  # timm's (3, heads, D) order
        return ane.to_spatial(self.proj(ane.attention(q, k, v, self.head_dim)), h, w)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, cfg: VisionConfig):
        super().__init__()
        self.norm = ane.LayerNorm(dim, cfg.layer_norm_eps)
        self.token_mixer = Attention(dim, cfg.head_dim)
        self.convffn = ConvFFN(dim, int(dim * cfg.mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.ones(dim, 1, 1))
        self.layer_scale_2 = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x):
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.convffn(x)


class PatchEmbed(nn.Module):
    """Stride-2 large-kernel depthwise conv (GELU), then a 1x1 conv (GELU)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.proj = nn.Sequential(ConvAct(cin, cout, k, 2, groups=cin, name="lkb_reparam"),
                                  ConvAct(cout, cout, 1))

    def forward(self, x):
        return self.proj(x)


class SqueezeExcite(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        rd = VisionConfig.se_channels(dim)
        self.reduce = nn.Conv2d(dim, rd, 1)
        self.expand = nn.Conv2d(rd, dim, 1)

    def forward(self, x):
        s = torch.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class ConvExp(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.reparam_conv = nn.Conv2d(cin, cout, 3, 1, 1, groups=cin, bias=True)
        self.se = SqueezeExcite(cout)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.se(self.reparam_conv(x)))


class FastViTHD(nn.Module):
    """The re-parameterized MobileCLIP image tower up to ``conv_exp`` (Apple's names)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        c0 = cfg.embed_dims[0]
        self.patch_embed = nn.Sequential(ConvAct(3, c0, 3, 2), ConvAct(c0, c0, 3, 2, groups=c0),
                                         ConvAct(c0, c0, 1))
        net: dict[int, nn.Module] = {}
        for stage, dim in enumerate(cfg.embed_dims):
            if stage in DOWNSAMPLE:
                net[DOWNSAMPLE[stage]] = PatchEmbed(cfg.embed_dims[stage - 1], dim, cfg.down_patch_size)
            attention = stage in POS_EMB  # the stages with a conditional position conv attend
            if attention:
                k = cfg.pos_emb_kernel_size
                net[POS_EMB[stage]] = ConvAct(dim, dim, k, groups=dim, act=False)
            block = AttentionBlock if attention else RepMixerBlock
            net[BLOCKS[stage]] = nn.Sequential(*(block(dim, cfg) for _ in range(cfg.layers[stage])))
        self.network = nn.Sequential(*(net[i] for i in range(len(net))))
        self.conv_exp = ConvExp(cfg.embed_dims[-1], cfg.out_dim)

    def forward(self, image):
        return self.conv_exp(self.network(self.patch_embed(image)))


class VisionEncoder(nn.Module):
    """image (1, 3, S, S) -> image_features (1, hidden, 1, N)."""

    def __init__(self, cfg: VisionConfig, mm_hidden: int, hidden: int):
        super().__init__()
        self.tower = FastViTHD(cfg)
        self.projector = nn.Sequential(ane.Linear(mm_hidden, hidden), nn.GELU(),
                                       ane.Linear(hidden, hidden))

    @classmethod
    def from_checkpoint(cls, ckpt) -> "VisionEncoder":
        from weights.mapping.torch_map import load_torch

        cfg = ckpt.config
        module = cls(cfg.vision, cfg.mm_hidden_size, cfg.llm.hidden_size)
        load_torch(module.tower, ckpt, "vision", keys=ckpt.used_keys("vision"))  # no CLIP head
        load_torch(module.projector, ckpt, "projector")
        return module.eval()

    def forward(self, image):
        return self.projector(ane.to_sequence(self.tower(image)))


# ---------------------------------------------------------------------- spec


def reference_model(ckpt):
    """timm fastvit_mci3 and the upstream projector: (tower, projector)."""
    from weights.references import upstream

    cfg = ckpt.config
    return upstream.build("vision", cfg, ckpt.load("vision")), upstream.build("projector", cfg, ckpt.load("projector"))


def reference_forward(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm forward_features -> flatten to tokens -> projector, laid out like ``image_features``."""
    tower, proj = model
    with torch.no_grad():
        f = tower.forward_features(torch.from_numpy(np.asarray(inputs["image"], np.float32)))
        tokens = proj(f.flatten(2).transpose(1, 2))  # (1, N, hidden)
    return {"image_features": tokens.transpose(1, 2)[:, :, None, :].numpy()}


def reference(ckpt):
    """The upstream reference as a function of the inputs (built now, kept)."""
    model = reference_model(ckpt)
    return lambda inputs: reference_forward(model, inputs)


def build_spec(ckpt, seed: int = 0) -> ComponentSpec:
    io = vision_encoder_io(ckpt.config)
    image = np.random.default_rng(seed).uniform(0, 1, io.inputs[0].shape).astype(np.float32)
    example = {"image": image}
    # the reference runs first and is freed: it and our module are never in memory together
    ref = reference_first(lambda: reference_model(ckpt), reference_forward, example)
    return ComponentSpec(
        module=VisionEncoder.from_checkpoint(ckpt),
        example_inputs=example,
        reference=ref,
        io=io,
    )
