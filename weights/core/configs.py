"""Typed configs for every Mobile-O component, with the known defaults embedded.

Facts come from ``docs/model-facts.md``.  Field names follow the upstream
config files (transformers ``Qwen2Config``, diffusers ``SanaTransformer2DModel`` /
``AutoencoderDC`` / ``DPMSolverMultistepScheduler``) so a config dict can be handed to
the upstream class unchanged.  Values the checkpoint decides (vocab size, tied lm_head,
MCP temperature) are filled in by :mod:`weights.mapping.checkpoint` at load time.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from weights.core.errors import ConfigError
from weights.core.prompts import MAX_PROMPT_TOKENS


class _Config:
    """Dict round-trip for the config dataclasses: required fields are checked,
    unknown keys (``_class_name``, ``_diffusers_version``, ...) are ignored."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config"):
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(
                f"{source} is missing required field(s) {', '.join(missing)} for {cls.__name__}.",
                fix="use the config.json shipped with the checkpoint, or re-export it.",
            )
        kw = {k: _tuplify(v) for k, v in d.items() if k in names}
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path):
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {k: _listify(v) for k, v in dataclasses.asdict(self).items()}

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def _listify(v):
    return [_listify(x) for x in v] if isinstance(v, (tuple, list)) else v


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.", fix="check the model folder is complete.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).", fix="re-download the model.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object.", fix="re-download the model.")
    return data


# --------------------------------------------------------------------------------------
# Qwen2 language model (transformers Qwen2Config field names)


@dataclass(frozen=True)
class LLMConfig(_Config):
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def check_supported(self) -> None:
        h, kv = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % h or h % kv or self.head_dim % 2:
            raise ConfigError(
                f"LLM config: hidden_size {self.hidden_size}, {h} attention heads and {kv} key/value "
                f"heads do not make whole, even heads shared by whole groups.",
                fix="use the config.json that came with the checkpoint.")

    def to_hf_dict(self) -> dict[str, Any]:
        """Kwargs for transformers ``Qwen2Config`` and mlx-lm's qwen2 ``ModelArgs``."""
        d = self.to_dict()
        d.update(model_type="qwen2", use_sliding_window=False, attention_dropout=0.0,
                 max_window_layers=self.num_hidden_layers, rope_scaling=None)
        return d


# --------------------------------------------------------------------------------------
# FastViTHD vision tower (MobileCLIP "mci3"), already re-parameterized


@dataclass(frozen=True)
class VisionConfig(_Config):
    layers: tuple[int, ...] = (2, 12, 24, 4, 2)
    embed_dims: tuple[int, ...] = (96, 192, 384, 768, 1536)
    mlp_ratio: float = 4.0
    head_dim: int = 32
    image_size: int = 1024
    cls_ratio: float = 2.0
    down_patch_size: int = 7
    repmixer_kernel_size: int = 3
    pos_emb_kernel_size: int = 7
    projection_dim: int = 768  # head.proj (unused by Mobile-O, present in the checkpoint)
    layer_norm_eps: float = 1e-5
    stride: int = 64  # stem /4 then four /2 downsamples

    SE_RATIO: ClassVar[float] = 1 / 16  # conv_exp squeeze-excite (timm SqueezeExcite, rd_divisor 1)
    BN_EPS: ClassVar[float] = 1e-5  # BatchNorm2d default in the ConvFFN's conv + BN

    @property
    def out_dim(self) -> int:
        return int(self.embed_dims[-1] * self.cls_ratio)

    @staticmethod
    def se_channels(dim: int) -> int:
        """Squeeze-excite bottleneck width, rounded as timm's make_divisible(dim / 16, 1)."""
        return max(1, int(dim * VisionConfig.SE_RATIO + 0.5))

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.stride) ** 2

    @staticmethod
    def image_size_from_tower_name(name: str) -> int:
        m = re.search(r"_(\d+)$", name or "")
        if not m:
            raise ConfigError(f"cannot read the image size from mm_vision_tower={name!r}.",
                              fix="the name must end in _<size>, e.g. mobileclip_l_1024.")
        return int(m.group(1))


# --------------------------------------------------------------------------------------
# Mobile Conditioning Projector


