"""Golden vectors for the Swift package: ``python tests/tools/golden.py OUTDIR [--export DIR]``.

A test fixture, not part of the product (it may import every package): it runs the MLX
pipeline (``mlx_model``) over fake runners, so the Swift package is checked against the
Python one.  Bundle I/O, sequence lengths and compute units come from the one bundle
contract, ``weights.bundles.contract``.

Writes (all generated, never committed; ``make swift-test`` puts them in build/golden):

  sampler.json          flow DPM-Solver++ and Euler timesteps/sigmas for several step
                        counts, and 20-step trajectories under a fixed fake denoiser,
                        from ``mlx_model.support.scheduler`` driven by ``mlx_model.pipelines.generation.sample``
  qwen/tokenizer.json   a real Qwen2 vocabulary (ranks shipped by ``dashscope``)
  tokenizer_cases.json  ids from the ``tokenizers`` library for tricky strings
  export/               ``--export DIR``: a copy of a real ``python -m coreml_convert`` run
                        (manifest.json, bundles, tokenizer files; ``make swift-test`` converts
                        the tiny model's mcp and dit); without it, a manifest written by
                        ``write_manifest`` over placeholder bundles with the contract's I/O
  token_sampling.json   sampled decoding with fixed uniform draws: for several logits vectors
                        and temperature / top-p / min-p / top-k settings, the tokens mlx-lm's
                        own filters keep (apply_top_p, apply_min_p, apply_top_k in make_sampler's
                        order) and the token each uniform u picks (inverse CDF over the kept
                        tokens in id order, weights exp((l - max) / T)) for Swift's TokenSampler
  coreml/               --export only: a recording for the Core ML stand-in (ios_bridge/swift/Tools/
                        CoreMLStandIn): generate (pipeline.json's first prompt and initial latents,
                        CORE_ML_STEPS steps) through the export's real mcp, dit and (when exported)
                        vae_decoder and llm bundles, fakes for the others, and -- when the export has
                        the llm and vision_encoder -- understand (pipeline.json's first question,
                        greedy), edit (its first instruction) and a one-turn chat; bundles executed by
                        coreml_convert.mil_exec, inputs built as
                        CoreMLRunner.swift builds them; calls.json + arrays.bin hold every
                        prediction's inputs and outputs, result.json the final latents (and image)
  host.json             the inputs the app computes for the pure-fp16 bundles, from
                        ``weights.bundles.contract`` (RoPE cos/sin, causal and padding masks,
                        KV-cache write masks, DiT timestep features) for Swift's HostInputs
  pipeline.json         generate / edit / understand with the fake runners below, run by
                        mlx_model's own pipelines (GenerationPipeline, with an image encoder
                        for editing; Understanding)

The fake runners are simple closed forms that Swift re-implements in its tests
(Tests/MobileOTests/FakeRunners.swift); keep the two in step.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np

from weights.core import prompts
from weights.core.errors import MobileOError, run_cli

FORMAT = 1
SAMPLER_STEPS = (1, 2, 3, 5, 10, 14, 15, 20, 28)
TRAJECTORY_STEPS = 20
TRAJECTORY_SHAPE = (2, 4, 4)

# strings whose ids Swift must reproduce exactly
TOKENIZER_CASES = [
    "Hello world",
    "a red cup on a wooden table",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\ttabs\t\t\tend",
    "line one\nline two\r\nline three\n\n\n",
    "\n\n  \n \t\n",
    "multiple     spaces   between",
    "numbers 1234567890 3.14159 -42 1e-5 0x1F 1,000,000",
    "12345678901234567890",
    "I'm you're he's we've they'll I'd don't CAN'T SHE'S We'Re",
    "'s 's's ''' \"quoted\" 'single'",
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Ελληνικά και русский текст",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 ❤️",
    "café naïve résumé",
    "cafe\u0301 nai\u0308ve",  # decomposed: NFC must compose
    "ﬁ ligature and Ａ fullwidth ① circled",
    "non\u00a0breaking\u2003em\u3000ideographic spaces",
    "zero\u200bwidth\u200djoiner",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<image>\nWhat is in the picture?",
    "[IMG][/IMG]<image><|endoftext|>",
    "<|im_start|><|im_start|>no space<|im_end|>",
    "<|im_start and <image without closing",
    "snake_case camelCase kebab-case PascalCase",
    "https://example.com/path?query=1&x=y#frag",
    "def f(x):\n    return x ** 2  # comment\n",
    "!!!???...,,,;;;:::",
    "ſt long s and 'ſ",
    "Mixed中文English混合123文字",
    "Please generate image based on the following caption: a cat wearing a hat",
    "\u0000control\u0001chars\u007f",
    "a" * 300,
    "3" * 50,
    "١٢٣ Ⅻ ½ ²³ ⅔",  # Arabic-Indic digits, letter numbers, other numbers
    "\u0301abc \u0301 \u0301\u0301",  # combining marks with nothing to combine with
    "İstanbul ǅungla ǈ titlecase",
    "x \n y", "a\u00a0\nb", "\r\r\n\r", "\u2028line sep\u2029para\u0085next",
    "'LL 'Ve 'rE 'D 'M 'T",
    "    indented code\n\tand tab\n",
    "a  \t  b \t\n ",
    "😀a a😀 ab😀😀cd 1😀2",
    "$100.00 €50 ¥20 £3",
    "ｈｅｌｌｏ ＷＯＲＬＤ",
    "\u212b vs \u00c5 vs A\u030a",  # angstrom sign: NFC maps it to U+00C5
    "\u1112\u1161\u11ab\u1100\u1173\u11af",  # conjoining jamo: NFC composes 한글
    "word\u200d\u200d end\ufeff bom",
    "e\u0301\u0301 double accent",
]


# ---------------------------------------------------------------------- fake runners
# Each is a closed form computed in float64 from float32 inputs, returning float32.

def fake_hidden_states(values: list, image: np.ndarray | None, num: int, dim: int) -> list[np.ndarray]:
    """Hidden states [L, D] for a prompt given per position either a token id (int) or
    ``("image", n)``: token: sin(1e-3 * id * (d+1) + 0.37 (j+1) + 0.01 p);
    image row n: 0.5 (j+1) emb[n, d] + 0.01 p."""
    d = np.arange(dim, dtype=np.float64)
    out = []
    for j in range(num):
        rows = []
        for p, v in enumerate(values):
            if isinstance(v, tuple):
                rows.append(0.5 * (j + 1) * image[v[1]].astype(np.float64) + 0.01 * p)
            else:
                rows.append(np.sin(1e-3 * v * (d + 1) + 0.37 * (j + 1) + 0.01 * p))
        out.append(np.array(rows, np.float64).astype(np.float32))
    return out


def fake_mcp(hidden: list[np.ndarray], out_dim: int) -> np.ndarray:
    """sum_j (j+1)/K * h_j @ W + b,  W[d, k] = cos(0.1 (d+1)(k+1)) / sqrt(D),  b_k = 0.01 (k+1) - 0.2."""
    k_n, dim = len(hidden), hidden[0].shape[-1]
    d = np.arange(dim, dtype=np.float64)[:, None]
    k = np.arange(out_dim, dtype=np.float64)[None, :]
    w = np.cos(0.1 * (d + 1) * (k + 1)) / math.sqrt(dim)
    acc = sum((j + 1) / k_n * (h.astype(np.float64) @ w) for j, h in enumerate(hidden))
    return (acc + (0.01 * (np.arange(out_dim) + 1) - 0.2)).astype(np.float32)


def fake_dit(latents: np.ndarray, t: float, context: np.ndarray) -> np.ndarray:
    """Per batch item b: -0.6 x_b + 0.2 t / 1000 + mean(context_b)."""
    x = latents.astype(np.float64)
    m = context.astype(np.float64).reshape(context.shape[0], -1).mean(axis=1)
    return (-0.6 * x + 0.2 * float(t) / 1000 + m.reshape(-1, *([1] * (x.ndim - 1)))).astype(np.float32)


def fake_vae(z: np.ndarray, factor: int = 2) -> np.ndarray:
    """[C, h, w] -> [3, f h, f w]: tanh(0.8 z[c mod C] (nearest-upsampled) + 0.1 (c+1))."""
    z = z.astype(np.float64)
    up = z.repeat(factor, axis=-2).repeat(factor, axis=-1)
    return np.stack([np.tanh(0.8 * up[c % z.shape[0]] + 0.1 * (c + 1)) for c in range(3)]).astype(np.float32)


def fake_vision(pixels: np.ndarray, tokens: int, dim: int) -> np.ndarray:
    """[3, S, S] -> [N, D]: sin(0.3 (n+1) + 0.05 (d+1)) * mean(pixels)."""
    n = np.arange(tokens, dtype=np.float64)[:, None]
    d = np.arange(dim, dtype=np.float64)[None, :]
    return (np.sin(0.3 * (n + 1) + 0.05 * (d + 1)) * pixels.astype(np.float64).mean()).astype(np.float32)


def fake_pixels(size: int) -> np.ndarray:
    """[3, S, S]: ((7c + 3y + 5x) mod 256) / 255."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    return (((7 * c + 3 * y + 5 * x) % 256) / 255).astype(np.float32)


