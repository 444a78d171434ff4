"""ios_bridge: bundle hashes, the manifest (schema, facts from weights/ and the bundle
contract), the validator CLI, and the golden vectors the Swift package checks (written by
tests/tools/golden.py; `make swift-test` runs the Swift side)."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ios_bridge import MANIFEST_FILE
from weights.bundles.hashing import bundle_bytes, bundle_sha256
from ios_bridge.manifest import ManifestError, load_schema, write_manifest
from ios_bridge.validate import validate
from weights.core import prompts
from metrics import within

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def export(tmp_path, tiny_ckpt):
    """A manifest over placeholder bundles shaped like the tiny model's I/O."""
    from tools.golden import placeholder_results

    out = tmp_path / "export"
    out.mkdir()
    results = placeholder_results(tiny_ckpt, out)
    write_manifest(out, tiny_ckpt, results, model_id="synthetic/tiny", revision="abc123",
                   requested=[r["name"] for r in results])
    return out


def _run_validate(folder, *flags):
    return subprocess.run([sys.executable, "-m", "ios_bridge.validate", str(folder), *flags], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


# ---------------------------------------------------------------------- hashing


def test_bundle_hash_is_sha256sum_of_the_sorted_listing(tmp_path):
    b = tmp_path / "m.mlpackage"
    (b / "Data" / "x").mkdir(parents=True)
    (b / "Manifest.json").write_bytes(b"{}")
    (b / "Data" / "x" / "weight.bin").write_bytes(bytes(range(256)) * 4)
    (b / "Data" / "B").write_bytes(b"upper")  # 'B' sorts before 'x'
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n" for rel, p in sorted(
        ((p.relative_to(b).as_posix(), p) for p in b.rglob("*") if p.is_file()), key=lambda t: t[0].encode()))
    assert bundle_sha256(b) == hashlib.sha256(listing.encode()).hexdigest()
    assert bundle_bytes(b) == 2 + 1024 + 5
    single = b / "Manifest.json"
    assert bundle_sha256(single) == hashlib.sha256(b"{}").hexdigest() and bundle_bytes(single) == 2
    before = bundle_sha256(b)
    data = bytearray((b / "Data" / "x" / "weight.bin").read_bytes())
    data[100] ^= 1
    (b / "Data" / "x" / "weight.bin").write_bytes(bytes(data))
    assert bundle_sha256(b) != before and bundle_bytes(b) == 2 + 1024 + 5
    with pytest.raises(FileNotFoundError):
        bundle_sha256(tmp_path / "absent")


# ---------------------------------------------------------------------- manifest


