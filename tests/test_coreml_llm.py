"""Core ML Qwen2 (the one multifunction ``llm`` bundle) vs transformers ``Qwen2ForCausalLM``.

"hidden_states" (the last 4 hidden states for the MCP, enumerated lengths, padding mask,
image rows placed by the host), "prefill" + "decode" (stateful KV cache): gate 1 = our
Neural-Engine torch module vs transformers in fp32 (PSNR >= 60 dB and max|ours-ref|/max|ref|
<= 1e-4); gate 2 = the saved fp16 program run on numpy (coreml_convert.mil_exec) vs the torch
module (PSNR >= 35 dB).  The bundle holds the weights once, and its graphs are pure fp16
(coreml_convert.lint).  The tiny checkpoint's gates on the spec's example inputs are
tests/test_coreml_components.py; here the other lengths, functions and sequences, plus
Qwen2-0.5B widths with 2 layers.
"""

import numpy as np
import pytest
import torch

from weights.bundles import contract

from coreml_convert import gates, lint
from coreml_convert import convert as cv
from coreml_convert.components import llm
from weights.bundles.contract import place_image, sequence_lengths
from coreml_convert.metrics import max_relative_error, psnr
from coreml_convert.mil_exec import load_program, run_program
from weights.loading import synthetic

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

FP32_MAX_REL = 1e-4


def check_fp32(ref: np.ndarray, ours: np.ndarray, what: str):
    p, rel = psnr(ref, ours), max_relative_error(ref, ours)
    print(f"{what}: PSNR {p:.1f} dB, max rel {rel:.2e}")
    assert p >= gates.GATE1_MIN_DB and rel <= FP32_MAX_REL, (what, p, rel)


@pytest.fixture(scope="module")
def spec(coreml_spec):
    return coreml_spec("llm")


@pytest.fixture(scope="module")
def reference_model(tiny_ckpt):
    from weights.references import upstream

    return upstream.build("llm", tiny_ckpt.config, tiny_ckpt.load("llm"))


@pytest.fixture(scope="module")
def table(spec):
    return llm.fp16_exact(contract.dequantize_rows(spec.files[contract.EMBEDDINGS_FILE]))  # the rows the app feeds


def hidden_torch(spec, inputs):
    m = spec.module.llm.with_mode("hidden_states")
    with torch.no_grad():
        return m(*(torch.from_numpy(np.asarray(inputs[k], np.float32)) for k in llm.args("hidden_states"))).numpy()


@pytest.fixture(scope="module")
def bundle(coreml_bundle):
    return coreml_bundle("llm")


# ------------------------------------------------------------------ hidden_states


def test_gate1_covers_both_gated_outputs(spec):
    """Gate 1 (tests/test_coreml_components.py) compares both: the decode logits and the MCP's
    hidden states."""
    assert sorted(spec.reference(spec.example_inputs)) == sorted(gates.torch_outputs(spec)) == [
        "hidden_states", "logits_0"]


@pytest.mark.parametrize("length,image", [(128, False), (128, True)])
def test_hidden_states_other_lengths_and_no_image(spec, tiny_ckpt, reference_model, table, length, image):
    cfg = tiny_ckpt.config
    inputs, valid = llm.example_hidden(cfg, table, length, np.random.default_rng(1), image=image)
    ref = llm.reference_hidden(reference_model, inputs["embeds"], valid, cfg.mcp.num_layers)
    check_fp32(ref, hidden_torch(spec, inputs), f"llm hidden_states L={length} image={image}")


def test_prefill_image_replaces_exactly_its_columns(tiny_ckpt, table):
    """The host's embeds: table rows, image rows at offset + i (clipped to the prompt)."""
    cfg = tiny_ckpt.config
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.llm.vocab_size, 64)
    n = cfg.vision.num_tokens
    img = rng.standard_normal((n, cfg.llm.hidden_size)).astype(np.float32)
    plain = contract.embed_prompt(table, ids)[0, :, 0].T
    np.testing.assert_array_equal(plain, table[ids])
    for offset in (-n, -3, 0, 60, 64):
        x = contract.embed_prompt(table, ids, img, offset)[0, :, 0].T
        np.testing.assert_array_equal(x, place_image(plain, img, offset))
        for i in range(n):
            if 0 <= offset + i < 64:
                np.testing.assert_array_equal(x[offset + i], img[i])


