"""The conversion framework: the bundle contract and spec round trips, torch_map, ANE blocks
vs upstream math, and the CLI (table, resumable skips, --force, exit codes, atomic bundles,
manifest, unsupported configs)."""

import json

import numpy as np
import pytest
import torch

from coreml_convert import ane, cli
from coreml_convert import convert as cv
from weights.bundles import contract
from weights.bundles.contract import BundleIO, TensorSpec, sequence_lengths
from coreml_convert.spec import ConversionResult
from weights.mapping.torch_map import to_torch

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

# ------------------------------------------------------------------ spec / torch_map / ane


def test_tensor_spec_and_result_round_trip():
    t = TensorSpec("encoder_hidden_states", (2, 48, 1, 64), "float16", "B,C,1,S", {3: (64, 128)})
    assert TensorSpec.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert t.shapes() == [(2, 48, 1, 64), (2, 48, 1, 128)]
    with pytest.raises(ValueError):
        TensorSpec("x", (1, 2), "float16", "B,C,H")  # layout names 3 axes for 2
    with pytest.raises(ValueError):
        TensorSpec("x", (1, 5), "float16", "B,S", {1: (64, 128)})  # default not enumerated
    r = ConversionResult("dit", "dit.mlpackage", 10, "ab" * 32, [t], [t], [], ("main",), "cpuAndNeuralEngine",
                         {"iOS": "18.0"}, {"precision": "fp16"}, {"reference_psnr_db": float("inf"),
                                                                   "program_psnr_db": 71.234}, 1.5, 100.0)
    d = r.to_dict()
    assert d["gates"]["program_psnr_db"] == 71.23 and d["inputs"][0]["enumerated"] == {"3": [64, 128]}
    assert ConversionResult.from_dict(d).gates["reference_psnr_db"] == float("inf")
    assert "function_io" not in d and ConversionResult.from_dict(d).function_io == {}
    # a multifunction bundle: each function's I/O round-trips
    step = TensorSpec("input_ids", (1, 1), "int32", "B,S")
    io = {"decode": {"inputs": [step], "outputs": [t]}, "prefill": {"inputs": [t], "outputs": [t]}}
    r.function_io, r.functions = io, ("decode", "prefill")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["function_io"]["decode"]["inputs"] == [step.to_dict()]
    assert ConversionResult.from_dict(d).function_io == io


def test_bundle_io_checks_function_io():
    a, b = TensorSpec("a", (1, 1), "int32", "B,S"), TensorSpec("b", (1, 64), "int32", "B,S")
    kw = dict(name="llm", inputs=[a], outputs=[a], functions=("decode", "prefill"))
    ok = {"decode": {"inputs": [a], "outputs": [a]}, "prefill": {"inputs": [b], "outputs": [a]}}
    assert BundleIO(**kw, function_io=ok).function_io == ok
    assert BundleIO(**kw).function_io == {}
    with pytest.raises(ValueError, match="'main', which is not among its functions"):
        BundleIO(**kw, function_io={"main": ok["decode"]})
    with pytest.raises(ValueError, match="non-empty 'inputs' and 'outputs'"):
        BundleIO(**kw, function_io={"prefill": {"inputs": [], "outputs": [a]}})
    with pytest.raises(ValueError, match="default function"):
        BundleIO(**kw, function_io={"decode": ok["prefill"]})
    with pytest.raises(ValueError, match="unknown component 'unet'"):
        BundleIO(**dict(kw, name="unet"))


