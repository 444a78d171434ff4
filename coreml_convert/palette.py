"""Non-uniform palettes: Lloyd-Max LUTs per group of output channels, deterministic.

coremltools' ``uniform`` palettization spaces a group's 2^b LUT entries evenly from its min to
its max, so a bell-shaped weight distribution leaves most entries on the sparse tails; its
``kmeans`` mode needs scikit-learn (not a dependency here) and random restarts.  This module
computes the 1-D k-means optimum the same way every run (Lloyd's iterations from the uniform
LUT, on the sorted values with prefix sums: no randomness, no scikit-learn), and hands
it to coremltools through ``OpPalettizerConfig(mode="custom", lut_function=...)`` with
``granularity="per_grouped_channel"``: the same ``constexpr_lut_to_dense`` op, the same bytes
per weight as a uniform LUT (issue 22).  On Gaussian weights a 4-bit Lloyd-Max LUT keeps about
20 dB of weight SNR where a min-max uniform one keeps about 16 dB.  Deterministic, so the LLM's
functions, compressed one by one, still share one weight set after the merge.

Pure numpy; :func:`fake_quantize` rebuilds a weight as the bundle will hold it (for the
output-drift pre-analysis on the torch module, ``coreml_convert.sensitivity``).
"""

from __future__ import annotations

import numpy as np

ITERATIONS = 40  # Lloyd's iterations at most (it stops earlier once the centres stop moving)


def lloyd_lut(values, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """(LUT (2^nbits,) in ``values``' float dtype (fp16 for a program's weights), indices
    uint8 (n,)): the 1-D k-means (Lloyd-Max) palette of all of ``values``, each value mapped to
    its nearest LUT entry.  Deterministic: the iterations start from the min-max uniform LUT
    (coremltools' ``uniform`` mode) and never raise its squared error."""
    x = np.asarray(values)
    dtype = x.dtype if x.dtype.kind == "f" else np.float32
    flat = x.reshape(-1).astype(np.float64)
    k, n = 1 << int(nbits), flat.size
    xs = np.sort(flat)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    centres = np.linspace(xs[0], xs[-1], k)  # coremltools' uniform LUT: Lloyd only lowers its error
    for _ in range(ITERATIONS):
        edges = np.concatenate([[0], np.searchsorted(xs, (centres[1:] + centres[:-1]) / 2), [n]])
        counts = np.diff(edges)
        moved = np.where(counts > 0, (prefix[edges[1:]] - prefix[edges[:-1]]) / np.maximum(counts, 1), centres)
        if np.array_equal(moved, centres):
            break
        centres = moved
    lut = np.sort(centres.astype(dtype))
    mids = (lut[1:].astype(np.float64) + lut[:-1].astype(np.float64)) / 2
    return lut, np.searchsorted(mids, flat).astype(np.uint8)


def lut_function(nbits: int):
    """The ``lut_function`` of coremltools' custom palettization mode for ``nbits``: called on
    each group of output channels, returns (LUT, flat indices)."""
    def palette(values):
        return lloyd_lut(values, nbits)
    palette.__name__ = f"lloyd{nbits}"
    return palette


def group_size_for(channels: int, group_size: int) -> int:
    """The LUT group size used for a weight of ``channels`` output channels: ``group_size`` if
    it divides them, else the largest divisor below it (coremltools skips a weight whose
    channels a group size does not divide: the LLM's last logits slice, 4,193 rows = 7 x 599,
    would stay fp16)."""
    if group_size <= 0 or channels <= 0:
        return channels
    return next(g for g in range(min(group_size, channels), 0, -1) if channels % g == 0)


def fake_quantize(weight, nbits: int, group_size: int, mode: str = "lloyd") -> np.ndarray:
    """``weight`` (output channels first) rebuilt from its palettes as float32: one LUT per
    :func:`group_size_for` output channels, Lloyd-Max (``mode="lloyd"``) or coremltools'
    min-max ``uniform`` LUT, both with fp16 entries."""
    w = np.asarray(weight).astype(np.float16)
    g = group_size_for(w.shape[0], group_size)
    rows = w.reshape(w.shape[0] // g, -1)
    out = np.empty(rows.shape, np.float32)
    for i, row in enumerate(rows):
        lut, idx = lloyd_lut(row, nbits) if mode == "lloyd" else uniform_lut(row, nbits)
        out[i] = lut.astype(np.float32)[idx]
    return out.reshape(w.shape)


def uniform_lut(values, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """coremltools' ``compress_uniform`` (min-max, evenly spaced entries, nearest index)."""
    v = np.asarray(values).reshape(-1)
    lo, hi = float(v.min()), float(v.max())
    levels = (1 << nbits) - 1
    span = hi - lo if hi > lo else 1.0
    idx = np.round((v.astype(np.float64) - lo) / span * levels).astype(np.uint8)
    lut = (np.arange(levels + 1) * ((hi - lo) / levels) + lo).astype(v.dtype)
    return lut, idx
