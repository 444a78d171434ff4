"""Parity metrics for conversion gates."""

from __future__ import annotations

import math

import numpy as np

from weights.core.errors import MobileOError


def _pair(reference, test) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, np.float64)
    out = np.asarray(test, np.float64)
    if ref.shape != out.shape:
        raise MobileOError(
            f"cannot compare arrays of shapes {ref.shape} and {out.shape}.", "compare matching outputs."
        )
    return ref, out


def psnr(reference, test) -> float:
    """20·log10(max|ref| / RMSE) in dB; inf when equal, -inf when ``test`` has NaN/inf."""
    ref, out = _pair(reference, test)
    if not np.all(np.isfinite(out)):
        return -math.inf
    rmse = math.sqrt(float(np.mean((ref - out) ** 2))) if ref.size else 0.0
    if rmse == 0.0:
        return math.inf
    peak = float(np.max(np.abs(ref)))
    return 20.0 * math.log10(peak / rmse) if peak > 0 else -math.inf


def max_relative_error(reference, test) -> float:
    """max|test - ref| / max|ref| (the project's fp32 parity measure); inf on NaN/inf."""
    ref, out = _pair(reference, test)
    if not np.all(np.isfinite(out)):
        return math.inf
    diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    peak = float(np.max(np.abs(ref))) if ref.size else 0.0
    if diff == 0.0:
        return 0.0
    return diff / peak if peak > 0 else math.inf


def min_psnr(reference: dict, test: dict) -> float:
    """The worst PSNR over the outputs of ``reference`` (each must be present in ``test``)."""
    missing = sorted(set(reference) - set(test))
    if missing:
        raise MobileOError(f"outputs {missing} are missing from the result.", "return every output.")
    return min((psnr(reference[k], test[k]) for k in reference), default=math.inf)