def test_manifest_validates_against_its_schema(export):
    import jsonschema

    data = json.loads((export / MANIFEST_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(load_schema())
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    assert validate(export, read_bundles=False) == []
    r = _run_validate(export, "--files-only")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ") and "4 component(s)" in r.stdout and "(partial export)" in r.stdout
    # the placeholder bundles are no Core ML models: reading their specs refuses them, one line each
    problems = validate(export)
    assert len(problems) == 4 and all("not a readable Core ML model" in p for p in problems), problems


def test_manifest_facts_come_from_weights(export, tiny_ckpt):
    from tokenizers import Tokenizer

    m = json.loads((export / MANIFEST_FILE).read_text())
    cfg = tiny_ckpt.config
    p = m["pipeline"]
    sched = dict(cfg.scheduler.to_dict(), lambda_min_clipped="-Infinity")  # JSON has no -inf
    assert p["scheduler"]["config"] == sched and p["scheduler"]["type"] == "flow_dpm_solver_multistep"
    assert p["defaults"] == cfg.defaults.to_dict()
    assert p["latent_shape"] == list(cfg.latent_shape) and p["image_size"] == cfg.image_size
    assert p["vae_scaling_factor"] == cfg.vae.scaling_factor
    assert p["image_preprocess"] == cfg.preprocess.to_dict()
    assert p["conditioning"]["hidden_states"] == cfg.mcp.num_layers
    assert p["conditioning"]["image_tokens"] == cfg.vision.num_tokens
    assert p["prompts"]["chat"] == prompts.CHAT_TEMPLATE and p["prompts"]["editing"] == prompts.EDITING_QS
    assert p["prompts"]["chat"].format(qs=p["prompts"]["generation"].format(prompt="x")) == prompts.generation_prompt("x")
    tok = Tokenizer.from_file(str(tiny_ckpt.folder / "tokenizer.json"))
    assert {t["name"]: t["id"] for t in p["tokenizer"]["special_tokens"]} == {
        n: tok.token_to_id(n) for n in prompts.SPECIAL_TOKENS}
    assert p["tokenizer"]["roles"]["eos"] == prompts.EOS_TOKEN
    files = {f["file"] for f in p["tokenizer"]["files"]}
    assert "tokenizer/tokenizer.json" in files and (export / "tokenizer" / "tokenizer.json").is_file()
    assert m["model"] == {"id": "synthetic/tiny", "revision": "abc123",
                          "diffusion_name_or_path": cfg.diffusion_name_or_path, "synthetic": True}
    dit = next(c for c in m["components"] if c["name"] == "dit")
    assert dit["gates"]["program_psnr_db"] == "Infinity" and dit["sha256"] == bundle_sha256(export / "dit.mlpackage")
    assert [c["name"] for c in m["components"]] == ["vision_encoder", "mcp", "dit", "vae_decoder"]
    # atomic write: no temporary file left, readable like the bundles
    assert not list(export.glob(".manifest.*"))
    assert os.stat(export / MANIFEST_FILE).st_mode & 0o044


def test_write_manifest_takes_conversion_results(tmp_path, tiny_ckpt):
    """Contract C: ConversionResult objects (to_dict) with TensorSpec inputs, chunked components."""
    from weights.bundles.contract import TensorSpec
    from coreml_convert.spec import ConversionResult

    out = tmp_path / "e"
    for name in ("a.mlpackage", "b.mlpackage"):
        (out / name).mkdir(parents=True)
        (out / name / "w.bin").write_bytes(name.encode())
    spec = TensorSpec("x", (1, 8, 1, 64), "float16", "B,C,1,S", {3: (64, 128)})
    res = ConversionResult(name="mcp", file="a.mlpackage", bytes=bundle_bytes(out / "a.mlpackage"),
                           sha256=bundle_sha256(out / "a.mlpackage"), inputs=[spec], outputs=[spec], states=[],
                           functions=("main",), compute_units="cpuAndNeuralEngine",
                           minimum_os={"iOS": "18.0", "macOS": "15.0"}, compression={"precision": "fp16"},
                           gates={"reference_psnr_db": 80.0, "program_psnr_db": 90.0}, seconds=1.5, peak_rss_mb=300)
    chunked = dict(res.to_dict(), name="dit", chunks=["a.mlpackage", "b.mlpackage"])
    path = write_manifest(out, tiny_ckpt, [res, chunked], "synthetic/tiny", None, requested=["mcp", "dit"])
    m = json.loads(path.read_text())
    assert m["components"][0]["inputs"][0]["enumerated"] == {"3": [64, 128]}
    assert [c["file"] for c in m["components"][1]["chunks"]] == ["a.mlpackage", "b.mlpackage"]
    assert "file" not in m["components"][1]
    assert m["export"] == {"target": "ane", "partial": True, "components": ["mcp", "dit"]}
    assert validate(out, read_bundles=False) == []

    stale = dict(res.to_dict(), sha256="0" * 64)
    with pytest.raises(ManifestError, match="a.mlpackage: sha256 .* changed after conversion"):
        write_manifest(out, tiny_ckpt, [stale], "synthetic/tiny", None)
    with pytest.raises(ManifestError, match="does not exist"):
        write_manifest(out, tiny_ckpt, [dict(res.to_dict(), file="gone.mlpackage")], "synthetic/tiny", None)
    with pytest.raises(ManifestError, match="appears twice"):
        write_manifest(out, tiny_ckpt, [res, res], "synthetic/tiny", None)
    with pytest.raises(ManifestError, match="'unet' is not a Mobile-O component"):
        write_manifest(out, tiny_ckpt, [dict(res.to_dict(), name="unet")], "synthetic/tiny", None)


def test_manifest_writer_does_not_import_torch():
    """The manifest writer and validator read the bundle contract (weights.bundles.contract)
    without pulling torch, coremltools or MLX."""
    code = ("import sys, ios_bridge.manifest, ios_bridge.validate; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'coremltools', 'mlx', 'mlx_model'})); "
            "print('weights.bundles.contract' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True"], r.stdout


def test_placeholder_manifest_is_the_contract(export, tiny_ckpt):
    """The placeholder bundles' I/O and compute units are the converter's contract, not a copy."""
    from weights.bundles import contract

    m = json.loads((export / MANIFEST_FILE).read_text())
    for c in m["components"]:
        io = contract.bundle_io(c["name"], tiny_ckpt.config)
        assert c["inputs"] == [t.to_dict() for t in io.inputs], c["name"]
        assert c["outputs"] == [t.to_dict() for t in io.outputs], c["name"]
        assert c["compute_units"] == io.compute_units == contract.COMPONENT_COMPUTE_UNITS[c["name"]]
        assert c["minimum_os"] == contract.MINIMUM_OS
    mcp = next(c for c in m["components"] if c["name"] == "mcp")
    assert [t["name"] for t in mcp["inputs"]] == ["hidden_states", "attention_mask"]
    assert mcp["inputs"][0]["enumerated"] == {"3": list(contract.sequence_lengths(tiny_ckpt.config))}


@pytest.fixture(scope="module")
def llm_export(tiny_ckpt_dir, tiny_export_of):
    """An llm-only export (the three-function bundle) through the CLI: the session's converted
    llm in a folder of its own, then ``--components llm``, which finds it converted and writes
    the partial manifest."""
    import io

    from coreml_convert import cli

    out = tiny_export_of("llm")
    log = io.StringIO()
    code = cli.run(cli.parse_args(["--model", str(tiny_ckpt_dir), "--out", str(out), "--components", "llm"]),
                   stream=log)
    assert code == 0 and cli.SKIPPED in log.getvalue(), log.getvalue()
    return out


@pytest.mark.slow
def test_manifest_lists_every_function_of_llm(llm_export, tiny_ckpt):
    """The manifest carries every function's I/O (not only the default "decode"), as the saved
    bundle's program declares them, the embedding table beside it and the lint summary; the
    schema and the validator accept it."""
    import jsonschema
    import numpy as np

    from weights.bundles import contract
    from coreml_convert.mil_exec import load_program

    data = json.loads((llm_export / MANIFEST_FILE).read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    assert validate(llm_export) == []
    (c,) = data["components"]
    assert c["functions"] == ["decode", "prefill", "hidden_states"] and sorted(c["function_io"]) == sorted(c["functions"])
    assert c["function_io"]["decode"] == {"inputs": c["inputs"], "outputs": c["outputs"]}
    cfg = tiny_ckpt.config
    prefill = c["function_io"]["prefill"]
    assert [t["name"] for t in prefill["inputs"]] == list(contract.LLM_INPUTS)
    assert prefill["inputs"][0]["shape"] == [1, cfg.llm.hidden_size, 1, contract.chunk_length(cfg)]
    assert [t["name"] for t in prefill["outputs"]] == ["hidden_states"]
    program = load_program(llm_export / c["file"])
    for fn, io in c["function_io"].items():
        func = program.functions[fn]
        states = {t["name"] for t in c["states"]}
        want = {t["name"]: t["shape"] for t in io["inputs"]}
        assert {k: [d if isinstance(d, int) else want[k][i] for i, d in enumerate(v.shape)]  # enumerated: symbolic
                for k, v in func.inputs.items() if k not in states} == want, fn
        assert [o.name for o in func.outputs] == [t["name"] for t in io["outputs"]], fn
    (table,) = c["files"]
    assert table["file"] == data["pipeline"]["host_inputs"]["embeddings"] == contract.EMBEDDINGS_FILE
    assert table["shape"] == [cfg.llm.vocab_size, cfg.llm.hidden_size] and table["dtype"] == "int4_row_scale"
    v, h = table["shape"]
    packed = np.fromfile(llm_export / table["file"], np.uint8).reshape(v, h // 2 + 2)  # int4 row + fp16 scale
    assert table["bytes"] == v * (h // 2 + 2)  # about a quarter of fp16's v * h * 2
    rows = contract.dequantize_rows(packed)
    want = np.asarray(tiny_ckpt.load("llm")["model.embed_tokens.weight"], np.float32)
    scale = packed[:, -2:].copy().view("<f2").astype(np.float32)
    inside = np.abs(want) <= 7 * scale
    assert np.all(np.abs(rows - want)[inside] <= (0.5 * scale * 1.01 + 1e-7).repeat(h, 1)[inside])  # round to nearest
    absmax = np.abs(want).max(axis=1, keepdims=True) / 7  # the unclipped scale: the chosen one does no worse
    plain = np.clip(np.round(want / absmax), -8, 7) * absmax
    assert np.all(((rows - want) ** 2).sum(1) <= ((plain - want) ** 2).sum(1) * 1.01 + 1e-9)
    assert c["lint"]["eligible_share"] >= 0.98 and c["lint"]["off"] == 0


@pytest.mark.slow
def test_validate_rejects_bad_function_io(llm_export, tmp_path):
    import shutil

    from weights.bundles import contract

    out = tmp_path / "copy"
    shutil.copytree(llm_export, out)
    good = json.loads((out / MANIFEST_FILE).read_text())

    def problems(mutate):
        m = json.loads(json.dumps(good))
        mutate(m["components"][0])
        (out / MANIFEST_FILE).write_text(json.dumps(m))
        return validate(out)

    p = problems(lambda c: c["function_io"]["prefill"].update(outputs=[]))
    assert len(p) == 1 and "schema: at components/0/function_io/prefill/outputs" in p[0]
    p = problems(lambda c: c.update(functions=["decode", "hidden_states"]))
    assert len(p) == 1 and "function_io names 'prefill', which is not among its functions" in p[0]
    p = problems(lambda c: c["function_io"]["decode"]["inputs"].pop())
    assert len(p) == 1 and "(the default function) differs" in p[0]
    p = problems(lambda c: c["function_io"]["prefill"]["inputs"].append(c["inputs"][0]))
    assert len(p) == 1 and "llm function 'prefill' input 'embeds' is listed twice" in p[0]
    p = problems(lambda c: c["files"][0].update(bytes=1))
    assert len(p) == 1 and "llm table" in p[0] and contract.EMBEDDINGS_FILE in p[0]


# ---------------------------------------------------------------------- tamper suite


def _io(c, fn, group):
    """The manifest's tensors of ``fn`` (both copies of the default function's)."""
    lists = [c["function_io"][fn][group]]
    if fn == c["functions"][0]:
        lists.append(c[group])
    return lists


def _each(c, fn, group, name, change):
    for tensors in _io(c, fn, group):
        for t in tensors:
            if t["name"] == name:
                change(t)


def _host(key, value):
    return lambda m: m["pipeline"]["host_inputs"].update({key: value})


def _llm(change):
    return lambda m: change(m["components"][0])


TAMPERS = {  # a manifest that contradicts its bundle -> (mutation, a fragment of the refusal)
    "input shape": (_llm(lambda c: _each(c, "decode", "inputs", "embeds", lambda t: t["shape"].__setitem__(1, 65))),
                    "input 'embeds': shape"),
    "input dtype": (_llm(lambda c: _each(c, "decode", "inputs", "cos", lambda t: t.update(dtype="float32"))),
                    "input 'cos': dtype"),
    "position dtype": (_llm(lambda c: _each(c, "decode", "inputs", "position", lambda t: t.update(dtype="float16"))),
                       "input 'position': dtype"),
    "input name": (_llm(lambda c: _each(c, "decode", "inputs", "attention_bias", lambda t: t.update(name="mask"))),
                   "input: the manifest lists"),
    "output name": (_llm(lambda c: _each(c, "decode", "outputs", "logits_0", lambda t: t.update(name="logits"))),
                    "output: the manifest lists"),
    "prefill chunk shape": (_llm(lambda c: _each(c, "prefill", "inputs", "embeds",
                                                 lambda t: t["shape"].__setitem__(3, 32))), "'prefill' input 'embeds'"),
    "enumerated lengths": (_llm(lambda c: _each(c, "hidden_states", "inputs", "embeds",
                                                lambda t: t["enumerated"]["3"].pop())), "enumerated shapes"),
    "state shape": (_llm(lambda c: c["states"][0]["shape"].__setitem__(2, 1024)), "state 'key_cache': shape"),
    "state dtype": (_llm(lambda c: c["states"][1].update(dtype="float32")), "state 'value_cache': dtype"),
    "state missing": (_llm(lambda c: c["states"].pop()), "state: the manifest lists"),
    "function order": (_llm(lambda c: c.update(functions=["decode", "hidden_states", "prefill"])), "functions"),
    "compute units": (_llm(lambda c: c.update(compute_units="all")), "compute_units is 'all'"),
    "target": (_llm(lambda c: c.update(target="gpu")), "target is 'gpu'"),
    "recipe": (_llm(lambda c: c["compression"].update(recipe="int4b32")), "recipe is 'int4b32'"),
    "minimum OS": (_llm(lambda c: c["minimum_os"].update(iOS="17.0")), "minimum_os"),
    "context length": (_host("context_length", 1024), "context_length"),
    "chunk length": (_host("chunk_length", 128), "chunk_length"),
    "rope theta": (_host("rope_theta", 10000.0), "rope_theta"),
    "head dim": (_host("head_dim", 32), "head_dim"),
    "mask bias": (_host("mask_bias", -1e9), "mask_bias"),
    "timestep channels": (_host("timestep_channels", 128), "timestep_channels"),
    "lint summary": (_llm(lambda c: c["lint"].update(eligible_share=0.5)), "lint summary differs"),
    "zero components": (lambda m: m.update(components=[]), "0 components"),
    "missing components, not partial": (lambda m: m["export"].update(partial=False), "not declared partial"),
    "asked-for component absent": (lambda m: m["export"].update(components=["llm", "dit"]),
                                   "asked for dit but lists no such component"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_validator_refuses_a_manifest_that_contradicts_its_bundle(llm_export, tmp_path, case):
    """Each field Swift consumes, changed in the manifest alone (hashes intact), is refused by
    reading the bundle's own spec; so are empty and incomplete exports."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(llm_export, out)
    assert validate(out) == []
    mutate, fragment = TAMPERS[case]
    m = json.loads((out / MANIFEST_FILE).read_text())
    mutate(m)
    (out / MANIFEST_FILE).write_text(json.dumps(m))
    problems = validate(out)
    assert problems and any(fragment in p for p in problems), problems
    assert all("\n" not in p for p in problems)


@pytest.mark.slow
def test_validator_refuses_a_missing_lint_report_and_an_unstamped_bundle(llm_export, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(llm_export, out)
    (out / "llm.lint.json").unlink()
    assert any("llm.lint.json: missing" in p for p in validate(out))
    assert len(TAMPERS) + 1 >= 15  # the floor for the tamper suite


# ---------------------------------------------------------------------- validator


def test_tampered_bundle_fails_validate_naming_the_file(export):
    weight = export / "dit.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel"
    data = bytearray(weight.read_bytes())
    data[10] ^= 0xFF  # one changed byte, same size
    weight.write_bytes(bytes(data))
    r = _run_validate(export)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr  # the problem, then the count
    assert lines[0].startswith(f"{export / 'dit.mlpackage'}: sha256 ") and "modified or corrupted" in lines[0]
    assert "Traceback" not in r.stderr


def test_validate_reports_each_problem_on_one_line(export):
    (export / "tokenizer" / "tokenizer_config.json").unlink()
    with open(export / "vae_decoder.mlpackage" / "Manifest.json", "a") as f:
        f.write(" ")
    problems = validate(export)
    assert len(problems) == 2
    assert any(p.startswith(str(export / "tokenizer" / "tokenizer_config.json")) and "missing" in p for p in problems)
    assert any(p.startswith(str(export / "vae_decoder.mlpackage")) and "size is" in p for p in problems)


def test_validate_schema_errors_and_missing_manifest(export, tmp_path):
    m = json.loads((export / MANIFEST_FILE).read_text())
    m["components"][0]["compute_units"] = "gpu"
    del m["pipeline"]["latent_shape"]
    (export / MANIFEST_FILE).write_text(json.dumps(m))
    problems = validate(export)
    assert len(problems) == 2 and all(p.startswith(f"{export / MANIFEST_FILE}: schema: at ") for p in problems)
    assert any("components/0/compute_units" in p for p in problems)
    assert any("latent_shape" in p for p in problems)
    r = _run_validate(tmp_path / "nothing")
    assert r.returncode == 1 and "manifest.json: missing" in r.stderr
    (export / MANIFEST_FILE).write_text("{oops")
    assert "not valid JSON" in validate(export)[0]


# ---------------------------------------------------------------------- golden vectors


@pytest.fixture(scope="module")
def golden(tmp_path_factory, tiny_ckpt_dir):
    from tools.golden import write_goldens

    return write_goldens(tmp_path_factory.mktemp("golden"), model=str(tiny_ckpt_dir))


def test_golden_files(golden):
    for name in ("sampler.json", "tokenizer_cases.json", "pipeline.json", "golden.json", "qwen/tokenizer.json",
                 "export/manifest.json", "token_sampling.json"):
        assert (golden / name).is_file(), name
    assert validate(golden / "export", read_bundles=False) == []  # placeholder bundles
    cases = json.loads((golden / "tokenizer_cases.json").read_text())
    assert cases["special_tokens"] == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                                       "[IMG]": 151646, "[/IMG]": 151647, "<image>": 151648}
    texts = [c["text"] for c in cases["cases"]]
    assert any("😀" in t for t in texts) and any("你好" in t for t in texts) and any("<|im_start|>" in t for t in texts)
    assert max(len(c["ids"]) for c in cases["cases"]) > 20


def test_golden_token_sampling_follows_mlx_lm(golden):
    """token_sampling.json (Swift's TokenSampler goldens): every drawn token is one the filters
    kept, top-k keeps at most k, and mlx-lm's own make_sampler (the Python pipelines' sampler)
    never draws outside the kept set -- the filter order golden.py applies is mlx-lm's."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    g = json.loads((golden / "token_sampling.json").read_text())
    assert len(g["cases"]) >= 20
    for c in g["cases"]:
        kept = set(c["kept"])
        assert set(c["tokens"]) <= kept, c
        if c["top_k"]:
            assert len(kept) <= c["top_k"]
        logits = mx.array(np.array(g["vectors"][c["vector"]], np.float32)[None, :])
        sampler = make_sampler(c["temperature"], c["top_p"], c["min_p"], top_k=c["top_k"])
        mx.random.seed(0)
        drawn = {int(sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True)).item()) for _ in range(40)}
        assert drawn <= kept, (c, drawn - kept)


def test_golden_sampler_is_diffusers(golden):
    """The sampler goldens (mlx_model.support.scheduler) equal diffusers' schedulers within 1e-5."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    g = json.loads((golden / "sampler.json").read_text())
    cfg = {k: (-math.inf if v == "-Infinity" else v) for k, v in g["config"].items()}
    for s in g["schedules"]["flow_dpm_solver_multistep"]:
        ref = DPMSolverMultistepScheduler(**cfg)
        ref.set_timesteps(s["steps"])
        assert s["timesteps"] == ref.timesteps.tolist()
        np.testing.assert_allclose(s["sigmas"], ref.sigmas.numpy(), rtol=0, atol=1e-7)
    for kind in ("flow_dpm_solver_multistep", "flow_euler"):
        t = g["trajectories"][kind]
        if kind == "flow_euler":
            ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg["num_train_timesteps"], shift=cfg["flow_shift"])
        else:
            ref = DPMSolverMultistepScheduler(**cfg)
        ref.set_timesteps(t["steps"])
        x = torch.tensor(np.array(t["initial"], np.float32).reshape(t["shape"]))
        worst = 0.0
        for i, ts in enumerate(ref.timesteps):
            v = torch.tensor(np.float32(0.5 * math.cos(float(ts) / 1000)) * x.numpy()
                             - np.float32(0.2) * np.sin(x.numpy()))
            x = ref.step(v, ts, x).prev_sample
            worst = max(worst, float(np.abs(x.numpy().ravel() - np.array(t["latents"][i])).max()))
        within(worst, at_most=1e-5, what=f"sigmas {kind}")


def test_golden_generation_runs_the_python_pipeline(golden):
    """The fake-runner generation goldens come from mlx_model.pipelines.generation.GenerationPipeline;
    re-derive the final image from the recorded latents with the same fakes."""
    from tools.golden import fake_vae

    g = json.loads((golden / "pipeline.json").read_text())
    cfg_shape = json.loads((golden / "export" / "manifest.json").read_text())["pipeline"]["latent_shape"]
    scale = json.loads((golden / "export" / "manifest.json").read_text())["pipeline"]["vae_scaling_factor"]
    for case in g["generate"] + g["edit"]:
        x = np.array(case["latents"], np.float32).reshape(cfg_shape)
        assert not np.allclose(x, np.array(case["initial"], np.float32).reshape(cfg_shape))
        unit = np.clip(fake_vae(x / np.float32(scale)) / 2 + 0.5, 0, 1)
        np.testing.assert_allclose(unit.ravel(), case["unit"], atol=1e-6)
        assert np.abs(np.round(unit * 255).transpose(1, 2, 0).ravel() - np.array(case["rgb"])).max() <= 1
    assert all(len(u["answer_ids"]) == g["fake_eos_after"] for u in g["understand"])
    n = json.loads((golden / "export" / "manifest.json").read_text())["pipeline"]["conditioning"]["image_tokens"]
    for case in g["edit"] + g["understand"]:  # prompt ids as mlx_model.components.multimodal lays them out
        assert len(case["ids"]) > n and len(set(case["ids"])) > 10


def test_golden_export_copies_a_validated_conversion(export, tmp_path, tiny_ckpt):
    from tools.golden import write_export
    from weights.core.errors import MobileOError

    manifest = write_export(tiny_ckpt, tmp_path / "copy", export, read_bundles=False)  # placeholders
    assert manifest.read_text() == (export / MANIFEST_FILE).read_text()
    assert validate(tmp_path / "copy", read_bundles=False) == []
    (export / "mcp.mlpackage" / "Manifest.json").write_text("{}")  # tampered: refused
    with pytest.raises(MobileOError, match="does not validate: .*mcp.mlpackage"):
        write_export(tiny_ckpt, tmp_path / "copy2", export, read_bundles=False)


def test_golden_cli_exits_cleanly_on_bad_model(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "golden.py"), str(tmp_path / "g"), "--model",
                        str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_swift_components_are_the_component_table():
    """Swift's MobileOComponent cases and each task's components are weights.core.components'."""
    import re

    from weights.core import components

    src = (ROOT / "ios_bridge" / "swift" / "Sources" / "MobileO" / "Engine.swift").read_text()
    enum = re.search(r"enum MobileOComponent\b[^{]*\{\s*case ([^\n]+)", src)[1]
    assert [c.strip() for c in enum.split(",")] == [c.swift for c in components.COMPONENTS.values()]
    for task in components.TASKS:
        listed = re.search(rf"case \.{task}: return \[([^\]]*)\]", src)[1]
        assert [c.strip().lstrip(".") for c in listed.split(",")] == [c.swift for c in components.for_task(task)], task
