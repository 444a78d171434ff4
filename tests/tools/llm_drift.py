"""The LLM's output drift from its compression, on the torch module (issue 22; not a test).

    flock /tmp/bigrun.lock .venv/bin/python tests/tools/llm_drift.py --model checkpoints/full --table
    flock /tmp/bigrun.lock .venv/bin/python tests/tools/llm_drift.py --model checkpoints/full --weights

The gates' own inputs (``coreml_convert.components.llm``: prefill chunks with an image, the
decode, the "hidden_states" prompt) through the Neural-Engine torch module; the worst output
PSNR (dB) against the uncompressed module:

  --table    the host embedding table's rows as int8 + scale (schema 3) and int4 + scale (the
             converter's, ``contract.quantize_rows``) vs fp16 rows (no gate sees this: the
             gates feed both programs the same dequantized rows);
  --weights  the palettes of every weight (``coreml_convert.palette.fake_quantize``): the old
             uniform ``mixed4/6g16+int8`` plan (bits by weight SNR) vs Lloyd-Max 4 bits everywhere;
  --sensitivity  each group (a decoder layer, the lm_head) alone at Lloyd-Max 4 bits, ranked:
             the pre-analysis' ranking, which the converter runs only when 4 bits everywhere
             misses its target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _module(ckpt):
    import torch

    from coreml_convert.ane_qwen2 import Qwen2ANE
    from coreml_convert.components import llm as L

    core = Qwen2ANE.from_checkpoint(ckpt)
    core.model.embed_tokens = torch.nn.Embedding(1, 1)  # the host's table: not needed here
    return L.LLM(core, ckpt.config).eval()


def _inputs(cfg, table):
    from coreml_convert.components import llm as L
    from weights.bundles import contract

    rng = np.random.default_rng(0)  # build_spec's seed: the gates' inputs
    prompt = L.example_prompt(cfg, rng)
    sequence = L.calls(cfg, table, prompt["ids"], prompt["image_embeds"], prompt["image_offset"])
    hidden, _ = L.example_hidden(cfg, table, contract.sequence_lengths(cfg)[0], rng)
    return sequence, hidden


def table_drift(ckpt) -> dict[str, float]:
    """Output PSNR of int8 / int4 rows vs fp16 rows."""
    from coreml_convert.components import llm as L
    from coreml_convert.metrics import min_psnr
    from weights.bundles import contract

    full = L.embedding_table(ckpt)
    scale = (np.abs(full).max(axis=1) / 127).astype(np.float16).astype(np.float32)[:, None]
    int8 = np.clip(np.round(full / np.where(scale > 0, scale, 1)), -127, 127) * scale
    tables = {"fp16": L.fp16_exact(full), "int8_row_scale": L.fp16_exact(int8),
              "int4_row_scale": L.fp16_exact(contract.dequantize_rows(contract.quantize_rows(full)))}
    del full, int8
    module = _module(ckpt)
    outs = {name: L.gate_outputs(module, *_inputs(ckpt.config, t)) for name, t in tables.items()}
    return {name: min_psnr(outs["fp16"], outs[name]) for name in tables if name != "fp16"}


def weight_drift(ckpt, sensitivity_only: bool = False) -> dict[str, float]:
    """Output PSNR of the old uniform weight-SNR plan and of Lloyd-Max 4 bits everywhere (or,
    ``sensitivity_only``, of each group alone at Lloyd-Max 4 bits, most sensitive first)."""
    from coreml_convert import sensitivity
    from coreml_convert.components import llm as L
    from coreml_convert.convert import MIN_WEIGHT_ELEMENTS, uniform_lut_snr_db
    from weights.bundles import contract

    table = L.fp16_exact(contract.dequantize_rows(contract.quantize_rows(L.embedding_table(ckpt))))
    sequence, hidden = _inputs(ckpt.config, table)
    del table
    module = _module(ckpt)
    weights = {n: p for n, p in module.core.named_parameters() if p.dim() == 4 and p.numel() >= MIN_WEIGHT_ELEMENTS}
    splits = {"lm_head.weight": list(contract.logits_widths(ckpt.config.llm.vocab_size))}
    run = lambda: L.gate_outputs(module, sequence, hidden)  # noqa: E731
    if sensitivity_only:
        groups = {"lm_head": [n for n in weights if n.startswith("lm_head.")]}
        groups.update({f"layer {i}": [n for n in weights if n.startswith(f"model.layers.{i}.")]
                       for i in range(ckpt.config.llm.num_hidden_layers)})
        probe = sensitivity.DriftProbe(weights, run, 16, "lloyd", splits)
        sens = {g: probe.drift_db({n: 4 for n in names}) for g, names in groups.items() if names}
        return {f"{g} alone": v for g, v in sorted(sens.items(), key=lambda kv: kv[1])}
    old = {n: next((b for b in (4, 6) if uniform_lut_snr_db(p.detach().numpy(), b, 16) >= 14.0), 6)
           for n, p in weights.items()}
    uniform = sensitivity.DriftProbe(weights, run, 16, "uniform", splits)
    lloyd = sensitivity.DriftProbe(weights, run, 16, "lloyd", splits)
    return {"uniform mixed4/6g16 (weight-SNR plan)": uniform.drift_db(old),
            "lloyd 4 bits everywhere": lloyd.drift_db({n: 4 for n in weights})}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full")
    p.add_argument("--table", action="store_true", help="host table formats vs fp16 rows")
    p.add_argument("--weights", action="store_true", help="weight palettes vs fp16 weights")
    p.add_argument("--sensitivity", action="store_true", help="each layer alone at 4 bits, ranked")
    a = p.parse_args(argv)
    import torch

    from weights.loading.hub import open_model

    torch.set_num_threads(2)
    ckpt = open_model(a.model)
    for wanted, measure in ((a.table, table_drift), (a.weights, weight_drift),
                            (a.sensitivity, lambda c: weight_drift(c, sensitivity_only=True))):
        if wanted:
            for name, db in measure(ckpt).items():
                print(f"{name}: output PSNR {db:.2f} dB (vs uncompressed)", flush=True)


if __name__ == "__main__":
    main()
