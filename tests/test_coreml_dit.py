"""Core ML DiT: the Neural-Engine module vs diffusers SanaTransformer2DModel (gate 1, fp32)
and the converted fp16 program on numpy vs the module (gate 2) on a 2-layer DiT at the real
widths; the tiny checkpoint's gates are tests/test_coreml_components.py, here what only the
DiT has (mask, enumerated lengths, host-side timestep features)."""

import numpy as np
import pytest
import torch

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import dit
from coreml_convert.metrics import max_relative_error, psnr
from coreml_convert.mil_exec import load_program, run_program
from weights.loading import synthetic
from metrics import within

pytestmark = [pytest.mark.torch, pytest.mark.coreml]


@pytest.fixture(scope="module")
def spec(coreml_spec):
    return coreml_spec("dit")


@pytest.fixture(scope="module")
def bundle(coreml_bundle):
    return coreml_bundle("dit")


def test_velocity_is_the_cfg_batch(spec):
    assert gates.torch_outputs(spec)["velocity"].shape == (2, 8, 8, 8)


def test_mask_is_diffusers_encoder_attention_mask(spec, tiny_ckpt):
    """Padded tokens change nothing (garbage there gives the same velocity), and an all-ones
    mask equals diffusers called without a mask."""
    x = dict(spec.example_inputs)
    valid = int(x["encoder_attention_mask"][0].sum())
    assert 0 < valid < x["encoder_attention_mask"].shape[1]
    base = gates.torch_outputs(spec, x)["velocity"]
    noisy = dict(x, encoder_hidden_states=x["encoder_hidden_states"].copy())
    noisy["encoder_hidden_states"][..., valid:] = 100.0
    within(np.abs(gates.torch_outputs(spec, noisy)["velocity"] - base).max(), at_most=1e-4 * np.abs(base).max())
    ones = dict(x, encoder_attention_mask=np.ones_like(x["encoder_attention_mask"]))
    from weights.references import upstream

    ref_model = upstream.build("dit", tiny_ckpt.config, tiny_ckpt.load("dit"))
    with torch.no_grad():
        unmasked = ref_model(torch.from_numpy(x["latent"]),
                             torch.from_numpy(x["encoder_hidden_states"][:, :, 0]).transpose(1, 2),
                             torch.from_numpy(x["timestep"]), return_dict=False)[0].numpy()
    within(max_relative_error(unmasked, gates.torch_outputs(spec, ones)["velocity"]), at_most=1e-4)


def test_enumerated_lengths_and_io(spec, bundle):
    names = [t.name for t in spec.inputs]
    assert names == ["latent", "timestep_features", "encoder_hidden_states", "encoder_attention_mask"]
    cond = spec.inputs[2]
    assert cond.layout == "B,C,1,S" and cond.enumerated == {3: (64, 128, 256, 512)}
    x = dit.example_inputs(spec.module.cfg, 128, seed=1, timestep=321.5, valid=90)
    x16 = {k: v.astype(np.float32 if k == "timestep" else np.float16) for k, v in x.items()}
    prog = run_program(bundle, {t.name: x16[t.name] for t in spec.inputs})["velocity"]
    assert psnr(gates.torch_outputs(spec, x16)["velocity"], prog) >= gates.GATE2_MIN_DB


def test_timestep_features_come_from_the_host(bundle, spec):
    """t * f reaches ~1000 rad, beyond fp16's phase resolution: the sinusoid is computed on the
    host in fp32 (contract.timestep_features, diffusers' Timesteps) and the graph is all fp16."""
    from coremltools.converters.mil.mil import types
    from diffusers.models.embeddings import get_timestep_embedding

    from weights.bundles.contract import timestep_features

    t = np.array([0.0, 1.5, 500.0, 999.0], np.float32)
    want = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    np.testing.assert_allclose(timestep_features(t)[:, :, 0, 0], want, atol=1e-4)  # fp32 exp ulps x t
    func = load_program(bundle).functions["main"]
    assert not [op for op in func.operations if op.op_type in ("sin", "cos")]
    assert all(v.dtype == types.fp16 for v in func.inputs.values())
    fp32 = [op for op in func.operations for o in op.outputs if o.dtype == types.fp32]
    assert not fp32, [op.op_type for op in fp32][:5]


@pytest.mark.slow
def test_full_width_two_layers_fp16(tmp_path_factory, parity):
    """Real SANA-600M widths (1152 dims, 36 + 16 heads, 2304 caption channels), 2 blocks."""
    from weights.core.configs import DiTConfig

    ckpt = synthetic.write_reduced(tmp_path_factory.mktemp("full_dit") / "ckpt", dit=DiTConfig(num_layers=2))
    spec = dit.build_spec(ckpt)
    g1 = gates.gate1(spec)["velocity"]
    rel = max_relative_error(spec.reference(spec.example_inputs)["velocity"], gates.torch_outputs(spec)["velocity"])
    parity("dit 600M-width", "coreml torch fp32", "max_rel_err", rel, at_most=1e-4)
    parity("dit 600M-width", "coreml torch fp32", "psnr_db gate 1", g1, at_least=gates.GATE1_MIN_DB)
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_dit_out"), spec.file)
    g2 = gates.gate2(spec, path, "fp16")["velocity"]
    parity("dit 600M-width", "coreml program fp16", "psnr_db gate 2", g2, at_least=gates.GATE2_MIN_DB)


def test_unsupported_variant_is_a_config_error(tiny_ckpt):
    from weights.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        dit.SanaDiT(tiny_ckpt.config.dit.replace(qk_norm="rms_norm_across_heads"))
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)
