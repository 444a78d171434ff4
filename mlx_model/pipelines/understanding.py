"""Mobile-O answers questions about an image, with MLX only (no torch): the LLM, the vision
tower and the projector (no DiT, no VAE), decoding streamed.

    from mlx_model.pipelines.understanding import Understanding
    model = Understanding.from_pretrained("demo", quantize=0)
    print(model.answer("photo.jpg", "What is in the picture?", temp=0))
    for r in model.stream("photo.jpg", "Describe it."):
        print(r.text, end="", flush=True)

Decoding runs mlx-lm's Qwen2 with its KV cache (a rotating one of ``max_kv_size`` entries
when given), its sampler (``make_sampler``: temperature 0 is greedy, ``top_p`` 1.0,
``top_k`` 0 and ``min_p`` 0 are off) and its logits processors (``make_logits_processors``:
repetition penalty); it stops at the tokenizer's end-of-sequence token, and the prompt plus
the answer must fit the LLM's context (``max_position_embeddings``).  This library's
defaults are Mobile-O's (:class:`weights.core.configs.GenerationDefaults`: temperature 0.8,
top-k 50, no top-p, 256 new tokens); the command line defaults to greedy decoding, as mlx-lm
does.  As Mobile-O's answer, the text skips special tokens and :meth:`Understanding.answer`
strips surrounding whitespace.  The command line is :mod:`mlx_model.understand`.

With ``low_memory`` (phase-wise residency, see :mod:`mlx_model.pipelines.generation`; default on below
16 GB of RAM or as ``MOBILEO_LOW_MEMORY`` says) the vision tower is loaded for encoding the
image and dropped before the LLM is loaded, and the LLM is dropped when the answer is done.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import mlx.core as mx

from weights.core.errors import MobileOError, SettingError
from weights.loading.hub import DEFAULT_MODEL
from weights.core.prompts import MAX_PROMPT_TOKENS, SYSTEM, conversation_prompt

from mlx_model.components.llm import LanguageModel
from mlx_model.components.multimodal import ImageEncoder, MultimodalPrompt, check_no_placeholder
from mlx_model.support.platform import Component, part, resolve_low_memory
from mlx_model.support.quant import DEFAULT_QUANTIZE, QUANT_GROUP_SIZE, check_bits
from mlx_model.support.tokenizer import PromptError

__all__ = ["Understanding", "Response", "ContextLengthError", "Detokenizer", "decode_steps", "check_options",
           "check_question", "check_length", "prompt_text"]



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
    # with stream_chat(logprobs=True): the log-probabilities [vocab] that ``token`` was sampled
    # from (as mlx-lm's: log_softmax of the logits after the logits processors, before temperature)
    logprobs: mx.array | None = None


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


KV_KEEP = 4  # mlx-lm's RotatingKVCache keeps the first 4 entries


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_options(max_tokens: int, temp: float, top_p: float, top_k: int = 0, min_p: float = 0.0,
                  repetition_penalty: float | None = None, repetition_context_size: int = 20,
                  max_kv_size: int | None = None) -> None:
    """The decoding options, named as mlx-lm's flags; NaN and infinities are refused."""
    if not _whole(max_tokens) or max_tokens < 1:
        raise SettingError("max_tokens", f"{{name}} must be at least 1, got {max_tokens}.", fix="pass {name} 1 or more.")
    if not _number(temp) or temp < 0:
        raise SettingError("temp", f"{{name}} must be >= 0, got {temp}.", fix="pass {name} 0 for greedy decoding.")
    if not _number(top_p) or not 0 < top_p <= 1:
        raise SettingError("top_p", f"{{name}} must be in (0, 1], got {top_p}.", fix="pass {name} 1.0 to turn it off.")
    if not _whole(top_k) or top_k < 0:
        raise SettingError("top_k", f"{{name}} must be >= 0, got {top_k}.", fix="pass {name} 0 to turn it off.")
    if not _number(min_p) or not 0 <= min_p < 1:
        raise SettingError("min_p", f"{{name}} must be in [0, 1), got {min_p}.", fix="pass {name} 0 to turn it off.")
    if repetition_penalty is not None and (not _number(repetition_penalty) or repetition_penalty <= 0):
        raise SettingError("repetition_penalty", f"{{name}} must be > 0, got {repetition_penalty}.",
                           fix="pass e.g. {name} 1.1 (1.0 = off).")
    if not _whole(repetition_context_size) or repetition_context_size < 1:
        raise SettingError("repetition_context_size", f"{{name}} must be at least 1, got {repetition_context_size}.",
                           fix="pass e.g. {name} 20.")
    if max_kv_size is not None and (not _whole(max_kv_size) or max_kv_size <= KV_KEEP):
        raise SettingError("max_kv_size", f"{{name}} must be more than {KV_KEEP} (the first {KV_KEEP} entries are "
                           f"always kept), got {max_kv_size}.", fix="pass e.g. {name} 1024, or leave it out.")