def test_contract_is_defined_once(tiny_ckpt):
    """Every component's contract for the tiny config: the shared sizes (64-token chunks,
    enumerated lengths), compute units, and what a ComponentSpec reads through."""
    from coreml_convert.spec import ComponentSpec

    cfg = tiny_ckpt.config
    assert contract.chunk_length(cfg) == contract.LENGTH_STEP == 64
    assert contract.context_length(cfg) % contract.STATE_ALIGN == 0
    for name in contract.COMPONENT_NAMES:
        io = contract.bundle_io(name, cfg)
        assert io.name == name and io.compute_units in contract.COMPUTE_UNITS
        assert io.minimum_os == contract.MINIMUM_OS
        spec = ComponentSpec(module=None, example_inputs={}, reference=None, io=io)
        assert (spec.name, spec.inputs, spec.outputs, spec.states, spec.compute_units) == (
            name, io.inputs, io.outputs, io.states, io.compute_units)
        assert spec.file == f"{name}.mlpackage"
    llm = contract.llm_io(cfg)
    assert llm.functions == contract.LLM_FUNCTIONS == ("decode", "prefill", "hidden_states")
    assert {fn: [t.name for t in io["inputs"]] for fn, io in llm.function_io.items()} == {
        "decode": list(contract.LLM_INPUTS), "prefill": list(contract.LLM_INPUTS),
        "hidden_states": list(contract.LLM_INPUTS[:-1])}
    assert llm.function_io["prefill"]["inputs"][0].shape == (1, cfg.llm.hidden_size, 1, contract.chunk_length(cfg))
    assert [t.shape for t in llm.states] == [contract.cache_shape(cfg)] * 2
    assert contract.context_length(cfg) % contract.chunk_length(cfg) == 0
    bias = llm.function_io["hidden_states"]["inputs"][3]
    assert bias.shapes() == [(1, n, 1, n) for n in sequence_lengths(cfg)]  # tied axes, not a product
    for io in [contract.bundle_io(n, cfg) for n in contract.COMPONENT_NAMES]:  # pure fp16, Neural-Engine sizes
        for fn in io.function_io.values() or [{"inputs": io.inputs, "outputs": io.outputs}]:
            for t in fn["inputs"] + fn["outputs"]:
                # the one int32 input: the llm cache's write position (slice_update begin)
                want = ("int32", (1,)) if t.name == "position" else ("float16", t.shape)
                assert (t.dtype, t.shape) == want and max(t.shape) <= contract.MAX_DIMENSION, t
    dit = contract.dit_io(cfg)
    assert dit.inputs[2].enumerated == {3: sequence_lengths(cfg)} and dit.inputs[0].shape[0] == contract.CFG_BATCH
    assert contract.mcp_io(cfg, lengths=(64,)).inputs[0].enumerated is None


def test_sequence_lengths(tiny_ckpt):
    assert sequence_lengths(tiny_ckpt.config) == (64, 128, 256, 512)


def test_logits_are_split_at_the_neural_engine_limit():
    assert contract.logits_widths(151649) == (16384,) * 9 + (151649 - 9 * 16384,)
    assert contract.logits_widths(262) == (262,) and contract.logits_widths(16384) == (16384,)


