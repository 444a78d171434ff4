"""The dtype path a Mac runs, under test on any CPU (#24).

On Metal, ``default_dtype()`` is bfloat16: the LLM, DiT and DC-AE decoder hold bf16 weights
and run bf16 activations (the MCP stays fp32, as Mobile-O casts its output), and ``-q 4`` keeps
MLX's ``QuantizedLinear`` / ``QuantizedEmbedding`` (bf16 scales) instead of the CPU's JIT
form.  Here ``metal_available`` is patched to say yes, so the very objects a Mac builds run on
the CPU, on the tiny demo model, per component against the torch references (fp32) and end to
end (conditioning, final image).  With ``-q 4`` the torch reference holds the same 4-bit
weights dequantized (the model the folder stores), so both runs are judged at bf16 tolerance:
what is measured is the Metal path (bf16 activations, MLX's quantized kernels), not the
quantization itself (that drift is tests/test_generate_e2e.py::test_4bit_drift_vs_fp32's).
A changed Metal choice (dtype, quantized layer kind, an fp32 fallback) fails
``test_the_mac_choices``; a broken bf16 path the floors.

Documented floors (tiny demo model, random weights; measured values in build/parity.json,
each floor about 2x the measured error): max|ours - ref| / max|ref| <= 0.05 for the LLM's
last hidden states, the DiT and the conditioning (measured 0.021, 0.008, 0.025), <= 0.15 for
the DC-AE decoder (its stages of bf16 convolutions and RMSNorms; median over 8 latents,
measured 0.019, 0.041 with -q 4's 8-bit layers: see ``test_vae_decoder``); with
``-q 4`` the LLM <= 0.12 and the conditioning <= 0.2 (measured 0.062, 0.10: MLX's bf16
quantized matmul and the bf16 rows of the quantized embedding), the DiT <= 0.05 (0.016);
image PSNR >= 35 dB at 8 steps (measured 49.7 dB, 44.6 dB with -q 4).  ``-q 4`` also
quantizes the VAE decoder's (8-bit) and vision tower's (4-bit) matmul layers
(``quant.PART_BITS``); the reference holds those dequantized too, and the tower (fp32
activations on a Mac as on a CPU) is held to fp32 tolerance, <= 1e-4 (measured 3e-7).
"""

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
import torch
from mlx.utils import tree_flatten

from mlx_model.pipelines.generation import GenerationPipeline  # noqa: E402
from mlx_model.support.image_settings import ImageSettings  # noqa: E402
from weights.references import upstream  # noqa: E402
from metrics import psnr, rel_err  # noqa: E402
from test_generate_e2e import PROMPT, reference_conditioning, torch_reference  # noqa: E402
from test_mlx_dit import inputs as dit_inputs, reference as dit_reference  # noqa: E402

pytestmark = pytest.mark.torch

# per component: (bf16, bf16 + 4-bit) bounds of max|ours - ref| / max|ref| vs torch fp32
# (4-bit: on the dequantized weights)
FLOORS = {"llm": (0.05, 0.12), "dit": (0.05, 0.05), "vae": (0.04, 0.08), "conditioning": (0.05, 0.2),
          "vision": (1e-4, 1e-4)}
PSNR_FLOOR = 35.0  # final image vs the torch fp32 reference, dB
STEPS = 8


class Reference:
    """The checkpoint as torch sees it; with ``pipe`` quantized, its LLM, DiT, VAE decoder and
    vision tower tensors are replaced by the pipeline's quantized weights dequantized (MLX keys
    are the checkpoint's; a 1x1 convolution's [out, in] is the torch [out, in, 1, 1])."""

    def __init__(self, ckpt, pipe=None, bits=0):
        from mlx_model.support.quant import quantized_modules

        self.config, self.ckpt, self.parts = ckpt.config, ckpt, {}
        if not bits:
            return
        for part, module in (("llm", pipe.llm.model), ("dit", pipe.dit), ("vae", pipe.vae),
                             ("vision", pipe.encoder.vision)):
            tensors = dict(ckpt.load(part))
            for name, m in quantized_modules(module).items():
                w = mx.dequantize(m.weight, m.scales.astype(mx.float32), m.biases.astype(mx.float32),
                                  group_size=m.group_size, bits=m.bits)
                key = f"{name}.weight"
                tensors[key] = np.array(w).reshape(tensors[key].shape)
            self.parts[part] = tensors

    def load(self, part):
        return self.parts.get(part) or self.ckpt.load(part)