FAKE_EOS_AFTER = 6  # the fake LLM ends its answer after this many tokens


def fake_next_token(values: list, generated: int, eos: int) -> int:
    """The fake LLM's greedy choice: eos after FAKE_EOS_AFTER tokens, else a printable byte
    token 33 + (sum_p v_p (p+1) mod 1000003) mod 94, with image positions counting as 7."""
    if generated >= FAKE_EOS_AFTER:
        return eos
    s = sum((7 if isinstance(v, tuple) else v) * (p + 1) for p, v in enumerate(values)) % 1000003
    return 33 + s % 94


def fake_logits(target: int, vocab: int) -> np.ndarray:
    return -np.abs(np.arange(vocab) - target).astype(np.float32)


# ---------------------------------------------------------------------- sampler


def fake_velocity(x: np.ndarray, t) -> np.ndarray:
    """The trajectory's fixed denoiser: 0.5 cos(t / 1000) x - 0.2 sin(x), in float32."""
    return np.float32(0.5 * math.cos(float(t) / 1000)) * x - np.float32(0.2) * np.sin(x)


def sampler_goldens(cfg) -> dict:
    from ios_bridge.manifest import json_safe
    from mlx_model.pipelines.generation import sample
    from mlx_model.support.scheduler import SCHEDULERS
    from weights.core.samplers import SAMPLERS

    out = {"config": json_safe(cfg.scheduler.to_dict()), "schedules": {}, "trajectories": {}}
    kinds = {SAMPLERS[name]: SCHEDULERS[name] for name in SAMPLERS}  # the manifest's type names
    for name, cls in kinds.items():
        out["schedules"][name] = [
            {"steps": n, "timesteps": [float(t) for t in s.timesteps], "sigmas": [float(v) for v in s.sigmas]}
            for n in SAMPLER_STEPS for s in [cls(cfg.scheduler, n)]
        ]
        x0 = np.random.default_rng(0).standard_normal(TRAJECTORY_SHAPE).astype(np.float32)
        sched = cls(cfg.scheduler, TRAJECTORY_STEPS)
        traj = [x.astype(np.float32).ravel().tolist() for x in sample(fake_velocity, x0, sched)]
        out["trajectories"][name] = {"steps": TRAJECTORY_STEPS, "shape": list(TRAJECTORY_SHAPE),
                                     "initial": x0.ravel().tolist(), "latents": traj}
    return out