def test_host_inputs():
    """The host side of the pure-fp16 graphs: transformers' RoPE, -1e4 causal/padding masks,
    one-hot cache blocks."""
    import torch

    from weights.core.configs import LLMConfig

    llm = LLMConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=8,
                    vocab_size=10, num_hidden_layers=1)
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, Qwen2Config

    hf = Qwen2RotaryEmbedding(Qwen2Config(hidden_size=64, num_attention_heads=4, rope_theta=llm.rope_theta))
    pos = np.array([0, 3, 100, 767])
    cos_hf, sin_hf = hf(torch.zeros(1, 4, 16), torch.from_numpy(pos)[None])
    cos, sin = contract.rope(llm, pos)
    np.testing.assert_allclose(cos[0, :, 0, :].T, cos_hf[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(sin[0, :, 0, :].T, sin_hf[0].numpy(), atol=1e-5)
    b = contract.causal_bias([0, 1, 2], [0, 1, 2], [1, 1, 0])[0, :, 0, :]
    assert b.tolist() == [[0, 0, 0], [-1e4, 0, 0], [-1e4, -1e4, -1e4]]
    assert contract.cache_position(64, 64, 256).tolist() == [64] and contract.cache_position(64, 64, 256).dtype == np.int32
    assert contract.cache_position(37, 64, 256).tolist() == [37]  # a chunk may start anywhere it fits
    with pytest.raises(ValueError):
        contract.cache_position(200, 64, 256)


def test_torch_map_reshapes_only():
    t = {"a.weight": np.ones((4, 3), np.float32), "a.bias": np.ones(4, np.float32),
         "c.weight": np.ones((4, 1, 3), np.float32), "norm.weight": np.ones(4, np.float32),
         "scale_shift_table": np.ones((6, 4), np.float32)}
    dit = to_torch("dit", t)
    assert set(dit) == set(t) and dit["a.weight"].shape == (4, 3, 1, 1)
    assert dit["scale_shift_table"].shape == (6, 4) and dit["norm.weight"].shape == (4,)
    assert to_torch("mcp", t)["c.weight"].shape == (4, 1, 1, 3)
    emb = {"model.embed_tokens.weight": np.ones((10, 4), np.float32)}
    assert to_torch("llm", emb)["model.embed_tokens.weight"].shape == (10, 4)
    assert to_torch("vision", {"head.proj": np.ones((8, 4), np.float32)})["head.proj"].shape == (8, 4)


def test_channel_norms_match_upstream():
    from diffusers.models.normalization import RMSNorm

    torch.manual_seed(0)  # reproducible: the same draws whatever ran before
    x = torch.randn(2, 24, 3, 5) * 7
    ln = ane.LayerNorm(24, eps=1e-6)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    ref = torch.nn.functional.layer_norm(x.movedim(1, -1), (24,), ln.weight, ln.bias, 1e-6).movedim(-1, 1)
    assert torch.allclose(ln(x), ref, atol=1e-5)
    rms, up = ane.RMSNorm(24, eps=1e-5, bias=True), RMSNorm(24, eps=1e-5, elementwise_affine=True, bias=True)
    torch.nn.init.normal_(rms.weight)
    torch.nn.init.normal_(rms.bias)
    up.load_state_dict(rms.state_dict())
    assert torch.allclose(rms(x), up(x.movedim(1, -1)).movedim(-1, 1), atol=1e-5)


def test_linear_attention_matches_sana_formula():
    torch.manual_seed(0)  # reproducible: the same draws whatever ran before
    b, h, d, n = 2, 3, 8, 50
    q, k, v = torch.randn(b, h, d, n).relu(), torch.randn(b, h, d, n).relu(), torch.randn(b, h, d, n)
    # diffusers SanaLinearAttnProcessor2_0: pad v with ones, (v k^T) q, divide by the last row
    vp = torch.nn.functional.pad(v, (0, 0, 0, 1), value=1.0)
    ref = (vp @ k.transpose(2, 3)) @ q
    ref = ref[:, :, :-1] / (ref[:, :, -1:] + 1e-15)
    assert torch.allclose(ane.linear_attention(q, k, v), ref, rtol=1e-4, atol=1e-4)


def test_attention_split_and_batched_agree():
    torch.manual_seed(0)  # reproducible: the same draws whatever ran before
    q, k, v = torch.randn(2, 32, 1, 7), torch.randn(2, 32, 1, 9), torch.randn(2, 32, 1, 9)
    bias = ane.attention_mask_bias(torch.tensor([[1.0] * 9, [1.0] * 5 + [0.0] * 4]))
    ref = torch.nn.functional.scaled_dot_product_attention(
        ane.to_heads(q, 8).transpose(2, 3), ane.to_heads(k, 8).transpose(2, 3), ane.to_heads(v, 8).transpose(2, 3),
        attn_mask=bias[:, None, :, 0, 0][:, :, None, :])
    ref = ane.from_heads(ref.transpose(2, 3))
    for split in (True, False):
        assert torch.allclose(ane.attention(q, k, v, 8, bias, split=split), ref, atol=1e-5)


def test_parse_compression():
    assert cv.parse_compression(None) == cv.DEFAULT == cv.parse_compression("default")  # not given: the recipes
    assert cv.parse_compression("none") is None and cv.parse_compression("fp16") is None
    assert cv.parse_compression("int8") == {"weights": "int8"}
    assert cv.parse_compression("palettize4g16") == {"weights": "palettize", "nbits": 4, "group_size": 16}
    assert cv.parse_compression("lut6g16") == {"weights": "lut", "nbits": 6, "group_size": 16}
    assert cv.parse_compression("lut4") == {"weights": "lut", "nbits": 4}
    assert cv.parse_compression("int4") == {"weights": "int4", "block_size": 32} == cv.parse_compression("int4b32")
    assert cv.parse_compression("int4b16") == {"weights": "int4", "block_size": 16}
    for bad in ("palettize5", "lut7", "int4b", "int2", "lut4g0"):
        with pytest.raises(cv.ConversionError):
            cv.parse_compression(bad)
    assert cv.parse_compression("lloyd4g16") == {"weights": "lut", "nbits": 4, "palette": "lloyd", "group_size": 16}
    for text in ("int8", "int4b16", "lut6g16", "lloyd4g16", "palettize4", "fp16"):
        assert cv.recipe_name(cv.parse_compression(text)) == text


def test_default_recipes():
    """--compress default (the CLI's default) gives each component its own recipe; an explicit
    recipe applies to all; none keeps fp16.  The recipes need no scikit-learn (no k-means)."""
    from coreml_convert.components import REGISTRY

    assert set(cv.RECIPES) == set(REGISTRY)
    assert cli.parse_args(["--model", "demo", "--out", "x"]).compress == cv.DEFAULT
    for name in REGISTRY:
        recipe = cv.recipe_for(name, cv.DEFAULT)
        assert recipe == cv.RECIPES[name] and recipe["weights"] != "palettize"
        assert cv.recipe_for(name, None) is None
        assert cv.recipe_for(name, {"weights": "int8"}) == {"weights": "int8"}
    # the two big ones: mixed LUT4/LUT6 (+ int8) for the Neural Engine, per-block int4 for the GPU
    assert cv.RECIPES["llm"]["weights"] == cv.RECIPES["dit"]["weights"] == "mixed"
    assert cv.recipe_for("llm", cv.DEFAULT, "gpu") == {"weights": "int4", "block_size": 32}
    # the GPU target runs the DiT and the VAE in fp32 (Mobile-O's own app): the recipe carries it
    assert cv.recipe_for("dit", cv.DEFAULT, "gpu") == {"weights": "int4", "block_size": 32, "precision": "fp32"}
    assert cv.recipe_name(cv.recipe_for("vae_decoder", cv.DEFAULT, "gpu")) == "int8-fp32"
    assert cli.parse_args(["--model", "demo", "--out", "x"]).target == "ane"
    assert cv.recipe_name(cv.RECIPES["dit"]) == "mixed4/6g16+int8" and cv.parse_compression("mixed") == cv.RECIPES["dit"]
    # the LLM's: Lloyd-Max LUTs, bits per layer by the output-drift pre-analysis (issue 22)
    assert cv.recipe_name(cv.RECIPES["llm"]) == "lloyd-mixed4/6g16-drift"
    from coreml_convert.gates import DRIFT_MIN_DB

    assert cv.RECIPES["llm"]["select"] == "output_drift" and cv.RECIPES["llm"]["target_db"] > DRIFT_MIN_DB


def test_mixed_plan_picks_bits_per_layer_by_measured_snr():
    """The LUT SNR is coremltools' uniform palettization computed exactly; a Gaussian layer takes
    4 bits, a heavy-tailed one 6, one no palette holds per-channel int8."""
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((64, 64, 1, 1)).astype(np.float16)
    heavy = rng.standard_t(3, (64, 64, 1, 1)).astype(np.float16)
    spike = gauss.copy()
    spike[::16, 0] = 3e3  # one huge value per group of 16 rows: every palette's step is far too coarse
    snr = {n: [cv.uniform_lut_snr_db(w, b, 16) for b in (4, 6)] for n, w in
           (("gauss", gauss), ("heavy", heavy), ("spike", spike))}
    assert snr["gauss"][0] >= 14 and snr["heavy"][0] < 14 <= snr["heavy"][1] and snr["spike"][1] < 14, snr
    assert cv.uniform_lut_snr_db(np.zeros((16, 4)), 4, 16) == float("inf")

    plan_of = lambda w: cv.mixed_plan(_model_with(w), cv.RECIPES["dit"])["w"][:2]
    assert plan_of(gauss) == ("lut", 4) and plan_of(heavy) == ("lut", 6) and plan_of(spike) == ("int8", 8)


def _model_with(weight):
    """A stand-in for a converted model whose program holds one const weight named "w"."""
    from types import SimpleNamespace

    out = SimpleNamespace(val=weight, child_ops=[SimpleNamespace(op_type="conv")])
    const = SimpleNamespace(name="w", outputs=[out])
    func = SimpleNamespace(find_ops=lambda op_type: [const])
    return SimpleNamespace(_mil_program=SimpleNamespace(functions={"main": func}))


def test_kmeans_without_scikit_learn_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    with pytest.raises(cv.ConversionError, match="scikit-learn") as e:
        cv.compress(object(), cv.parse_compression("palettize4"))
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ CLI


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def bundles(out):
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".mlpackage"))