@dataclass(frozen=True)
class MCPConfig(_Config):
    in_dim: int  # LLM hidden size
    out_dim: int  # DiT caption_channels
    num_layers: int = 4  # vlm_num_layers: hidden states fused
    dim: int = 512  # hidden_dim
    attn_reduction: int = 4  # channel attention: Linear(dim, max(dim // 4, 8))
    num_refiners: int = 2
    kernel_size: int = 3
    norm_eps: float = 1e-5
    temperature: float = 2.0  # buffer; the checkpoint's value wins

    @property
    def attn_dim(self) -> int:
        """Channel-attention bottleneck: dim // reduction, at least 8 (mobile_block.py)."""
        return max(self.dim // self.attn_reduction, 8)


# --------------------------------------------------------------------------------------
# SANA DiT (diffusers SanaTransformer2DModel field names)


@dataclass(frozen=True)
class DiTConfig(_Config):
    in_channels: int = 32
    out_channels: int = 32
    num_attention_heads: int = 36
    attention_head_dim: int = 32
    num_layers: int = 28
    num_cross_attention_heads: int = 16
    cross_attention_head_dim: int = 72
    cross_attention_dim: int = 1152
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    dropout: float = 0.0
    attention_bias: bool = False
    sample_size: int = 16
    patch_size: int = 1
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: int | None = None
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1
    qk_norm: str | None = None
    timestep_scale: float = 1.0

    # fixed inside diffusers' SANA modules (not config fields)
    TIMESTEP_CHANNELS: ClassVar[int] = 256  # Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    TIMESTEP_MAX_PERIOD: ClassVar[float] = 10000.0
    LINEAR_ATTN_EPS: ClassVar[float] = 1e-15  # ReLU linear attention: num / (den + eps), fp32
    CAPTION_NORM_EPS: ClassVar[float] = 1e-5  # caption_norm RMSNorm
    NORM_OUT_EPS: ClassVar[float] = 1e-6  # SanaModulatedNorm
    GLUMB_NORM_EPS: ClassVar[float] = 1e-5  # GLUMBConv's optional RMSNorm
    MASK_BIAS: ClassVar[float] = -10000.0  # (1 - mask) * MASK_BIAS for masked text tokens

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def check_supported(self) -> None:
        if self.interpolation_scale is not None or self.guidance_embeds or self.qk_norm is not None:
            raise ConfigError("this DiT config uses positional embeddings, guidance embeddings or qk-norm, "
                              "which the SANA 600M/1600M 512px models do not.",
                              fix="use the SANA 512px transformer config.")


# --------------------------------------------------------------------------------------
# DC-AE (diffusers AutoencoderDC field names)

RES_BLOCK, VIT_BLOCK = "ResBlock", "EfficientViTBlock"  # diffusers DC-AE block type names


@dataclass(frozen=True)
class VAEConfig(_Config):
    in_channels: int = 3
    latent_channels: int = 32
    attention_head_dim: int = 32
    encoder_block_types: tuple[str, ...] = (RES_BLOCK,) * 3 + (VIT_BLOCK,) * 3
    decoder_block_types: tuple[str, ...] = (RES_BLOCK,) * 3 + (VIT_BLOCK,) * 3
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    upsample_block_type: str = "interpolate"
    downsample_block_type: str = "conv"
    decoder_norm_types: str = "rms_norm"
    decoder_act_fns: str = "silu"
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 0.41407

    NORM_EPS: ClassVar[float] = 1e-5  # RMSNorm / norm_out inside diffusers' DC-AE blocks
    LINEAR_ATTN_EPS: ClassVar[float] = 1e-15  # multiscale ReLU linear attention
    GLU_EXPAND_RATIO: ClassVar[int] = 4  # GLUMBConv inside EfficientViTBlock
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("silu", "relu", "relu6", "gelu")  # what the ports build

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.decoder_block_out_channels) - 1)

    def check_supported(self) -> None:
        """The DC-AE variants both ports build: SANA's f32c32 and its reduced-size relatives."""
        bad = []
        if self.downsample_block_type != "conv":
            bad.append(f"downsample_block_type={self.downsample_block_type!r}")
        if self.upsample_block_type != "interpolate":
            bad.append(f"upsample_block_type={self.upsample_block_type!r}")
        if any(n != "rms_norm" for n in per_block(self.decoder_norm_types)):
            bad.append(f"decoder_norm_types={self.decoder_norm_types!r}")
        acts = {*per_block(self.decoder_act_fns), self.decoder_conv_act_fn}
        if not acts <= set(self.ACTIVATIONS):
            bad.append(f"activations {sorted(acts - set(self.ACTIVATIONS))}")
        if {*self.encoder_block_types, *self.decoder_block_types} - {RES_BLOCK, VIT_BLOCK}:
            bad.append("block types other than ResBlock / EfficientViTBlock")
        if not self.encoder_out_shortcut or not self.decoder_in_shortcut:
            bad.append("shortcuts off")
        if self.encoder_layers_per_block[0] == 0 or self.decoder_layers_per_block[0] == 0:
            bad.append("an empty first stage")
        if bad:
            raise ConfigError(f"DC-AE config with {', '.join(bad)} is not supported.",
                              fix="use the SANA DC-AE f32c32 config.")


