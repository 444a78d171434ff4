"""Full-size parity (`make parity-full`): every MLX component of the real 0.5B layout vs its
upstream reference, end to end, and the 4-bit drift.  Needs `make full-checkpoint`
(random bf16 weights, ~4.7 GB) and ~16 GB of memory; minutes on a 2-core CPU."""

import gc

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

import mlx.core as mx
import torch

import test_generate_e2e as e2e  # noqa: E402  (the torch reference loop)
from weights.references import mcp as mcp_reference, upstream  # noqa: E402
from metrics import psnr, rel_err  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.full]
TOL = 1e-4


@pytest.fixture(scope="module")
def prompt_ids(full_ckpt):
    from mlx_model.support.tokenizer import Tokenizer
    from weights.core.prompts import generation_prompt

    return Tokenizer.from_checkpoint(full_ckpt).encode_prompt(e2e.PROMPT, generation_prompt)


@pytest.fixture(scope="module")
def hidden(full_ckpt, prompt_ids):
    """transformers' last 4 hidden states, and ours."""
    from mlx_model.components.llm import LanguageModel

    cfg = full_ckpt.config
    ref_llm = upstream.build("llm", cfg, full_ckpt.load("llm"))
    with torch.no_grad():
        ref = ref_llm(input_ids=torch.tensor([prompt_ids]), output_hidden_states=True).hidden_states
    ref = [h.numpy() for h in ref[-cfg.mcp.num_layers:]]
    del ref_llm
    llm = LanguageModel.from_checkpoint(full_ckpt)
    ours = [np.array(h) for h in llm.hidden_states(llm.embed(mx.array([prompt_ids])), cfg.mcp.num_layers)]
    del llm
    gc.collect()
    return ref, ours


def test_llm_hidden_states(hidden, parity):
    ref, ours = hidden
    err = max(rel_err(o, r) for o, r in zip(ours, ref))
    parity("llm 0.5B", "mlx fp32", "max_rel_err", err, at_most=TOL)


def test_mcp(full_ckpt, hidden, parity):
    from mlx_model.components.mcp import MCP

    ref_h, _ = hidden
    cfg = full_ckpt.config
    ref_mcp = mcp_reference.build(cfg.mcp, full_ckpt.load("mcp"))
    with torch.no_grad():
        ref = ref_mcp([torch.from_numpy(h) for h in ref_h]).numpy()
    ours = np.array(MCP.from_checkpoint(full_ckpt)([mx.array(h) for h in ref_h]))
    parity("mcp 0.5B", "mlx fp32", "max_rel_err", rel_err(ours, ref), at_most=TOL)


def test_dit(full_ckpt, parity):
    from mlx_model.components.dit import SanaTransformer

    cfg = full_ckpt.config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32)
    ctx = rng.standard_normal((2, 40, cfg.dit.caption_channels)).astype(np.float32)
    t = np.array([999.0, 500.0], np.float32)
    ref_dit = upstream.build("dit", cfg, full_ckpt.load("dit"))
    with torch.no_grad():
        ref = ref_dit(torch.from_numpy(x), torch.from_numpy(ctx), torch.from_numpy(t)).sample.numpy()
    del ref_dit
    ours = np.array(SanaTransformer.from_checkpoint(full_ckpt)(mx.array(x), mx.array(ctx), mx.array(t)))
    parity("dit 600M", "mlx fp32", "max_rel_err", rel_err(ours, ref), at_most=TOL)


def test_vae_decoder(full_ckpt, parity):
    from mlx_model.components.dcae import AutoencoderDC

    cfg = full_ckpt.config
    z = np.random.default_rng(1).standard_normal((1, *cfg.latent_shape)).astype(np.float32)
    ref_vae = upstream.build("vae", cfg, full_ckpt.load("vae"))
    with torch.no_grad():
        ref = ref_vae.decode(torch.from_numpy(z)).sample.numpy()
    del ref_vae
    ours = np.array(AutoencoderDC.from_checkpoint(full_ckpt, encoder=False).decode(mx.array(z)))
    assert ours.shape == (1, 3, 512, 512)
    parity("vae-dec f32c32 512px", "mlx fp32", "max_rel_err", rel_err(ours, ref), at_most=TOL)


def test_end_to_end_and_4bit_drift(full_ckpt, prompt_ids, parity):
    """Two DPM-Solver++ steps with guidance (both solver orders run), same initial latents."""
    from mlx_model.pipelines.generation import GenerationPipeline

    steps, guidance = 2, 1.5
    x0 = np.random.default_rng(42).standard_normal((1, *full_ckpt.config.latent_shape)).astype(np.float32)
    _, ref_img = e2e.torch_reference(full_ckpt, prompt_ids, x0, steps, guidance)
    gc.collect()
    fp32 = GenerationPipeline.from_checkpoint(full_ckpt, quantize=0).generate(ImageSettings(e2e.PROMPT, steps=steps, guidance=guidance), latents=x0).images
    gc.collect()
    q4 = GenerationPipeline.from_checkpoint(full_ckpt, quantize=4).generate(ImageSettings(e2e.PROMPT, steps=steps, guidance=guidance), latents=x0).images
    assert fp32.shape == ref_img.shape == (1, 512, 512, 3)
    parity("pipeline 0.5B 512px", "mlx fp32", "psnr_db", psnr(ref_img, fp32), at_least=40.0)
    parity("pipeline 0.5B 512px", "mlx 4-bit vs fp32", "psnr_db (drift)", psnr(fp32, q4), report=True)
