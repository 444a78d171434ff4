"""Multi-turn understanding: a KV cache kept across turns and requests, and the chat state.

A :class:`PromptCache` remembers which positions its mlx-lm KV cache holds (one key per
position: the token id, or the image's digest and index for image positions).  The next
prompt reuses the longest common prefix, so the system turn, the image (vision tower,
projector *and* its prefill) and the earlier turns are computed once; only the new turn is
prefilled -- as mlx-lm's server reuses its prompt cache.

    chat = Conversation(Understanding.from_pretrained("demo", quantize=0), image="photo.jpg")
    for r in chat.ask("What is in the picture?", temp=0):
        print(r.text, end="")
    chat.ask(...)        # the image and the first turn are not computed again

Mobile-O's conversation template (``qwen_2``) and where its image goes:
:func:`weights.core.prompts.conversation_prompt`.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

__all__ = ["PromptCache", "Conversation", "image_digest"]


def image_digest(pixels: np.ndarray) -> str:
    """A key for preprocessed pixels: equal pixels, equal key."""
    a = np.ascontiguousarray(pixels, dtype=np.float32)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


class PromptCache:
    """An mlx-lm KV cache and the key of every position it holds."""

    def __init__(self):
        self.cache: list | None = None
        self.keys: list = []  # one per position the cache holds
        self.max_kv_size: int | None = None  # what the cache was made with
        self.reused = 0  # positions reused by the last prompt (reported, and tested)

    def reuse(self, keys: list, max_kv_size: int | None = None) -> int:
        """Trim the cache to the longest prefix it shares with ``keys`` (one position is always
        left to prefill, for its logits) and return that length; 0 empties it.  A rotating
        cache (``max_kv_size``) cannot be trimmed, so it is never reused."""
        from mlx_lm.models.cache import trim_prompt_cache

        common = 0
        if self.cache and max_kv_size is None and self.max_kv_size is None:
            for a, b in zip(self.keys, keys[:-1]):
                if a != b:
                    break
                common += 1
        if common == 0:
            self.clear()
        else:
            trim_prompt_cache(self.cache, self.cache[0].offset - common)
            self.keys = self.keys[:common]
        self.reused = common
        return common

    def get(self, llm, max_kv_size: int | None = None) -> list:
        """The KV cache to prefill into: the trimmed one, or a fresh one for ``llm``."""
        from mlx_lm.models.cache import make_prompt_cache

        if self.cache is None:
            self.cache, self.max_kv_size = make_prompt_cache(llm.model, max_kv_size), max_kv_size
        return self.cache

    def record(self, keys: list, generated: list[int]) -> None:
        """After a turn: the cache holds the prompt then the answer tokens fed back so far.  A
        cache holding a position with no known key (a token fed but never handed out: the turn
        was interrupted in between) is dropped."""
        from mlx_lm.models.cache import can_trim_prompt_cache

        known = list(keys) + list(generated)
        if not self.cache or not can_trim_prompt_cache(self.cache) or self.cache[0].offset > len(known):
            self.clear()  # none, no layers, rotating, or out of step
            return
        self.keys = known[:self.cache[0].offset]

    def clear(self) -> None:
        self.cache, self.keys, self.max_kv_size = None, [], None


class Conversation:
    """A chat about (at most) one image: the turns so far and one :class:`PromptCache`.

    ``model``: an :class:`~mlx_model.pipelines.understanding.Understanding`.  :meth:`set_image` starts a
    new conversation about another image (the template places the image in the first user
    turn); :meth:`reset` forgets the turns and keeps the image."""

    def __init__(self, model, image=None, system_prompt: str | None = None):
        self.model = model
        self.system_prompt = system_prompt
        self.turns: list[tuple[str, str]] = []
        self.cache = PromptCache()
        self.image = None
        if image is not None:
            self.set_image(image)

    def set_image(self, image) -> None:
        """``image``: path, PIL image or uint8 array; read and checked now."""
        from mlx_model.support.preprocess import preprocess

        self.image = preprocess(image, self.model.config.preprocess)
        self.turns = []

    def reset(self) -> None:
        self.turns = []

    def ask(self, question: str, **options) -> Iterator:
        """Stream the answer (:class:`~mlx_model.pipelines.understanding.Response` pieces); the turn is
        kept when the answer is complete.  ``options``: as :meth:`Understanding.stream`."""
        turns = self.turns + [("user", question)]
        text = ""
        for r in self.model.stream_chat(turns, image=self.image, system_prompt=self.system_prompt,
                                        prompt_cache=self.cache, **options):
            text += r.text
            if r.finish_reason is not None:  # kept before the last piece: a caller may stop there
                self.turns = turns + [("assistant", text.strip())]
            yield r