def check_question(question: str) -> None:
    """Non-empty and free of ``<image>``; checked before anything is loaded or printed."""
    if question is None or not question.strip():
        raise PromptError("the question is empty.", fix="ask something, e.g. \"What is in the picture?\".")
    check_no_placeholder(question, "question")


def prompt_text(turns: Sequence[tuple[str, str]] | str, system_prompt: str | None = None,
                image: bool = True) -> str:
    """Mobile-O's understanding prompt for a question (or a conversation's ``turns``), with
    ``system_prompt`` in place of its system message; the image in the first user turn."""
    turns = [("user", turns)] if isinstance(turns, str) else list(turns)
    for role, text in turns:
        if role == "user":
            check_no_placeholder(text, "message" if len(turns) > 1 else "question")
    if system_prompt is not None:
        check_no_placeholder(system_prompt, "system prompt")
    first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if image and first_user is None:
        raise PromptError("an image needs a user turn to go with.", fix="ask something about it.")
    return conversation_prompt(turns, SYSTEM if system_prompt is None else system_prompt,
                               image_turn=first_user if image else None)


def _pixels(image) -> bool:
    """Already preprocessed float pixels (as :meth:`ImageEncoder.pixels` gives)?"""
    import numpy as np

    return isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating)


class ContextLengthError(SettingError):
    """The prompt plus the longest answer does not fit the LLM's context (names ``max_tokens``)."""


def check_length(n_prompt: int, max_tokens: int, context: int) -> None:
    """The prompt plus the longest answer must fit the LLM's context (``max_position_embeddings``)."""
    if n_prompt + max_tokens > context:
        room = context - n_prompt
        raise ContextLengthError("max_tokens", f"{{name}} {max_tokens} plus the prompt's {n_prompt} tokens is more "
                                 f"than the model's context of {context} tokens.",
                                 fix=f"pass {{name}} {room} or less." if room > 0 else "shorten the question.")


def decode_steps(llm: LanguageModel, embeds: mx.array, sampler, max_tokens: int, *,
                 logits_processors: Sequence = (), prompt_ids: Sequence[int] = (),
                 max_kv_size: int | None = None, cache: list | None = None,
                 logprobs: bool = False) -> Iterator[int] | Iterator[tuple[int, mx.array]]:
    """Prefill ``embeds`` [1, L, D] into ``cache`` (which may hold the positions before them)
    or a fresh KV cache (rotating, of ``max_kv_size`` entries, when given), then sample one
    token at a time (the next step is queued before the current token is handed out, as mlx-lm does).  ``logits_processors(tokens, logits)`` see the
    prompt's ``prompt_ids`` and the tokens so far, as in mlx-lm's ``generate_step``.
    ``logprobs``: yield (token, the float32 log-probabilities [vocab] it was sampled from) instead,
    evaluated with the token (reading them waits for nothing queued after it)."""
    from mlx_lm.models.cache import make_prompt_cache

    if cache is None:
        cache = make_prompt_cache(llm.model, max_kv_size)
    tokens = mx.array(list(prompt_ids), dtype=mx.int32) if logits_processors else None

    def step(logits, y=None):
        nonlocal tokens
        logits = logits[:, -1, :]
        if logits_processors:
            if y is not None:
                tokens = mx.concatenate([tokens, y.astype(mx.int32)])
            for processor in logits_processors:
                logits = processor(tokens, logits)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(lp), (lp.astype(mx.float32) if logprobs else None)  # float32: numpy reads it as it is

    y, lp = step(llm.prefill(embeds, cache))  # last position's logits only, as mlx-lm
    mx.async_eval(y, *([lp] if logprobs else []))
    for n in range(max_tokens):
        nxt = step(llm(llm.embed(y[:, None]), cache=cache), y) if n + 1 < max_tokens else (None, None)
        if nxt[0] is not None:
            mx.async_eval(*(nxt if logprobs else nxt[:1]))
        yield (y.item(), lp[0]) if logprobs else y.item()
        y, lp = nxt