# ---------------------------------------------------------------------- tokenizer


def qwen_tokenizer(folder: Path) -> Path:
    from weights.mapping.tokenizer_files import qwen_tiktoken_path, tiktoken_vocab, write_tokenizer

    path = qwen_tiktoken_path()
    if path is None:
        raise MobileOError("the dashscope package (which ships qwen.tiktoken) is not installed.",
                           fix="pip install dashscope (it is in the dev extras: pip install -e '.[dev]').")
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiktoken_vocab(path)
    write_tokenizer(folder, vocab, merges)
    return folder / "tokenizer.json"


def tokenizer_goldens(tokenizer_json: Path) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    templated = [prompts.generation_prompt("a red cup"), prompts.understanding_prompt("What is this? 这是什么"),
                 prompts.editing_prompt("make it blue 🎨")]
    cases = []
    for text in TOKENIZER_CASES + templated:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    specials = {name: tok.token_to_id(name) for name in prompts.SPECIAL_TOKENS}
    return {"tokenizer": tokenizer_json.name, "special_tokens": specials, "cases": cases}


# ---------------------------------------------------------------------- manifest


# the components the placeholder manifest lists (the image generation path and the vision encoder)
PLACEHOLDER_COMPONENTS = ("vision_encoder", "mcp", "dit", "vae_decoder")


