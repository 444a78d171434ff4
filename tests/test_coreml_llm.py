"""Core ML Qwen2 components vs transformers ``Qwen2ForCausalLM``.

llm_prefill (the last 4 hidden states for the MCP, enumerated lengths, padding mask, image
features spliced in) and llm_decode (stateful KV cache, "prefill" + "decode" functions of
one multifunction bundle): gate 1 = our Neural-Engine torch module vs transformers in fp32
(PSNR >= 60 dB and max|ours-ref|/max|ref| <= 1e-4); gate 2 = the saved fp16 program run on
numpy (coreml_convert.mil_exec) vs the torch module (PSNR >= 35 dB).  Tiny checkpoint, plus
Qwen2-0.5B widths with 2 layers.
"""

import numpy as np
import pytest
import torch

from coreml_convert import convert as cv
from coreml_convert import contract, gates
from coreml_convert.ane_qwen2 import place_image
from coreml_convert.components import llm_decode, llm_prefill
from coreml_convert.contract import sequence_lengths
from coreml_convert.metrics import max_relative_error, psnr
from coreml_convert.mil_exec import load_program, run_program
from weights import synthetic

FP32_MAX_REL = 1e-4


def check_fp32(ref: np.ndarray, ours: np.ndarray, what: str):
    p, rel = psnr(ref, ours), max_relative_error(ref, ours)
    print(f"{what}: PSNR {p:.1f} dB, max rel {rel:.2e}")
    assert p >= gates.GATE1_MIN_DB and rel <= FP32_MAX_REL, (what, p, rel)


@pytest.fixture(scope="module")
def prefill_spec(tiny_ckpt):
    return llm_prefill.build_spec(tiny_ckpt)


@pytest.fixture(scope="module")
def decode_spec(tiny_ckpt):
    return llm_decode.build_spec(tiny_ckpt)


@pytest.fixture(scope="module")
def reference_model(tiny_ckpt):
    from weights import upstream

    return upstream.build("llm", tiny_ckpt.config, tiny_ckpt.load("llm"))


def prefill_torch(spec, inputs):
    return gates.torch_outputs(spec, inputs)["hidden_states"]


# ------------------------------------------------------------------ llm_prefill


def test_prefill_gate1_matches_transformers(prefill_spec, tiny_ckpt):
    ref = prefill_spec.reference(prefill_spec.example_inputs)["hidden_states"]
    ours = prefill_torch(prefill_spec, prefill_spec.example_inputs)
    k, hidden = prefill_spec.outputs[0].shape[:2]
    assert ours.shape == ref.shape == (k, hidden, 1, sequence_lengths(tiny_ckpt.config)[0])
    check_fp32(ref, ours, "llm_prefill gate 1")


@pytest.mark.parametrize("length,image", [(128, False), (128, True)])
def test_prefill_other_lengths_and_no_image(prefill_spec, tiny_ckpt, length, image):
    inputs = llm_prefill.example_inputs(tiny_ckpt.config, length, np.random.default_rng(1), image=image)
    ref = prefill_spec.reference(inputs)["hidden_states"]
    check_fp32(ref, prefill_torch(prefill_spec, inputs), f"llm_prefill L={length} image={image}")


def test_prefill_image_replaces_exactly_its_columns(prefill_spec, tiny_ckpt):
    core = prefill_spec.module.core
    inputs = llm_prefill.example_inputs(tiny_ckpt.config, 64, np.random.default_rng(2))
    n = inputs["image_embeds"].shape[-1]
    with torch.no_grad():
        ids = torch.from_numpy(inputs["input_ids"])
        img = torch.from_numpy(inputs["image_embeds"])
        plain = core.embed(ids)[0, :, 0].numpy()
        for offset in (-n, -3, 0, 60, 64):
            x = core.embed_with_image(ids, img, torch.tensor([offset], dtype=torch.int32))[0, :, 0].numpy()
            want = place_image(plain.T, img[0, :, 0].numpy().T, offset).T
            np.testing.assert_array_equal(x, want)