@pytest.fixture(scope="module", params=[0, 4], ids=["bf16", "bf16-q4"])
def mac(request, tiny_ckpt):
    """(pipeline as a Mac builds it, bits): metal_available() says yes while it is built and run."""
    import mlx_model.support.platform as platform

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(platform, "metal_available", lambda: True)
        kw = {"group_size": 32} if request.param else {}  # the tiny widths hold whole groups of 32
        pipe = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=request.param, low_memory=False, edit=True,
                                                  **kw)
        yield pipe, request.param, Reference(tiny_ckpt, pipe, request.param)


def floor(component: str, bits: int) -> float:
    return FLOORS[component][1 if bits else 0]


def runtime(bits: int) -> str:
    return "mlx bf16 (Metal path)" + (" 4-bit" if bits else "")


def test_the_mac_choices(mac):
    """What a Mac runs: bf16 weights and activations; -q 4 as MLX's own quantized layers with
    bf16 scales (never the CPU's JIT form), the embedding quantized; the MCP fp32."""
    pipe, bits, ref_ckpt = mac
    assert pipe.dtype == mx.bfloat16
    assert pipe.llm.dtype == mx.bfloat16 and pipe.dit.caption_norm.weight.dtype == mx.bfloat16
    mcp = [v for _, v in tree_flatten(pipe.mcp.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    assert pipe.vae.dtype == mx.bfloat16 and mcp and all(v.dtype == mx.float32 for v in mcp)
    layers = [m for _, m in pipe.dit.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    kinds = {type(m) for m in layers} | {type(pipe.llm.model.model.embed_tokens)}
    if bits:
        assert nn.QuantizedLinear in kinds and nn.QuantizedEmbedding in kinds
        assert not [k for k in kinds if k.__name__.startswith("JIT")]
        q = [m for m in layers if isinstance(m, nn.QuantizedLinear)]
        assert all(m.scales.dtype == mx.bfloat16 and m.bits == 4 for m in q)
    else:
        assert kinds == {nn.Linear, nn.Embedding}


def test_llm_hidden_states(mac, tiny_ckpt, parity):
    pipe, bits, ref_ckpt = mac
    ids = pipe.prompt_ids(PROMPT)
    n = tiny_ckpt.config.mcp.num_layers
    ours = pipe.llm.hidden_states(pipe.llm.embed(mx.array([ids])), n)
    ref = upstream.build("llm", tiny_ckpt.config, ref_ckpt.load("llm"))
    with torch.no_grad():
        hs = ref(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-n:]
    err = max(rel_err(np.array(o.astype(mx.float32)), r.numpy()) for o, r in zip(ours, hs))
    parity("llm hidden[-4:]", runtime(bits), "max_rel_err", err, at_most=floor("llm", bits))


def test_dit(mac, tiny_ckpt, parity):
    pipe, bits, ref_ckpt = mac
    cfg = tiny_ckpt.config.dit
    x, ctx, t = dit_inputs(cfg)
    got = pipe.dit(mx.array(x), mx.array(ctx), mx.array(t.astype(np.float32))).astype(mx.float32)
    err = rel_err(np.array(got), dit_reference(cfg, ref_ckpt.load("dit"), x, ctx, t))
    parity("dit tiny", runtime(bits), "max_rel_err", err, at_most=floor("dit", bits))


VAE_LATENTS = 8


def test_vae_decoder(mac, tiny_ckpt, parity):
    """The median over 8 latents of max|ours - ref| / max|ref|: on the tiny random decoder one
    latent's maximum is an outlier for any weights (the float bf16 path: 0.012-0.283 over seeds
    0-7, 0.076 at seed 0; with -q 4's 8-bit layers 0.025-0.305, 0.305 at seed 0), so a single
    latent measured the latent rather than the path.  Medians measured: 0.019 bf16, 0.041 bf16
    with -q 4 (8-bit layers); the floors are about twice those (0.04, 0.08)."""
    pipe, bits, ref_ckpt = mac
    cfg = tiny_ckpt.config
    ref = upstream.build("vae", cfg, ref_ckpt.load("vae"))
    errs = []
    for seed in range(VAE_LATENTS):
        z = np.random.default_rng(seed).standard_normal((1, *cfg.latent_shape)).astype(np.float32)
        with torch.no_grad():
            want = ref.decode(torch.from_numpy(z)).sample.numpy()
        got = np.array(pipe.vae.decode(mx.array(z)).astype(mx.float32))
        errs.append(rel_err(got, want))
    parity("vae-dec tiny (median of 8 latents)", runtime(bits), "max_rel_err", float(np.median(errs)),
           at_most=floor("vae", bits))


def test_conditioning(mac, tiny_ckpt, parity):
    pipe, bits, ref_ckpt = mac
    ref = reference_conditioning(ref_ckpt, pipe.prompt_ids(PROMPT)).numpy()
    ours = np.array(pipe.encode_prompt(PROMPT).astype(mx.float32))
    assert ours.shape == ref.shape
    err = max(rel_err(o, r) for o, r in zip(ours, ref))
    parity("conditioning (both CFG rows)", runtime(bits), "max_rel_err", err, at_most=floor("conditioning", bits))


def test_final_image(mac, tiny_ckpt, parity):
    pipe, bits, ref_ckpt = mac
    x0 = np.random.default_rng(42).standard_normal((1, *tiny_ckpt.config.latent_shape)).astype(np.float32)
    out = pipe.generate(ImageSettings(PROMPT, steps=STEPS, guidance=1.5), latents=x0)
    _, ref_img = torch_reference(ref_ckpt, pipe.prompt_ids(PROMPT), x0, STEPS, 1.5)
    assert out.images.shape == ref_img.shape and out.images.std() > 1
    parity("pipeline", runtime(bits), "psnr_db", psnr(ref_img, out.images), at_least=PSNR_FLOOR)


def test_quantized_vision_and_vae_layers(mac):
    """-q 4 quantizes the VAE decoder's and vision tower's matmul layers (attention projections,
    1x1 convolutions) as MLX's QuantizedLinear with bf16 scales (``quant.PART_BITS``); their
    3x3 / depthwise convolutions stay float."""
    from mlx_model.support.quant import part_bits, quantized_modules

    pipe, bits, _ = mac
    for part, module in (("vae", pipe.vae), ("vision", pipe.encoder.vision)):
        q = quantized_modules(module)
        if not bits:
            assert not q, part
            continue
        assert q and all(type(m) is nn.QuantizedLinear and m.scales.dtype == mx.bfloat16
                         and m.bits == part_bits(part, bits) for m in q.values()), part
        # what stays float: spatial or grouped convolutions and the squeeze-excite 1x1s (on a
        # pooled 1x1 input); every other 1x1 whose width the group divides is quantized
        # (MLX conv weight [out, kh, kw, in / groups])
        group = next(iter(q.values())).group_size
        convs = {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
        left = [n for n, m in convs.items() if m.weight.shape[1:3] == (1, 1) and m.groups == 1
                and ".se." not in f".{n}" and m.weight.shape[-1] % group == 0]
        assert convs and not left, (part, left)


def test_vision_tower(mac, tiny_ckpt, parity):
    """The tower as a Mac runs it (fp32 activations over bf16-held weights; with -q 4 MLX's
    quantized matmul) against timm at fp32 on the same (dequantized) weights."""
    from test_mlx_vision import timm_tokens

    pipe, bits, ref_ckpt = mac
    cfg = tiny_ckpt.config.vision
    pixels = np.random.default_rng(0).uniform(0, 1, (1, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    ours = np.array(pipe.encoder.vision(mx.array(pixels)).astype(mx.float32))
    ref = timm_tokens(cfg, ref_ckpt.load("vision"), pixels)
    parity("vision tiny", runtime(bits), "max_rel_err", rel_err(ours, ref), at_most=floor("vision", bits))
