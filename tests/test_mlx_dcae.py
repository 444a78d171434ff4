"""MLX DC-AE vs diffusers AutoencoderDC, fp32, same weights and inputs.

Relative error = max|ours - ref| / max|ref|, bound 1e-4.  The full-width case uses the real
channel widths (128..1024), the real block types and multiscales, one layer per stage, and
4x4 latents / 128x128 images: its deepest stage (16 pixels <= head dim 32) takes diffusers'
quadratic-attention branch, the others the linear one.
"""

import numpy as np
import pytest

import mlx.core as mx
import torch

from weights.references import upstream  # noqa: E402
from weights.core.configs import VAEConfig  # noqa: E402
from weights.loading.synthetic import random_tensors  # noqa: E402
from mlx_model.components.dcae import AutoencoderDC  # noqa: E402
from metrics import rel_err  # noqa: E402

pytestmark = pytest.mark.torch


def check(model, ref, cfg, latent_hw, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    f = cfg.spatial_compression
    z = rng.standard_normal((batch, cfg.latent_channels, latent_hw, latent_hw)).astype(np.float32)
    img = rng.uniform(-1, 1, (batch, cfg.in_channels, latent_hw * f, latent_hw * f)).astype(np.float32)
    with torch.no_grad():
        ref_dec = ref.decode(torch.from_numpy(z)).sample.numpy()
        ref_enc = ref.encode(torch.from_numpy(img)).latent.numpy()
    dec = np.array(model.decode(mx.array(z)))
    enc = np.array(model.encode(mx.array(img)))
    assert dec.shape == ref_dec.shape and enc.shape == ref_enc.shape
    return rel_err(dec, ref_dec), rel_err(enc, ref_enc)


def test_tiny_matches_diffusers(tiny_ckpt, parity):
    cfg = tiny_ckpt.config.vae
    ref = upstream.build("vae", tiny_ckpt.config, tiny_ckpt.load("vae"))
    model = AutoencoderDC.from_checkpoint(tiny_ckpt)
    dec, enc = check(model, ref, cfg, tiny_ckpt.config.dit.sample_size)
    print(f"tiny DC-AE rel err: decoder {dec:.2e}, encoder {enc:.2e}")
    parity("vae-dec tiny", "mlx fp32", "max_rel_err", dec, at_most=1e-4)
    parity("vae-enc tiny", "mlx fp32", "max_rel_err", enc, at_most=1e-4)


def test_decoder_only_load(tiny_ckpt):
    full = AutoencoderDC.from_checkpoint(tiny_ckpt)
    dec = AutoencoderDC.from_checkpoint(tiny_ckpt, encoder=False)
    assert not hasattr(dec, "encoder")
    z = mx.random.normal((1, tiny_ckpt.config.vae.latent_channels, 8, 8), key=mx.random.key(0))
    np.testing.assert_array_equal(np.array(dec.decode(z)), np.array(full.decode(z)))


@pytest.mark.slow
def test_full_width_reduced_layers_matches_diffusers(parity):
    cfg = VAEConfig(encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6)
    with torch.device("meta"):
        layout = {k: tuple(v.shape) for k, v in upstream.dcae(cfg).state_dict().items()}
    tensors = random_tensors(layout, "vae", seed=7)
    ref = upstream.load_state(upstream.dcae(cfg), tensors)
    model = AutoencoderDC.from_checkpoint(None, tensors=tensors, config=cfg)
    dec, enc = check(model, ref, cfg, latent_hw=4, batch=1)
    print(f"full-width DC-AE (1 layer/stage) rel err: decoder {dec:.2e}, encoder {enc:.2e}")
    parity("vae-dec f32c32", "mlx fp32", "max_rel_err", dec, at_most=1e-4)
    parity("vae-enc f32c32", "mlx fp32", "max_rel_err", enc, at_most=1e-4)
