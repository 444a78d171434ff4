"""Bits per layer chosen by measured output drift: ml-stable-diffusion's mixed-bit pre-analysis,
on the torch module.

apple/ml-stable-diffusion's mixed-bit palettization compresses one layer at a time, measures the
whole model's output PSNR against the uncompressed model, ranks the layers by that sensitivity
and gives the most sensitive ones more bits.  Here the same is done on a component's
Neural-Engine torch module before it is traced (seconds a forward pass, where the MIL program on
numpy takes minutes): each weight is replaced by exactly what its palette will hold
(``palette.fake_quantize``: the same LUTs, fp16 entries, groups of output channels), the
module's gate outputs are compared with its own uncompressed outputs, and

  1. every weight at the fewest bits: if the output drift reaches ``target_db``, that is the plan;
  2. else each group of weights (a decoder layer, the lm_head) alone at the fewest bits, ranked
     by output PSNR (most sensitive first);
  3. groups get the most bits in that order until the drift reaches ``target_db``.

The result is a plan {weight name: bits} that ``convert.mixed_plan`` applies to the converted
program; the real drift of the compressed bundle is then gated as for every recipe (the torch
estimate runs in fp32: the target keeps a margin above the gate's floor).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from coreml_convert.metrics import min_psnr
from coreml_convert.palette import fake_quantize


class DriftProbe:
    """Swaps fake-quantized weights into a torch module and measures its output drift.

    ``weights``: {name: parameter} (output channels first); ``run``: the module's gate outputs
    ({output: array}) with whatever weights are in place; ``splits``: per weight, the row
    counts it is compressed in (the LLM's lm_head: one const per logits slice)."""

    def __init__(self, weights: dict, run: Callable[[], dict], group_size: int = 16, palette: str = "lloyd",
                 splits: dict[str, list[int]] | None = None):
        self.weights, self.run, self.group, self.palette = weights, run, group_size, palette
        self.splits = splits or {}
        self.cache: dict[tuple[str, int], np.ndarray] = {}  # fp16 rebuilt weights, once ``keep`` is set
        self.keep = False  # the first trial (every weight) keeps nothing: one weight set in memory less
        self.base = run()
        self.forwards = 1

    def rebuilt(self, name: str, bits: int) -> np.ndarray:
        """``name`` rebuilt from its ``bits``-bit palettes (fp16 values)."""
        key = (name, bits)
        if key in self.cache:
            return self.cache[key]
        w = self.weights[name].detach().numpy()
        parts, start = [], 0
        for rows in self.splits.get(name, [w.shape[0]]):
            parts.append(fake_quantize(w[start:start + rows], bits, self.group, self.palette))
            start += rows
        out = np.concatenate(parts).astype(np.float16)
        if self.keep:
            self.cache[key] = out
        return out

    def drift_db(self, assign: dict[str, int]) -> float:
        """The outputs' worst PSNR (dB) vs the uncompressed module with ``assign`` {name:
        bits} swapped in (the others uncompressed); the weights are restored after."""
        import torch

        kept = {}
        try:
            for name, bits in assign.items():
                p = self.weights[name]
                kept[name] = p.data
                p.data = torch.from_numpy(self.rebuilt(name, bits).astype(np.float32))
            out = self.run()
            self.forwards += 1
        finally:
            for name, data in kept.items():
                self.weights[name].data = data
        return min_psnr(self.base, out)


def plan_bits(probe: DriftProbe, groups: dict[str, list[str]], bits=(4, 6), target_db: float = 16.0,
              log=None) -> tuple[dict[str, int], dict]:
    """-> ({weight: bits}, a record of what was measured): the fewest bits everywhere if the
    drift reaches ``target_db``; else groups promoted to the most bits, most sensitive first,
    until it does (all of them at the most bits if it never does: the gate then says so)."""
    t0 = time.perf_counter()
    low, high = min(bits), max(bits)
    assign = {n: low for names in groups.values() for n in names}
    drift = probe.drift_db(assign)
    record = {"target_db": target_db, "all_low_db": round(drift, 2), "promoted": []}
    if log:
        log(f"output drift, every weight {low}-bit: {drift:.2f} dB (target {target_db} dB)")
    if drift < target_db:
        probe.keep = True  # each weight's palettes are needed again: alone, then in the promoted set
        sens = {g: probe.drift_db({n: low for n in names}) for g, names in groups.items()}
        record["sensitivity_db"] = {g: round(v, 2) if math.isfinite(v) else str(v) for g, v in sens.items()}
        for g in sorted(groups, key=lambda g: (sens[g], g)):
            assign.update({n: high for n in groups[g]})
            record["promoted"].append(g)
            drift = probe.drift_db(assign)
            if log:
                log(f"  + {g} at {high} bits (alone at {low}: {sens[g]:.2f} dB): {drift:.2f} dB")
            if drift >= target_db:
                break
    record.update(final_db=round(drift, 2), forwards=probe.forwards, seconds=round(time.perf_counter() - t0, 1))
    return assign, record
