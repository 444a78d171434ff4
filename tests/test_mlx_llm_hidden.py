"""MLX Qwen2 (mlx-lm) hidden states and logits vs transformers Qwen2ForCausalLM, fp32."""

import numpy as np
import pytest

import mlx.core as mx
import torch

from metrics import rel_err, within  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    from mlx_model.components.llm import LanguageModel

    return LanguageModel.from_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def ref(tiny_ckpt):
    from weights.references import upstream

    return upstream.build("llm", tiny_ckpt.config, tiny_ckpt.load("llm"))


def test_tokenizer_ids_by_name(llm):
    from weights.core import prompts

    tok = llm.tokenizer
    ids = tok.encode(prompts.generation_prompt("a red cup"))
    assert ids[0] == tok.token_id(prompts.IM_START)
    assert tok.eos_id == tok.token_id(prompts.IM_END)
    assert tok.decode(ids) == prompts.generation_prompt("a red cup")


def test_hidden_states_match_transformers(llm, ref, tiny_ckpt, parity):
    from weights.core import prompts

    ids = llm.tokenizer.encode(prompts.generation_prompt("a red cup"))
    emb = llm.embed(mx.array([ids]))
    ours = llm.hidden_states(emb, 4)
    mx.eval(ours)
    with torch.no_grad():
        out = ref(inputs_embeds=torch.from_numpy(np.array(emb)), output_hidden_states=True)
    theirs = [h.numpy() for h in out.hidden_states]
    assert len(theirs) == tiny_ckpt.config.llm.num_hidden_layers + 1
    errs = []
    for a, b in zip(ours, theirs[-4:]):
        assert a.shape == b.shape
        errs.append(rel_err(a, b))
    parity("llm hidden[-4:]", "mlx fp32", "max_rel_err", max(errs), at_most=1e-4)
    # every entry, including the embeddings
    all_ours = llm.hidden_states(emb, len(theirs))
    for a, b in zip(all_ours, theirs):
        within(rel_err(a, b), at_most=1e-4)
    within(rel_err(llm(emb), out.logits.numpy()), at_most=1e-4)


def test_embed_matches(llm, ref):
    ids = [[1, 5, 7, 200]]
    e = np.array(llm.embed(mx.array(ids)))
    with torch.no_grad():
        r = ref.model.embed_tokens(torch.tensor(ids)).numpy()
    np.testing.assert_array_equal(e, r)


def test_cached_decoding_matches_full_forward(llm):
    from mlx_lm.models.cache import make_prompt_cache

    ids = mx.array([[3, 9, 27, 81, 243, 100]])
    full = llm(llm.embed(ids))
    cache = make_prompt_cache(llm.model)
    a = llm(llm.embed(ids[:, :4]), cache=cache)
    b = llm(llm.embed(ids[:, 4:]), cache=cache)
    step = mx.concatenate([a, b], axis=1)
    within(rel_err(step, full), at_most=1e-4)


def test_quantized_llm_loads_and_dequantized_compute_matches(tiny_ckpt):
    """4-bit weights; on CPU they are dequantized for float matmuls: same values, same outputs."""
    import mlx.nn as nn

    from mlx_model.components.llm import LanguageModel

    q = LanguageModel.from_checkpoint(tiny_ckpt, quantize=4, dequantize=False)
    assert isinstance(q.model.model.layers[0].mlp.gate_proj, nn.QuantizedLinear)
    d = LanguageModel.from_checkpoint(tiny_ckpt, quantize=4, dequantize=True)
    assert type(d.model.model.layers[0].mlp.gate_proj) is nn.Linear
    emb = q.embed(mx.array([[1, 2, 3, 50, 60]]))
    for a, b in zip(q.hidden_states(emb, 4), d.hidden_states(emb, 4)):
        assert np.isfinite(np.array(a)).all()
        within(rel_err(b, a), at_most=1e-4)
    within(rel_err(d(emb), q(emb)), at_most=1e-4)


def test_shape_mismatch_is_one_clear_line(tiny_ckpt):
    from mlx_lm.models.qwen2 import Model, ModelArgs

    from weights.core.errors import WeightsError
    from weights.mapping.mlx_map import load_component

    cfg = tiny_ckpt.config.llm.replace(intermediate_size=96)
    with pytest.raises(WeightsError, match="has shape") as e:
        load_component(Model(ModelArgs.from_dict(cfg.to_hf_dict())), tiny_ckpt, "llm")
    assert "\n" not in str(e.value)


def test_full_width_reduced_layers_match_transformers(parity):
    """Qwen2-0.5B widths (896, 14 heads / 2 KV heads, 4864 MLP), 2 layers, small vocab."""
    from mlx_lm.models.qwen2 import Model, ModelArgs

    from weights.references import upstream
    from weights.core.configs import LLMConfig
    from weights.mapping.mlx_map import load_component
    from weights.loading.synthetic import random_tensors
    from mlx_model.components.llm import LanguageModel

    cfg = LLMConfig(hidden_size=896, num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=1000)
    ref = upstream.qwen2(cfg)
    tensors = random_tensors({k: tuple(v.shape) for k, v in ref.state_dict().items()}, "llm", seed=2)
    upstream.load_state(ref, tensors)
    model = Model(ModelArgs.from_dict(cfg.to_hf_dict()))
    load_component(model, None, "llm", tensors=tensors, keys=model.sanitize)
    llm = LanguageModel(model, None, cfg)
    ids = np.random.default_rng(0).integers(0, 1000, (1, 57))
    emb = llm.embed(mx.array(ids))
    ours = llm.hidden_states(emb, 3)
    with torch.no_grad():
        theirs = ref(inputs_embeds=torch.from_numpy(np.array(emb)), output_hidden_states=True).hidden_states
    err = max(rel_err(a, b.numpy()) for a, b in zip(ours, theirs[-3:]))
    parity("llm 0.5B-width", "mlx fp32", "max_rel_err", err, at_most=1e-4)
