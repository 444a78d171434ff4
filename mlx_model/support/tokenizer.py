"""The checkpoint's ``tokenizer.json`` through the ``tokenizers`` library.

Special-token ids are looked up by name (:mod:`weights.core.prompts`), never hard-coded.
"""

from __future__ import annotations

from pathlib import Path

from weights.core.errors import MobileOError, WeightsError
from weights.core.prompts import MAX_PROMPT_TOKENS
from weights.mapping.tokenizer_files import eos_token


class PromptError(MobileOError):
    """An empty or over-long prompt, or one that is not Unicode text."""


def surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (None: nowhere).  Python makes one from bytes that
    are not UTF-8 on a command line (``$'caf\\xe9'`` -> ``'caf\\udce9'``) or from JSON's
    ``"\\ud800"``; no tokenizer (and no UTF-8 encoder) accepts it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def check_text(text: str, what: str = "the prompt") -> str:
    """``text`` if it is Unicode text; else one-line :class:`PromptError`."""
    at = surrogate_at(text)
    if at is not None:
        code = ord(text[at])
        why = (f"the byte 0x{code - 0xDC00:02x} is not UTF-8" if 0xDC80 <= code <= 0xDCFF
               else f"a lone surrogate \\u{code:04x}")
        raise PromptError(f"{what} is not valid text ({why}).",
                          fix="pass UTF-8 text (check the terminal's or the file's encoding, e.g. LANG=C.UTF-8).")
    return text


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _HFTokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise WeightsError(f"{path} does not exist.",
                               fix="copy the tokenizer files that came with the model into its folder.")
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise WeightsError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]}).",
                               fix="re-download the model's tokenizer files.") from None
        self.path = path
        self.eos_token = eos_token(path.parent)

    @classmethod
    def from_checkpoint(cls, ckpt) -> "Tokenizer":
        return cls(ckpt.tokenizer_dir / "tokenizer.json")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids."""
        return self._tok.encode(check_text(text), add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token ``i`` stands for (a byte-level BPE token may be part of a UTF-8
        character, so its text alone cannot say); a special token's own name."""
        from weights.mapping.tokenizer_files import byte_decoder

        name = self._tok.id_to_token(i) or ""
        if i not in self._special_ids():
            decode = byte_decoder()
            if all(c in decode for c in name):
                return bytes(decode[c] for c in name)
        return name.encode("utf-8")

    def _special_ids(self) -> set[int]:
        if not hasattr(self, "_specials"):
            self._specials = set(self._tok.get_added_tokens_decoder())
        return self._specials

    def token_id(self, name: str) -> int:
        i = self._tok.token_to_id(name)
        if i is None:
            raise WeightsError(f"{self.path} has no token {name!r}.",
                               fix="use the tokenizer that came with the Mobile-O checkpoint.")
        return i

    @property
    def eos_id(self) -> int:
        """Where decoding stops: the tokenizer's eos_token (Mobile-O passes
        ``tokenizer.eos_token_id`` to ``generate``)."""
        return self.token_id(self.eos_token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_prompt(self, text: str, template, max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
        """``template(text)`` encoded, with one-line errors for empty or too-long prompts."""
        if not text or not text.strip():
            raise PromptError("the prompt is empty.", fix="pass a non-empty prompt, e.g. \"a red cup\".")
        ids = self.encode(template(text))
        if len(ids) > max_tokens:
            raise PromptError(f"the prompt is {len(ids)} tokens with its template; the limit is {max_tokens}.",
                              fix="shorten the prompt.")
        return ids

