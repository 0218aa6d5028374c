"""Shared test configuration: a fixed hypothesis profile and float comparison helpers."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

settings.register_profile(
    "exprc", deadline=None, derandomize=True, max_examples=200, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("EXPRC_HYPOTHESIS_PROFILE", "exprc"))

#: Default tolerance in units in the last place, per float dtype.
ULPS = {"float32": 8, "float64": 8}


def assert_close(actual, expected, ulps: int | None = None, check_dtype: bool = True) -> None:
    """Compare arrays: same shape and dtype; NaN == NaN; infinities equal; finite values within
    ``ulps`` units in the last place of the larger magnitude (plus the same number of ulps of the
    array's scale, for sums whose terms cancel).  Integers and bools compare exactly."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if check_dtype:
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype.kind not in "fc" and actual.dtype.kind not in "fc":
        np.testing.assert_array_equal(actual, expected)
        return
    dt = np.result_type(actual.dtype, expected.dtype)
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    a, e = actual.astype(dt), expected.astype(dt)
    ulps = ULPS.get(dt.name, 8) if ulps is None else ulps
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), f"NaN positions differ:\nactual={a}\nexpected={e}"
    inf_e = np.isinf(e) | np.isinf(a)
    assert np.array_equal(a[inf_e], e[inf_e]), f"infinities differ:\nactual={a}\nexpected={e}"
    fin = ~(nan_e | inf_e)
    if not fin.any():
        return
    af, ef = a[fin], e[fin]
    scale = np.max(np.abs(ef))
    tol = ulps * (np.spacing(np.maximum(np.abs(af), np.abs(ef))) + np.spacing(dt.type(max(scale, 1.0))))
    bad = np.abs(af - ef) > tol
    assert not bad.any(), f"values differ by more than {ulps} ulps:\nactual={af[bad]}\nexpected={ef[bad]}"


def assert_same_bits(a, b) -> None:
    """Bit-for-bit equality up to NaN payloads: same dtype and shape, NaN where NaN, and equal
    values with equal signs elsewhere (-0.0 stays -0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    np.testing.assert_array_equal(a[ok], b[ok])
    np.testing.assert_array_equal(np.signbit(a[ok]), np.signbit(b[ok]))


@pytest.fixture
def close():
    return assert_close


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty compile cache ($EXPRC_CACHE_DIR) and an empty in-process memo for one test."""
    from exprc.function import clear_memo

    d = tmp_path / "cache"
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(d))
    clear_memo()
    yield d
    clear_memo()
