"""-q quantizes the vision tower's and VAE decoder's matmul layers too (#24): the drift of each
against its own float path, the folder layout, and loading it without float copies.

``mlx_model.support.quant.PART_BITS`` holds the bits chosen by the measured drift (README,
section "MLX folder": full-size figures).  Documented floors (tiny demo model, random weights,
group 32 as the tiny widths need; floors a few dB under the measured values): the decoded
image against the float decoder >= 40 dB PSNR at 8 bits (measured 44.4 dB; 4 bits: >= 24,
measured 27.8), the vision features >= 40 dB at 4 bits (measured 44.9 dB; 8 bits: >= 60,
measured 65.0).  PSNR is tests/metrics.py's: 20 log10(max|ref| / RMSE).
"""

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn

from metrics import psnr  # noqa: E402
from mlx_model.components.dcae import AutoencoderDC  # noqa: E402
from mlx_model.components.conv_layers import PointwiseConv2d  # noqa: E402
from mlx_model.components.vision import VisionTower  # noqa: E402
from mlx_model.support.platform import metal_available  # noqa: E402
from mlx_model.support.quant import PART_BITS, part_bits, quantized_modules  # noqa: E402

GROUP = 32
FLOORS_DB = {"vae": {4: 24.0, 8: 40.0}, "vision": {4: 40.0, 8: 60.0}}  # by bits (PART_BITS)


def test_part_bits_follow_the_recipe():
    assert part_bits("llm", 4) == 4 and part_bits("dit", 8) == 8
    assert part_bits("vae", 0) == part_bits("vision", 0) == 0
    assert part_bits("vae", 4) == PART_BITS["vae"] and part_bits("vision", 4) == PART_BITS["vision"]
    assert part_bits("vae", 8) == 8 and part_bits("mcp", 4) == part_bits("projector", 4) == 0