def temp_folders(out):
    return [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(cv.TMP_SUFFIX)]


@pytest.mark.slow
def test_cli_convert_skip_force(tiny_ckpt_dir, tiny_export_of, capsys):
    """A folder holding a converted mcp (the session's, converted by the CLI with the default
    recipe): asked again, it is skipped, the manifest written; --force redoes it; another
    recipe is another bundle."""
    out = tiny_export_of("mcp")
    first = (out / "mcp.mlpackage").stat().st_mtime_ns
    code, stdout, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "mcp"], capsys)
    assert code == 0 and cli.SKIPPED in stdout, err
    assert (out / "mcp.mlpackage").stat().st_mtime_ns == first
    assert any(all(c in line for c in cli.COLUMNS[:6]) for line in stdout.splitlines())
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["components"]] == ["mcp"]
    gates_ = manifest["components"][0]["gates"]
    assert gates_["reference_psnr_db"] >= 60 and gates_["program_psnr_db"] >= 35
    assert manifest["components"][0]["compression"]["recipe"] == "int8"  # the default recipe

    code, stdout, _ = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "mcp",
                               "--force"], capsys)
    assert code == 0 and cli.SKIPPED not in stdout
    assert bundles(out) == ["mcp.mlpackage"] and not temp_folders(out)

    # another recipe is another bundle: not skipped; none -> fp16 weights, no drift
    code, stdout, _ = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "mcp",
                               "--compress", "none"], capsys)
    assert code == 0 and cli.SKIPPED not in stdout
    c = json.loads((out / "manifest.json").read_text())["components"][0]["compression"]
    assert c["recipe"] == "fp16" and "drift_psnr_db" not in c


