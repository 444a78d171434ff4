"""End-to-end drift of the compressed Core ML programs (issue: compression recipes as defaults):
the default recipe's program against the fp16 program, run as the app runs them, on numpy.

- DiT: a whole sampling run (Mobile-O's flow DPM-Solver++, CFG) from the same noise and
  conditioning with each program; the final latents are compared (PSNR).
- LLM: greedy decoding with each program from the same prompt; the decoded tokens are
  compared (how many agree before the first difference) and the first step's logits (PSNR).

Random weights quantize worse than trained ones, so the floors are indicative: they catch a
broken decompression or host loop, not a quality loss (README, "Compression").
"""

import numpy as np
import pytest

from weights.bundles import contract
from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import dit, llm
from coreml_convert.mil_exec import load_program, make_states, run_program

from metrics import psnr

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

STEPS = 10
GUIDANCE = 1.5
TOKENS = 12


def both_programs(name, coreml_bundle, tiny_export):
    """(fp16 program, the default recipe's program as ``mobileo-coreml`` wrote it)."""
    return load_program(coreml_bundle(name)), load_program(tiny_export / f"{name}.mlpackage")


def sample_latents(program, cfg, cond, mask, noise) -> np.ndarray:
    """The app's loop: one CFG pair (uncond, cond) per step through the DiT program."""
    from mlx_model.pipelines.generation import sample
    from mlx_model.support.scheduler import SCHEDULERS, classifier_free_guidance
    from weights.core.samplers import DEFAULT_SAMPLER

    scheduler = SCHEDULERS[DEFAULT_SAMPLER](cfg.scheduler, STEPS)

    def denoise(x, t):
        out = run_program(program, {"latent": np.concatenate([x, x]).astype(np.float16),
                                    "timestep_features": contract.timestep_features(np.full(2, t, np.float32)),
                                    "encoder_hidden_states": cond, "encoder_attention_mask": mask})
        v = np.asarray(out["velocity"], np.float32)
        return classifier_free_guidance(v[:1], v[1:], GUIDANCE)

    x = noise
    for x in sample(denoise, noise, scheduler):
        pass
    return x


@pytest.mark.slow
def test_dit_final_latents_after_a_full_sampling_run(tiny_ckpt, coreml_bundle, tiny_export, parity):
    cfg = tiny_ckpt.config
    plain, packed = both_programs("dit", coreml_bundle, tiny_export)
    ex = dit.example_inputs(cfg.dit, contract.sequence_lengths(cfg)[0], seed=3)
    noise = np.random.default_rng(4).standard_normal((1, *cfg.latent_shape)).astype(np.float32)
    cond = ex["encoder_hidden_states"].astype(np.float16)
    ref = sample_latents(plain, cfg, cond, ex["encoder_attention_mask"], noise)
    ours = sample_latents(packed, cfg, cond, ex["encoder_attention_mask"], noise)
    assert np.isfinite(ref).all() and np.abs(ref - noise).max() > 0.1  # the run moved the latents
    db = psnr(ref, ours)
    name = cv.recipe_name(cv.RECIPES["dit"])
    parity("dit tiny, 10-step sampling", f"coreml program {name} vs fp16", "psnr_db final latents", db, at_least=gates.DRIFT_MIN_DB)


def greedy_tokens(program, cfg, table, ids) -> tuple[list[int], np.ndarray]:
    """Prefill ``ids`` then decode greedily, feeding each token back; (tokens, first logits)."""
    states = make_states(program, llm.FUNCTIONS[0])
    *prefill, first = llm.calls(cfg, table, ids, None, 0)
    for fn, inputs in prefill:
        run_program(program, inputs, function=fn, states=states)
    logits = llm.logits_of(run_program(program, first[1], function="decode", states=states))
    out, first_logits = [], logits
    for i in range(TOKENS):
        token = int(np.argmax(logits))
        out.append(token)
        step = llm.step_inputs(cfg, contract.embed_prompt(table, [token]), len(ids) + i)
        logits = llm.logits_of(run_program(program, step, function="decode", states=states))
    return out, first_logits


@pytest.mark.slow
def test_llm_decoded_tokens(tiny_ckpt, coreml_spec, coreml_bundle, tiny_export, parity, capsys):
    cfg = tiny_ckpt.config
    spec = coreml_spec("llm")
    plain, packed = both_programs("llm", coreml_bundle, tiny_export)
    table = llm.fp16_exact(contract.dequantize_rows(spec.files[contract.EMBEDDINGS_FILE]))  # the rows the app feeds
    ids = np.random.default_rng(6).integers(0, cfg.llm.vocab_size, contract.chunk_length(cfg) + 5)
    ref, ref_logits = greedy_tokens(plain, cfg, table, ids)
    ours, logits = greedy_tokens(packed, cfg, table, ids)
    agree = next((i for i, (a, b) in enumerate(zip(ref, ours)) if a != b), TOKENS)
    name = cv.recipe_name(cv.RECIPES["llm"])
    with capsys.disabled():
        print(f"\nllm {name} vs fp16 program, greedy: {agree}/{TOKENS} tokens agree before the first difference")
    parity("llm tiny, greedy decoding", f"coreml program {name} vs fp16", f"tokens agreeing of {TOKENS}", agree, report=True)  # reported only: random weights make 4-bit argmaxes flip early
    db = psnr(ref_logits, logits)
    parity("llm tiny, greedy decoding", f"coreml program {name} vs fp16", "psnr_db first logits", db, at_least=gates.DRIFT_MIN_DB)