def test_hidden_states_program_enumerated_length(spec, bundle, tiny_ckpt, table):
    """The "hidden_states" function takes every enumerated length (here 128, not the traced 64)."""
    cfg = tiny_ckpt.config
    from coremltools.converters.mil.mil import types

    func = load_program(bundle).functions["hidden_states"]
    assert all(v.dtype == types.fp16 for v in func.inputs.values())
    inputs, _ = llm.example_hidden(cfg, table, 128, np.random.default_rng(3))
    got = run_program(bundle, inputs, function="hidden_states")["hidden_states"]
    assert got.shape == (cfg.mcp.num_layers, cfg.llm.hidden_size, 1, 128)
    p = psnr(hidden_torch(spec, inputs), got)
    print(f"llm hidden_states gate 2 (fp16 program, L=128): {p:.1f} dB")
    assert p >= gates.GATE2_MIN_DB


# ------------------------------------------------------------------ prefill + decode


def long_sequence(cfg, rng, extra=(5, 77, 200)):
    """Two prefill chunks (the second padded), an image straddling them, 1 + 3 decodes."""
    p, n, hidden = contract.chunk_length(cfg), cfg.vision.num_tokens, cfg.llm.hidden_size
    ids = rng.integers(0, cfg.llm.vocab_size, p + 20)
    image = llm.fp16_exact(rng.standard_normal((1, hidden, 1, n)) / np.sqrt(hidden))
    return ids, image, p - n // 2, list(extra)


def reference_sequence(model, table, ids, image, offset, extra):
    embeds = contract.embed_prompt(table, list(ids) + list(extra), image[0, :, 0, :].T, offset)
    return llm.reference_logits(model, embeds, len(extra) + 1)


def test_decode_sequence_matches_transformers(spec, reference_model, tiny_ckpt, table):
    ids, image, offset, extra = long_sequence(tiny_ckpt.config, np.random.default_rng(4))
    calls = llm.calls(tiny_ckpt.config, table, ids, image, offset, extra)
    assert [fn for fn, _ in calls] == ["prefill", "prefill", "decode", "decode", "decode", "decode"]
    ours = llm.run_torch(spec.module.llm, calls)
    ref = reference_sequence(reference_model, table, ids, image, offset, extra)
    assert ours.shape == ref.shape == (4, tiny_ckpt.config.llm.vocab_size)
    check_fp32(ref, ours, "llm prompt + 3 decode steps")


def test_decode_gate1_is_idempotent(spec):
    g1 = gates.gate1(spec)
    assert gates.gate1(spec) == g1  # decoding the primed step again rewrites the same slot


def test_decode_states_follow_deployment_rules(tiny_ckpt):
    cfg = tiny_ckpt.config
    shape = contract.cache_shape(cfg)  # (layers, kv_heads, T, D)
    assert shape[2] % contract.STATE_ALIGN == 0 and shape[2] % contract.chunk_length(cfg) == 0
    assert shape[2] >= sequence_lengths(cfg)[-1] + cfg.defaults.max_new_tokens
    assert [s.name for s in contract.llm_io(cfg).states] == ["key_cache", "value_cache"]
    from weights.loading.synthetic import full_config

    full = contract.cache_shape(full_config())  # the head dim last: 64, a multiple of 32 (not a singleton)
    assert full == (24, 2, 768, 64) and full[-1] % contract.STATE_ALIGN == 0
    assert contract.state_write_bytes(full_config()) == 12288  # one decoded token, K and V, every layer