@pytest.mark.slow
def test_cli_converts_every_component(tiny_export, parity):
    """The whole tiny model through the CLI (the session's ``tiny_export``, exit code 0): every
    component passes both gates, and the manifest it writes validates (schema, files, hashes)."""
    from coreml_convert import gates
    from coreml_convert.components import REGISTRY
    from ios_bridge.validate import validate

    out = tiny_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["components"]] == list(REGISTRY)
    for c in manifest["components"]:
        g = c["gates"]
        parity(f"{c['name']} tiny", "coreml torch fp32", "psnr_db gate 1", g["reference_psnr_db"], at_least=60)
        parity(f"{c['name']} tiny", "coreml program fp16", "psnr_db gate 2", g["program_psnr_db"], at_least=35)
        # the default recipe, and its drift (compressed vs fp16 program; random weights: indicative)
        comp = c["compression"]
        assert comp["recipe"] == cv.recipe_name(cv.RECIPES[c["name"]]), c["name"]
        drift = float(comp["drift_psnr_db"])
        parity(f"{c['name']} tiny", f"coreml program {comp['recipe']} vs fp16", "psnr_db drift", drift, at_least=gates.DRIFT_MIN_DB)
        record = cli.read_record(out, c["name"])
        assert record["recipe"] == cv.RECIPES[c["name"]] and record["result"]["compression"] == comp
        # the largest |activation| of the fp16 program on the gates' inputs, beside fp16's max
        parity(f"{c['name']} tiny", "coreml program fp16", "max |activation| (fp16 max 65504)",
               g["max_abs_activation"], at_most=g["fp16_max"])
        # --target ane: 100 % eligible, every weight format one the Neural Engine runs
        assert c["target"] == "ane" and c["compute_units"] == "cpuAndNeuralEngine"
        assert c["lint"]["eligible_share"] == 1.0 and "compression" not in c["lint"]["rules"], c["lint"]
    run = manifest["export"].pop("conversion")  # the run's own figures (issue 27)
    assert manifest["export"] == {"target": "ane", "partial": False, "components": list(REGISTRY)}
    assert run["processes"] == "one" and run["seconds"] > 0  # a tiny checkpoint: one process (--isolate auto)
    assert run["peak_rss_mb"] >= max(c["conversion"]["peak_rss_mb"] for c in manifest["components"])
    assert validate(out) == []