@pytest.fixture(scope="module")
def prefill_bundle(prefill_spec, tmp_path_factory):
    return cv.save_atomic(cv.convert_spec(prefill_spec, "fp16"), tmp_path_factory.mktemp("llm_prefill"),
                          prefill_spec.file)


def test_prefill_gate2_program_fp16(prefill_spec, prefill_bundle):
    g2 = gates.gate2(prefill_spec, prefill_bundle, "fp16")["hidden_states"]
    print(f"llm_prefill gate 2 (fp16 program, L=64): {g2:.1f} dB")
    assert g2 >= gates.GATE2_MIN_DB


def test_prefill_program_enumerated_length(prefill_spec, prefill_bundle, tiny_ckpt):
    """The bundle takes every enumerated length (here 128, not the traced 64)."""
    from coremltools.converters.mil.mil import types

    func = load_program(prefill_bundle).functions["main"]
    assert func.inputs["input_ids"].dtype == types.int32
    assert func.inputs["image_embeds"].dtype == types.fp16
    inputs = llm_prefill.example_inputs(tiny_ckpt.config, 128, np.random.default_rng(3))
    fp16 = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    got = run_program(prefill_bundle, fp16)["hidden_states"]
    assert got.shape == (4, 64, 1, 128)
    p = psnr(prefill_torch(prefill_spec, fp16), got)
    print(f"llm_prefill gate 2 (fp16 program, L=128): {p:.1f} dB")
    assert p >= gates.GATE2_MIN_DB


# ------------------------------------------------------------------ llm_decode


def long_sequence(cfg, rng, extra=(5, 77, 200)):
    """Two prefill chunks (the second padded), an image straddling them, 1 + 3 decodes."""
    p, n, hidden = contract.chunk_length(cfg), cfg.vision.num_tokens, cfg.llm.hidden_size
    ids = rng.integers(0, cfg.llm.vocab_size, p + 20)
    image = (rng.standard_normal((1, hidden, 1, n)) / np.sqrt(hidden)).astype(np.float32)
    return ids, image, p - n // 2, list(extra)


def test_decode_sequence_matches_transformers(decode_spec, reference_model, tiny_ckpt):
    ids, image, offset, extra = long_sequence(tiny_ckpt.config, np.random.default_rng(4))
    calls = llm_decode.calls(tiny_ckpt.config, ids, image, offset, extra)
    assert [fn for fn, _ in calls] == ["prefill", "prefill", "decode", "decode", "decode", "decode"]
    ours = llm_decode.run_torch(decode_spec.module, calls)
    ref = llm_decode.reference_logits(reference_model, ids, image, offset, extra)
    assert ours.shape == ref.shape == (4, tiny_ckpt.config.llm.vocab_size)
    check_fp32(ref, ours, "llm_decode prompt + 3 decode steps")


def test_decode_gate1_spec(decode_spec):
    g1 = gates.gate1(decode_spec)["logits"]
    print(f"llm_decode gate 1: {g1:.1f} dB")
    assert g1 >= gates.GATE1_MIN_DB
    assert gates.gate1(decode_spec)["logits"] == g1  # decoding the primed step again is idempotent


def test_decode_states_follow_deployment_rules(tiny_ckpt):
    cfg = tiny_ckpt.config
    shape = contract.cache_shape(cfg)
    assert shape[-1] % contract.STATE_ALIGN == 0
    assert shape[-1] >= sequence_lengths(cfg)[-1] + cfg.defaults.max_new_tokens
    assert [s.name for s in contract.llm_decode_io(cfg).states] == ["key_cache", "value_cache"]


@pytest.fixture(scope="module")
def decode_bundle(decode_spec, tmp_path_factory):
    return cv.save_atomic(cv.convert_spec(decode_spec, "fp16"), tmp_path_factory.mktemp("llm_decode"),
                          decode_spec.file)


