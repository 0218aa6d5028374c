"""Rewrite rules: structure (which ops remain, which rules fired) and numbers (sign of zero, NaN, Inf)."""

import numpy as np
import pytest
from conftest import assert_same_bits

import exprc
from exprc.errors import UnknownRewriteError
from exprc.graph import toposort
from exprc.rewrite import REGISTRY

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, -2.5, 1e308, 5e-324])


def _ops(f):
    return [n.op for n in f.graph.nodes if n.op not in ("input", "constant")]




@pytest.mark.parametrize("build,rule,ref", [
    (lambda x: x * 1, "mul_one", lambda d: d * 1),
    (lambda x: 1.0 * x, "mul_one", lambda d: 1.0 * d),
    (lambda x: x + (-0.0), "add_zero", lambda d: d + (-0.0)),
    (lambda x: x - 0.0, "sub_zero", lambda d: d - 0.0),
    (lambda x: x / 1, "div_one", lambda d: d / 1),
    (lambda x: exprc.negative(-x), "neg_neg", lambda d: np.negative(-d)),
    (lambda x: x ** 1, "pow_one", lambda d: d ** 1),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_identities_remove_the_op(build, rule, ref, dtype):
    x = exprc.vector("x", dtype)
    f = exprc.function([x], build(x), backend="numpy")
    assert rule in f.rewrites
    assert _ops(f) == []  # the output is x itself
    d = SPECIAL.astype(dtype)
    with np.errstate(all="ignore"):
        assert_same_bits(f(d), ref(d))
    g = exprc.function([x], build(x), backend="numpy", exclude=(rule,))
    assert rule not in g.rewrites  # (x - 0 and x / 1 have a second exact route via the canonical form)
    assert_same_bits(g(d), f(d))
    h = exprc.function([x], build(x), backend="numpy", exclude=("canonicalize",))
    assert h.rewrites == [] and _ops(h) != []
    assert_same_bits(h(d), f(d))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_add_plus_zero_is_kept_for_floats(dtype):
    x = exprc.vector("x", dtype)
    f = exprc.function([x], x + 0.0, backend="numpy")
    assert "add_zero" not in f.rewrites and _ops(f) == ["add"]
    out = f(np.array([-0.0, 1.0], dtype))
    assert not np.signbit(out[0]) and np.signbit(np.array(-0.0, dtype) + 0)  == np.False_
    f2 = exprc.function([x], x - (-0.0), backend="numpy")  # canonical: x + 0.0 (the same bits)
    assert _ops(f2) == ["add"] and not np.signbit(f2(np.array([-0.0], dtype))[0])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_identities(dtype):
    x = exprc.vector("x", dtype)
    for e, rule in [(x + 0, "add_zero"), (x * 1, "mul_one"), (x - 0, "sub_zero"), (x ** 1, "pow_one")]:
        f = exprc.function([x], e, backend="numpy")
        assert rule in f.rewrites and _ops(f) == []
        d = np.array([-3, 0, 7], dtype)
        np.testing.assert_array_equal(f(d), d)


def test_pow_two_becomes_square():
    x = exprc.vector("x")
    f = exprc.function([x], x ** 2, backend="numpy")
    assert f.rewrites == ["pow_two"] and _ops(f) == ["square"]
    with np.errstate(all="ignore"):
        assert_same_bits(f(SPECIAL), SPECIAL ** 2)


def test_identities_that_would_change_the_shape_are_refused():
    x = exprc.vector("x", shape=(1,))
    e = x * exprc.constant(np.ones(3))
    f = exprc.function([x], e, backend="numpy")
    assert "mul_one" not in f.rewrites
    np.testing.assert_array_equal(f(np.array([2.0])), np.full(3, 2.0))


def test_constant_folding_with_nan_and_inf():
    c = exprc.constant(np.array([1.0, -1.0, 0.0, np.inf]))
    e = exprc.log(c) * 2.0 + exprc.sqrt(c)
    x = exprc.vector("x")
    f = exprc.function([x], x + e, backend="numpy")
    assert "constant_fold" in f.rewrites and _ops(f) == ["add"]
    with np.errstate(all="ignore"):
        ref = np.log(c.value) * 2.0 + np.sqrt(c.value)
    assert_same_bits(f(np.zeros(4)), np.zeros(4) + ref)
    g = exprc.optimize(exprc.constant(2.0) * exprc.constant(3.0))
    assert g.outputs[0].is_constant and g.outputs[0].value == 6.0 and g.rewrites == ["constant_fold"]
    assert exprc.optimize(-exprc.constant(-0.0)).outputs[0].value.tobytes() == np.float64(0.0).tobytes()


def test_cse_and_dead_code():
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.exp(x) + exprc.exp(x)  # interning: one exp node
    f = exprc.function([x, y], e, backend="numpy")
    assert _ops(f).count("exp") == 1
    np.testing.assert_allclose(f([1.0], [0.0]), 2 * np.exp([1.0]))
    w = exprc.where(True, x * 2.0, exprc.log(y))  # the log branch is dead
    g = exprc.function([x, y], w, backend="numpy")
    assert "where_constant_condition" in g.rewrites and _ops(g) == ["mul"]
    np.testing.assert_array_equal(g([3.0], [-1.0]), [6.0])
    assert len(toposort(g.graph.outputs)) == 3


def test_other_canonical_rules():
    x = exprc.matrix("x", "int32")
    e = x.astype("int64").astype("float64")
    f = exprc.function([x], e, backend="numpy")
    assert "cast_cast_widen" in f.rewrites and _ops(f) == ["cast"]
    d = np.array([[1, -2]], np.int32)
    np.testing.assert_array_equal(f(d), d.astype(np.float64))
    m = exprc.matrix("m")
    f = exprc.function([m], m.T.T, backend="numpy")
    assert "dimshuffle_compose" in f.rewrites and _ops(f) == []
    f = exprc.function([m], exprc.sum(m, axis=()), backend="numpy")
    assert "reduce_no_axes" in f.rewrites and _ops(f) == ["add"]  # + 0.0: NumPy's sum of -0.0 is +0.0
    d = np.array([[-0.0, 1.5]])
    assert np.array_equal(np.signbit(f(d)), np.signbit(np.sum(d, axis=())))
    f = exprc.function([m], exprc.max(m, axis=()), backend="numpy")
    assert "reduce_no_axes" in f.rewrites and _ops(f) == []


def test_exclude_by_name_tag_and_unknown():
    x = exprc.vector("x")
    e = x * 1 + exprc.constant(2.0) * exprc.constant(3.0)
    assert exprc.function([x], e, backend="numpy", exclude=("algebra",)).rewrites == ["constant_fold"]
    assert exprc.function([x], e, backend="numpy", exclude=("fold",)).rewrites == ["mul_one"]
    assert exprc.function([x], e, backend="numpy", exclude=("canonicalize",)).rewrites == []
    assert exprc.function([x], e, backend="numpy", exclude=("stability", "specialize")).rewrites != []
    with pytest.raises(UnknownRewriteError, match="no_such_rule"):
        exprc.function([x], e, backend="numpy", exclude=("no_such_rule",))
    with pytest.raises(KeyError):
        exprc.optimize([e], exclude=("nope",))


def test_rules_have_names_tags_and_docs():
    assert {"neg_neg", "mul_one", "add_zero", "sub_zero", "div_one", "pow_one", "pow_two", "constant_fold"} <= set(
        REGISTRY)
    for name, r in REGISTRY.items():
        assert r.name == name and r.tags and r.doc


def test_merge_loops_runs_one_loop_for_equal_and_extending_loops():
    """Two loops over the same operands whose bodies are the same expressions (built twice) run
    as one, and so does a loop that another extends with more results; the trace names the
    merge; loops over other operands or with other step counts stay apart; results are unchanged
    (and with ``exclude=("merge_loops",)`` both loops run)."""
    import dataclasses

    from exprc.ops import OPS

    xs, h0 = exprc.matrix("xs"), exprc.vector("h0")

    def body(x, h):
        return exprc.tanh(x + h * 0.5)

    a, _ = exprc.scan(body, sequences=[xs], outputs_info=[h0])
    b, _ = exprc.scan(body, sequences=[xs], outputs_info=[h0])
    assert a.inputs[0] is not b.inputs[0]  # two loop nodes
    loop = a.inputs[0].arg("loop")
    extra = exprc.sin(loop.outputs[0])  # a result more, over the same placeholders
    wide = OPS["scan"].make(a.inputs[0].inputs, {"loop": dataclasses.replace(
        loop, outputs=loop.outputs + (extra,), state_taps=loop.state_taps + (None,), keep=loop.keep + ("all",),
        labels=())})
    c = OPS["scan_output"].make((wide,), {"k": 1})
    other, _ = exprc.scan(body, sequences=[xs], outputs_info=[h0], n_steps=2)
    outs = [a.sum(), b * 2.0, c, other]
    X, H0 = np.linspace(-1, 1, 12).reshape(4, 3), np.array([0.1, -0.2, 0.3])
    h, rows = H0, []
    for x in X:
        h = np.tanh(x + h * 0.5)
        rows.append(h)
    want = [np.sum(rows), np.array(rows) * 2.0, np.sin(rows), np.array(rows[:2])]
    for ex in ((), ("merge_loops",)):
        f = exprc.function([xs, h0], outs, exclude=ex)
        for got, w in zip(f(X, H0), want):
            np.testing.assert_allclose(got, w, rtol=1e-13, atol=1e-15)
        loops = [n for n in f.graph.nodes if n.op == "scan"]
        merged = [t for t in f.graph.trace if t.rule == "merge_loops"]
        if ex:
            assert len(loops) == 4 and not merged
        else:
            assert sorted(n.arg("loop").n_results for n in loops) == [1, 2] and len(merged) == 2


def test_product_view_reads_an_even_power_of_a_negation_as_positive():
    """square(-u) is u**2, not -u**2: the view flipped the sign for every negation whatever its power,
    and exp_product rebuilt square(-y) * exp(a) / exp(b) as -y**2 exp(a - b) in its overflow branch."""
    from exprc.rewrite import forms as F

    x = exprc.vector("x")
    assert F._product_view(F.make("square", F.make("neg", x)), 8)[:2] == (1, [(x, 2)])
    assert F._product_view(F.make("neg", F.make("square", F.make("neg", x))), 8)[:2] == (-1, [(x, 2)])
    assert F._product_view(F.make("truediv", F.make("neg", x), F.make("square", F.make("neg", x))), 8)[:2] == (-1, [(x, -1)])
    a, b, y = exprc.vector("a"), exprc.vector("b"), exprc.vector("y")
    f = exprc.function([a, b, y], exprc.square(-y) * exprc.exp(a) / exprc.exp(b))
    assert "exp_product" in f.rewrites
    av, bv, yv = np.array([800.0, 1.0]), np.array([799.0, 0.5]), np.array([2.0, -3.0])
    np.testing.assert_allclose(f(av, bv, yv), yv**2 * np.exp(av - bv), rtol=1e-14)
