"""Qwen2 with spliced image embeddings: MLX vs transformers on the same random model.

Reference chain, all upstream torch: timm fastvit_mci3 -> Linear-GELU-Linear projector ->
spliced between transformers' embed_tokens of the prompt pieces -> Qwen2ForCausalLM
(inputs_embeds).  fp32 relative error = max|ours - ref| / max|ref|.
"""

import numpy as np
import pytest

import torch
import timm  # noqa: F401

from mlx_model.components.multimodal import MultimodalPrompt  # noqa: E402
from mlx_model.support.tokenizer import PromptError  # noqa: E402
from mlx_model.pipelines.understanding import Detokenizer, Understanding  # noqa: E402
from weights.core import prompts
from weights.references import upstream  # noqa: E402
from metrics import rel_err  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-4
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return Understanding.from_checkpoint(tiny_ckpt, quantize=0)


@pytest.fixture(scope="module")
def pixels(tiny_ckpt):
    import skimage.data as skdata
    from mlx_model.support.preprocess import preprocess

    return preprocess(skdata.chelsea(), tiny_ckpt.config.preprocess)[None]


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    cfg = tiny_ckpt.config
    return {
        "vision": upstream.build("vision", cfg, tiny_ckpt.load("vision")),
        "projector": upstream.build("projector", cfg, tiny_ckpt.load("projector")),
        "llm": upstream.build("llm", cfg, tiny_ckpt.load("llm")),
    }


