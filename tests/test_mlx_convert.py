"""Pre-quantized MLX folders (`python -m mlx_model.convert`): written atomically, loaded with
mx.load, bit-identical to quantizing in memory, and a settings mismatch is one clear error."""

import json

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

import mlx.core as mx

from mlx_model.convert import convert, main  # noqa: E402
from mlx_model.support.mlx_folder import MLXFolder, is_mlx_folder, open_model  # noqa: E402
from weights.core.errors import MobileOError, WeightsError  # noqa: E402

PROMPT = "a red cup"


@pytest.fixture(scope="module")
def q4_dir(tiny_ckpt_dir, tmp_path_factory):
    # group 32: the tiny widths (64) hold whole groups of 32 only
    return convert(str(tiny_ckpt_dir), tmp_path_factory.mktemp("mlx") / "q4", quantize=4, group_size=32,
                   log=lambda *_: None)


def test_folder_layout(q4_dir):
    assert is_mlx_folder(q4_dir)
    meta = json.loads((q4_dir / "config.json").read_text())["mobileo_mlx"]
    assert meta["quantization"] == {"bits": 4, "group_size": 32}
    for f in meta["files"].values():
        assert (q4_dir / f).is_file()
    assert (q4_dir / "tokenizer.json").is_file() and (q4_dir / "README.md").is_file()
    dit = mx.load(str(q4_dir / "dit.safetensors"))
    packed = [k for k in dit if k.endswith(".scales")]
    assert packed and dit[packed[0].replace(".scales", ".weight")].dtype == mx.uint32
    assert not list(q4_dir.parent.glob(".*partial"))


def test_round_trip_is_bit_identical(tiny_ckpt, q4_dir):
    from mlx_model.pipelines.generation import GenerationPipeline

    x0 = np.random.default_rng(0).standard_normal((1, *tiny_ckpt.config.latent_shape)).astype(np.float32)
    mem = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=4, group_size=32)
    disk = GenerationPipeline.from_checkpoint(open_model(str(q4_dir)), quantize=4, group_size=32)
    from mlx.utils import tree_flatten

    for a, b in ((mem.llm.model, disk.llm.model), (mem.dit, disk.dit), (mem.mcp, disk.mcp), (mem.vae, disk.vae)):
        pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
        assert pa.keys() == pb.keys()
        for k in pa:
            assert pa[k].dtype == pb[k].dtype and mx.array_equal(pa[k], pb[k]).item(), k
    ia = mem.generate(ImageSettings(PROMPT, steps=3), latents=x0).images
    ib = disk.generate(ImageSettings(PROMPT, steps=3), latents=x0).images
    np.testing.assert_array_equal(ia, ib)


def test_understanding_loads_the_folder(q4_dir):
    from mlx_model.pipelines.understanding import Understanding

    u = Understanding.from_pretrained(str(q4_dir), quantize=4)
    img = np.zeros((32, 32, 3), np.uint8)
    assert isinstance(u.answer(img, "What is it?", max_tokens=3, temp=0), str)


def test_other_settings_are_an_error_with_a_fix(q4_dir):
    from mlx_model.pipelines.generation import GenerationPipeline

    for q in (0, 8):
        with pytest.raises(WeightsError, match="4-bit, group 32") as e:
            GenerationPipeline.from_pretrained(str(q4_dir), quantize=q)
        assert "-q 4" in str(e.value)


def test_existing_out_is_refused_and_cli_errors_are_one_line(q4_dir, capsys):
    with pytest.raises(MobileOError, match="already exists"):
        convert("demo", q4_dir)
    with pytest.raises(SystemExit) as e:
        main(["--model", "demo", "--out", str(q4_dir)])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Fix:" in err[0]


