"""DC-AE decoding within a memory budget: the exact block-wise / row-banded decode equals
the one-graph decode; tiled decoding (overlap blending) equals diffusers' ``tiled_decode``
with the same tiles, and its distance from the exact decode is reported in dB."""

import numpy as np
import pytest

import mlx.core as mx
import torch

from weights.references import upstream  # noqa: E402
from mlx_model.components.dcae import AutoencoderDC  # noqa: E402
from metrics import psnr, rel_err, within  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def vae(tiny_ckpt):
    return AutoencoderDC.from_checkpoint(tiny_ckpt, encoder=False)


def latents(cfg, hw, batch=1, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, cfg.latent_channels, hw, hw)).astype(np.float32)


def one_graph(vae, z):
    return np.array(vae.decoder(mx.array(z).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))


def test_banded_stepwise_decode_equals_one_graph(vae, tiny_ckpt, parity):
    """Bands of one row (the smallest budget) through every local block, batch of 2."""
    z = latents(tiny_ckpt.config.vae, 8, batch=2)
    ref = one_graph(vae, z)
    for band_bytes in (1, 4096, 1 << 30):
        ours = np.array(vae.decode(mx.array(z), band_bytes=band_bytes))
        err = rel_err(ours, ref)
        within(err, at_most=1e-5, what=f"band of {band_bytes} bytes")
    parity("vae-dec banded vs one graph", "mlx fp32", "max_rel_err", err, at_most=1e-5)


@pytest.mark.slow
def test_tiled_decode_matches_diffusers_tiled_decode(vae, tiny_ckpt, parity):
    cfg = tiny_ckpt.config.vae
    f = cfg.spatial_compression
    ref_vae = upstream.build("vae", tiny_ckpt.config, tiny_ckpt.load("vae"))
    ref_vae.enable_tiling(tile_sample_min_height=4 * f, tile_sample_min_width=4 * f,
                          tile_sample_stride_height=3 * f, tile_sample_stride_width=3 * f)
    z = latents(cfg, 10, seed=1)
    with torch.no_grad():
        ref = ref_vae.decode(torch.from_numpy(z)).sample.numpy()
    ours = np.array(vae.decode(mx.array(z), tile=True, tile_latent=4, stride_latent=3, band_bytes=4096))
    assert ours.shape == ref.shape == (1, 3, 10 * f, 10 * f)
    err = rel_err(ours, ref)
    parity("vae-dec tiled vs diffusers tiled", "mlx fp32", "max_rel_err", err, at_most=1e-4)


def test_tiled_vs_exact_is_reported(vae, tiny_ckpt, parity):
    """Tiles see less context than the whole image (global linear attention): not exact."""
    z = mx.array(latents(tiny_ckpt.config.vae, 10, seed=2))
    exact = np.array(vae.decode(z))
    tiled = np.array(vae.decode(z, tile=True, tile_latent=6, stride_latent=4))
    p = psnr(exact, tiled)
    print(f"tiled (6-latent tiles, 2 blended) vs exact decode: {p:.1f} dB")
    parity("vae-dec tiled vs exact", "mlx fp32", "psnr_db", p, at_least=10.0)
    assert np.isfinite(tiled).all()


def test_auto_tiling_keeps_small_images_exact(vae, tiny_ckpt):
    z = mx.array(latents(tiny_ckpt.config.vae, 8))
    np.testing.assert_array_equal(np.array(vae.decode(z, tile="auto")), np.array(vae.decode(z)))
    assert vae.exact_decode_bytes((1, 32, 16, 16)) < vae.exact_decode_bytes((1, 32, 64, 64))


def test_bad_stride_is_refused(vae, tiny_ckpt):
    with pytest.raises(ValueError, match="stride_latent"):
        vae.decode(mx.array(latents(tiny_ckpt.config.vae, 8)), tile=True, tile_latent=4, stride_latent=5)