def placeholder_results(ckpt, out: Path) -> list[dict]:
    """Conversion results for placeholder bundles with the contract's I/O for this checkpoint
    (used until a real conversion run is passed with --export).  Not Core ML models: an export
    of them is partial (``requested=PLACEHOLDER_COMPONENTS``) and validates only with
    ``validate(folder, read_bundles=False)``."""
    from weights.bundles import contract
    from weights.bundles.hashing import bundle_bytes, bundle_sha256

    results = []
    for name in PLACEHOLDER_COMPONENTS:
        io = contract.bundle_io(name, ckpt.config)
        bundle = out / f"{name}.mlpackage"
        (bundle / "Data" / "com.apple.CoreML").mkdir(parents=True, exist_ok=True)
        (bundle / "Manifest.json").write_text(json.dumps({"placeholder": name}))
        (bundle / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(name.encode() * 64)
        results.append({
            "name": name, "file": bundle.name, "bytes": bundle_bytes(bundle), "sha256": bundle_sha256(bundle),
            "inputs": [t.to_dict() for t in io.inputs], "outputs": [t.to_dict() for t in io.outputs],
            "states": [t.to_dict() for t in io.states], "functions": list(io.functions),
            "compute_units": io.compute_units, "minimum_os": io.minimum_os,
            "compression": {"precision": "fp16", "weights": "fp16"},
            "gates": {"reference_psnr_db": 61.5, "program_psnr_db": float("inf")},
            "seconds": 0.0, "peak_rss_mb": 0.0,
        })
    return results


def write_export(ckpt, out: Path, export: Path | None, read_bundles: bool = True) -> Path:
    """The golden export: a copy of a validated conversion run (``export``; ``read_bundles``
    checks the manifest against the bundles' specs too), or placeholder bundles."""
    from ios_bridge.manifest import write_manifest

    if out.exists():
        shutil.rmtree(out)
    if export is not None:  # a real conversion run (small: the tiny model), bundles included
        from ios_bridge.validate import validate

        problems = validate(export, read_bundles=read_bundles)
        if problems:
            raise MobileOError(f"--export {export} does not validate: {problems[0]}",
                               fix=f"rerun python -m coreml_convert --out {export}.")
        shutil.copytree(export, out, ignore=shutil.ignore_patterns(".*", "*.json.tmp"))
        return out / "manifest.json"
    out.mkdir(parents=True)
    return write_manifest(out, ckpt, placeholder_results(ckpt, out), model_id="synthetic/tiny", revision=None,
                          requested=PLACEHOLDER_COMPONENTS)


# ---------------------------------------------------------------------- pipeline


TOKEN_SENTINEL = -12345.0  # last channel of a fake token embedding (image rows never hold it)


class _FakeLLM:
    """The fake LLM behind the real Python pipelines (MLX arrays in and out).

    ``embed``: a token becomes [id, 0, ..., 0, TOKEN_SENTINEL]; image rows (spliced in by
    mlx_model.components.multimodal) stay as they are, so ``hidden_states`` can tell them apart.
    ``__call__`` (understanding): a prompt of several positions starts a new answer, one
    position continues it; the logits peak at :func:`fake_next_token`."""

    class _Model:
        layers = ()  # mlx_lm.models.cache.make_prompt_cache(model) -> an empty cache

    def __init__(self, tokenizer, dim: int):
        import mlx.core as mx

        self.tokenizer, self.dim, self.dtype = tokenizer, dim, mx.float32
        self.model = self._Model()
        self.values: list = []
        self.generated = 0

    def embed(self, ids):
        import mlx.core as mx

        ids = np.array(ids)
        out = np.zeros((*ids.shape, self.dim), np.float32)
        out[..., 0] = ids
        out[..., -1] = TOKEN_SENTINEL
        return mx.array(out)

    @staticmethod
    def _values(rows: np.ndarray) -> tuple[list, np.ndarray]:
        """Per position: a token id, or ("image", n); and the image rows stacked."""
        values, image = [], []
        for r in rows:
            if r[-1] == TOKEN_SENTINEL:
                values.append(int(r[0]))
            else:
                values.append(("image", len(image)))
                image.append(r)
        return values, np.array(image, np.float32).reshape(len(image), rows.shape[-1])

    def hidden_states(self, embeds, num: int, mask=None):
        import mlx.core as mx

        per_batch = [fake_hidden_states(*self._values(rows), num, self.dim) for rows in np.array(embeds)]
        return [mx.array(np.stack([b[j] for b in per_batch])) for j in range(num)]

    def prefill(self, embeds, cache):
        """A new prompt (mlx_model's LanguageModel.prefill): the last position's logits [1, 1, V]."""
        import mlx.core as mx

        self.values, self.generated = self._values(np.array(embeds)[0])[0], 0
        logits = fake_logits(fake_next_token(self.values, 0, self.tokenizer.eos_id), self.tokenizer.vocab_size)
        return mx.array(logits[None, None, :])

    def __call__(self, embeds, cache=None):
        import mlx.core as mx

        rows = np.array(embeds)[0]
        if rows.shape[0] > 1:  # a new prompt
            self.values, self.generated = self._values(rows)[0], 0
        else:
            self.values.append(int(rows[0, 0]))
            self.generated += 1
        target = fake_next_token(self.values, self.generated, self.tokenizer.eos_id)
        logits = fake_logits(target, self.tokenizer.vocab_size)
        return mx.array(np.broadcast_to(logits, (1, rows.shape[0], logits.shape[0])).copy())


class _FakeEncoder:
    """mlx_model.components.multimodal.ImageEncoder's interface over :func:`fake_vision`."""

    def __init__(self, cfg):
        self.num_tokens, self.dim = cfg.vision.num_tokens, cfg.llm.hidden_size

    def __call__(self, pixels):
        import mlx.core as mx

        return mx.array(fake_vision(np.asarray(pixels), self.num_tokens, self.dim)[None])

    encode = __call__


class _FakeMCP:
    def __init__(self, out_dim: int):
        self.out_dim = out_dim

    def __call__(self, hidden):
        import mlx.core as mx

        hs = [np.array(h) for h in hidden]
        return mx.array(np.stack([fake_mcp([h[b] for h in hs], self.out_dim) for b in range(hs[0].shape[0])]))


class _FakeDiT:
    def __call__(self, x, ctx, ts):
        import mlx.core as mx

        t = float(np.array(ts)[0])
        return mx.array(fake_dit(np.array(x), t, np.array(ctx)))


class _FakeVAE:
    def decode(self, z):
        import mlx.core as mx

        return mx.array(np.stack([fake_vae(b) for b in np.array(z)]))


def _image_result(cfg, res) -> dict:
    x = res.latents[0]
    unit = np.clip(fake_vae(x / np.float32(cfg.vae.scaling_factor)) / 2 + 0.5, 0, 1)
    return {"initial": res.initial_latents[0].ravel().tolist(), "latents": x.ravel().tolist(),
            "unit": unit.ravel().tolist(), "rgb": res.images[0].ravel().tolist()}


def pipeline_goldens(ckpt) -> dict:
    """generate / edit / understand run by mlx_model's own pipelines (GenerationPipeline, given
    an image encoder for editing; Understanding) over the fake runners."""
    from mlx_model.support.image_settings import ImageSettings

    from mlx_model.pipelines.generation import GenerationPipeline
    from mlx_model.support.tokenizer import Tokenizer
    from mlx_model.pipelines.understanding import Understanding

    cfg = ckpt.config
    tok = Tokenizer.from_checkpoint(ckpt)
    llm = _FakeLLM(tok, cfg.llm.hidden_size)
    pipe = GenerationPipeline(llm, _FakeMCP(cfg.dit.caption_channels), _FakeDiT(), _FakeVAE(), cfg,
                              encoder=_FakeEncoder(cfg))
    rng = np.random.default_rng(1)
    out: dict = {"fake_eos_after": FAKE_EOS_AFTER, "generate": [], "edit": [], "understand": []}

    for prompt, steps, guidance in (("a red cup", 20, 1.5), ("两只猫 🐱 on a sofa", 7, 3.0)):
        x0 = rng.standard_normal((1, *cfg.latent_shape)).astype(np.float32)
        res = pipe.generate(ImageSettings(prompt, steps=steps, guidance=guidance), latents=x0)
        out["generate"].append({"prompt": prompt, "steps": steps, "guidance": guidance,
                                "ids": pipe.prompt_ids(prompt), **_image_result(cfg, res)})

    pixels = fake_pixels(cfg.preprocess.size)  # [3, S, S]; the Python encoder takes [1, S, S, 3]
    nhwc = pixels.transpose(1, 2, 0)[None]
    for instruction, steps, guidance in (("make the cup blue", 20, 1.5), ("snow 雪", 5, 2.0)):
        x0 = rng.standard_normal((1, *cfg.latent_shape)).astype(np.float32)
        res = pipe.generate(ImageSettings(instruction, steps=steps, guidance=guidance), image=nhwc, latents=x0)
        out["edit"].append({"instruction": instruction, "steps": steps, "guidance": guidance,
                            "ids": pipe.prompt_ids(instruction, image=nhwc), **_image_result(cfg, res)})

    reader = Understanding(llm, _FakeEncoder(cfg), cfg)
    for question in ("What is in the image?", "Describe it in 3 words."):
        tokens = [r.token for r in reader.stream(nhwc[0], question, temp=0.0) if r.token is not None]
        out["understand"].append({"question": question, "ids": reader.prompt(question).ids(),
                                  "answer_ids": tokens, "text": reader.answer(nhwc[0], question, temp=0.0)})
    return out


# ---------------------------------------------------------------------- host inputs


def host_goldens(cfg) -> dict:
    """contract's host-side inputs for a few cases (Swift HostInputs must match them)."""
    from weights.bundles import contract
    from weights.core.configs import DiTConfig

    t = contract.context_length(cfg)
    positions = [0, 1, 7, 63, 300, t - 1]
    cos, sin = contract.rope(cfg.llm, positions)
    valid = np.array([1, 1, 1, 0, 0], np.float32)
    timesteps = [0.0, 1.5, 417.25, 999.0]
    return {
        "head_dim": cfg.llm.head_dim, "rope_theta": float(cfg.llm.rope_theta), "positions": positions,
        "cos": cos.reshape(-1).tolist(), "sin": sin.reshape(-1).tolist(),
        "bias_queries": [0, 1, 2, 3, 4], "bias_keys": [0, 1, 2, 3, 4], "bias_valid": valid.tolist(),
        "bias": contract.causal_bias(np.arange(5), np.arange(5), valid).reshape(-1).tolist(),
        "mask_bias": float(DiTConfig.MASK_BIAS),
        "update": [{"position": p, "count": c, "slots": t,
                    "value": contract.cache_position(p, c, t).astype(np.float32).tolist()}
                   for p, c in ((0, contract.chunk_length(cfg)), (contract.chunk_length(cfg), contract.chunk_length(cfg)),
                                (5, 1), (37, contract.chunk_length(cfg)), (t - 1, 1))],
        "timesteps": timesteps, "timestep_channels": DiTConfig.TIMESTEP_CHANNELS,
        "timestep_max_period": float(DiTConfig.TIMESTEP_MAX_PERIOD),
        "timestep_features": contract.timestep_features(timesteps).reshape(-1).tolist(),
        "embedding_rows": _embedding_rows_golden(contract),
    }


def _embedding_rows_golden(contract) -> dict:
    """A small table in the app's format (contract.quantize_rows: int4 rows + fp16 scales) and
    the rows it holds (Swift EmbeddingTable must read the same values)."""
    rng = np.random.default_rng(7)
    table = rng.standard_normal((3, 8)).astype(np.float32) * np.array([[0.02], [1.5], [0.0]], np.float32)
    packed = contract.quantize_rows(table)
    return {"vocab": 3, "hidden": 8, "dtype": contract.EMBEDDINGS_DTYPE, "bytes": packed.reshape(-1).tolist(),
            "values": contract.dequantize_rows(packed).reshape(-1).tolist()}


# ---------------------------------------------------------------------- token sampling

# (temperature, top_p, top_k, min_p): Mobile-O's default (top-k 50), each filter alone, and mixes
SAMPLING_SETTINGS = [(0.8, 1.0, 50, 0.0), (0.7, 0.9, 0, 0.0), (1.0, 1.0, 0, 0.05), (1.0, 0.9, 20, 0.0),
                     (1.2, 0.95, 40, 0.02), (0.5, 0.8, 5, 0.1), (0.8, 1.0, 0, 0.0), (1.0, 0.5, 1000, 0.0)]
SAMPLING_UNIFORMS = [0.0, 0.137, 0.5, 0.861, 0.9999]


def sampling_filters(logits: np.ndarray, top_p: float, top_k: int, min_p: float) -> list[int]:
    """Token ids mlx-lm's sampler keeps: its own filter functions on the log-probabilities at
    temperature 1, in make_sampler's order (top-p, min-p, top-k; mlx_lm.sample_utils)."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    x = mx.array(logits[None, :])
    x = x - mx.logsumexp(x, axis=-1, keepdims=True)
    if 0 < top_p < 1.0:
        x = apply_top_p(x, top_p)
    if min_p != 0.0:
        x = apply_min_p(x, min_p)
    if top_k > 0:
        x = apply_top_k(x, top_k)
    kept = np.isfinite(np.array(x[0]))
    return [int(i) for i in np.nonzero(kept)[0]]


def inverse_cdf(logits: np.ndarray, kept: list[int], temperature: float, u: float) -> int:
    """The first kept token (ascending id) whose cumulative weight exp((l - max) / T) exceeds u x total."""
    m = float(np.max(logits))
    w = np.exp((logits[kept].astype(np.float64) - m) / temperature)
    cum = np.cumsum(w)
    return int(kept[min(int(np.searchsorted(cum, u * cum[-1], side="right")), len(kept) - 1)])


def token_sampling_goldens() -> dict:
    rng = np.random.default_rng(23)
    vectors = [(rng.standard_normal(2000) * 3).astype(np.float32) for _ in range(3)]
    vectors[2][[5, 77, 1500]] = 15.0  # a peaked vector with three tied top tokens
    cases = []
    for v, logits in enumerate(vectors):
        for temperature, top_p, top_k, min_p in SAMPLING_SETTINGS:
            kept = sampling_filters(logits, top_p, top_k, min_p)
            cases.append({"vector": v, "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                          "kept": kept, "uniforms": SAMPLING_UNIFORMS,
                          "tokens": [inverse_cdf(logits, kept, temperature, u) for u in SAMPLING_UNIFORMS]})
    return {"vectors": [x.tolist() for x in vectors], "cases": cases}


# ---------------------------------------------------------------------- Core ML recording

CORE_ML_STEPS = 4


class _Recorder:
    """Runs bundles with the numpy MIL executor and records each call for the Swift stand-in."""

    def __init__(self, export: Path, manifest: dict):
        self.export, self.components = export, {c["name"]: c for c in manifest["components"]}
        self.calls, self.blob = [], bytearray()

    def _array(self, values: np.ndarray, dtype: str) -> dict:
        a = np.ascontiguousarray(values, np.float32)
        entry = {"shape": list(a.shape), "dtype": dtype, "offset": len(self.blob)}
        self.blob += a.astype("<f4").tobytes()
        return entry

    def run(self, name: str, inputs: dict[str, np.ndarray], function: str | None = None,
            states: dict | None = None) -> dict[str, np.ndarray]:
        from coreml_convert.mil_exec import run_program

        comp = self.components[name]
        io = (comp.get("function_io") or {}).get(function) or comp
        dtypes = {t["name"]: t["dtype"] for t in io["inputs"]}
        kinds = {"float16": np.float16, "int32": np.int32}
        cast = {k: np.asarray(v).astype(kinds.get(dtypes[k], np.float32)) for k, v in inputs.items()}
        out = run_program(self.export / comp["file"], cast, function=function or "main", states=states)
        out = {k: np.asarray(v, np.float32) for k, v in out.items()}
        out_dtypes = {t["name"]: t["dtype"] for t in io["outputs"]}
        self.calls.append({"bundle": comp["file"], "function": function, "stateful": states is not None,
                           "inputs": {k: self._array(v.astype(np.float32), dtypes[k]) for k, v in cast.items()},
                           "outputs": {k: self._array(v, out_dtypes.get(k, "float32")) for k, v in out.items()}})
        return out

    def length(self, name: str, feature: str, axis: int, n: int, function: str | None = None) -> int:
        comp = self.components[name]
        io = (comp.get("function_io") or {}).get(function) or comp
        spec = next(t for t in io["inputs"] if t["name"] == feature)
        sizes = (spec.get("enumerated") or {}).get(str(axis)) or [spec["shape"][axis]]
        return min(s for s in sizes if s >= n)


class _RecordedLLM:
    """The llm bundle's three functions driven as CoreMLRunner.swift's CoreMLLanguageModel
    drives them: embedding rows from the table beside the bundle (right-padded with the pad
    token's row), host-computed RoPE, masks and cache positions, one KV-cache state shared by
    "prefill" and "decode"."""

    def __init__(self, rec: _Recorder, pipeline: dict, cfg):
        from weights.bundles import contract

        self.rec, self.cfg, self.contract = rec, cfg, contract
        comp, host = rec.components["llm"], pipeline["host_inputs"]
        entry = next(t for t in comp["files"] if t["file"] == host["embeddings"])
        raw = np.fromfile(rec.export / entry["file"], np.uint8)
        vocab, hidden = entry["shape"]
        self.table = (contract.dequantize_rows(raw.reshape(vocab, hidden // 2 + contract.ROW_SCALE_BYTES))
                      if entry["dtype"] == contract.EMBEDDINGS_DTYPE else raw.view("<f2").reshape(vocab, hidden).astype(np.float32))
        tok = pipeline["tokenizer"]
        names = {t["name"]: t["id"] for t in tok["special_tokens"]}
        self.pad = names.get(tok["roles"].get("pad"), 0)
        self.chunk, self.slots = host["chunk_length"], host["context_length"]
        self.states, self.position = None, 0

    def rows(self, ids, image_id: int | None = None, image: np.ndarray | None = None) -> np.ndarray:
        """[L, D]: table rows, the image's rows in order at the image token's positions."""
        out, n = [], 0
        for i in ids:
            if image is not None and i == image_id:
                out.append(image[n]); n += 1
            else:
                out.append(self.table[i])
        return np.array(out, np.float32)

    def columns(self, rows: np.ndarray, a: int, b: int, length: int) -> np.ndarray:
        part = np.concatenate([rows[a:b], np.tile(self.table[self.pad], (length - (b - a), 1))])
        return part.T[None, :, None, :]

    def hidden_states(self, rows: np.ndarray, k: int) -> list[np.ndarray]:
        n = rows.shape[0]
        s = self.rec.length("llm", "embeds", 3, n, function="hidden_states")
        pos = np.arange(s)
        cos, sin = self.contract.rope(self.cfg.llm, pos)
        out = self.rec.run("llm", {"embeds": self.columns(rows, 0, n, s), "cos": cos, "sin": sin,
                                   "attention_bias": self.contract.causal_bias(pos, pos, pos < n)},
                           function="hidden_states")["hidden_states"]
        assert out.shape[0] == k
        return [out[j, :, 0, :n].T for j in range(k)]

    def _step(self, function: str, embeds: np.ndarray, start: int, count: int) -> dict:
        pos = np.arange(start, start + count)
        cos, sin = self.contract.rope(self.cfg.llm, pos)
        return self.rec.run("llm", {"embeds": embeds, "cos": cos, "sin": sin,
                                    "attention_bias": self.contract.causal_bias(pos, np.arange(self.slots)),
                                    "position": self.contract.cache_position(start, count, self.slots)},
                            function=function, states=self.states)

    def prefill(self, rows: np.ndarray) -> np.ndarray:
        from coreml_convert.mil_exec import make_states

        self.states = make_states(self.rec.export / self.rec.components["llm"]["file"], "decode")
        last, start = rows.shape[0] - 1, 0
        while start < last:
            self._step("prefill", self.columns(rows, start, min(start + self.chunk, last), self.chunk), start, self.chunk)
            start += self.chunk
        self.position = last
        return self.decode_embeds(self.columns(rows, last, last + 1, 1))

    def decode_embeds(self, embeds: np.ndarray) -> np.ndarray:
        out = self._step("decode", embeds, self.position, 1)
        self.position += 1
        names = sorted((n for n in out if n.startswith("logits_")), key=lambda n: int(n[7:]))
        return np.concatenate([out[n].reshape(-1) for n in names])

    def decode(self, token: int) -> np.ndarray:
        return self.decode_embeds(self.table[[token]].T[None, :, None, :])


CORE_ML_ANSWER_TOKENS = 8


def _greedy(rec: _Recorder, p: dict, cfg, ids: list[int], image: np.ndarray | None) -> list[int]:
    """Greedy answer through the llm bundle (prefill, then decode), as CoreMLRunner.swift drives it."""
    llm = _RecordedLLM(rec, p, cfg)
    tok = p["tokenizer"]
    names = {t["name"]: t["id"] for t in tok["special_tokens"]}
    image_id, eos = names[tok["roles"]["image"]], names[tok["roles"]["eos"]]
    logits, out = llm.prefill(llm.rows(ids, image_id, image)), []
    for n in range(CORE_ML_ANSWER_TOKENS):
        nxt = int(np.argmax(logits))
        if nxt == eos:
            break
        out.append(nxt)
        if n + 1 < CORE_ML_ANSWER_TOKENS:
            logits = llm.decode(nxt)
    return out


def _recorded_answer(rec: _Recorder, p: dict, cfg, case: dict) -> dict:
    """understand (pipeline.json's first question) through the vision_encoder and llm bundles, greedy."""
    feats = rec.run("vision_encoder", {"image": fake_pixels(p["image_preprocess"]["size"])[None]})["image_features"]
    return {"question": case["question"], "max_new_tokens": CORE_ML_ANSWER_TOKENS, "prompt_ids": case["ids"],
            "ids": _greedy(rec, p, cfg, case["ids"], feats[0, :, 0, :].T)}


CORE_ML_CHAT = "hello there"


def _recorded_chat(rec: _Recorder, p: dict, cfg) -> dict:
    """A one-turn text chat through the llm bundle: the manifest's chat template around the
    message, token ids from the export's tokenizer.json (the `tokenizers` library), greedy."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(rec.export / next(f["file"] for f in p["tokenizer"]["files"]
                                                    if f["file"].endswith("tokenizer.json"))))
    ids = tok.encode(p["prompts"]["chat"].replace("{qs}", CORE_ML_CHAT), add_special_tokens=False).ids
    return {"message": CORE_ML_CHAT, "max_new_tokens": CORE_ML_ANSWER_TOKENS, "prompt_ids": ids,
            "ids": _greedy(rec, p, cfg, ids, None)}


def _channels(rows: np.ndarray, s: int) -> np.ndarray:
    """[L, C] -> (C, 1, S), right-padded with zeros (CoreMLRunner's rowsToChannels)."""
    out = np.zeros((rows.shape[1], 1, s), np.float32)
    out[:, 0, :rows.shape[0]] = rows.T
    return out


def _recorded_image(rec: _Recorder, p: dict, cfg, case: dict, image: np.ndarray | None = None) -> dict:
    """One image task (generate, or edit with the image's embedding rows) through the bundles:
    the llm's hidden_states (or the fake LLM's), the MCP (conditional and unconditional), the DiT
    with CFG over CORE_ML_STEPS steps from the case's initial latents, the VAE when exported."""
    from mlx_model.pipelines.generation import sample
    from mlx_model.support.scheduler import SCHEDULERS, classifier_free_guidance
    from weights.bundles import contract

    k, dim = p["conditioning"]["hidden_states"], p["conditioning"]["llm_hidden_size"]
    if "llm" in rec.components:
        llm = _RecordedLLM(rec, p, cfg)
        tok = p["tokenizer"]
        image_id = {t["name"]: t["id"] for t in tok["special_tokens"]}[tok["roles"]["image"]]
        hidden = llm.hidden_states(llm.rows(case["ids"], image_id, image), k)
    else:
        hidden = fake_hidden_states(case["ids"], None, k, dim)
    l = hidden[0].shape[0]

    def mcp(h: list[np.ndarray]) -> np.ndarray:
        s = rec.length("mcp", "hidden_states", 3, l)
        res = rec.run("mcp", {"hidden_states": np.stack([_channels(x, s) for x in h]),
                              "attention_mask": (np.arange(s) < l).astype(np.float32)[None, :]})
        return res["conditioning"][0, :, 0, :l].T  # [L, Cc]

    cond = mcp(hidden)
    uncond = mcp([np.zeros_like(x) for x in hidden])  # the engine's cache is freed with the MCP (reduceMemory)
    s = rec.length("dit", "encoder_hidden_states", 3, l)
    ctx = np.stack([_channels(uncond, s), _channels(cond, s)])
    mask = np.tile((np.arange(s) < l).astype(np.float32), (2, 1))
    guidance = float(case["guidance"])

    def denoise(x, t):
        v = rec.run("dit", {"latent": np.stack([x, x]),
                            "timestep_features": contract.timestep_features(np.full(2, t, np.float32)),
                            "encoder_hidden_states": ctx, "encoder_attention_mask": mask})["velocity"]
        return classifier_free_guidance(v[0], v[1], np.float32(guidance))

    kind = {"flow_dpm_solver_multistep": "dpm", "flow_euler": "euler"}[p["scheduler"]["type"]]
    x = np.array(case["initial"], np.float32).reshape(p["latent_shape"])
    for x in sample(denoise, x, SCHEDULERS[kind](cfg.scheduler, CORE_ML_STEPS)):
        pass
    result = {"prompt": case.get("prompt") or case.get("instruction"), "steps": CORE_ML_STEPS, "guidance": guidance,
              "initial": case["initial"], "latents": np.asarray(x, np.float32).reshape(-1).tolist(),
              "llm": "llm" in rec.components, "prompt_ids": case["ids"]}
    if "vae_decoder" in rec.components:  # the bundle divides by the scaling factor and maps to [0, 1]
        unit = rec.run("vae_decoder", {"latent": np.asarray(x, np.float32)[None]})["image"][0]
        result.update(unit=unit.reshape(-1).tolist(),
                      rgb=np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0).reshape(-1).tolist())
    return result


def coreml_recording(export: Path, out: Path, pipeline: dict, ckpt) -> bool:
    """The stand-in's recording (see the module docstring); False when the export lacks mcp or dit.
    In the order the Swift test runs them: generate, then (with the llm and the vision encoder)
    understand and edit, then (with the llm) chat."""
    manifest = json.loads((export / "manifest.json").read_text())
    rec = _Recorder(export, manifest)
    if not {"mcp", "dit"} <= rec.components.keys():
        return False
    p = manifest["pipeline"]
    result = _recorded_image(rec, p, ckpt.config, pipeline["generate"][0])
    if "llm" in rec.components and "vision_encoder" in rec.components:
        result["understand"] = _recorded_answer(rec, p, ckpt.config, pipeline["understand"][0])
        feats = rec.run("vision_encoder", {"image": fake_pixels(p["image_preprocess"]["size"])[None]})["image_features"]
        result["edit"] = _recorded_image(rec, p, ckpt.config, pipeline["edit"][0], image=feats[0, :, 0, :].T)
    if "llm" in rec.components:
        result["chat"] = _recorded_chat(rec, p, ckpt.config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arrays.bin").write_bytes(bytes(rec.blob))
    (out / "calls.json").write_text(json.dumps({"calls": rec.calls}))
    (out / "result.json").write_text(json.dumps(result))
    return True


# ---------------------------------------------------------------------- main


def write_goldens(out: str | Path, model: str = "demo", export: str | Path | None = None) -> Path:
    from weights.loading.hub import open_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = open_model(model)
    (out / "sampler.json").write_text(json.dumps(sampler_goldens(ckpt.config)))
    tj = out / "qwen" / "tokenizer.json"
    if not tj.is_file():  # ~3 s to rebuild; the vocabulary never changes
        qwen_tokenizer(tj.parent)
    (out / "tokenizer_cases.json").write_text(json.dumps(tokenizer_goldens(tj), ensure_ascii=False))
    write_export(ckpt, out / "export", Path(export) if export else None)
    (out / "pipeline.json").write_text(json.dumps(pipeline_goldens(ckpt), ensure_ascii=False))
    (out / "host.json").write_text(json.dumps(host_goldens(ckpt.config)))
    (out / "token_sampling.json").write_text(json.dumps(token_sampling_goldens()))
    if export:
        coreml_recording(out / "export", out / "coreml", json.loads((out / "pipeline.json").read_text()), ckpt)
    (out / "golden.json").write_text(json.dumps({"format": FORMAT, "model": model,
                                                  "export": str(export) if export else None}))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tests/tools/golden.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (gitignored, e.g. build/golden)")
    p.add_argument("--model", default="demo", help="checkpoint for the manifest and fakes (default: demo)")
    p.add_argument("--export", help="a real `python -m coreml_convert` output folder whose manifest to use")
    a = p.parse_args(argv)
    run_cli(lambda: print(write_goldens(a.out, a.model, a.export)))


if __name__ == "__main__":
    main()