@pytest.mark.slow
def test_cli_gpu_target_dit_and_vae_fp32(tiny_ckpt_dir, tmp_path, capsys, parity):
    """--target gpu: per-block int4 DiT computed in fp32, int8 VAE in fp32 (Mobile-O's app runs
    both on the GPU in fp32), compute units cpuAndGPU; gated like the others; the partial export
    validates against its bundles."""
    from ios_bridge.validate import validate

    out = tmp_path / "gpu"
    code, _, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--target", "gpu",
                            "--components", "dit", "vae_decoder"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["export"].pop("conversion")
    assert manifest["export"] == {"target": "gpu", "partial": True, "components": ["dit", "vae_decoder"]}
    for c in manifest["components"]:
        assert (c["target"], c["compute_units"], c["compression"]["precision"]) == ("gpu", "cpuAndGPU", "fp32")
        assert all(t["dtype"] == "float32" for t in c["inputs"] + c["outputs"]), c["name"]
        assert "compression" not in c["lint"]["rules"]  # per-block int4 is a GPU format
        g = c["gates"]
        parity(f"{c['name']} tiny", "coreml program fp32", "psnr_db gate 2", g["program_psnr_db"], at_least=35)
        parity(f"{c['name']} tiny", f"coreml program {c['compression']['recipe']} vs fp32", "psnr_db drift",
               float(c["compression"]["drift_psnr_db"]), at_least=15)
    assert validate(out) == []


