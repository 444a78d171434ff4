"""Mobile-O answers questions about an image, with MLX only (no torch): the LLM, the vision
tower and the projector (no DiT, no VAE), decoding streamed.

    from mlx_model.understanding import Understanding
    model = Understanding.from_pretrained("demo", quantize=0)
    print(model.answer("photo.jpg", "What is in the picture?", temp=0))
    for r in model.stream("photo.jpg", "Describe it."):
        print(r.text, end="", flush=True)

Decoding runs mlx-lm's Qwen2 with its KV cache and its sampler (``make_sampler``):
temperature 0 is greedy, ``top_p`` 1.0 and ``top_k`` 0 are off; it stops at the tokenizer's
end-of-sequence token.  Defaults are Mobile-O's (:class:`weights.configs.GenerationDefaults`:
temperature 0.8, top-k 50, no top-p, 256 new tokens).  As Mobile-O's answer, the text skips
special tokens and :meth:`Understanding.answer` strips surrounding whitespace.
The command line is :mod:`mlx_model.understand`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from weights.errors import MobileOError
from weights.hub import DEFAULT_MODEL
from weights.prompts import understanding_prompt

from .llm import LanguageModel
from .multimodal import ImageEncoder, MultimodalPrompt
from .quant import QUANT_GROUP_SIZE, check_bits
from .tokenizer import PromptError

__all__ = ["Understanding", "Response", "Detokenizer", "decode_steps", "check_options", "check_question"]

COMPONENTS = ("llm", "vision", "projector")  # what understanding loads


@dataclass
class Response:
    """One streamed piece, as mlx-lm's ``GenerationResponse``."""

    text: str  # new text since the previous response (may be empty)
    token: int | None  # None on the closing response
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    image_seconds: float  # preprocessing + vision tower + projector
    finish_reason: str | None = None  # "stop" (end of turn), "length", or None while streaming


class Detokenizer:
    """Incremental decoding that never emits half of a multi-byte character; special tokens
    are skipped (Mobile-O decodes its answer with ``skip_special_tokens=True``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode()
        if text.endswith("\ufffd"):  # wait for the rest of the character
            return ""
        new, self.text = text[len(self.text):], text
        return new

    def finish(self) -> str:
        text = self._decode()
        new, self.text = text[len(self.text):], text
        return new


def check_options(max_tokens: int, temp: float, top_p: float, top_k: int = 0) -> None:
    if max_tokens < 1:
        raise MobileOError(f"--max-tokens must be at least 1, got {max_tokens}.", fix="pass --max-tokens 1 or more.")
    if temp < 0:
        raise MobileOError(f"--temp must be >= 0, got {temp}.", fix="pass --temp 0 for greedy decoding.")
    if not 0 < top_p <= 1:
        raise MobileOError(f"--top-p must be in (0, 1], got {top_p}.", fix="pass --top-p 1.0 to turn it off.")
    if top_k < 0:
        raise MobileOError(f"--top-k must be >= 0, got {top_k}.", fix="pass --top-k 0 to turn it off.")


def check_question(question: str) -> None:
    if not question or not question.strip():
        raise PromptError("the question is empty.", fix="ask something, e.g. \"What is in the picture?\".")


def decode_steps(llm: LanguageModel, embeds: mx.array, sampler, max_tokens: int) -> Iterator[int]:
    """Prefill ``embeds`` [1, L, D] into a fresh KV cache, then sample one token at a time
    (the next step is queued before the current token is handed out, as mlx-lm does)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(llm.model)

    def step(logits):
        logits = logits[:, -1, :]
        return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    y = step(llm(embeds, cache=cache))
    mx.async_eval(y)
    for n in range(max_tokens):
        nxt = step(llm(llm.embed(y[:, None]), cache=cache)) if n + 1 < max_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        yield y.item()
        y = nxt


class Understanding:
    def __init__(self, llm: LanguageModel, encoder: ImageEncoder, config, *, quantize: int = 0, source: str = ""):
        self.llm = llm
        self.encoder = encoder
        self.config = config
        self.quantize = quantize
        self.source = source
        self.load_seconds = 0.0

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 4, dtype=None, group_size: int = QUANT_GROUP_SIZE) -> "Understanding":
        """``quantize`` 0 (float), 4 or 8 bits for the LLM's Linear layers."""
        from .platform import default_dtype

        check_bits(quantize)
        t = time.perf_counter()
        dtype = default_dtype() if dtype is None else dtype
        llm = LanguageModel.from_checkpoint(ckpt, quantize or None, group_size, dtype)
        out = cls(llm, ImageEncoder.from_checkpoint(ckpt), ckpt.config, quantize=quantize, source=str(ckpt.folder))
        out.load_seconds = time.perf_counter() - t
        return out

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, quantize: int = 4, dtype=None,
                        revision: str | None = None) -> "Understanding":
        from weights.hub import open_model

        return cls.from_checkpoint(open_model(model, revision=revision), quantize=quantize, dtype=dtype)

    # ------------------------------------------------------------------ stages
    def prompt(self, question: str) -> MultimodalPrompt:
        check_question(question)
        return MultimodalPrompt.build(self.llm.tokenizer, understanding_prompt(question), self.encoder.num_tokens)

    def embed(self, image, question: str) -> tuple[MultimodalPrompt, mx.array]:
        """The prompt and its input embeddings [1, L, D] with the image spliced in."""
        prompt = self.prompt(question)
        return prompt, prompt.embed(self.llm, self.encoder.encode(image))

    # ------------------------------------------------------------------ decoding
    def stream(self, image, question: str, *, max_tokens: int | None = None, temp: float | None = None,
               top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
               stop_at_eos: bool = True) -> Iterator[Response]:
        """Yield the answer piece by piece; the last response has ``finish_reason`` set."""
        from mlx_lm.sample_utils import make_sampler

        d = self.config.defaults
        max_tokens = d.max_new_tokens if max_tokens is None else max_tokens
        temp = d.temperature if temp is None else temp
        top_p = d.top_p if top_p is None else top_p
        top_k = d.top_k if top_k is None else top_k
        check_options(max_tokens, temp, top_p, top_k)

        mx.reset_peak_memory()
        t0 = time.perf_counter()
        prompt, embeds = self.embed(image, question)
        mx.eval(embeds)
        image_seconds = time.perf_counter() - t0
        if seed is not None:
            mx.random.seed(seed)
        eos = self.llm.tokenizer.eos_id
        detok = Detokenizer(self.llm.tokenizer)
        n_prompt = len(prompt)
        steps = decode_steps(self.llm, embeds, make_sampler(temp, top_p, top_k=top_k), max_tokens)

        def response(text, token, n, finish=None):
            gen_time = max(time.perf_counter() - t_gen, 1e-9)
            return Response(text, token, n_prompt, prompt_tps, n, n / gen_time if n else 0.0,
                            mx.get_peak_memory() / 1e9, image_seconds, finish)

        t1 = time.perf_counter()
        prompt_tps, t_gen, n, finish = 0.0, t1, 0, "length"
        for token in steps:
            if n == 0:
                t_gen = time.perf_counter()
                prompt_tps = n_prompt / max(t_gen - t1, 1e-9)
            if stop_at_eos and token == eos:
                finish = "stop"
                break
            n += 1
            yield response(detok.add(token), token, n)
        yield response(detok.finish(), None, n, finish)

    def answer(self, image, question: str, **kw) -> str:
        """The whole answer, stripped of surrounding whitespace as Mobile-O returns it."""
        return "".join(r.text for r in self.stream(image, question, **kw)).strip()