def test_decode_bundle_is_multifunction_and_stateful(decode_bundle, tiny_ckpt):
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    spec = ct.models.MLModel(str(decode_bundle), skip_model_load=True).get_spec()
    assert spec.description.defaultFunctionName == "decode"
    prog = load_program(decode_bundle)
    assert set(prog.functions) == {"decode", "prefill"}
    shape = contract.cache_shape(tiny_ckpt.config)
    for fn, io in contract.llm_decode_io(tiny_ckpt.config).function_io.items():
        inputs, outputs = io["inputs"], io["outputs"]
        func = prog.functions[fn]
        states = {k: v for k, v in func.inputs.items() if types.is_state(v.sym_type)}
        assert {k: tuple(v.sym_type.wrapped_type().get_shape()) for k, v in states.items()} == {
            "key_cache": shape, "value_cache": shape}
        assert {k: tuple(v.shape) for k, v in func.inputs.items() if k not in states} == {
            t.name: t.shape for t in inputs}
        assert [o.name for o in func.outputs] == [t.name for t in outputs]


def test_decode_gate2_program_fp16(decode_spec, decode_bundle, tiny_ckpt):
    g2 = gates.gate2(decode_spec, decode_bundle, "fp16")["logits"]
    print(f"llm_decode gate 2 (fp16 program, spec sequence): {g2:.1f} dB")
    assert g2 >= gates.GATE2_MIN_DB
    ids, image, offset, extra = long_sequence(tiny_ckpt.config, np.random.default_rng(5))
    calls = llm_decode.calls(tiny_ckpt.config, ids, image, offset, extra)
    prog = llm_decode.run_program_calls(decode_bundle, calls)
    ours = llm_decode.run_torch(decode_spec.module, calls)
    p = psnr(ours, prog)
    print(f"llm_decode gate 2 (fp16 program, 2 chunks + 4 decodes): {p:.1f} dB")
    assert p >= gates.GATE2_MIN_DB


# ------------------------------------------------------------------ full width


def test_full_width_two_layers_fp16(tmp_path_factory, parity):
    """Qwen2-0.5B widths (896, 14 heads / 2 KV heads, 4864 MLP), 2 layers, the tiny vocab:
    llm_prefill gate 1, and the stateful decode bundle through both gates."""
    from weights.configs import LLMConfig
    from weights.synthetic import TINY_VOCAB

    llm = LLMConfig(hidden_size=896, num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=TINY_VOCAB)
    ckpt = synthetic.write_reduced(tmp_path_factory.mktemp("full_llm") / "ckpt", llm=llm)
    prefill = llm_prefill.build_spec(ckpt)
    check_fp32(prefill.reference(prefill.example_inputs)["hidden_states"],
               prefill_torch(prefill, prefill.example_inputs), "full-width 2-layer llm_prefill gate 1")
    del prefill
    spec = llm_decode.build_spec(ckpt)
    g1 = gates.gate1(spec)["logits"]
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_llm_out"), spec.file)
    g2 = gates.gate2(spec, path, "fp16")["logits"]
    parity("llm_decode 0.5B-width", "coreml torch fp32", "psnr_db gate 1", g1, gates.GATE1_MIN_DB)
    parity("llm_decode 0.5B-width", "coreml program fp16", "psnr_db gate 2", g2, gates.GATE2_MIN_DB)
    assert g1 >= gates.GATE1_MIN_DB and g2 >= gates.GATE2_MIN_DB


def test_bad_head_config_is_one_line_error(tiny_ckpt):
    from coreml_convert.ane_qwen2 import Qwen2ANE
    from weights.errors import ConfigError

    bad = tiny_ckpt.config.llm.replace(num_key_value_heads=3)
    with pytest.raises(ConfigError) as e:
        Qwen2ANE(bad)
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("preset", ["tiny", "full"])
def test_example_prompt_keeps_the_image_off_the_decoded_token(preset):
    """At full size the image (256 tokens) is longer than a prefill chunk: the gates' example
    prompt must still end on a text token, or transformers would see an image embedding
    where the decode step feeds a token (the full-size gate 1 once read 19 dB for that)."""
    cfg = synthetic.PRESETS[preset]()
    p = llm_decode.example_prompt(cfg, np.random.default_rng(0))
    n = cfg.vision.num_tokens
    assert p["image_offset"] + n <= len(p["ids"]) - 1
    assert len(p["ids"]) - 1 >= contract.chunk_length(cfg)