def test_cli_without_torch_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    """No torch: one line naming the convert extra, exit 2, nothing written (checked before
    the model is opened or the output folder created)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    out = tmp_path / "b"
    code, stdout, err = run_cli(["--model", str(tmp_path / "nope"), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and stdout == ""
    assert err.startswith("error: mobileo-coreml needs torch") and ".[convert]" in err
    assert not out.exists()


def test_quiet_conversion_hides_progress_and_warnings_then_restores():
    import logging
    import warnings

    import tqdm

    init, level = tqdm.tqdm.__dict__["__init__"], logging.getLogger("coremltools").level
    with quiet_conversion_ctx(False):
        assert tqdm.tqdm(range(3)).disable
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("TracerWarning-like noise")
        assert seen == []
        assert logging.getLogger("coremltools").level == logging.ERROR
    assert tqdm.tqdm.__dict__["__init__"] is init and logging.getLogger("coremltools").level == level
    with quiet_conversion_ctx(True):
        assert not tqdm.tqdm(range(3), file=open("/dev/null", "w")).disable


def quiet_conversion_ctx(verbose):
    return cli.quiet_conversion(verbose)


def test_cli_bad_input_one_line(tiny_ckpt_dir, tmp_path, capsys):
    code, _, err = run_cli(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(tmp_path / "b"),
                            "--components", "unet"], capsys)
    assert code == 2 and "unknown component 'unet'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_failed_gate_exits_3_and_is_redone(tiny_ckpt_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "build"
    monkeypatch.setattr("coreml_convert.gates.GATE2_MIN_DB", 1e9)
    code, stdout, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "mcp"], capsys)
    assert code == cli.EXIT_GATE_FAILED and "FAILED" in stdout and "gate 2" in err
    assert cli.read_record(out, "mcp")["passed"] is False
    assert cli.finished(out, "mcp", "fp16", cv.RECIPES["mcp"]) is None  # a rerun converts it again
    assert json.loads((out / "manifest.json").read_text())["components"] == []


@pytest.mark.parametrize("exc, code", [(RuntimeError("disk full"), cli.EXIT_CRASHED), (KeyboardInterrupt(), 130)])
def test_interrupted_save_leaves_nothing(tiny_ckpt_dir, tmp_path, capsys, monkeypatch, exc, code):
    out = tmp_path / "build"

    class HalfSaved:
        def save(self, path):  # writes part of a bundle, then dies
            (cv.Path(path) / "Data").mkdir(parents=True)
            (cv.Path(path) / "Data" / "weight.bin").write_bytes(b"\0" * 1000)
            raise exc

    monkeypatch.setattr(cv, "compress", lambda model, recipe: HalfSaved())
    got, _, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "mcp"], capsys)
    assert got == code, err
    assert bundles(out) == [] and not temp_folders(out)
    assert cli.read_record(out, "mcp") is None


@pytest.mark.slow
def test_unsupported_config_is_a_one_line_component_failure(tiny_ckpt_dir, tmp_path, capsys):
    """A DiT / DC-AE variant the Core ML modules do not build (weights.core.configs' check_supported)
    fails that component with a one-line ConfigError ("failed", not "crashed", no traceback);
    the other components still convert."""
    import shutil

    model = tmp_path / "variant"
    shutil.copytree(tiny_ckpt_dir, model)
    for rel, change in (("transformer/config.json", {"qk_norm": "rms_norm_across_heads"}),
                        ("vae/config.json", {"upsample_block_type": "pixel_shuffle"})):
        conf = json.loads((model / rel).read_text())
        (model / rel).write_text(json.dumps({**conf, **change}))
    out = tmp_path / "build"
    code, stdout, err = run_cli(["--model", str(model), "--out", str(out),
                                 "--components", "mcp", "dit", "vae_decoder"], capsys)
    assert code == cli.EXIT_CRASHED and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]  # (stderr also has progress bars)
    assert len(lines) == 2 and lines[0].startswith("error: dit: ") and lines[1].startswith("error: vae_decoder: ")
    assert "qk-norm" in lines[0] and "upsample_block_type='pixel_shuffle'" in lines[1]
    assert all("Fix:" in line for line in lines)
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.split()[:1] in (["mcp"], ["dit"], ["vae_decoder"])}
    assert rows["dit"].rstrip().endswith("failed") and rows["vae_decoder"].rstrip().endswith("failed")
    assert "ok" in rows["mcp"] and bundles(out) == ["mcp.mlpackage"]
    assert [c["name"] for c in json.loads((out / "manifest.json").read_text())["components"]] == ["mcp"]


@pytest.mark.slow
def test_compression_hook_int8(tiny_ckpt, tmp_path):
    from coreml_convert import gates
    from coreml_convert.components import dit
    from coreml_convert.mil_exec import op_types

    spec = dit.build_spec(tiny_ckpt)  # (the tiny MCP's weights are under coremltools' size threshold)
    model = cv.compress(cv.convert_spec(spec, "fp16"), cv.parse_compression("int8"))
    path = cv.save_atomic(model, tmp_path, spec.file)
    assert any(t.startswith("constexpr_") for t in op_types(path))
    assert gates.gate2(spec, path, "fp16")["velocity"] >= gates.GATE2_MIN_DB


# ------------------------------------------------------------------ memory (issue 27)


@pytest.mark.slow
def test_cli_isolates_components_and_reports_their_own_peaks(tiny_ckpt_dir, tmp_path, capsys):
    """--isolate on: each component in its own process (the same bundle bytes as one process),
    its own peak RSS and stages in the record and the table, the run's peak in the manifest."""
    from ios_bridge.validate import validate

    one, each = tmp_path / "one", tmp_path / "each"
    code, _, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(one), "--components", "mcp", "--isolate", "off"],
                           capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["--model", str(tiny_ckpt_dir), "--out", str(each), "--components", "mcp",
                                 "--isolate", "on"], capsys)
    assert code == 0, err
    assert "mcp: converting" in stdout and "in its own process" in stdout and "run:" in stdout
    assert stdout.count("peak RSS MB") == 1  # one table: the child's is not printed
    a, b = cli.read_record(one, "mcp")["result"], cli.read_record(each, "mcp")["result"]
    assert a["sha256"] == b["sha256"]  # byte-identical bundles
    stages = [s["stage"] for s in b["stages"]]
    assert stages[:3] == ["load", "gate 1", "convert"] and stages[-1] == "lint"
    assert b["peak_rss_mb"] == max(s["peak_rss_mb"] for s in b["stages"]) > 0
    manifest = json.loads((each / "manifest.json").read_text())
    run = manifest["export"]["conversion"]
    assert run["processes"] == "one per component" and run["peak_rss_mb"] >= b["peak_rss_mb"]
    assert manifest["components"][0]["conversion"]["peak_rss_mb"] == b["peak_rss_mb"]
    assert validate(each) == []


