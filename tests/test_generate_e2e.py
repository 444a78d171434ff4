"""End to end: MLX pipeline vs a torch reference loop built from the upstream modules
(transformers Qwen2 -> weights/mcp_reference MCP -> diffusers SanaTransformer2DModel ->
diffusers DPMSolverMultistepScheduler -> AutoencoderDC.decode), same weights, same initial
latents, fp32.  PSNR = 20 log10(max|ref| / RMSE) on the uint8 images."""

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

import mlx.core as mx
import torch

from weights.references import mcp as mcp_reference, upstream  # noqa: E402
from mlx_model.pipelines.generation import GenerationPipeline  # noqa: E402
from mlx_model.support.image_settings import latent_shape  # noqa: E402
from metrics import psnr  # noqa: E402

pytestmark = pytest.mark.torch

PROMPT = "a red cup on a wooden table"


def reference_conditioning(ckpt, ids):
    """The DiT's encoder_hidden_states [2, L, C] as Mobile-O builds them: transformers' last
    hidden states, each as cat([zeros, h]) (unconditional first), through the MCP."""
    cfg = ckpt.config
    llm = upstream.build("llm", cfg, ckpt.load("llm"))
    mcp = mcp_reference.build(cfg.mcp, ckpt.load("mcp"))
    with torch.no_grad():
        hs = llm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        hs = [torch.cat([torch.zeros_like(h), h]) for h in hs[-cfg.mcp.num_layers:]]
        return mcp(hs).float()


def torch_reference(ckpt, ids, x0, steps, guidance):
    """Mobile-O's generate_image in fp32 with the upstream modules.  The latent size is x0's
    [n, C, h, w], any size (non-square included): SANA has no positional embedding."""
    cfg = ckpt.config
    dit = upstream.build("dit", cfg, ckpt.load("dit"))
    vae = upstream.build("vae", cfg, ckpt.load("vae"))
    sched = upstream.scheduler(cfg.scheduler)
    sched.set_timesteps(steps)
    ctx = reference_conditioning(ckpt, ids)
    with torch.no_grad():
        n = x0.shape[0]
        ctx = torch.cat([ctx[:1].expand(n, -1, -1), ctx[1:].expand(n, -1, -1)])
        lat = torch.from_numpy(x0)
        for t in sched.timesteps:
            v = dit(torch.cat([lat, lat]), ctx, t.expand(2 * n)).sample
            u, c = v.chunk(2)
            lat = sched.step(u + guidance * (c - u), t, lat).prev_sample
        img = vae.decode(lat / cfg.vae.scaling_factor).sample
        img = (img / 2 + 0.5).clamp(0, 1)
        u8 = (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return lat.numpy(), u8.numpy()


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=0)


def test_conditioning_matches_reference(pipe, tiny_ckpt, parity):
    """The conditioning on its own: an image on random weights barely reacts to it (a wrong
    MCP activation still gave a 46 dB image), so both CFG rows are checked here."""
    ref = reference_conditioning(tiny_ckpt, pipe.prompt_ids(PROMPT)).numpy()
    ours = np.array(pipe.encode_prompt(PROMPT))
    assert ours.shape == ref.shape and ours.shape[0] == 2
    err = max(float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(ours, ref))
    parity("conditioning (both CFG rows)", "mlx fp32", "max_rel_err", err, at_most=1e-4)


@pytest.mark.parametrize("n_images", [1, 2])
def test_mlx_image_matches_torch_reference(pipe, tiny_ckpt, n_images, parity):
    steps, guidance = 20, 1.5
    x0 = np.random.default_rng(42).standard_normal((n_images, *tiny_ckpt.config.latent_shape)).astype(np.float32)
    out = pipe.generate(ImageSettings(PROMPT, steps=steps, guidance=guidance, n_images=n_images), latents=x0)
    ref_lat, ref_img = torch_reference(tiny_ckpt, pipe.prompt_ids(PROMPT), x0, steps, guidance)
    assert out.images.shape == ref_img.shape == (n_images, 64, 64, 3) and out.images.dtype == np.uint8
    p = psnr(ref_img, out.images)
    lat_err = float(np.abs(out.latents - ref_lat).max() / np.abs(ref_lat).max())
    print(f"e2e n={n_images}: image PSNR {p:.1f} dB, final-latent rel err {lat_err:.2e}, "
          f"timings {', '.join(f'{k} {v:.2f}s' for k, v in out.timings.items())}")
    parity("pipeline", "mlx fp32", "psnr_db", p, at_least=40.0)
    assert out.images.std() > 1  # not a flat image


def test_non_square_size_matches_torch_reference(pipe, tiny_ckpt, parity):
    """--width 96 --height 64: latents 8x12 on the tiny model (compression 8), through the same
    DiT and DC-AE, against diffusers on the same non-square latents."""
    steps, guidance, height, width = 20, 1.5, 64, 96
    shape = latent_shape(tiny_ckpt.config, height, width)
    assert shape == (tiny_ckpt.config.dit.in_channels, 8, 12)
    x0 = np.random.default_rng(7).standard_normal((1, *shape)).astype(np.float32)
    out = pipe.generate(ImageSettings(PROMPT, steps=steps, guidance=guidance, height=height, width=width), latents=x0)
    ref_lat, ref_img = torch_reference(tiny_ckpt, pipe.prompt_ids(PROMPT), x0, steps, guidance)
    assert out.images.shape == ref_img.shape == (1, height, width, 3)
    p = psnr(ref_img, out.images)
    print(f"e2e {width}x{height}: image PSNR {p:.1f} dB")
    parity("pipeline 96x64", "mlx fp32", "psnr_db", p, at_least=40.0)
    seeded = pipe.generate(ImageSettings(PROMPT, steps=2, seed=3, height=height, width=width))
    assert seeded.initial_latents.shape == (1, *shape) and seeded.images.shape == (1, height, width, 3)


def test_seeded_latents_are_reproducible(pipe):
    a = pipe.generate(ImageSettings(PROMPT, steps=2, seed=7))
    b = pipe.generate(ImageSettings(PROMPT, steps=2, seed=7))
    c = pipe.generate(ImageSettings(PROMPT, steps=2, seed=8))
    np.testing.assert_array_equal(a.initial_latents, b.initial_latents)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.initial_latents, c.initial_latents)
    assert a.settings.seed == 7


def test_euler_sampler_runs(pipe):
    out = pipe.generate(ImageSettings(PROMPT, steps=4, seed=0, scheduler="euler"))
    assert out.images.shape[0] == 1


def test_4bit_drift_vs_fp32(tiny_ckpt, pipe, parity):
    """Reports how far the shipped 4-bit LLM+DiT drift from fp32 (random weights: loose floor)."""
    q4 = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=4, group_size=32)
    x0 = np.random.default_rng(1).standard_normal((1, *tiny_ckpt.config.latent_shape)).astype(np.float32)
    a = pipe.generate(ImageSettings(PROMPT, steps=20), latents=x0).images
    b = q4.generate(ImageSettings(PROMPT, steps=20), latents=x0).images
    p = psnr(a, b)
    print(f"4-bit (group 32 on the tiny widths) vs fp32 image PSNR: {p:.1f} dB")
    parity("pipeline", "mlx 4-bit vs fp32", "psnr_db", p, at_least=10.0)
