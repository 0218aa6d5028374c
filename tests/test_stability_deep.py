"""Stability rules on chains 5,000 nodes deep (issue 13): the helpers that walk a factor or a monomial
(quotients._never_zero via product_cancel, cancellation._degree via taylor_cancellation) are
iterative, so neither exprc.optimize nor exprc.function raises RecursionError."""

from __future__ import annotations

import numpy as np

import exprc
from exprc.rewrite.rules.stability import cancellation, quotients

DEPTH = 5000


def _positive_chain(x, y, depth=DEPTH):
    """abs(sigmoid(x) * sigmoid(y)) * sigmoid(y) …: nonzero in exact arithmetic, 0 in floats."""
    u = exprc.sigmoid(x)
    for i in range(depth):
        u = u * exprc.sigmoid(y) if i % 2 else abs(u)
    return u


def _monomial_chain(x, depth=DEPTH):
    """square(x * x) * x …: a monomial in x (of a huge degree) ``depth`` nodes deep."""
    m = x
    for i in range(depth):
        m = m * x if i % 2 else exprc.square(m)
    return m


def test_helpers_walk_deep_chains():
    x, y = exprc.vector("x"), exprc.vector("y")
    assert quotients._never_zero(_positive_chain(x, y))
    assert not quotients._never_zero(_positive_chain(x, y) * x)
    m = _monomial_chain(x)
    assert cancellation._degree(m, x) == cancellation._degree(m.inputs[0], x) + 1
    assert cancellation._degree(m * y, x) is None
    small = x * exprc.square(x) * x ** 3.0
    assert cancellation._degree(small, x) == 6


def test_product_cancel_on_a_deep_factor():
    x, y = exprc.vector("x"), exprc.vector("y")
    u = _positive_chain(x, y)
    e = (u * y) / u
    assert "product_cancel" in exprc.optimize(e).rewrites
    f = exprc.function([x, y], e, backend="numpy")
    assert "product_cancel" in f.rewrites
    xs, ys = np.array([0.5, -3.0, 2.0]), np.array([1.5, 0.25, -7.0])
    # u underflows to 0 (0/0 in the naive formula); cancelled, the result is y exactly
    np.testing.assert_array_equal(f(xs, ys), ys)


def test_taylor_cancellation_reads_a_deep_monomial():
    x = exprc.vector("x")
    e = x + (_monomial_chain(x) - exprc.sin(x))
    assert "taylor_cancellation" not in exprc.optimize(e).rewrites  # (read, but the degree is too high)
    f = exprc.function([x], e, backend="numpy")
    xs = np.array([0.5, -0.25, 0.9])
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(f(xs), xs - np.sin(xs), rtol=1e-12)  # x**d underflows to 0


def test_log_quotient_guard_reads_a_deep_divisor():
    """log_div's sign guard (exact_sign / exact_finite) walks abs/square/neg chains without recursion."""
    x, y = exprc.vector("x"), exprc.vector("y")
    s = exprc.exp(y)
    for i in range(DEPTH):
        s = abs(s) if i % 2 else exprc.square(s)
    f = exprc.function([x, y], exprc.log(x / s), backend="numpy")
    assert "log_div" in f.rewrites
    with np.errstate(all="ignore"):
        r = f(np.array([-2.0, 2.0]), np.array([-1.0, 0.0]))
    assert np.isnan(r[0]) and r[1] == np.log(2.0)  # s underflows to 0 but is > 0: log of a negative


def test_series_power_and_exact_argument_rules_on_chains_thousands_deep():
    """series_difference/series_quotient read f(u)/u**k terms, power_difference reads s/a**p, and
    exp_exact_argument walks an arithmetic tree: on chains 3,000 deep none recurses without bound, and the
    results match NumPy."""
    x = exprc.vector("x")
    v = np.array([0.5, 0.9, 1.1])
    e = exprc.sin(x)
    ref = np.sin(v)
    for _ in range(3000):
        e, ref = e / x, ref / v
    got = exprc.function([x], e - exprc.tan(x) / x, backend="numpy")(v)
    np.testing.assert_allclose(got, ref - np.tan(v) / v, rtol=1e-9)
    e, ref = x + 1.0, v + 1.0
    for _ in range(3000):
        e, ref = 1.0 / exprc.sqrt(e), 1.0 / np.sqrt(ref)
    np.testing.assert_allclose(exprc.function([x], e - 1.0)(v), ref - 1.0, rtol=1e-9, atol=1e-15)
    e, ref = x, v.copy()
    for _ in range(3000):
        e, ref = e * 0.999 + 0.001, ref * 0.999 + 0.001
    np.testing.assert_allclose(exprc.function([x], exprc.exp(e * x * 30.0))(v), np.exp(ref * v * 30.0), rtol=1e-12)
