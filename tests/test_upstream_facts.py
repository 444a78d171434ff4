"""Facts from Mobile-O's source that no parity test can see (a random-weight comparison runs
whatever config both sides are given), pinned against upstream objects where one exists and
against the source's literal values otherwise.  docs/upstream.md names these tests."""

import json
import shutil

import numpy as np
import pytest

from weights.core.configs import DiTConfig, GenerationDefaults, MCPConfig, SchedulerConfig, VAEConfig
from weights.loading.synthetic import full_config

pytestmark = pytest.mark.torch


def test_scheduler_config_is_the_sana_conversion_scripts():
    """diffusers scripts/convert_sana_to_diffusers.py builds
    DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction");
    every other field is the class default."""
    import diffusers
    ref = diffusers.DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True,
                                               prediction_type="flow_prediction").config
    ours = SchedulerConfig().to_dict()
    differ = {k: (v, ref[k]) for k, v in ours.items() if k in ref and ref[k] != v
              and not (isinstance(v, float) and np.isclose(v, ref[k]))}
    assert not differ
    assert {"solver_order", "solver_type", "final_sigmas_type", "lower_order_final", "flow_shift"} <= ours.keys()


def test_sana_600m_and_dcae_values():
    """Mobile-O-0.5B's diffusion_name_or_path is SANA 600M 512px (scripts/Mobile-O-0.5B)."""
    d = DiTConfig()
    assert (d.num_attention_heads, d.attention_head_dim, d.num_layers) == (36, 32, 28)
    assert (d.num_cross_attention_heads, d.cross_attention_head_dim, d.cross_attention_dim) == (16, 72, 1152)
    assert (d.caption_channels, d.sample_size, d.patch_size, d.norm_eps, d.mlp_ratio) == (2304, 16, 1, 1e-6, 2.5)
    assert d.interpolation_scale is None and not d.guidance_embeds and d.qk_norm is None
    assert VAEConfig().scaling_factor == 0.41407
    cfg = full_config()
    assert cfg.latent_shape == (32, 16, 16) and cfg.image_size == 512


def test_generation_and_understanding_defaults():
    """infer_image_generation.py / mobileo_inference.py: 20 steps, guidance 1.5;
    infer_image_understanding.py: do_sample, T=0.8, top_p None, no top_k (so transformers'
    GenerationConfig default applies), 256 new tokens."""
    import transformers
    d = GenerationDefaults()
    assert (d.steps, d.guidance) == (20, 1.5)
    assert (d.temperature, d.top_p, d.max_new_tokens) == (0.8, 1.0, 256)
    gen = transformers.GenerationConfig
    # transformers 4.x stores the default on the object; 5.x fills unset fields from this table
    default_top_k = getattr(gen, "_get_default_generation_params", lambda: {"top_k": gen().top_k})()["top_k"]
    assert d.top_k == default_top_k == 50


def test_mcp_layer_norm_eps_is_torch_default():
    """mobile_block.py builds nn.LayerNorm(dim) with no eps."""
    import torch
    assert MCPConfig(in_dim=896, out_dim=2304).norm_eps == torch.nn.LayerNorm(8).eps == 1e-5


def test_cpu_computes_in_float32():
    """On CPU (no Metal) activations stay fp32; the upstream scripts' bf16 is used on Metal only."""
    import mlx.core as mx
    from mlx_model.support.platform import default_dtype, metal_available

    assert default_dtype() == (mx.bfloat16 if metal_available() else mx.float32)


def test_stop_token_is_the_tokenizers_eos(tiny_ckpt_dir, tmp_path):
    """Mobile-O stops at tokenizer.eos_token_id: read from tokenizer_config.json."""
    import tokenizers  # noqa: F401
    from mlx_model.support.tokenizer import Tokenizer
    from weights.core import prompts
    from weights.mapping.tokenizer_files import eos_token

    folder = tmp_path / "tok"
    shutil.copytree(tiny_ckpt_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    assert Tokenizer(folder).eos_id == Tokenizer(folder).token_id(prompts.IM_END)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"content": prompts.PAD_TOKEN, "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer(folder).eos_id == Tokenizer(folder).token_id(prompts.PAD_TOKEN)
    assert eos_token(folder) == prompts.PAD_TOKEN  # what the manifest's "eos" role carries


def test_understanding_samples_with_top_k(tiny_ckpt):
    """top-k reaches the sampler: top_k=1 at any temperature is greedy decoding."""
    import mlx.core  # noqa: F401
    import skimage.data as skdata
    from mlx_model.pipelines.understanding import Understanding

    m = Understanding.from_checkpoint(tiny_ckpt, quantize=0)
    greedy = [r.token for r in m.stream(skdata.coffee(), "What is it?", max_tokens=8, temp=0, stop_at_eos=False)]
    top1 = [r.token for r in m.stream(skdata.coffee(), "What is it?", max_tokens=8, temp=5.0, top_k=1, seed=3,
                                      stop_at_eos=False)]
    free = [r.token for r in m.stream(skdata.coffee(), "What is it?", max_tokens=8, temp=5.0, top_k=0, seed=3,
                                      stop_at_eos=False)]
    assert top1 == greedy
    assert free != greedy  # a hot sampler without top-k leaves the greedy path