def per_block(value, n: int = 1) -> tuple:
    """A per-block setting given once (a string, repeated ``n`` times) or per block (a list)."""
    return (value,) * n if isinstance(value, str) else tuple(value)


# --------------------------------------------------------------------------------------
# Inference scheduler (diffusers DPMSolverMultistepScheduler field names)

# (the samplers over this config: one table, weights.core.samplers)


@dataclass(frozen=True)
class SchedulerConfig(_Config):
    num_train_timesteps: int = 1000
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    prediction_type: str = "flow_prediction"
    use_flow_sigmas: bool = True
    flow_shift: float = 3.0
    final_sigmas_type: str = "zero"
    lower_order_final: bool = True
    euler_at_final: bool = False
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    thresholding: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_dynamic_shifting: bool = False
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    variance_type: str | None = None
    lambda_min_clipped: float = float("-inf")


# --------------------------------------------------------------------------------------
# Generation / understanding defaults (docs/model-facts.md section 7)


@dataclass(frozen=True)
class GenerationDefaults(_Config):
    steps: int = 20
    guidance: float = 1.5
    # understanding (infer_image_understanding.py): do_sample with T=0.8, top_p None, and no
    # top_k given, so transformers' GenerationConfig default top-k 50 applies
    temperature: float = 0.8
    top_p: float = 1.0  # off
    top_k: int = 50
    max_new_tokens: int = 256