def test_isolate_auto_follows_the_checkpoint_size(tiny_ckpt, monkeypatch):
    assert cli.use_processes("on", tiny_ckpt) and not cli.use_processes("off", tiny_ckpt)
    assert not cli.use_processes("auto", tiny_ckpt)  # tiny: one process
    monkeypatch.setattr(cli, "ISOLATE_ABOVE_BYTES", 0)
    assert cli.use_processes("auto", tiny_ckpt)


def test_stage_log_records_each_stage():
    from coreml_convert import memory

    log = memory.StageLog()
    with memory.logging_stages(log):
        log.mark("load")
        memory.mark("reference")  # a component's own stage
        block = bytearray(32 * 2**20)  # touched: RSS grows by 32 MB during "reference"
        del block
    stages = log.close()
    assert [s["stage"] for s in stages] == ["load", "reference"]
    assert all(s["peak_rss_mb"] >= s["rss_mb"] > 0 and s["seconds"] >= 0 for s in stages)
    memory.mark("outside")  # no log: a no-op
    assert log.peak_mb == max(s["peak_rss_mb"] for s in stages)


def test_streamed_load_equals_load_state_dict(tiny_ckpt):
    """load_torch reading one tensor at a time gives the module load_state_dict gives."""
    import torch

    from coreml_convert.components.dit import SanaDiT
    from weights.mapping.torch_map import load_torch

    cfg = tiny_ckpt.config.dit
    streamed = load_torch(SanaDiT(cfg), tiny_ckpt, "dit")
    at_once = load_torch(SanaDiT(cfg), tiny_ckpt, "dit", tensors=tiny_ckpt.load("dit"))
    a, b = streamed.state_dict(), at_once.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