class Understanding:
    llm = part("llm")
    encoder = part("encoder")

    def __init__(self, llm: LanguageModel | Component, encoder: ImageEncoder | Component, config, *,
                 quantize: int = 0, source: str = "", low_memory: bool = False, tokenizer=None):
        """``llm`` / ``encoder``: modules or :class:`~mlx_model.support.platform.Component` (loaded on
        first use, dropped after their phase with ``low_memory``)."""
        self.parts: dict[str, Component] = {}
        self.llm = llm
        self.encoder = encoder
        self.config = config
        self.quantize = quantize
        self.source = source
        self.low_memory = low_memory
        self._tokenizer = tokenizer
        self.load_seconds = 0.0

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.llm.tokenizer

    def resident(self) -> list[str]:
        return [n for n in ("llm", "encoder") if self.parts[n].resident]

    def _done_with(self, name: str) -> None:
        if self.low_memory:
            self.parts[name].release()

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = DEFAULT_QUANTIZE, dtype=None, group_size: int = QUANT_GROUP_SIZE,
                        low_memory: bool | None = None) -> "Understanding":
        """``quantize`` 0 (float), 4 or 8 bits for the LLM's Linear layers; ``low_memory``:
        phase-wise residency (None: :func:`mlx_model.support.platform.low_memory_default`)."""
        from mlx_model.support.platform import default_dtype
        from mlx_model.support.tokenizer import Tokenizer

        check_bits(quantize)
        low_memory = resolve_low_memory(low_memory)
        t = time.perf_counter()
        dtype = default_dtype() if dtype is None else dtype
        tokenizer = Tokenizer.from_checkpoint(ckpt)
        llm = Component("llm", loader=lambda: LanguageModel.from_checkpoint(ckpt, quantize, group_size, dtype,
                                                                          tokenizer=tokenizer))
        encoder = Component("encoder", loader=lambda: ImageEncoder.from_checkpoint(ckpt, quantize, group_size))
        out = cls(llm, encoder, ckpt.config, quantize=quantize, source=str(ckpt.folder), low_memory=low_memory,
                  tokenizer=tokenizer)
        if not low_memory:
            llm.get()
            encoder.get()
        out.load_seconds = time.perf_counter() - t
        return out

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, quantize: int = DEFAULT_QUANTIZE, dtype=None,
                        revision: str | None = None, low_memory: bool | None = None) -> "Understanding":
        from mlx_model.support.mlx_folder import open_model

        return cls.from_checkpoint(open_model(model, revision=revision), quantize=quantize, dtype=dtype,
                                   low_memory=low_memory)

    # ------------------------------------------------------------------ stages
    def prompt(self, question: str, system_prompt: str | None = None) -> MultimodalPrompt:
        return self.chat_prompt([("user", question)], True, system_prompt)

    def chat_prompt(self, turns: Sequence[tuple[str, str]], image: bool = True,
                    system_prompt: str | None = None) -> MultimodalPrompt:
        """The conversation so far (user and assistant turns, ending on the user's) in Mobile-O's
        template, the image (when ``image``) in the first user turn.  One turn must fit
        ``MAX_PROMPT_TOKENS`` (Mobile-O's training length), a longer conversation the context."""
        turns = list(turns)
        if not turns or turns[-1][0] != "user":
            raise PromptError("the conversation does not end on a user turn.", fix="end it with a question.")
        check_question(turns[-1][1])
        text = prompt_text(turns, system_prompt, image)
        return MultimodalPrompt.build(self.tokenizer, text, self.config.vision.num_tokens,
                                      max_tokens=MAX_PROMPT_TOKENS if len(turns) == 1 else self.context_length,
                                      image=image)

    @property
    def context_length(self) -> int:
        return self.config.llm.max_position_embeddings

    def embed(self, image, question: str, system_prompt: str | None = None) -> tuple[MultimodalPrompt, mx.array]:
        """The prompt and its input embeddings [1, L, D] with the image spliced in (the image
        is encoded first; with ``low_memory`` the vision tower is dropped before the LLM is loaded)."""
        prompt = self.prompt(question, system_prompt)
        return prompt, self._embed(prompt, image)

    def _embed(self, prompt: MultimodalPrompt, image, start: int = 0) -> mx.array:
        """Input embeddings of positions ``start:`` of ``prompt``; the image is encoded only
        when some of its positions are among them."""
        if image is None or start >= prompt.image_positions().stop:
            return self.llm.embed(mx.array([prompt.ids()[start:]]))
        projected = self.encoder.encode(image)
        if self.low_memory:
            mx.eval(projected)
            self._done_with("encoder")
        return prompt.embed(self.llm, projected)[:, start:]

    # ------------------------------------------------------------------ decoding
    def stream(self, image, question: str, *, system_prompt: str | None = None, **options) -> Iterator[Response]:
        """Yield the answer piece by piece; the last response has ``finish_reason`` set.
        Options (:meth:`stream_chat`) as mlx-lm's (None: Mobile-O's defaults);
        ``system_prompt`` replaces Mobile-O's system message."""
        return self.stream_chat([("user", question)], image=image, system_prompt=system_prompt, **options)

    def stream_chat(self, turns: Sequence[tuple[str, str]], *, image=None, system_prompt: str | None = None,
                    prompt_cache=None, max_tokens: int | None = None, temp: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, min_p: float = 0.0,
                    repetition_penalty: float | None = None, repetition_context_size: int = 20,
                    max_kv_size: int | None = None, seed: int | None = None,
                    stop_at_eos: bool = True, logprobs: bool = False) -> Iterator[Response]:
        """Answer the last user turn of ``turns`` ((role, text) pairs; ``image``, when given,
        belongs to the first user turn), streamed.  ``prompt_cache``
        (:class:`~mlx_model.pipelines.conversation.PromptCache`): reuse the positions it shares with this
        prompt and keep this turn in it; without one, every position is computed afresh.
        ``logprobs``: each response carries the log-probabilities its token was sampled from."""
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        from mlx_model.pipelines.conversation import PromptCache, image_digest
        from mlx_model.support.preprocess import preprocess

        d = self.config.defaults
        max_tokens = d.max_new_tokens if max_tokens is None else max_tokens
        temp = d.temperature if temp is None else temp
        top_p = d.top_p if top_p is None else top_p
        top_k = d.top_k if top_k is None else top_k
        check_options(max_tokens, temp, top_p, top_k, min_p, repetition_penalty, repetition_context_size,
                      max_kv_size)
        vocab = self.config.llm.vocab_size
        if top_k >= vocab:
            raise SettingError("top_k", f"{{name}} {top_k} is not below the vocabulary size ({vocab}).",
                               fix="pass a smaller {name}, or 0 to turn it off.")
        prompt = self.chat_prompt(turns, image is not None, system_prompt)
        check_length(len(prompt), max_tokens, self.context_length)

        mx.reset_peak_memory()
        t0 = time.perf_counter()
        key = ""
        if image is not None:
            image = image.reshape(image.shape[-3:]) if _pixels(image) else preprocess(image, self.config.preprocess)
            key = image_digest(image)
        keys = prompt.keys(key)
        prompt_cache = PromptCache() if prompt_cache is None else prompt_cache
        start = prompt_cache.reuse(keys, max_kv_size)
        embeds = self._embed(prompt, image, start)  # the image first: with low_memory, before the LLM loads
        cache = prompt_cache.get(self.llm, max_kv_size)
        mx.eval(embeds)
        image_seconds = time.perf_counter() - t0
        if seed is not None:
            mx.random.seed(seed)
        eos = self.tokenizer.eos_id
        detok = Detokenizer(self.tokenizer)
        n_prompt = len(prompt)
        processors = make_logits_processors(repetition_penalty=repetition_penalty,
                                            repetition_context_size=repetition_context_size)
        steps = decode_steps(self.llm, embeds, make_sampler(temp, top_p, min_p, top_k=top_k), max_tokens,
                             logits_processors=processors, prompt_ids=prompt.ids(), cache=cache,
                             logprobs=logprobs)

        def response(text, token, n, finish=None, lp=None):
            gen_time = max(time.perf_counter() - t_gen, 1e-9)
            return Response(text, token, n_prompt, prompt_tps, n, n / gen_time if n else 0.0,
                            mx.get_peak_memory() / 1e9, image_seconds, finish, lp)

        t1 = time.perf_counter()
        prompt_tps, t_gen, n, finish, generated = 0.0, t1, 0, "length", []
        try:
            for token in steps:
                token, lp = token if logprobs else (token, None)
                generated.append(token)
                if n == 0:
                    t_gen = time.perf_counter()
                    prompt_tps = (n_prompt - start) / max(t_gen - t1, 1e-9)
                if stop_at_eos and token == eos:
                    finish = "stop"
                    break
                n += 1
                yield response(detok.add(token), token, n, lp=lp)
            yield response(detok.finish(), None, n, finish)
        finally:
            steps.close()
            prompt_cache.record(keys, generated)
            self._done_with("llm")

    def answer(self, image, question: str, **kw) -> str:
        """The whole answer, stripped of surrounding whitespace as Mobile-O returns it."""
        return "".join(r.text for r in self.stream(image, question, **kw)).strip()
