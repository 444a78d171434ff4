"""The parity helper asserts its own bound: a planted error above it fails, an exact 0.0
error (bit-identical logits, which some BLAS kernels give) and an infinite PSNR pass, NaN
fails, and a report-only row gates nothing."""

import math

import pytest

import conftest
from metrics import within


@pytest.fixture()
def rows(monkeypatch):
    """A private parity table, so these planted failures stay out of the report."""
    table: list[dict] = []
    monkeypatch.setattr(conftest, "_PARITY", table)
    return table


def check(*args, **kw):
    return conftest.record_parity("planted", *args, **kw)


def test_an_error_above_its_bound_fails_and_is_recorded_as_failed(rows):
    with pytest.raises(AssertionError, match="above its bound"):
        check("dit", "mlx fp32", "max_rel_err", 2e-4, at_most=1e-4)
    with pytest.raises(AssertionError, match="below its bound"):
        check("dit", "coreml program fp16", "psnr_db", 34.9, at_least=35.0)
    assert [r["passed"] for r in rows] == [False, False]


def test_exact_zero_error_and_infinite_psnr_pass(rows):
    assert check("llm", "mlx fp32", "max_rel_err", 0.0, at_most=1e-5) is None  # no value to mistake for a verdict
    check("llm", "mlx fp32", "psnr_db", math.inf, at_least=40.0)
    check("llm", "mlx fp32", "tokens differing", 0, at_most=0)
    assert [r["passed"] for r in rows] == [True, True, True]


@pytest.mark.parametrize("bound", [dict(at_most=1e-4), dict(at_least=40.0)])
def test_nan_never_passes(rows, bound):
    with pytest.raises(AssertionError):
        check("vae", "mlx fp32", "metric", math.nan, **bound)


def test_report_rows_gate_nothing_and_take_no_bound(rows):
    check("llm", "coreml program int4 vs fp16", "tokens agreeing", 1, report=True)
    assert rows[-1]["passed"] is None and rows[-1]["bound"] is None
    with pytest.raises(TypeError):
        check("llm", "x", "y", 1, at_most=2, report=True)
    with pytest.raises(TypeError):  # a gated row needs exactly one bound
        check("llm", "x", "y", 1)


def test_within_is_the_one_tolerance_check():
    within(0.0, at_most=0.0)
    within(40.0, at_least=40.0)
    with pytest.raises(AssertionError):
        within(1e-3, at_most=1e-4, what="planted")
    with pytest.raises(TypeError):
        within(1.0, at_most=1.0, at_least=0.0)