def test_pointwise_conv_quantizes_as_a_linear_layer():
    conv = PointwiseConv2d(64, 96)
    x = mx.random.normal((1, 5, 7, 64), key=mx.random.key(0))
    q = conv.to_quantized(group_size=GROUP, bits=8)
    assert type(q) is nn.QuantizedLinear and q.weight.shape == (96, 64 * 8 // 32)
    w = mx.dequantize(q.weight, q.scales, q.biases, GROUP, 8).reshape(96, 1, 1, 64)
    ref = nn.Conv2d(64, 96, 1)
    ref.weight, ref.bias = w, conv.bias
    np.testing.assert_allclose(np.array(q(x)), np.array(ref(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_compiled_dequantize_is_mx_dequantize_bit_for_bit(bits, group):
    from mlx_model.support.quant import dequantize

    w = mx.random.normal((48, 256), key=mx.random.key(bits + group))
    q, s, b = mx.quantize(w, group_size=group, bits=bits)
    s, b = s.astype(mx.bfloat16), b.astype(mx.bfloat16)  # as stored
    for dtype in (mx.float32, mx.bfloat16):
        for rows in (slice(None), slice(8, 40)):  # whole and a block of rows (the chunked JIT path)
            ref = mx.dequantize(q[rows], s[rows].astype(dtype), b[rows].astype(dtype), group_size=group, bits=bits)
            got = dequantize(q[rows], s[rows], b[rows], group, bits, dtype)
            assert got.dtype == ref.dtype == dtype and got.shape == ref.shape
            assert mx.array_equal(got, ref).item(), (bits, group, dtype, rows)


def test_jit_layer_in_row_blocks_matches_the_quantized_matmul(monkeypatch):
    from mlx_model.support import quant

    lin = nn.Linear(128, 96)
    lin.weight = mx.random.normal((96, 128), key=mx.random.key(2)) * 0.1
    q = nn.QuantizedLinear.from_linear(lin, group_size=GROUP, bits=4)
    x = mx.random.normal((40, 128), key=mx.random.key(1))  # > QMM_MAX_ROWS: dequantized per call
    ref = np.array(q(x))  # MLX's quantized matmul
    assert type(quant.jit_linears(q)).__name__ == "JITQuantizedLinear"
    monkeypatch.setattr(quant, "JIT_CHUNK_BYTES", 128 * 4 * 24)  # 24 rows per block: 4 blocks
    np.testing.assert_allclose(np.array(q(x)), ref, rtol=1e-4, atol=1e-4)


def _decode(vae, z):
    return np.array(vae.decode(z).astype(mx.float32))


def test_vae_decoder_drift(tiny_ckpt, parity):
    bits = part_bits("vae", 4)
    z = mx.array(np.random.default_rng(0).standard_normal((1, *tiny_ckpt.config.latent_shape)).astype(np.float32))
    ref = _decode(AutoencoderDC.from_checkpoint(tiny_ckpt, encoder=False), z)
    vae = AutoencoderDC.from_checkpoint(tiny_ckpt, encoder=False, quantize=4, group_size=GROUP)
    q = quantized_modules(vae.decoder)
    assert q and all(m.bits == bits and m.group_size == GROUP for m in q.values())
    assert all("conv1" not in n and "conv2" not in n and "proj_out" not in n for n in q)  # 3x3 / grouped stay float
    floor = FLOORS_DB["vae"][bits]
    parity("vae-dec tiny", f"mlx {bits}-bit vs float", "psnr_db", psnr(ref, _decode(vae, z)), at_least=floor)


def test_vision_tower_drift(tiny_ckpt, parity):
    bits = part_bits("vision", 4)
    s = tiny_ckpt.config.vision.image_size
    x = mx.array(np.random.default_rng(0).uniform(0, 1, (1, s, s, 3)).astype(np.float32))
    ref = np.array(VisionTower.from_checkpoint(tiny_ckpt)(x))
    tower = VisionTower.from_checkpoint(tiny_ckpt, quantize=4, group_size=GROUP)
    q = quantized_modules(tower)
    assert q and all(m.bits == bits for m in q.values())
    assert not [n for n in q if ".se." in n or n.startswith("conv_exp")]  # squeeze-excite, grouped 3x3: float
    floor = FLOORS_DB["vision"][bits]
    parity("vision tiny", f"mlx {bits}-bit vs float", "psnr_db", psnr(ref, np.array(tower(x))), at_least=floor)


@pytest.fixture(scope="module")
def folder(tiny_ckpt_dir, tmp_path_factory):
    from mlx_model.convert import convert

    return convert(str(tiny_ckpt_dir), tmp_path_factory.mktemp("mlx") / "q4", quantize=4, group_size=GROUP,
                   log=lambda *_: None)


def test_folder_stores_the_parts_packed_and_loads_them_in_place(folder, tiny_ckpt):
    """The folder's vision and VAE files hold the quantized layers packed (uint32 weight, bf16
    scales); loading quantizes the module in place (strict load) to the very same parameters
    as quantizing the checkpoint in memory."""
    import json

    from mlx.utils import tree_flatten

    from mlx_model.support.mlx_folder import open_model

    meta = json.loads((folder / "config.json").read_text())["mobileo_mlx"]
    assert meta["version"] == 3
    for part in ("vae", "vision"):
        assert meta["parts_quantization"][part] == {"bits": part_bits(part, 4), "group_size": GROUP}
        t = mx.load(str(folder / f"{part}.safetensors"))
        packed = [k[:-len(".scales")] for k in t if k.endswith(".scales")]
        assert packed and all(t[f"{k}.weight"].dtype == mx.uint32 and t[f"{k}.scales"].dtype == mx.bfloat16
                              for k in packed)
    ckpt = open_model(str(folder))
    for disk, mem in ((AutoencoderDC.from_checkpoint(ckpt, encoder=False, quantize=4),
                       AutoencoderDC.from_checkpoint(tiny_ckpt, encoder=False, quantize=4, group_size=GROUP)),
                      (VisionTower.from_checkpoint(ckpt, quantize=4),
                       VisionTower.from_checkpoint(tiny_ckpt, quantize=4, group_size=GROUP))):
        a, b = dict(tree_flatten(disk.parameters())), dict(tree_flatten(mem.parameters()))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item(), k


@pytest.mark.parametrize("part", ["vae", "vision"])
def test_loading_the_folder_builds_no_float_copy(folder, part):
    """The packed layers are made quantized in place before the strict load: MLX's peak while
    loading stays near the file's bytes, below the float structure's fp32 bytes."""
    from mlx.utils import tree_flatten

    from mlx_model.support.mlx_folder import open_model

    ckpt = open_model(str(folder))
    build = {"vae": lambda: AutoencoderDC.from_checkpoint(ckpt, encoder=False, quantize=4),
             "vision": lambda: VisionTower.from_checkpoint(ckpt, quantize=4)}[part]
    cls = {"vae": lambda: AutoencoderDC(ckpt.config.vae, encoder=False), "vision": lambda: VisionTower(ckpt.config.vision)}
    floats = sum(v.size * 4 for _, v in tree_flatten(cls[part]().parameters()))
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    build()
    peak = mx.get_peak_memory() - before
    assert peak <= 1.5 * ckpt.meta["bytes"][part] < floats, (peak, ckpt.meta["bytes"][part], floats)


@pytest.mark.skipif(metal_available(), reason="JIT quantized layers are the CPU's; Metal runs MLX's quantized kernels")
def test_jit_models_run_layer_by_layer_with_the_same_values(tiny_ckpt):
    """On a CPU (JIT quantized layers) the DiT, the LLM (hidden states, prefill) and the vision
    tower are evaluated block by block, so one block's dequantized weights are alive at a time
    (full size: +462 MB -> +106 MB over the resident DiT per call); the values are those of one
    graph."""
    from mlx_model.components.dit import SanaTransformer
    from mlx_model.components.llm import LanguageModel

    dit = SanaTransformer.from_checkpoint(tiny_ckpt, 4, GROUP)
    llm = LanguageModel.from_checkpoint(tiny_ckpt, 4, GROUP)
    tower = VisionTower.from_checkpoint(tiny_ckpt, quantize=4, group_size=GROUP)
    assert dit.eval_blocks and llm.eval_layers and tower.eval_blocks
    assert not SanaTransformer.from_checkpoint(tiny_ckpt, 0).eval_blocks
    cfg = tiny_ckpt.config
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32))
    ctx = mx.array(rng.standard_normal((2, 7, cfg.dit.caption_channels)).astype(np.float32))
    s = cfg.vision.image_size
    px = mx.array(rng.uniform(0, 1, (1, s, s, 3)).astype(np.float32))
    embeds = llm.embed(mx.array([[1, 2, 3, 4, 5] * 5]))
    runs = {"dit": (dit, "eval_blocks", lambda: dit(x, ctx, mx.array([3.0, 3.0]))),
            "llm": (llm, "eval_layers", lambda: mx.stack(llm.hidden_states(embeds, 2))),
            "vision": (tower, "eval_blocks", lambda: tower(px))}
    from mlx_lm.models.cache import make_prompt_cache

    def prefill():
        cache = make_prompt_cache(llm.model)
        return mx.concatenate([llm.prefill(embeds, cache).reshape(-1), *(c.state[0].reshape(-1) for c in cache)])

    runs["prefill"] = (llm, "eval_layers", prefill)
    for name, (obj, flag, run) in runs.items():
        setattr(obj, flag, True)
        stepwise = run()
        setattr(obj, flag, False)
        assert mx.array_equal(stepwise, run()).item(), name
