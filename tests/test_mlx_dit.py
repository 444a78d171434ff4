"""MLX SANA DiT vs diffusers SanaTransformer2DModel, fp32, same weights and inputs.

Relative error = max|ours - ref| / max|ref|, bound 1e-4.
"""

import numpy as np
import pytest

import mlx.core as mx
import torch

from weights.references import upstream  # noqa: E402
from weights.core.configs import DiTConfig  # noqa: E402
from weights.loading.synthetic import random_tensors  # noqa: E402
from mlx_model.components.dit import SanaTransformer  # noqa: E402
from metrics import rel_err, within  # noqa: E402

pytestmark = pytest.mark.torch


def reference(cfg, tensors, x, ctx, t, mask=None):
    ref = upstream.load_state(upstream.sana(cfg), tensors)
    with torch.no_grad():
        out = ref(torch.from_numpy(x), torch.from_numpy(ctx), torch.from_numpy(t),
                  encoder_attention_mask=None if mask is None else torch.from_numpy(mask)).sample
    return out.numpy()


def inputs(cfg, batch=2, seq=23, seed=0):
    rng = np.random.default_rng(seed)
    s = cfg.sample_size
    x = rng.standard_normal((batch, cfg.in_channels, s, s)).astype(np.float32)
    ctx = rng.standard_normal((batch, seq, cfg.caption_channels)).astype(np.float32)
    t = np.array([999, 436][:batch], dtype=np.int64)
    return x, ctx, t


def ours(model, x, ctx, t, mask=None):
    out = model(mx.array(x), mx.array(ctx), mx.array(t.astype(np.float32)),
                None if mask is None else mx.array(mask))
    return np.array(out)


def test_tiny_matches_diffusers(tiny_ckpt, parity):
    cfg = tiny_ckpt.config.dit
    tensors = tiny_ckpt.load("dit")
    model = SanaTransformer.from_checkpoint(tiny_ckpt)
    x, ctx, t = inputs(cfg)
    err = rel_err(ours(model, x, ctx, t), reference(cfg, tensors, x, ctx, t))
    print(f"tiny DiT rel err {err:.2e}")
    parity("dit tiny", "mlx fp32", "max_rel_err", err, at_most=1e-4)


def test_tiny_text_mask_matches_diffusers(tiny_ckpt, parity):
    cfg = tiny_ckpt.config.dit
    model = SanaTransformer.from_checkpoint(tiny_ckpt)
    x, ctx, t = inputs(cfg, seq=12)
    mask = np.ones((2, 12), np.int64)
    mask[0, 7:] = 0
    mask[1, 10:] = 0
    ref = reference(cfg, tiny_ckpt.load("dit"), x, ctx, t, mask)
    err = rel_err(ours(model, x, ctx, t, mask), ref)
    parity("dit tiny+mask", "mlx fp32", "max_rel_err", err, at_most=1e-4)
    # masked tokens really are ignored: changing them changes nothing
    ctx2 = ctx.copy()
    ctx2[0, 7:] = 123.0
    np.testing.assert_allclose(ours(model, x, ctx2, t, mask)[0], ours(model, x, ctx, t, mask)[0], atol=1e-5)


def test_full_width_reduced_layers_matches_diffusers(parity):
    """The real 600M widths (D=1152, 36 heads, cross 16x72, caption 2304, 16x16 latents), 2 layers."""
    cfg = DiTConfig(num_layers=2)
    with torch.device("meta"):
        layout = {k: tuple(v.shape) for k, v in upstream.sana(cfg).state_dict().items()}
    tensors = random_tensors(layout, "dit", seed=3)
    model = SanaTransformer.from_checkpoint(None, tensors=tensors, config=cfg)
    x, ctx, t = inputs(cfg, seq=40)
    err = rel_err(ours(model, x, ctx, t), reference(cfg, tensors, x, ctx, t))
    print(f"full-width DiT (2 layers) rel err {err:.2e}")
    parity("dit 600M-width", "mlx fp32", "max_rel_err", err, at_most=1e-4)


def test_quantized_dit_runs(tiny_ckpt):
    import mlx.nn as nn

    cfg = tiny_ckpt.config.dit
    q = SanaTransformer.from_checkpoint(tiny_ckpt, quantize=4, group_size=32, dequantize=False)
    assert isinstance(q.transformer_blocks[0].ff.conv_inverted, nn.QuantizedLinear)
    d = SanaTransformer.from_checkpoint(tiny_ckpt, quantize=4, group_size=32, dequantize=True)
    assert type(d.transformer_blocks[0].ff.conv_inverted) is nn.Linear
    x, ctx, t = inputs(cfg)
    assert np.isfinite(ours(q, x, ctx, t)).all()
    within(rel_err(ours(d, x, ctx, t), ours(q, x, ctx, t)), at_most=1e-4)
