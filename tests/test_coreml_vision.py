"""Core ML vision encoder (FastViTHD + mlp2x_gelu projector, Neural-Engine layout).

Gate 1: our torch module vs timm ``fastvit_mci3.forward_features`` -> tokens -> the upstream
projector, fp32 (PSNR >= 60 dB and max|ours-ref|/max|ref| <= 1e-4).  Gate 2: the saved fp16
program run on numpy vs the torch module (PSNR >= 35 dB).  The tiny checkpoint's gates are
tests/test_coreml_components.py; here the I/O, the names, the program's shape and the real
FastViTHD widths (96..1536, 3072 features, 3072->896->896 projector) with one block per stage.
"""

import numpy as np
import pytest

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import vision_encoder
from coreml_convert.metrics import max_relative_error, psnr
from coreml_convert.mil_exec import load_program
from weights.loading import synthetic

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

FP32_MAX_REL = 1e-4


def check_gate1(spec, what):
    ref = spec.reference(spec.example_inputs)["image_features"]
    ours = gates.torch_outputs(spec)["image_features"]
    cfg_shape = spec.outputs[0].shape
    assert ref.shape == ours.shape == cfg_shape
    p, rel = psnr(ref, ours), max_relative_error(ref, ours)
    print(f"{what} gate 1: PSNR {p:.1f} dB, max rel {rel:.2e}")
    assert p >= gates.GATE1_MIN_DB and rel <= FP32_MAX_REL, (p, rel)


@pytest.fixture(scope="module")
def spec(coreml_spec):
    return coreml_spec("vision_encoder")


def test_spec_io(spec, tiny_ckpt):
    cfg = tiny_ckpt.config
    s, n = cfg.vision.image_size, cfg.vision.num_tokens
    assert [(t.name, t.shape, t.layout) for t in spec.inputs] == [("image", (1, 3, s, s), "B,3,H,W")]
    assert [(t.name, t.shape, t.layout) for t in spec.outputs] == [
        ("image_features", (1, cfg.llm.hidden_size, 1, n), "B,C,1,S")]
    img = spec.example_inputs["image"]
    assert img.shape == (1, 3, s, s) and 0 <= img.min() and img.max() <= 1


def test_module_uses_checkpoint_names(spec, tiny_ckpt):
    """Every tower parameter is a checkpoint vision key (Apple's names), no table between."""
    from weights.mapping.layout import UNUSED

    names = set(spec.module.tower.state_dict())
    assert names == set(tiny_ckpt.keys("vision")) - UNUSED["vision"] and "head.proj" not in names
    assert set(spec.module.projector.state_dict()) == set(tiny_ckpt.keys("projector"))


@pytest.fixture(scope="module")
def bundle(coreml_bundle):
    return coreml_bundle("vision_encoder")


def test_program_is_neural_engine_shaped(bundle):
    """fp16 I/O, no Linear ops (1x1 convs), attention as per-head einsums, rank <= 5."""
    from coremltools.converters.mil.mil import types

    func = load_program(bundle).functions["main"]
    assert func.inputs["image"].dtype == types.fp16
    assert func.outputs[0].dtype == types.fp16
    ops = [op for op in func.operations]
    kinds = {op.op_type for op in ops}
    assert "linear" not in kinds and "matmul" not in kinds
    assert {"conv", "einsum", "softmax", "layer_norm"} <= kinds
    assert max(len(v.shape) for op in ops for v in op.outputs) <= 5


@pytest.mark.slow
def test_full_width_one_block_per_stage(tmp_path_factory, parity):
    """FastViTHD's real widths and heads (two attention stages, 3072-d conv_exp, the
    3072->896->896 projector), one block per stage, 256-px input (16 tokens)."""
    from weights.core.configs import LLMConfig, VisionConfig
    from weights.loading.synthetic import TINY_VOCAB

    llm = LLMConfig(hidden_size=896, num_hidden_layers=1, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=TINY_VOCAB)
    vision = VisionConfig(layers=(1, 1, 1, 1, 1), image_size=256)
    ckpt = synthetic.write_reduced(tmp_path_factory.mktemp("full_vision") / "ckpt", llm=llm, vision=vision)
    spec = vision_encoder.build_spec(ckpt)
    check_gate1(spec, "vision_encoder (full width)")
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_vision_out"), spec.file)
    g2 = gates.gate2(spec, path, "fp16")["image_features"]
    parity("vision full-width", "coreml program fp16", "psnr_db gate 2", g2, at_least=gates.GATE2_MIN_DB)
