"""Synthetic Mobile-O checkpoints in the exact released layout, for tests and demos.

    write_checkpoint(folder, "tiny")     # whole pipeline runs in seconds on a CPU
    write_checkpoint(folder, "full")     # the real 0.5B dimensions (bf16, ~4.7 GB with the duplicates)
    demo_path()                          # the tiny one, created once in a cache folder

Key names and shapes come from the upstream modules themselves (transformers
``Qwen2ForCausalLM``, timm ``fastvit_mci3`` mapped to Apple's names, diffusers
``SanaTransformer2DModel`` / ``AutoencoderDC``), built on torch's ``meta`` device.  The
MCP has no upstream module: its layout is written from the facts file.  So that the demo
needs no torch, the tiny layout is also stored in ``weights/data/tiny_layout.json``; a
test regenerates it from upstream and compares.

Values are seeded per tensor (seed, key), so the same checkpoint comes out on every
machine, whatever order or subset of components is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from weights.core.configs import (RES_BLOCK, VIT_BLOCK, DiTConfig, LLMConfig, MCPConfig, MobileOConfig, SchedulerConfig,
                      SANA_CONFIG_FILES, VAEConfig, VisionConfig, SANA_600M)
from weights.mapping.checkpoint import CONFIG_FILE, INDEX_FILE
from weights.mapping.layout import COMPONENTS, IGNORE_RULES, checkpoint_key
from weights.core.prompts import SPECIAL_TOKENS
from weights.mapping.safetensors_io import write_file
from weights.mapping.tokenizer_files import byte_vocab, qwen_tiktoken_path, tiktoken_vocab, write_tokenizer

Layout = dict[str, dict[str, tuple[int, ...]]]  # component -> local key -> shape
DATA = Path(__file__).resolve().parents[1] / "data"  # weights/data
FORMAT_VERSION = 2  # bump when the synthetic values or layout change (invalidates the demo cache)
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)
FULL_VOCAB = 151643 + len(SPECIAL_TOKENS)  # Qwen2 BPE ranks + 3 Qwen2 + 3 Mobile-O tokens


def _config(llm: LLMConfig, vision: VisionConfig, dit: DiTConfig, vae: VAEConfig,
            mcp: dict, name: str) -> MobileOConfig:
    return MobileOConfig(
        llm=llm, vision=vision,
        mcp=MCPConfig(in_dim=llm.hidden_size, out_dim=dit.caption_channels, **mcp),
        dit=dit, vae=vae, scheduler=SchedulerConfig(), mm_hidden_size=vision.out_dim,
        diffusion_name_or_path=name,
    )


def tiny_config() -> MobileOConfig:
    """Every component at toy size, same structure: 64-px images, 8x8x8 latents."""
    llm = LLMConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=128, vocab_size=TINY_VOCAB,
                    max_position_embeddings=2048)
    vision = VisionConfig(layers=(1, 1, 1, 1, 1), embed_dims=(8, 16, 32, 64, 64),
                          image_size=256, projection_dim=32)
    dit = DiTConfig(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                    num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
                    cross_attention_dim=32, caption_channels=48, sample_size=8)
    res, vit = RES_BLOCK, VIT_BLOCK
    vae = VAEConfig(latent_channels=8, attention_head_dim=8,
                    encoder_block_types=(res, res, vit, vit), decoder_block_types=(res, res, vit, vit),
                    encoder_block_out_channels=(16, 32, 32, 64), decoder_block_out_channels=(16, 32, 32, 64),
                    encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                    encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)))
    return _config(llm, vision, dit, vae, {"dim": 32}, "synthetic/tiny")


def full_config() -> MobileOConfig:
    """The real Mobile-O-0.5B dimensions."""
    llm = LLMConfig(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, intermediate_size=4864, vocab_size=FULL_VOCAB)
    return _config(llm, VisionConfig(), DiTConfig(), VAEConfig(), {}, SANA_600M)


PRESETS = {"tiny": tiny_config, "full": full_config}


# ------------------------------------------------------------------ layout


def mcp_layout(c: MCPConfig) -> dict[str, tuple[int, ...]]:
    """The Mobile Conditioning Projector's tensors (docs/model-facts.md sections 7 and 8)."""
    d, k = c.dim, c.kernel_size
    out = {"layer_weights": (c.num_layers,), "temperature": (),
           "input_compress.0.weight": (d, c.in_dim), "input_compress.0.bias": (d,),
           "input_compress.1.weight": (d,), "input_compress.1.bias": (d,),
           "output_proj.0.weight": (c.out_dim, d), "output_proj.0.bias": (c.out_dim,),
           "output_proj.1.weight": (c.out_dim,), "output_proj.1.bias": (c.out_dim,)}
    for i in range(c.num_refiners):
        p = f"sequence_refiners.{i}."
        out.update({p + "conv.depthwise.weight": (d, 1, k), p + "conv.pointwise.weight": (d, d, 1),
                    p + "conv.norm.weight": (d,), p + "conv.norm.bias": (d,),
                    p + "channel_attn.fc.0.weight": (c.attn_dim, d),
                    p + "channel_attn.fc.2.weight": (d, c.attn_dim),
                    p + "norm.weight": (d,), p + "norm.bias": (d,)})
    return out


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def upstream_layout(cfg: MobileOConfig) -> Layout:
    """Key names and shapes from the upstream modules on torch's meta device."""
    import torch
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from weights.mapping.vision_keys import timm_shape_to_apple, timm_to_apple
    from weights.references import upstream

    with torch.device("meta"):
        llm = _shapes(Qwen2ForCausalLM(Qwen2Config(**cfg.llm.to_hf_dict())))
        dit = _shapes(SanaTransformer2DModel(**cfg.dit.to_dict()))
        vae = _shapes(AutoencoderDC(**cfg.vae.to_dict()))
        timm_model = upstream.fastvit(cfg.vision)
        proj = _shapes(upstream.projector(cfg.mm_hidden_size, cfg.llm.hidden_size))
    vision = {timm_to_apple(k): timm_shape_to_apple(k, s)
              for k, s in _shapes(timm_model).items() if timm_to_apple(k) is not None}
    if cfg.llm.tie_word_embeddings:
        llm.pop("lm_head.weight", None)
    return {"llm": llm, "vision": vision, "projector": proj, "mcp": mcp_layout(cfg.mcp),
            "dit": dit, "vae": vae}


