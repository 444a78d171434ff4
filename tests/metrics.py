"""Error metrics and the one tolerance check shared by the tests (plain numpy; importable
without torch or mlx).

Import as ``from metrics import rel_err, psnr``: pytest puts ``tests/`` on ``sys.path``
(rootdir-relative, no ``__init__.py``), as it does for ``import test_generate_e2e``.

These are the tests' own definitions, kept apart from ``coreml_convert.metrics`` on purpose:
that module validates shapes (no broadcasting) and maps NaN/inf to ±inf, while these keep the
numbers the parity tests have always recorded.
"""

from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    """max|ours - ref| / max|ref|, computed in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def psnr(ref, test) -> float:
    """20·log10(max|ref| / RMSE) in dB, computed in float64; inf when equal."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    rmse = np.sqrt(np.mean((ref - test) ** 2))
    return float("inf") if rmse == 0 else float(20 * np.log10(np.abs(ref).max() / rmse))


def snr(ref, test) -> float:
    """Signal / error energy in dB, computed in float64; inf when equal."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    err = np.mean((ref - test) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.mean(ref ** 2) / err))


def within(value, *, at_most=None, at_least=None, what: str = "value") -> None:
    """Assert ``value`` is inside its bound (exactly one of ``at_most``/``at_least``).

    The one place a tolerance is checked: an exact 0.0 error or an infinite PSNR (identical
    arrays, which some BLAS kernels give) passes, NaN never does, and nothing is returned
    that a caller could mistake for the verdict.
    """
    if (at_most is None) == (at_least is None):
        raise TypeError("within() takes exactly one of at_most= or at_least=")
    value = float(value)
    if at_most is not None:
        assert value <= at_most, f"{what} = {value:.4g}, above its bound {at_most:.4g}"
    else:
        assert value >= at_least, f"{what} = {value:.4g}, below its bound {at_least:.4g}"