@dataclass(frozen=True)
class ImagePreprocess(_Config):
    """expand2square with black, bicubic resize of the short edge, center crop, [0, 1]."""

    size: int = 1024
    pad_color: tuple[int, int, int] = (0, 0, 0)
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    image_std: tuple[float, float, float] = (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------
# The whole model


@dataclass(frozen=True)
class SanaConfigs:
    dit: DiTConfig
    vae: VAEConfig
    scheduler: SchedulerConfig


SANA_600M = "Efficient-Large-Model/Sana_600M_512px_diffusers"
SANA_1600M = "Efficient-Large-Model/Sana_1600M_512px_diffusers"

KNOWN_SANA: dict[str, SanaConfigs] = {
    SANA_600M: SanaConfigs(DiTConfig(), VAEConfig(), SchedulerConfig()),
    SANA_1600M: SanaConfigs(
        DiTConfig(num_attention_heads=70, num_layers=20, num_cross_attention_heads=20,
                  cross_attention_head_dim=112, cross_attention_dim=2240),
        VAEConfig(),
        SchedulerConfig(),
    ),
}

# diffusers folder layout of a SANA pipeline: where each config file lives
SANA_CONFIG_FILES = {
    "dit": "transformer/config.json",
    "vae": "vae/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def load_sana_configs(name: str, folder: str | Path | None = None) -> SanaConfigs:
    """SANA configs from a local diffusers folder when it has them, else the embedded
    defaults for a known ``diffusion_name_or_path``."""
    for candidate in (folder, name):
        if not candidate or not Path(candidate).is_dir():
            continue
        files = {k: Path(candidate) / v for k, v in SANA_CONFIG_FILES.items()}
        if all(p.is_file() for p in files.values()):
            return SanaConfigs(
                DiTConfig.from_file(files["dit"]),
                VAEConfig.from_file(files["vae"]),
                SchedulerConfig.from_file(files["scheduler"]),
            )
    if name in KNOWN_SANA:
        return KNOWN_SANA[name]
    raise ConfigError(
        f"no SANA configs for diffusion_name_or_path={name!r}: not a known model and "
        f"{SANA_CONFIG_FILES['dit']}, {SANA_CONFIG_FILES['vae']}, "
        f"{SANA_CONFIG_FILES['scheduler']} were not found beside the checkpoint.",
        fix=f"copy those files from the SANA diffusers folder into the model folder, "
        f"or use one of {', '.join(KNOWN_SANA)}.",
    )


@dataclass(frozen=True)
class MobileOConfig:
    """Everything needed to build every component of one Mobile-O checkpoint."""

    llm: LLMConfig
    vision: VisionConfig
    mcp: MCPConfig
    dit: DiTConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    mm_hidden_size: int  # vision features into the projector
    projector_type: str = "mlp2x_gelu"
    diffusion_name_or_path: str = SANA_600M
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent."""
        s = self.dit.sample_size
        return (self.dit.in_channels, s, s)

    @property
    def image_size(self) -> int:
        return self.dit.sample_size * self.vae.spatial_compression

    @classmethod
    def from_checkpoint_config(cls, raw: dict[str, Any], source: str,
                               sana_folder: str | Path | None = None) -> "MobileOConfig":
        llm = LLMConfig.from_dict(raw, source)
        tower = raw.get("mm_vision_tower", "mobileclip_l_1024")
        vision = VisionConfig.from_dict(raw.get("vision_config", {}), source)
        vision = vision.replace(image_size=VisionConfig.image_size_from_tower_name(tower))
        if "mm_hidden_size" not in raw:
            raise ConfigError(f"{source} is missing required field mm_hidden_size.",
                              fix="use the config.json shipped with the checkpoint.")
        if raw["mm_hidden_size"] != vision.out_dim:
            raise ConfigError(
                f"{source}: mm_hidden_size={raw['mm_hidden_size']} does not match the vision "
                f"tower's output width {vision.out_dim}.",
                fix="check vision_config / mm_vision_tower in config.json.")
        name = raw.get("diffusion_name_or_path", SANA_600M)
        sana = load_sana_configs(name, sana_folder)
        mcp = MCPConfig.from_dict(
            {"in_dim": llm.hidden_size, "out_dim": sana.dit.caption_channels,
             "num_layers": raw.get("vlm_num_layers", 4), **raw.get("mcp_config", {})},
            source,
        )
        return cls(
            llm=llm, vision=vision, mcp=mcp, dit=sana.dit, vae=sana.vae,
            scheduler=sana.scheduler, mm_hidden_size=raw["mm_hidden_size"],
            projector_type=raw.get("mm_projector_type", "mlp2x_gelu"),
            diffusion_name_or_path=name,
            preprocess=ImagePreprocess(size=vision.image_size), raw=dict(raw),
        )

    def to_checkpoint_config(self) -> dict[str, Any]:
        """The config.json a Mobile-O checkpoint carries (LLaVA/Qwen2 style)."""
        d = dict(self.raw)
        d.update(self.llm.to_hf_dict())
        d.update(
            architectures=["mobileoForInferenceLM"],
            model_type=d.get("model_type", "mobileo_inference"),
            mm_vision_tower=d.get("mm_vision_tower", f"mobileclip_l_{self.vision.image_size}"),
            mm_hidden_size=self.mm_hidden_size,
            mm_projector_type=self.projector_type,
            mm_vision_select_layer=-2,
            mm_vision_select_feature="patch",
            mm_patch_merge_type="flat",
            mm_use_im_start_end=False,
            mm_use_im_patch_token=False,
            image_aspect_ratio="pad",
            tokenizer_padding_side="right",
            tokenizer_model_max_length=MAX_PROMPT_TOKENS,
            diffusion_name_or_path=self.diffusion_name_or_path,
            vlm_num_layers=self.mcp.num_layers,
            is_train=False,
            torch_dtype="bfloat16",
        )
        if self.vision != VisionConfig(image_size=self.vision.image_size):
            d["vision_config"] = self.vision.to_dict()
        if self.mcp.dim != MCPConfig.dim:
            d["mcp_config"] = {"dim": self.mcp.dim}
        return d