def reference_embeds(reference, prompt: MultimodalPrompt, pixels: np.ndarray) -> torch.Tensor:
    """LLaVA's prepare_inputs_labels_for_multimodal, spelled out with the upstream modules."""
    with torch.no_grad():
        feats = reference["vision"].forward_features(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        image = reference["projector"](feats.flatten(2).transpose(1, 2))[0]
        emb = reference["llm"].model.embed_tokens
        before, after = (emb(torch.tensor(p, dtype=torch.long)) for p in prompt.pieces)
        return torch.cat([before, image, after])[None]


def test_prompt_splits_on_the_placeholder(model, tiny_ckpt):
    tok = model.llm.tokenizer
    n = tiny_ckpt.config.vision.num_tokens
    text = prompts.understanding_prompt(QUESTION)
    p = MultimodalPrompt.build(tok, text, n)
    before, after = text.split(prompts.IMAGE_PLACEHOLDER)
    assert p.pieces == (tuple(tok.encode(before)), tuple(tok.encode(after)))
    assert p.image_token_id == tok.token_id(prompts.IMAGE_TOKEN)
    ids = p.ids()
    assert len(ids) == len(p) == len(p.pieces[0]) + n + len(p.pieces[1])
    assert ids[p.image_positions()] == [p.image_token_id] * n
    assert ids[0] == tok.token_id(prompts.IM_START)
    assert tok.decode(ids[p.image_positions().stop:]) == after


@pytest.mark.parametrize("text", ["no image here", "<image><image> twice"])
def test_prompt_needs_exactly_one_image(model, text):
    with pytest.raises(PromptError, match="exactly one image"):
        MultimodalPrompt.build(model.llm.tokenizer, text, 16)


def test_spliced_logits_match_transformers(model, reference, pixels, parity):
    prompt, embeds = model.embed(pixels, QUESTION)
    ref_embeds = reference_embeds(reference, prompt, pixels)
    assert embeds.shape == tuple(ref_embeds.shape)
    assert rel_err(embeds, ref_embeds.numpy()) <= TOL
    # the text positions are bit-identical table lookups
    pos = prompt.image_positions()
    np.testing.assert_array_equal(np.array(embeds)[0, :pos.start], ref_embeds.numpy()[0, :pos.start])

    ours = model.llm(embeds)
    with torch.no_grad():
        ref = reference["llm"](inputs_embeds=ref_embeds).logits.numpy()
    err = rel_err(ours, ref)
    parity("llm + image tiny", "mlx fp32", "max_rel_err logits", err, at_most=TOL)


def test_greedy_32_tokens_match_transformers_generate(model, reference, pixels, parity):
    prompt, _ = model.embed(pixels, QUESTION)
    ref_embeds = reference_embeds(reference, prompt, pixels)
    llm = reference["llm"]
    with torch.no_grad():
        ref_ids = llm.generate(inputs_embeds=ref_embeds, attention_mask=torch.ones(ref_embeds.shape[:2], dtype=torch.long),
                               do_sample=False, max_new_tokens=32, min_new_tokens=32, eos_token_id=None,
                               pad_token_id=model.llm.tokenizer.token_id(prompts.PAD_TOKEN))[0].tolist()
    ours = [r.token for r in model.stream(pixels, QUESTION, max_tokens=32, temp=0.0, stop_at_eos=False)
            if r.token is not None]
    assert len(ref_ids) == 32
    parity("llm greedy 32 tokens", "mlx fp32", "tokens differing", sum(a != b for a, b in zip(ours, ref_ids)), at_most=0)
    assert ours == ref_ids


def test_stops_at_end_of_turn(model, pixels, monkeypatch):
    """Greedy decoding ends when the end-of-turn token comes, and does not print it."""
    greedy = [r.token for r in model.stream(pixels, QUESTION, max_tokens=12, temp=0.0, stop_at_eos=False)][:-1]
    eos = greedy[5]
    monkeypatch.setattr(type(model.llm.tokenizer), "eos_id", property(lambda self: eos))
    rs = list(model.stream(pixels, QUESTION, max_tokens=12, temp=0.0))
    assert rs[-1].finish_reason == "stop"
    assert [r.token for r in rs[:-1]] == greedy[:greedy.index(eos)]
    assert rs[-1].generation_tokens == greedy.index(eos)


@pytest.mark.slow
def test_sampling_is_seeded(model, pixels):
    def run(seed, **kw):
        return [r.token for r in model.stream(pixels, QUESTION, max_tokens=16, seed=seed, stop_at_eos=False, **kw)]

    a, b, c = run(3), run(3), run(4)
    assert a == b and a != c
    assert run(3, top_p=0.5) == run(3, top_p=0.5)
    # temperature from Mobile-O's defaults (0.8), not greedy
    assert run(3) != [r.token for r in model.stream(pixels, QUESTION, max_tokens=16, temp=0, stop_at_eos=False)]


def test_streamed_text_is_the_decoded_answer(model, pixels):
    rs = list(model.stream(pixels, QUESTION, max_tokens=24, seed=0, stop_at_eos=False))
    ids = [r.token for r in rs if r.token is not None]
    assert "".join(r.text for r in rs) == model.llm.tokenizer.decode(ids, skip_special_tokens=True)
    assert rs[-1].finish_reason == "length" and rs[-1].generation_tokens == 24


def test_detokenizer_holds_partial_characters(model):
    tok = model.llm.tokenizer
    ids = tok.encode("héllo ☕ wörld")
    d = Detokenizer(tok)
    pieces = [d.add(i) for i in ids] + [d.finish()]
    assert "".join(pieces) == "héllo ☕ wörld"
    assert all("\ufffd" not in p for p in pieces)


def test_loads_only_what_understanding_needs(tiny_ckpt_dir):
    from weights.mapping.checkpoint import Checkpoint

    ckpt = Checkpoint.open(tiny_ckpt_dir)
    ckpt.config  # reads config.json (and the MCP temperature scalar) up front
    loaded = []
    real = ckpt.load
    ckpt.load = lambda component, keys=None: loaded.append(component) or real(component, keys)
    Understanding.from_checkpoint(ckpt, quantize=0)
    assert sorted(set(loaded)) == ["llm", "projector", "vision"]


def test_quantized_model_runs(tiny_ckpt, pixels):
    m = Understanding.from_checkpoint(tiny_ckpt, quantize=4)
    rs = list(m.stream(pixels, QUESTION, max_tokens=4, temp=0, stop_at_eos=False))
    assert rs[-1].generation_tokens == 4


def test_over_long_question_is_one_line_error(model, pixels):
    from mlx_model.support.tokenizer import PromptError

    with pytest.raises(PromptError, match="limit is 512"):
        model.prompt("why " * 600)
