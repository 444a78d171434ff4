"""Core ML DC-AE decoder: the Neural-Engine module vs diffusers AutoencoderDC.decode (gate 1,
fp32) and the converted fp16 program on numpy vs the module (gate 2) at the real channel
widths (128..1024, one layer per stage) on a small latent; the tiny checkpoint's gates are
tests/test_coreml_components.py, here what only the decoder has."""

import numpy as np
import pytest

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import vae_decoder
from coreml_convert.metrics import max_relative_error
from weights.loading import synthetic

pytestmark = [pytest.mark.torch, pytest.mark.coreml]


@pytest.fixture(scope="module")
def spec(coreml_spec):
    return coreml_spec("vae_decoder")


def test_gate1_comparison_is_not_trivial(spec, tiny_ckpt):
    ref = spec.reference(spec.example_inputs)["image"]
    cfg = tiny_ckpt.config
    assert gates.torch_outputs(spec)["image"].shape == (1, 3, cfg.image_size, cfg.image_size)
    inside = np.mean((ref > 0) & (ref < 1))
    assert inside > 0.3, f"only {inside:.0%} of the pixels are unclipped: the comparison would be trivial"


def test_bundle_takes_the_scaled_latent(spec, tiny_ckpt):
    """The bundle divides by scaling_factor itself: its input is the sampler's latent."""
    assert spec.module.inv_scale == pytest.approx(1 / tiny_ckpt.config.vae.scaling_factor)
    assert [t.name for t in spec.inputs] == ["latent"] and [t.name for t in spec.outputs] == ["image"]


def test_quadratic_branch_small_latent(tiny_ckpt):
    """DC-AE switches to quadratic ReLU attention when H*W <= head_dim: 2x2 latent, 8-dim heads."""
    small = vae_decoder.build_spec(tiny_ckpt, latent_size=2)
    assert gates.gate1(small)["image"] >= gates.GATE1_MIN_DB


@pytest.mark.slow
def test_full_width_one_layer_per_stage_fp16(tmp_path_factory, parity):
    """Real widths (128, 256, 512, 512, 1024, 1024), one layer per stage, 4x4 latent -> 128 px:
    linear attention over up to 1024 positions per head in fp16."""
    from weights.core.configs import VAEConfig

    one = (1,) * 6
    ckpt = synthetic.write_reduced(tmp_path_factory.mktemp("full_vae") / "ckpt",
                         vae=VAEConfig(encoder_layers_per_block=one, decoder_layers_per_block=one))
    spec = vae_decoder.build_spec(ckpt, latent_size=4)
    g1 = gates.gate1(spec)["image"]
    rel = max_relative_error(spec.reference(spec.example_inputs)["image"], gates.torch_outputs(spec)["image"])
    parity("vae-dec f32c32", "coreml torch fp32", "max_rel_err", rel, at_most=1e-4)
    parity("vae-dec f32c32", "coreml torch fp32", "psnr_db gate 1", g1, at_least=gates.GATE1_MIN_DB)
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_vae_out"), spec.file)
    g2 = gates.gate2(spec, path, "fp16")["image"]
    parity("vae-dec f32c32", "coreml program fp16", "psnr_db gate 2", g2, at_least=gates.GATE2_MIN_DB)


@pytest.mark.parametrize("change", [{"upsample_block_type": "pixel_shuffle"}, {"decoder_in_shortcut": False},
                                    {"decoder_norm_types": "batch_norm"}])
def test_unsupported_variant_is_a_config_error(tiny_ckpt, change):
    """Variants VAEConfig.check_supported refuses never reach a half-built module."""
    from weights.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        vae_decoder.VAEDecoder(tiny_ckpt.config.vae.replace(**change))
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_module_loads_only_the_decoder(spec, tiny_ckpt):
    from weights.mapping.layout import VAE_DECODER

    names = set(spec.module.state_dict())
    assert names == {k for k in tiny_ckpt.keys("vae") if k.startswith(VAE_DECODER)}
