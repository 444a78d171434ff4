"""Synthetic checkpoints are seeded (same bytes everywhere) and in the released layout."""

import hashlib
import json

import numpy as np

from weights.mapping.checkpoint import Checkpoint
from weights.loading.synthetic import write_checkpoint


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.glob("model-*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_seeded_and_reproducible(tmp_path, tiny_ckpt_dir):
    again = write_checkpoint(tmp_path / "again", "tiny")
    assert _digest(again) == _digest(tiny_ckpt_dir)
    other = write_checkpoint(tmp_path / "other", "tiny", seed=1)
    assert _digest(other) != _digest(tiny_ckpt_dir)


def test_layout_files(tiny_ckpt_dir):
    names = {p.name for p in tiny_ckpt_dir.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "transformer", "vae", "scheduler"} <= names
    shards = sorted(tiny_ckpt_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1  # sharded, like the release
    idx = json.loads((tiny_ckpt_dir / "model.safetensors.index.json").read_text())
    assert set(idx["weight_map"].values()) == {p.name for p in shards}


def test_special_tokens_read_by_name(tiny_ckpt_dir):
    from tokenizers import Tokenizer

    from weights.core.prompts import SPECIAL_TOKENS

    tok = Tokenizer.from_file(str(tiny_ckpt_dir / "tokenizer.json"))
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert None not in ids and len(set(ids)) == len(ids)
    cfg = Checkpoint.open(tiny_ckpt_dir).config
    assert max(ids) < cfg.llm.vocab_size


def test_subset_independent_values(tiny_ckpt):
    """A tensor's value depends only on (seed, key): what other components exist doesn't matter."""
    from weights.loading.synthetic import layout_for, random_tensors

    mcp = random_tensors(layout_for("tiny")["mcp"], "mcp")
    loaded = tiny_ckpt.load("mcp")
    for k, v in mcp.items():
        assert np.allclose(v, loaded[k], rtol=2 ** -8, atol=1e-30)


def test_written_atomically_into_new_parents(tmp_path, monkeypatch):
    """Missing parent folders are made; an interrupted write leaves nothing behind."""
    import pytest

    from weights.loading import synthetic

    target = tmp_path / "a" / "b" / "ckpt"
    synthetic.write_checkpoint(target, "tiny")
    assert (target / "model.safetensors.index.json").is_file()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_checkpoint(tmp_path / "a" / "other", "tiny")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
