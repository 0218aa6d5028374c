"""Canonical forms: what the canonicalize pass makes of each spelling, and that it never changes a bit."""

import numpy as np
import pytest
from conftest import assert_same_bits
from graphgen import graph_cases
from hypothesis import given

import exprc
from exprc.graph import toposort
from exprc.rewrite.forms import SumView, scope, sum_view

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, -2.5, 1e308, -1e308, 5e-324, 3.0, -7.25])
CANON_ONLY = ("stability", "specialize")


def _canon(e):
    return exprc.optimize([e], exclude=CANON_ONLY).outputs[0]


def _ops(node):
    return [n.op for n in toposort([node]) if n.op not in ("input", "constant")]




x, y = exprc.vector("x"), exprc.vector("y")


@pytest.mark.parametrize("build,expected", [
    (lambda: x - y, "x + -y"),
    (lambda: x - 1.0, "x + -1.0"),
    (lambda: 1.0 - x, "-x + 1.0"),
    (lambda: 2.0 * x, "x * 2.0"),
    (lambda: 2.0 + x, "x + 2.0"),
    (lambda: x * -1.0, "-x"),
    (lambda: -1.0 * x, "-x"),
    (lambda: (-x) * y, "-(x * y)"),
    (lambda: (-x) * (-y), "x * y"),
    (lambda: (-x) * 3.0, "x * -3.0"),
    (lambda: (-x) / y, "-(x / y)"),
    (lambda: x / (-y), "-(x / y)"),
    (lambda: x / 2.0, "x * 0.5"),
    (lambda: x / 3.0, "x / 3.0"),  # 1/3 is not exact: division stays
    (lambda: exprc.reciprocal(x), "1.0 / x"),
    (lambda: x ** -1, "1.0 / x"),
    (lambda: x * x, "square(x)"),
    (lambda: exprc.abs(exprc.exp(x)), "exp(x)"),
    (lambda: exprc.abs(-x), "abs(x)"),
    (lambda: exprc.log(exprc.where(exprc.equal(x, 0.0), 1.0, x)), "where(x == 0.0, 0.0, log(x))"),
    (lambda: exprc.log(exprc.where(x > y, y, 1.0)), "where(x > y, log(y), 0.0)"),
    (lambda: exprc.log(exprc.where(x > y, y, 2.0)), "log(where(x > y, y, 2.0))"),  # (log(2) is not exact)
])
def test_canonical_form(build, expected):
    assert exprc.pprint(_canon(build())) == expected


def test_neg_is_never_a_multiplication_by_minus_one():
    """PyTensor's bug: canonicalization turned neg into mul(-1, x) and hid it from patterns."""
    for e in [-x, x * -1.0, -1.0 * x, -(x * 2.0), 0.0 - x, exprc.negative(exprc.negative(-x))]:
        out = _canon(e)
        for n in toposort([out]):
            if n.op == "mul":
                assert not any(i.op == "constant" and np.all(i.value == -1) for i in n.inputs), exprc.pprint(out)
        assert "neg" in _ops(out) or out.op == "mul"


@given(graph_cases(max_ops=6))
def test_no_multiplication_by_minus_one_in_random_graphs(case):
    out = _canon(case.expr)
    for n in toposort([out]):
        if n.op == "mul" and n.dtype.startswith("float"):
            assert not any(i.op == "constant" and i.value.size == 1 and i.value.reshape(()) == -1
                           for i in n.inputs)


@pytest.mark.parametrize("spelling", [
    lambda: 1 + x, lambda: x + 1, lambda: -(-1 - x), lambda: x - (-1), lambda: (x + 0.5) + 0.5,
    lambda: 1 - (-x), lambda: -(-x - 1), lambda: (x + 3.0) - 2.0, lambda: x * 1 + 1,
])
def test_sum_view_is_one_form_for_every_spelling(spelling):
    with scope():
        v = sum_view(_canon(spelling()))
    assert v is not None and v.terms == ((1, x),) and v.const == 1