def test_bundle_is_multifunction_stateful_and_holds_the_weights_once(bundle, tiny_ckpt, spec):
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    mspec = ct.models.MLModel(str(bundle), skip_model_load=True).get_spec()
    assert mspec.description.defaultFunctionName == "decode"
    prog = load_program(bundle)
    assert set(prog.functions) == set(contract.LLM_FUNCTIONS)
    shape = contract.cache_shape(tiny_ckpt.config)
    for fn, io in contract.llm_io(tiny_ckpt.config).function_io.items():
        func = prog.functions[fn]
        states = {k: v for k, v in func.inputs.items() if types.is_state(v.sym_type)}
        want = {"key_cache": shape, "value_cache": shape} if fn in contract.LLM_STATE_FUNCTIONS else {}
        assert {k: tuple(v.sym_type.wrapped_type().get_shape()) for k, v in states.items()} == want
        want = {t.name: t.shape for t in io["inputs"]}
        assert {k: tuple(d if isinstance(d, int) else want[k][i] for i, d in enumerate(v.shape))  # enumerated: symbolic
                for k, v in func.inputs.items() if k not in states} == want
        assert [o.name for o in func.outputs] == [t.name for t in io["outputs"]]
    # one copy of the decoder + lm_head in fp16 (the embedding table lives outside the bundle)
    params = {k: v for k, v in spec.module.llm.core.state_dict().items() if "embed_tokens" not in k}
    one_copy = 2 * sum(v.numel() for v in params.values())
    weights = (bundle / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    print(f"llm weight.bin {weights} bytes, one fp16 copy {one_copy}")
    assert one_copy <= weights < 1.25 * one_copy


def test_graphs_are_pure_fp16_for_the_neural_engine(bundle):
    """No integer op but the cache position's (begin/end of the in-place write), no cast,
    gather, cumsum or fp32 op; no dimension over 16,384; rank <= 4."""
    report = lint.lint_bundle(bundle)
    for fn, r in report["functions"].items():
        print(fn, r["ops"], r["eligible_share"], r["rules"], r["allowed"])
        assert r["eligible_share"] == 1.0, (fn, r["rules"])
        assert not set(r["rules"]) & {"integer-op", "dynamic-gather", "dimension", "rank", "dtype"}, (fn, r["rules"])
        assert not {"gather", "cumsum", "cast", "fill_like", "equal", "select"} & set(r["histogram"]), fn
        if fn in contract.LLM_STATE_FUNCTIONS:  # one slice_update per layer and state, nothing else
            assert r["allowed"]["state-write"] == 2 * 4 and r["histogram"]["slice_update"] == 2 * 4
    assert report["findings"] == []


def test_decode_writes_one_slot_prefill_its_chunk(bundle, tiny_ckpt):
    """State bytes per call from the MIL program: decode writes one slot per layer (K and V),
    prefill its chunk; nothing writes the whole cache."""
    cfg = tiny_ckpt.config
    fns = lint.lint_bundle(bundle, "llm")["functions"]
    assert fns["decode"]["cost"]["state_write_bytes"] == contract.state_write_bytes(cfg, 1)
    assert fns["prefill"]["cost"]["state_write_bytes"] == contract.state_write_bytes(cfg, contract.chunk_length(cfg))
    assert fns["decode"]["cost"]["whole_state_writes"] == fns["prefill"]["cost"]["whole_state_writes"] == 0
    assert fns["hidden_states"]["cost"]["state_write_bytes"] == 0


def test_decode_writes_only_its_slot_in_the_program(bundle, tiny_ckpt, table):
    """mil_exec runs the program's slice_update at the runtime position: after a decode at
    slot p only slot p changed in either state."""
    from coreml_convert.mil_exec import make_states, run_program

    cfg = tiny_ckpt.config
    states = make_states(bundle, "decode")
    rng = np.random.default_rng(1)
    for name in states:
        states[name][...] = rng.standard_normal(states[name].shape).astype(states[name].dtype)
    before = {k: v.copy() for k, v in states.items()}
    p = 37
    inputs = llm.step_inputs(cfg, contract.embed_prompt(table, [5]), p)
    run_program(bundle, inputs, function="decode", states=states)
    for name in states:
        changed = np.argwhere(np.any(states[name] != before[name], axis=(0, 1, 3))).reshape(-1)
        assert changed.tolist() == [p], (name, changed)


def test_compute_plan_beside_the_lint(bundle, capsys):
    """On macOS 14.4+, Core ML's own plan covers every op the lint classified; elsewhere the
    lint says in one line that it cannot ask."""
    from coreml_convert import compute_plan

    usage = compute_plan.device_usage(bundle, skip=lint.is_constant)
    if not compute_plan.available():
        assert usage is None
        lint.print_compute_plans([lint.lint_bundle(bundle)], [bundle])
        assert capsys.readouterr().out.strip() == f"compute plan: {compute_plan.WHY_NOT}"
        return
    report = lint.lint_bundle(bundle)
    assert "error" not in usage, usage
    for fn, counts in usage["functions"].items():
        print(fn, counts, "static:", report["functions"][fn][lint.ELIGIBLE], "eligible")
        assert sum(counts.values()) == report["functions"][fn]["ops"]


def test_decode_sequence_gate2_program_fp16(spec, bundle, tiny_ckpt, table):
    ids, image, offset, extra = long_sequence(tiny_ckpt.config, np.random.default_rng(5))
    calls = llm.calls(tiny_ckpt.config, table, ids, image, offset, extra)
    prog = llm.run_program_calls(bundle, calls)
    ours = llm.run_torch(spec.module.llm, calls)
    p = psnr(ours, prog)
    print(f"llm gate 2 (fp16 program, 2 chunks + 4 decodes): {p:.1f} dB")
    assert p >= gates.GATE2_MIN_DB


@pytest.mark.slow
def test_compressed_functions_merge_into_one_bundle(spec, tmp_path):
    """--compress on the multifunction bundle: each function compressed with the same recipe,
    then merged (coremltools refuses to compress a multifunction model)."""
    from coreml_convert.mil_exec import op_types

    recipe = cv.parse_compression("int8")
    path = cv.save_atomic(cv.convert_spec(spec, "fp16", recipe), tmp_path, spec.file)
    assert any(t.startswith("constexpr_") for t in op_types(path, "decode"))
    g2 = gates.gate2(spec, path, "fp16")
    print(f"llm int8 gate 2: {g2}")
    assert min(g2.values()) >= gates.GATE2_MIN_DB


@pytest.mark.slow
def test_default_recipe_bundle_is_neural_engine_palettes(bundle, tiny_export):
    """The default (--target ane) recipe's bundle as ``mobileo-coreml`` writes it (the session's
    tiny export; its gates and drift are in test_cli_converts_every_component) against the fp16
    bundle: every function decompresses mixed LUT4/LUT6 + int8 weights, all Neural-Engine
    formats (no per-block int4), and the fp16 one has no decompression op at all."""
    from coreml_convert.mil_exec import op_types
    from weights.bundles.hashing import bundle_bytes

    path = tiny_export / "llm.mlpackage"
    for fn in llm.FUNCTIONS:
        assert not any(t.startswith("constexpr_") for t in op_types(bundle, fn)), fn
        assert "constexpr_lut_to_dense" in op_types(path, fn), fn
    fns = lint.lint_bundle(path, "llm")["functions"]
    assert all(not f["rules"] and f["eligible_share"] == 1.0 for f in fns.values()), fns
    assert all(k.startswith(("lut4 ", "lut6 ", "int8 per-channel")) for f in fns.values() for k in f["compression"])
    assert bundle_bytes(path) < 0.75 * bundle_bytes(bundle)  # tiny: many weights under the 2,048 threshold
    # the output-drift plan (issue 22) is in the manifest beside the recipe: what it measured,
    # which weights it promoted to 6 bits, and they are the 6-bit LUTs the bundle holds
    import json

    (comp,) = [c["compression"] for c in json.loads((tiny_export / "manifest.json").read_text())["components"]
               if c["name"] == "llm"]
    plan = comp["drift_analysis"]
    assert comp["select"] == "output_drift" and comp["default_bits"] == 4 and plan["forwards"] >= 2
    assert plan["final_db"] >= plan["target_db"] or len(plan["promoted"]) == len(plan["sensitivity_db"])
    assert bool(comp["weight_bits"]) == bool(plan["promoted"]) and set(comp["weight_bits"].values()) <= {6}
    six = sum(n for f in fns.values() for k, n in f["compression"].items() if k.startswith("lut6 "))
    assert (six > 0) == bool(comp["weight_bits"]) or comp["unnamed_bits"] == 6


# ------------------------------------------------------------------ full width


@pytest.mark.slow
def test_full_width_two_layers_fp16(tmp_path_factory, parity):
    """Qwen2-0.5B widths (896, 14 heads / 2 KV heads, 4864 MLP), 2 layers, the tiny vocab:
    the multifunction bundle through both gates."""
    from weights.core.configs import LLMConfig
    from weights.loading.synthetic import TINY_VOCAB

    cfg = LLMConfig(hidden_size=896, num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=TINY_VOCAB)
    ckpt = synthetic.write_reduced(tmp_path_factory.mktemp("full_llm") / "ckpt", llm=cfg)
    spec = llm.build_spec(ckpt)
    g1 = min(gates.gate1(spec).values())
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp("full_llm_out"), spec.file)
    g2 = min(gates.gate2(spec, path, "fp16").values())
    parity("llm 0.5B-width", "coreml torch fp32", "psnr_db gate 1", g1, at_least=gates.GATE1_MIN_DB)
    parity("llm 0.5B-width", "coreml program fp16", "psnr_db gate 2", g2, at_least=gates.GATE2_MIN_DB)
    # the decode call's state writes, read from the MIL program, scaled from 2 layers to 24
    cost = lint.lint_bundle(path, "llm")["functions"]["decode"]["cost"]
    per_token = cost["state_write_bytes"] * 24 // cfg.num_hidden_layers
    parity("llm 0.5B-width", "coreml program fp16", "decode state bytes written per token (24 layers)",
           per_token, at_most=64 * 1024)
    assert cost["whole_state_writes"] == 0


def test_bad_head_config_is_one_line_error(tiny_ckpt):
    from coreml_convert.ane_qwen2 import Qwen2ANE
    from weights.core.errors import ConfigError

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
    p = llm.example_prompt(cfg, np.random.default_rng(0))
    n = cfg.vision.num_tokens
    assert p["image_offset"] + n <= len(p["ids"]) - 1
    assert len(p["ids"]) - 1 >= contract.chunk_length(cfg)
