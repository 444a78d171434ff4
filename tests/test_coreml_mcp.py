"""Core ML MCP: masked padding reproduces the reference run on the unpadded sequence, the
enumerated lengths, and the gate chain at the 0.5B widths (the tiny checkpoint's gates 1 and 2
are tests/test_coreml_components.py)."""

import numpy as np
import pytest

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import mcp
from coreml_convert.metrics import max_relative_error, psnr
from coreml_convert.mil_exec import run_program
from metrics import within

pytestmark = [pytest.mark.torch, pytest.mark.coreml]


@pytest.fixture(scope="module")
def spec(coreml_spec):
    return coreml_spec("mcp")


@pytest.fixture(scope="module")
def bundle(coreml_bundle):
    return coreml_bundle("mcp")


def test_example_is_padded_and_padding_gives_zeros(spec):
    x = spec.example_inputs
    valid = int(x["attention_mask"].sum())
    assert 0 < valid < x["attention_mask"].shape[1]
    assert np.all(gates.torch_outputs(spec)["conditioning"][..., valid:] == 0)


def test_padding_content_is_ignored(spec):
    x = mcp.example_inputs(spec.module.cfg, 64, seed=5, valid=17)
    base = gates.torch_outputs(spec, x)["conditioning"]
    x["hidden_states"][..., 17:] = 50.0
    assert np.array_equal(gates.torch_outputs(spec, x)["conditioning"], base)
    within(max_relative_error(spec.reference(x)["conditioning"], base), at_most=1e-4)


def test_unconditional_zeros(spec):
    """Mobile-O's unconditional branch: MCP(zeros_like(h)) at the same length."""
    x = mcp.example_inputs(spec.module.cfg, 64, valid=40)
    x["hidden_states"][:] = 0
    ours = gates.torch_outputs(spec, x)["conditioning"]
    assert np.all(np.isfinite(ours))
    within(max_relative_error(spec.reference(x)["conditioning"], ours), at_most=1e-4)


def test_enumerated_length_128(spec, bundle):
    assert spec.inputs[0].enumerated == {3: (64, 128, 256, 512)}
    x = mcp.example_inputs(spec.module.cfg, 128, seed=2, valid=101)
    x16 = {k: v.astype(np.float16) for k, v in x.items()}
    prog = run_program(bundle, x16)["conditioning"]
    assert prog.shape == (1, spec.module.cfg.out_dim, 1, 128)
    assert psnr(gates.torch_outputs(spec, x16)["conditioning"], prog) >= gates.GATE2_MIN_DB


def test_full_width_gate_chain(tmp_path_factory, parity):
    """The 0.5B MCP widths (896 -> 512 -> 2304, channel attention 128) through both gates."""
    from weights.loading import synthetic

    tiny = synthetic.tiny_config()
    ckpt = synthetic.write_reduced(
        tmp_path_factory.mktemp("full_mcp") / "ckpt", mcp={"dim": 512},
        llm=tiny.llm.replace(hidden_size=896, num_attention_heads=14, num_hidden_layers=1),
        dit=tiny.dit.replace(caption_channels=2304))
    cfg = ckpt.config.mcp
    assert (cfg.in_dim, cfg.dim, cfg.attn_dim, cfg.out_dim) == (896, 512, 128, 2304)
    spec = mcp.build_spec(ckpt, lengths=(64,))
    x = spec.example_inputs
    rel = max_relative_error(spec.reference(x)["conditioning"], gates.torch_outputs(spec)["conditioning"])
    parity("mcp 0.5B-width", "coreml torch fp32", "max_rel_err", rel, at_most=1e-4)
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_mcp_out"), spec.file)
    g2 = gates.gate2(spec, path, "fp16")["conditioning"]
    parity("mcp 0.5B-width", "coreml program fp16", "psnr_db gate 2", g2, at_least=gates.GATE2_MIN_DB)
