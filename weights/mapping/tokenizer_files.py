"""Qwen2-style byte-level BPE tokenizer files, built without the hub.

``tokenizer.json`` follows Qwen2's layout (NFC, the Qwen2 split regex, byte-level BPE,
special tokens added after the BPE ranks).  Two vocabularies:
- ``byte_vocab()``: the 256 single bytes and no merges, for tiny synthetic checkpoints;
- ``tiktoken_vocab(path)``: real Qwen ranks (the ``dashscope`` package ships
  ``qwen.tiktoken``), merges recovered from the ranks.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

from weights.core.prompts import EOS_TOKEN, MAX_PROMPT_TOKENS, PAD_TOKEN, SPECIAL_TOKENS

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@lru_cache(maxsize=1)
def byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of :func:`byte_encoder`: a byte-level BPE token's character -> its byte."""
    return {c: b for b, c in byte_encoder().items()}


def _token(bs: bytes) -> str:
    enc = byte_encoder()
    return "".join(enc[b] for b in bs)


def byte_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return {_token(bytes([b])): b for b in range(256)}, []


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    ranks = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def tiktoken_vocab(path: str | Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks = read_tiktoken(path)
    vocab = {_token(t): r for t, r in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            parts = _bpe_parts(ranks, tok, rank)
            if len(parts) == 2:
                merges.append((_token(parts[0]), _token(parts[1])))
    return vocab, merges


def write_tokenizer(folder: str | Path, vocab: dict[str, int], merges: list[tuple[str, str]],
                    specials: tuple[str, ...] = SPECIAL_TOKENS) -> int:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json; return vocab size."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(list(specials))
    tok.save(str(folder / "tokenizer.json"))
    n = tok.get_vocab_size(with_added_tokens=True)
    added = {str(tok.token_to_id(s)): {"content": s, "special": True, "normalized": False,
                                       "lstrip": False, "rstrip": False, "single_word": False}
             for s in specials}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added,
        "additional_special_tokens": [s for s in specials if s not in (PAD_TOKEN, EOS_TOKEN)],
        "bos_token": None, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": None,
        "model_max_length": MAX_PROMPT_TOKENS, "padding_side": "right", "clean_up_tokenization_spaces": False,
        "errors": "replace", "split_special_tokens": False,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
         "additional_special_tokens": [s for s in specials if s not in (PAD_TOKEN, EOS_TOKEN)]}, indent=2))
    return n


def eos_token(folder: str | Path) -> str:
    """The ``eos_token`` of a tokenizer folder's tokenizer_config.json (a string or an
    AddedToken dict): where Mobile-O's decoding stops (``tokenizer.eos_token_id``).  Qwen2's
    end-of-turn token when the file or the field is missing."""
    try:
        value = json.loads((Path(folder) / "tokenizer_config.json").read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return EOS_TOKEN
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else EOS_TOKEN


def qwen_tiktoken_path() -> Path | None:
    """The real Qwen ranks shipped by the ``dashscope`` package, when installed."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("dashscope")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    return p if p.is_file() else None