def test_folder_meta_version_is_checked(q4_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(q4_dir, bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["mobileo_mlx"]["version"] = 99
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="convert"):
        MLXFolder.open(bad)


def test_folder_is_what_mlx_community_users_expect(q4_dir):
    """#24: bf16 scales/biases, the token embedding quantized, every other float bf16, no VAE
    encoder, and a README card (hub header, bytes per component = the files' sizes)."""
    meta = json.loads((q4_dir / "config.json").read_text())["mobileo_mlx"]
    for component, name in meta["files"].items():
        tensors = mx.load(str(q4_dir / name))
        assert meta["bytes"][component] == (q4_dir / name).stat().st_size
        owners = {k.rpartition(".")[0] for k in tensors if k.endswith(".scales")}
        for k, v in tensors.items():
            owner, _, leaf = k.rpartition(".")
            if owner in owners:
                assert v.dtype == (mx.uint32 if leaf == "weight" else mx.bfloat16) or leaf == "bias", k
            elif mx.issubdtype(v.dtype, mx.floating):
                assert v.dtype == mx.bfloat16, (component, k, v.dtype)
        if component == "llm":
            assert "model.embed_tokens.scales" in tensors and tensors["model.embed_tokens.weight"].dtype == mx.uint32
        if component == "vae":
            assert tensors and not [k for k in tensors if not k.startswith("decoder.")]
    assert meta["vae_encoder"] is False
    card = (q4_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mlx\n") and "4-bit affine, group 32, scales and biases bfloat16" in card
    for component in meta["files"]:
        assert f"{meta['bytes'][component] / 1e6:,.1f} MB" in card, component


def test_folder_without_the_vae_encoder_says_so(q4_dir):
    from mlx_model.components.dcae import AutoencoderDC

    with pytest.raises(WeightsError, match="decoder only") as e:
        AutoencoderDC.from_checkpoint(open_model(str(q4_dir)), encoder=True)
    assert "Fix: load the VAE encoder from the original checkpoint" in str(e.value)


def test_old_format_folder_is_one_line_error_with_reconvert(q4_dir, tmp_path, capsys):
    import shutil

    old = tmp_path / "v1"
    shutil.copytree(q4_dir, old)
    raw = json.loads((old / "config.json").read_text())
    raw["mobileo_mlx"]["version"] = 1
    (old / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError) as e:
        open_model(str(old))
    assert "version 1" in str(e.value) and "Fix: convert the model again: python -m mlx_model.convert" in str(e.value)


def test_tied_head_reuses_the_quantized_embedding():
    """Tied (Qwen2-0.5B's config): no lm_head; the logits go through the quantized table's
    ``as_linear`` -- on CPU the JIT form, equal to the dequantized table's product."""
    from mlx_lm.models.qwen2 import Model, ModelArgs

    from mlx_model.support.quant import quantize_linears

    args = ModelArgs(model_type="qwen2", hidden_size=64, num_hidden_layers=1, intermediate_size=128,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=300,
                     tie_word_embeddings=True)
    m = Model(args)
    quantize_linears(m, 4, 32, dequantize=None, embeddings=True)
    emb = m.model.embed_tokens
    assert "lm_head" not in m and type(emb).__name__ == "JITQuantizedEmbedding" and emb.scales.dtype == mx.bfloat16
    x = mx.random.normal((1, 20, 64), key=mx.random.key(0))  # > QMM_MAX_ROWS rows: the JIT path
    w = mx.dequantize(emb.weight, emb.scales.astype(mx.float32), emb.biases.astype(mx.float32), 32, 4)
    np.testing.assert_allclose(np.array(emb.as_linear(x)), np.array(x @ w.T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(emb.as_linear(x[:, :3])), np.array(x[:, :3] @ w.T), rtol=1e-4, atol=1e-4)


@pytest.fixture
def hub_stub():
    """A local stand-in of the Hugging Face hub API (loopback): repo creation, pre-upload
    (every file 'regular'), commit (NDJSON); records what was committed."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"created": [], "files": {}, "fail": False}

    class Hub(BaseHTTPRequestHandler):
        def _send(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            base = f"http://127.0.0.1:{srv.server_port}"
            if state["fail"]:
                return self._send({"error": "Invalid credentials"}, 401)
            if self.path == "/api/repos/create":
                req = json.loads(body)
                state["created"].append(f"{req.get('organization')}/{req['name']}")
                return self._send({"url": f"{base}/{state['created'][-1]}"})
            if self.path == "/api/validate-yaml":  # the README card's YAML header
                state["card_yaml"] = json.loads(body)["content"]
                return self._send({"errors": [], "warnings": []})
            if "/preupload/" in self.path:
                return self._send({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in json.loads(body)["files"]]})
            if "/commit/" in self.path:
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        state["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                return self._send({"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
            self._send({"error": "not here"}, 404)

        def log_message(self, *_):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    state["endpoint"] = f"http://127.0.0.1:{srv.server_port}"
    try:
        yield state
    finally:
        srv.shutdown()
        srv.server_close()


def test_upload_repo_pushes_the_folder(q4_dir, hub_stub, tmp_path, monkeypatch):
    """``--upload-repo`` as mlx_lm.convert's: the repo is created and every file of the folder
    committed, byte for byte, through huggingface_hub against a local stand-in of the hub."""
    import huggingface_hub

    real = huggingface_hub.HfApi
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: real(endpoint=hub_stub["endpoint"], token="hf_test"))
    out = convert("demo", tmp_path / "up", quantize=0, log=lambda *_: None, upload_repo="me/mobileo-mlx")
    assert hub_stub["created"] == ["me/mobileo-mlx"]
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert hub_stub["files"] == local and "library_name: mlx" in hub_stub["card_yaml"]
    hub_stub["fail"] = True
    from mlx_model.convert import upload

    with pytest.raises(MobileOError, match="uploading .* failed") as e:
        upload(out, "me/mobileo-mlx", api=real(endpoint=hub_stub["endpoint"], token="bad"))
    assert "Fix: check HF_TOKEN" in str(e.value) and "\n" not in str(e.value)


def test_loading_builds_nothing_it_drops(q4_dir):
    """The folder's quantized DiT is loaded without ever computing its float weights (the
    structure's random init stays lazy and is replaced): MLX's peak while loading stays near
    the file's bytes, far below the float model's."""
    from mlx.utils import tree_flatten

    from mlx_model.components.dit import SanaTransformer

    folder = open_model(str(q4_dir))
    stored = folder.meta["bytes"]["dit"]
    floats = sum(v.size * 4 for _, v in tree_flatten(SanaTransformer(folder.config.dit).parameters()))
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    SanaTransformer.from_checkpoint(folder, 4, 32)
    peak = mx.get_peak_memory() - before
    assert peak <= 1.5 * stored < floats / 2, (peak, stored, floats)
