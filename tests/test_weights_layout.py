"""Checkpoint contract: every key of the real layout goes to exactly one component."""

import numpy as np
import pytest

from weights.core.configs import MobileOConfig
from weights.mapping.layout import IGNORE_RULES, checkpoint_key, split_keys
from weights.loading.synthetic import PRESETS, layout_for, stored_layout, upstream_layout

pytestmark = pytest.mark.torch

# counts from docs/model-facts.md (sections 1, 2, 5, 7, 8)
FULL_COUNTS = {"vision": 629, "projector": 4, "dit": 548, "vae": 375, "mcp": 26,
               "llm": 24 * 12 + 3}  # 24 layers x 12 tensors + embed_tokens, norm, lm_head
FULL_PARAMS = {"dit": 591_747_872, "vae": 312_250_275}
DUPLICATED = ("vision", "projector", "mcp", "dit")  # the 1207 base_model.model.* copies


def _keys(layout, duplicates=True):
    keys = [checkpoint_key(c, k) for c, v in layout.items() for k in v]
    if duplicates:
        keys += [IGNORE_RULES[0].prefix + checkpoint_key(c, k) for c in DUPLICATED for k in layout[c]]
    return keys


@pytest.fixture(scope="module")
def full_layout():
    return upstream_layout(PRESETS["full"]())  # torch meta device: no gigabytes


def test_full_layout_accounts_for_every_key(full_layout):
    split = split_keys(_keys(full_layout))
    assert split.counts() == FULL_COUNTS
    assert split.ignored_counts() == {"post-train duplicates": 1207}
    for comp, n in FULL_PARAMS.items():
        assert sum(int(np.prod(s)) for s in full_layout[comp].values()) == n


def test_full_layout_matches_facts(full_layout):
    v = full_layout["vision"]
    assert v["patch_embed.0.reparam_conv.weight"] == (96, 3, 3, 3)
    assert v["network.1.proj.0.lkb_reparam.weight"] == (192, 1, 7, 7)
    assert v["network.6.reparam_conv.weight"] == (768, 1, 7, 7)
    assert v["network.10.0.token_mixer.qkv.weight"] == (3 * 1536, 1536)
    assert v["conv_exp.reparam_conv.weight"] == (3072, 1, 3, 3)
    assert v["conv_exp.se.reduce.weight"] == (192, 3072, 1, 1)
    assert v["head.proj"] == (3072, 768)
    m = full_layout["mcp"]
    assert m["input_compress.0.weight"] == (512, 896)
    assert m["output_proj.0.weight"] == (2304, 512)
    assert m["sequence_refiners.1.conv.depthwise.weight"] == (512, 1, 3)
    assert full_layout["projector"]["0.weight"] == (896, 3072)
    assert "caption_norm.weight" in full_layout["dit"]
    assert "decoder.up_blocks.5.0.attn.to_qkv_multiscale.0.proj_in.weight" in full_layout["vae"]


def test_stored_tiny_layout_is_upstream():
    """The demo's layout file (used without torch) equals what the upstream modules produce."""
    assert stored_layout("tiny") == upstream_layout(PRESETS["tiny"]())


def test_unknown_key_is_named():
    from weights.core.errors import WeightsError

    keys = _keys(layout_for("tiny")) + ["model.mystery.weight"]
    with pytest.raises(WeightsError, match="model.mystery.weight"):
        split_keys(keys)


def test_config_round_trip():
    for make in PRESETS.values():
        cfg = make()
        again = MobileOConfig.from_checkpoint_config(cfg.to_checkpoint_config(), "test",
                                                     sana_folder=None) if make is PRESETS["full"] else None
        if again is not None:
            assert (again.llm, again.vision, again.mcp, again.dit, again.vae) == (
                cfg.llm, cfg.vision, cfg.mcp, cfg.dit, cfg.vae)


def test_tiny_checkpoint_loads_and_decides_values(tiny_ckpt):
    cfg = tiny_ckpt.config
    assert cfg.llm.vocab_size == tiny_ckpt.shapes("llm")["model.embed_tokens.weight"][0]
    assert cfg.llm.tie_word_embeddings is False
    assert cfg.mcp.temperature == 2.0
    assert tiny_ckpt.split.ignored_counts() == {"post-train duplicates": sum(
        len(layout_for("tiny")[c]) for c in DUPLICATED)}
    dit = tiny_ckpt.load("dit")
    assert set(dit) == set(layout_for("tiny")["dit"])
    assert all(v.dtype == np.float32 for v in dit.values())