def test_sum_view_coefficients_and_cancellation():
    with scope():
        v = sum_view(_canon(2.0 * x - (y - x) + 3.0 * (-y)))
        assert {t: c for c, t in v.terms} == {x: 3, y: -4} and v.const == 0
        w = sum_view(_canon((x + y) - x))
        assert w.terms == ((1, y),) and w.cancelled
        assert sum_view(exprc.vector("i", "int64") + 1) is None
        assert isinstance(sum_view(x), SumView) and sum_view(x).single() == (1, x)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("build", [
    lambda a, b: a - b, lambda a, b: 1.0 - a, lambda a, b: a - 1.0, lambda a, b: (-a) * b, lambda a, b: (-a) * (-b),
    lambda a, b: a * -1.0, lambda a, b: (-a) / b, lambda a, b: a / (-b), lambda a, b: a / 2.0, lambda a, b: a / 0.25,
    lambda a, b: exprc.reciprocal(a), lambda a, b: a ** -1, lambda a, b: a * a, lambda a, b: 2.0 * a + b,
    lambda a, b: exprc.abs(exprc.exp(a)), lambda a, b: exprc.abs(-a), lambda a, b: (-a) * 3.0,
    lambda a, b: a - (-0.0), lambda a, b: -(a - b), lambda a, b: exprc.log(exprc.where(exprc.equal(a, 0.0), 1.0, b)),
    lambda a, b: exprc.log(exprc.where(a > b, a, 1.0)),
])
def test_canonicalization_changes_no_bit(build, dtype):
    """Canonical rules are exact: NaN, Inf and the sign of zero included, every pair of specials."""
    a, b = exprc.vector("a", dtype), exprc.vector("b", dtype)
    d1, d2 = np.meshgrid(SPECIAL, SPECIAL)
    with np.errstate(over="ignore"):
        d1, d2 = d1.ravel().astype(dtype), d2.ravel().astype(dtype)
    e = build(a, b)
    canon = exprc.function([a, b], e, backend="numpy", exclude=CANON_ONLY)
    full = exprc.function([a, b], e, backend="numpy", exclude=("stability",))  # canonicalize + specialize
    raw = exprc.function([a, b], e, backend="numpy", exclude=("canonicalize", "specialize"))
    assert raw.rewrites == []
    with np.errstate(all="ignore"):
        assert_same_bits(canon(d1, d2), raw(d1, d2))
        assert_same_bits(full(d1, d2), raw(d1, d2))


@given(graph_cases(max_ops=5, specials=True))
def test_canonicalization_is_exact_on_random_graphs(case):
    raw = exprc.function(case.inputs, case.expr, backend="numpy", exclude=("canonicalize", "stability", "specialize"))
    canon = exprc.function(case.inputs, case.expr, backend="numpy", exclude=("stability",))
    with np.errstate(all="ignore"):
        assert_same_bits(canon(*case.args), raw(*case.args))


def test_specialize_turns_add_of_neg_back_into_sub():
    f = exprc.function([x, y], x - y, backend="numpy")
    assert [n.op for n in f.graph.nodes if n.op not in ("input", "constant")] == ["sub"]
    assert "sub_to_add_neg" in f.rewrites and "add_neg_to_sub" in f.rewrites
    g = exprc.function([x], x - 1.0, backend="numpy")
    assert exprc.pprint(g.graph.outputs[0]) == "x - 1.0"
    h = exprc.function([x], 1.0 - x, backend="numpy")
    assert exprc.pprint(h.graph.outputs[0]) == "1.0 - x"


def test_integer_canonical_forms_wrap_like_numpy():
    i, j = exprc.vector("i", "int64"), exprc.vector("j", "int64")
    d1 = np.array([np.iinfo(np.int64).min, -1, 0, 7, np.iinfo(np.int64).max])
    d2 = d1[::-1].copy()
    for e in [i - j, (-i) * j, i * -1, -(i - j)]:
        f = exprc.function([i, j], e, backend="numpy")
        g = exprc.function([i, j], e, backend="numpy", exclude=("canonicalize", "specialize"))
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(f(d1, d2), g(d1, d2))


def test_getitem_of_full_slices_and_new_axes_is_a_dimshuffle():
    """x[:, None], x[None], v[None, :, None] are dimshuffles (rule getitem_to_dimshuffle), the spelling
    the rules read (softmax over sum(exp(z), axis=1)[:, None]); indexing that selects is left alone.
    Values and shapes as NumPy's, on both backends."""
    m, v = exprc.matrix("m"), exprc.vector("v")
    rng = np.random.default_rng(4)
    mv, vv = rng.standard_normal((3, 4)), rng.standard_normal(5)
    cases = [(m[:, None], mv[:, None], True), (m[None], mv[None], True), (v[None, :, None], vv[None, :, None], True),
             (m[:, :, None], mv[:, :, None], True), (m[1:, None], mv[1:, None], False), (m[0, None], mv[0, None], False),
             (m[:, ::-1, None], mv[:, ::-1, None], False)]
    for out, want, fires in cases:
        for backend in ("numpy", "c"):
            f = exprc.function([m, v], out * 2.0, backend=backend)
            assert ("getitem_to_dimshuffle" in f.rewrites) == fires, (want.shape, f.rewrites)
            got = f(mv, vv)
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want * 2.0)