def stored_layout(preset: str) -> Layout | None:
    path = DATA / f"{preset}_layout.json"
    if not path.is_file():
        return None
    return {c: {k: tuple(s) for k, s in keys.items()} for c, keys in json.loads(path.read_text()).items()}


def layout_for(preset: str) -> Layout:
    """The stored layout when there is one (no torch needed), else the upstream one."""
    return stored_layout(preset) or upstream_layout(PRESETS[preset]())


# ------------------------------------------------------------------ values


def _value(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "temperature":
        return np.full(shape, 2.0, np.float32)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if "layer_scale" in key:  # keep deep residual stacks well-scaled in fp16
        return (0.1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    if leaf in ("bias", "running_mean", "layer_weights"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)  # norm scales


def random_tensors(layout: dict[str, tuple[int, ...]], component: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The values :func:`write_checkpoint` stores for one component (local keys)."""
    return {k: _value(checkpoint_key(component, k), s, seed) for k, s in layout.items()}


# ------------------------------------------------------------------ writing


def write_checkpoint(folder: str | Path, preset: str = "tiny", *, seed: int = 0,
                     shard_bytes: int | None = None, duplicates: bool = True,
                     tokenizer: str | None = None) -> Path:
    """Write a complete synthetic checkpoint into ``folder`` (created atomically).

    ``duplicates`` also writes the ``base_model.model.*`` copies the released file holds.
    ``tokenizer``: "bytes" (256 byte tokens) or "qwen" (real ranks from ``dashscope``);
    default: bytes for tiny, qwen for full when available.
    """
    cfg = PRESETS[preset]()
    layout = layout_for(preset)
    folder = Path(folder)
    if shard_bytes is None:
        shard_bytes = 2 * 1024**3 if preset == "full" else 256 * 1024
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not
    try:
        _write_into(tmp, cfg, layout, seed, shard_bytes, duplicates, tokenizer or
                    ("qwen" if preset == "full" and qwen_tiktoken_path() else "bytes"))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_into(folder: Path, cfg: MobileOConfig, layout: Layout, seed: int, shard_bytes: int,
                duplicates: bool, tokenizer: str) -> None:
    vocab, merges = tiktoken_vocab(qwen_tiktoken_path()) if tokenizer == "qwen" else byte_vocab()
    n_vocab = write_tokenizer(folder, vocab, merges)
    if n_vocab != cfg.llm.vocab_size:
        raise ValueError(f"tokenizer has {n_vocab} ids but the config says {cfg.llm.vocab_size}")
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.to_checkpoint_config(), indent=2))
    for comp, rel in SANA_CONFIG_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        conf = getattr(cfg, comp).to_dict()
        conf["_class_name"] = {"dit": "SanaTransformer2DModel", "vae": "AutoencoderDC",
                               "scheduler": "DPMSolverMultistepScheduler"}[comp]
        (folder / rel).write_text(json.dumps(conf, indent=2))

    entries = [(checkpoint_key(c, k), c, k, s) for c in COMPONENTS for k, s in layout[c].items()]
    if duplicates:
        dup = IGNORE_RULES[0].prefix
        entries += [(dup + ck, c, k, s) for ck, c, k, s in entries if c in ("vision", "projector", "mcp", "dit")]
    shards: list[list] = [[]]
    size = 0
    for e in entries:
        nbytes = int(np.prod(e[3], dtype=np.int64)) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {ck: _value(checkpoint_key(c, k), s, seed) for ck, c, k, s in shard}
        bf16 = {k for k, v in tensors.items() if v.dtype == np.float32}
        write_file(folder / name, tensors, bf16=bf16)
        total += sum(v.size * (2 if k in bf16 else v.itemsize) for k, v in tensors.items())
        weight_map.update({ck: name for ck, *_ in shard})
        del tensors
    (folder / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (folder / "synthetic.json").write_text(json.dumps(
        {"preset": cfg.diffusion_name_or_path, "seed": seed, "format_version": FORMAT_VERSION,
         "note": "random weights in the Mobile-O layout; not a trained model"}, indent=2))


def write_reduced(folder: str | Path, **parts) -> "Checkpoint":
    """A checkpoint that is tiny except for the given component configs, e.g.
    ``write_reduced(dir, dit=DiTConfig(num_layers=2))`` for the real DiT widths with 2 layers.
    Accepts ``llm``, ``vision``, ``dit``, ``vae`` configs and ``mcp`` (a dict of MCPConfig fields,
    e.g. ``{"dim": 512}``); the layout comes from the upstream modules."""
    from weights.mapping.checkpoint import Checkpoint

    tiny = tiny_config()
    kw = {**dict(llm=tiny.llm, vision=tiny.vision, dit=tiny.dit, vae=tiny.vae,
                 mcp={"dim": tiny.mcp.dim}), **parts}
    cfg = _config(**kw, name="synthetic/reduced")
    folder = Path(folder)
    folder.mkdir(parents=True)
    _write_into(folder, cfg, upstream_layout(cfg), 0, 256 * 1024**2, False, "bytes")
    return Checkpoint.open(folder)


def cache_dir() -> Path:
    root = os.environ.get("MOBILEO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mobileo-deploy")
    return Path(root)


def demo_path() -> Path:
    """The tiny seeded checkpoint behind ``--model demo``, written on first use."""
    folder = cache_dir() / f"demo-tiny-v{FORMAT_VERSION}"
    if not (folder / INDEX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(folder, "tiny")
    return folder


def save_stored_layout(preset: str = "tiny") -> Path:
    """Regenerate ``weights/data/<preset>_layout.json`` from the upstream modules."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"{preset}_layout.json"
    layout = upstream_layout(PRESETS[preset]())
    path.write_text(json.dumps({c: {k: list(s) for k, s in v.items()} for c, v in layout.items()}, indent=0))
    return path


def main(argv=None):
    import argparse

    from weights.core.errors import run_cli

    p = argparse.ArgumentParser(prog="python -m weights.loading.synthetic",
                                description="Write a random Mobile-O checkpoint in the released layout.")
    p.add_argument("out", help="folder to write (replaced if it exists)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-duplicates", action="store_true", help="omit the base_model.model.* copies")
    p.add_argument("--write-layout", action="store_true", help="regenerate weights/data/<preset>_layout.json and exit")
    a = p.parse_args(argv)
    if a.write_layout:
        print(save_stored_layout(a.preset))
        return
    run_cli(lambda: print(write_checkpoint(a.out, a.preset, seed=a.seed, duplicates=not a.no_duplicates)))


if __name__ == "__main__":
    main()
