"""Symbolic differentiation: every gradient rule against central finite differences (table-driven,
like JAX's check_grads), scalar formulas against sympy.diff, second derivatives, graph sizes, errors,
stability far out in the tails, and the C backend against the NumPy backend."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

import exprc
from exprc.errors import DisconnectedInputError, DTypeError, ShapeError
from exprc.graph import toposort

RNG = np.random.default_rng(42)

# Input domains: (low, high) for uniform draws.
R = (-2.0, 2.0)  # reals
POS = (0.2, 3.0)
UNIT = (-0.9, 0.9)
BIG = (1.2, 3.0)


def draw(shape, domain, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(*domain, size=shape)


def distinct(shape, seed):
    """Reals spaced at least 0.1 apart (no ties for max/min/maximum)."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    return (rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(0, 0.01, n)).reshape(shape)


def fd_grads(f, arrays, eps=1e-5):
    """Central finite differences of the scalar function ``f(*arrays)`` for every array."""
    out = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for k in np.ndindex(a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i][k] += eps
            minus[i][k] -= eps
            g[k] = (f(*plus) - f(*minus)) / (2 * eps)
        out.append(g)
    return out


def check_grads(build, arrays, shapes=None, rtol=2e-6, atol=2e-7):
    """grad of sum(build(*vars) * W) (W random, so every output element matters) against finite
    differences.  ``shapes`` gives the static shapes of the variables (None: all sizes unknown)."""
    shapes = shapes or [(None,) * a.ndim for a in arrays]
    vs = [exprc.tensor(f"v{i}", "float64", shape=s) for i, s in enumerate(shapes)]
    out = build(*vs)
    weights = np.random.default_rng(7).uniform(0.5, 1.5, size=out.eval({v: a for v, a in zip(vs, arrays)}).shape)
    cost = exprc.sum(out * weights)
    f = exprc.function(vs, cost, backend="numpy")
    grads = exprc.grad(cost, vs)
    for v, gr in zip(vs, grads):
        assert gr.type.shape == v.type.shape or None in v.type.shape, (gr.type, v.type)
    got = exprc.function(vs, grads, backend="numpy")(*arrays)
    want = fd_grads(lambda *xs: float(f(*xs)), arrays)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (i, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * max(1.0, np.abs(w).max()), err_msg=f"input {i}")
    return grads


# -- one row per op: (id, builder, inputs as (shape, domain)) -----------------------------
def _u(name):
    return lambda x: getattr(exprc, name)(x)


UNARY = [
    ("neg", _u("negative"), R), ("abs", _u("abs"), POS), ("square", _u("square"), R),
    ("reciprocal", _u("reciprocal"), POS), ("exp", _u("exp"), R), ("exp2", _u("exp2"), R),
    ("expm1", _u("expm1"), R), ("log", _u("log"), POS), ("log2", _u("log2"), POS), ("log10", _u("log10"), POS),
    ("log1p", _u("log1p"), POS), ("sqrt", _u("sqrt"), POS), ("cbrt", _u("cbrt"), POS), ("sin", _u("sin"), R),
    ("cos", _u("cos"), R), ("tan", _u("tan"), UNIT), ("arcsin", _u("arcsin"), UNIT),
    ("arccos", _u("arccos"), UNIT), ("arctan", _u("arctan"), R), ("sinh", _u("sinh"), R), ("cosh", _u("cosh"), R),
    ("tanh", _u("tanh"), R), ("arcsinh", _u("arcsinh"), R), ("arccosh", _u("arccosh"), BIG),
    ("arctanh", _u("arctanh"), UNIT), ("sigmoid", _u("sigmoid"), R), ("softplus", _u("softplus"), R),
    ("erf", _u("erf"), R), ("erfc", _u("erfc"), R), ("erfcx", _u("erfcx"), R),
]


def test_erfcx_gradient_in_the_tail():
    """erfcx'(x) = 2x erfcx(x) - 2/sqrt(pi) cancels for large x (to -1/(sqrt(pi) x**2)); from 7 up the
    rule sums the asymptotic series instead: within 3 bits of mpmath up to 1e150, where 2x erfcx(x) - 2/sqrt(pi)
    gives 0 or garbage."""
    import mpmath

    from exprc.accuracy import bits_lost

    x = exprc.vector("x")
    g = exprc.function([x], exprc.grad(exprc.sum(exprc.erfcx(x)), x))
    pts = np.concatenate([np.linspace(7.0, 60.0, 60), np.geomspace(60.0, 1e150, 50)])
    with mpmath.workprec(400):
        def exact(v):
            v = mpmath.mpf(float(v))
            if v > 1e6:  # (mpmath's erfc is slow out there: the series, to v**-8)
                return -1 / (mpmath.sqrt(mpmath.pi) * v * v) * (1 - 3 / (2 * v * v) + 15 / (4 * v ** 4))
            return 2 * v * mpmath.exp(v * v) * mpmath.erfc(v) - 2 / mpmath.sqrt(mpmath.pi)
        ref = np.array([float(exact(v)) for v in pts])
    assert bits_lost(g(pts), ref).max() <= 3


@pytest.mark.parametrize("name,fn,domain", UNARY, ids=[u[0] for u in UNARY])
def test_unary_rules(name, fn, domain):
    check_grads(fn, [draw((2, 3), domain, 1)])


BINARY = [  # id, builder, domains, shapes of the two operands
    ("add", lambda a, b: a + b, (R, R)), ("sub", lambda a, b: a - b, (R, R)), ("mul", lambda a, b: a * b, (R, R)),
    ("truediv", lambda a, b: a / b, (R, POS)), ("mod", lambda a, b: a % b, ((2.3, 2.7), (1.0, 1.1))),
    ("pow", lambda a, b: a ** b, (POS, R)), ("arctan2", exprc.arctan2, (R, R)), ("hypot", exprc.hypot, (R, R)),
    ("logaddexp", exprc.logaddexp, (R, R)),
]


@pytest.mark.parametrize("name,fn,domains", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((), (2, 3))],
                         ids=["same", "row", "outer", "scalar"])
def test_binary_rules_with_broadcasting(name, fn, domains, shapes):
    arrays = [draw(s, d, i) for i, (s, d) in enumerate(zip(shapes, domains))]
    check_grads(fn, arrays)  # unknown sizes: broadcast axes summed at call time
    check_grads(fn, arrays, shapes=shapes)  # static sizes: summed in the graph


def test_broadcast_along_unknown_size_is_summed_at_call_time():
    a, b = exprc.vector("a"), exprc.vector("b")
    ga, gb = exprc.grad(exprc.sum(a * b), [a, b])
    assert "sum_to" in {n.op for n in toposort([ga])}
    f = exprc.function([a, b], [ga, gb], backend="numpy")
    da, db = f(np.array([2.0]), np.array([1.0, 2.0, 3.0]))
    assert_close(da, np.array([6.0]))
    assert_close(db, np.array([2.0, 2.0, 2.0]))
    # Sizes proved equal (x against functions of x) need no call-time step.
    gx = exprc.grad(exprc.sum(exprc.sin(a) * a * exprc.exp(a)), a)
    assert "sum_to" not in {n.op for n in toposort([gx])}


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_rules_and_ties(name):
    fn = getattr(exprc, name)
    check_grads(fn, [distinct((2, 3), 1), distinct((2, 3), 2)])
    a, b = exprc.vector("a"), exprc.vector("b")
    ga, gb = exprc.grad(exprc.sum(fn(a, b)), [a, b])
    da, db = exprc.function([a, b], [ga, gb], backend="numpy")([1.0, 2.0, 3.0], [1.0, 0.0, 5.0])
    big = name == "maximum"
    assert_close(da, np.array([0.5, 1.0 if big else 0.0, 0.0 if big else 1.0]))  # a tie splits in half
    assert_close(db, np.array([0.5, 0.0 if big else 1.0, 1.0 if big else 0.0]))


def test_clip_passes_gradient_inside_and_half_at_the_bounds():
    check_grads(lambda x: exprc.clip(x, -0.5, 0.5), [np.array([-0.9, -0.2, 0.3, 0.7])])
    x = exprc.vector("x")
    g = exprc.grad(exprc.sum(exprc.clip(x, -0.5, 0.5)), x)
    assert_close(g.eval({x: np.array([-1.0, -0.5, 0.0, 0.5, 1.0])}), np.array([0.0, 0.5, 1.0, 0.5, 0.0]))


def test_where_rule():
    check_grads(lambda a, b: exprc.where(a > 0, a * b, exprc.exp(b)), [draw((2, 3), R, 1), draw((3,), R, 2)])


REDUCE = [
    ("sum", lambda x: exprc.sum(x)), ("sum_axis0", lambda x: exprc.sum(x, 0)),
    ("sum_axis1_keep", lambda x: exprc.sum(x, 1, keepdims=True)), ("sum_axes", lambda x: exprc.sum(x, (0, 2))),
    ("mean", lambda x: exprc.mean(x)), ("mean_axis", lambda x: exprc.mean(x, -1)),
    ("mean_keep", lambda x: exprc.mean(x, (0, 1), keepdims=True)),
    ("prod", lambda x: exprc.prod(x)), ("prod_axis", lambda x: exprc.prod(x, 1)),
    ("prod_keep", lambda x: exprc.prod(x, 0, keepdims=True)),
    ("var", lambda x: exprc.var(x, 1)), ("std", lambda x: exprc.std(x, 0, ddof=1)),
    ("logsumexp", lambda x: exprc.logsumexp(x)), ("logsumexp_axis", lambda x: exprc.logsumexp(x, 1)),
    ("softmax", lambda x: exprc.softmax(x)), ("log_softmax", lambda x: exprc.log_softmax(x, axis=0)),
]


@pytest.mark.parametrize("name,fn", REDUCE, ids=[r[0] for r in REDUCE])
def test_reduction_rules(name, fn):
    x = draw((2, 3, 2), (0.5, 1.5), 3)
    check_grads(fn, [x])
    check_grads(fn, [x], shapes=[x.shape])


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True)])
def test_max_min_rules(name, axis, keepdims):
    check_grads(lambda x: getattr(exprc, name)(x, axis, keepdims), [distinct((2, 3, 2), 5)])


def test_max_splits_ties_evenly_and_prod_handles_zeros():
    x = exprc.vector("x")
    g = exprc.grad(exprc.max(x), x)
    assert_close(g.eval({x: np.array([1.0, 3.0, 3.0, 0.0])}), np.array([0.0, 0.5, 0.5, 0.0]))
    g = exprc.grad(exprc.min(x) * 3.0, x)
    assert_close(g.eval({x: np.array([1.0, 1.0, 1.0, 2.0])}), np.array([1.0, 1.0, 1.0, 0.0]))
    g = exprc.grad(exprc.prod(x), x)
    assert_close(g.eval({x: np.array([2.0, 0.0, 3.0])}), np.array([0.0, 6.0, 0.0]))  # one zero: exact
    assert_close(g.eval({x: np.array([2.0, 0.0, 0.0])}), np.array([0.0, 0.0, 0.0]))  # two zeros
    assert_close(g.eval({x: np.array([2.0, 4.0, 3.0])}), np.array([12.0, 6.0, 8.0]))


SHAPE = [  # id, builder, input shape
    ("reshape", lambda x: exprc.reshape(x, (3, 4)) * np.arange(12.0).reshape(3, 4), (2, 6)),
    ("flatten", lambda x: exprc.flatten(x) ** 2, (3, 4)),
    ("transpose", lambda x: exprc.transpose(x, (2, 0, 1)) * np.arange(24.0).reshape(4, 2, 3), (2, 3, 4)),
    ("T", lambda x: x.T @ x, (3, 2)),
    ("expand_squeeze", lambda x: exprc.squeeze(exprc.expand_dims(x, (0, 2)) * x[:, None], 0), (3, 4)),
    ("broadcast_to", lambda x: exprc.broadcast_to(x, (2, 3, 4)) * np.arange(24.0).reshape(2, 3, 4), (3, 1)),
    ("concatenate", lambda x: exprc.concatenate([x, exprc.exp(x), x[:1]], 0), (2, 3)),
    ("concatenate_axis1", lambda x: exprc.concatenate([x, x * x], 1), (2, 3)),
    ("stack", lambda x: exprc.stack([x, exprc.sin(x)], 1), (2, 3)),
    ("getitem_int", lambda x: x[1] * x[0, 2], (3, 4)),
    ("getitem_slices", lambda x: x[::2, 1:] + x[-1, :0:-1][None], (3, 4)),
    ("getitem_ellipsis", lambda x: exprc.exp(x[..., 1]) * x[None, 0, ..., None], (3, 4)),
]


@pytest.mark.parametrize("name,fn,shape", SHAPE, ids=[s[0] for s in SHAPE])
def test_shape_rules(name, fn, shape):
    x = draw(shape, R, 4)
    check_grads(fn, [x], shapes=[shape])
    if name not in ("reshape", "broadcast_to", "getitem_int", "getitem_slices", "getitem_ellipsis"):
        check_grads(fn, [x])  # unknown sizes: reshape_like / split_part / sum_to at call time


def test_reshape_of_unknown_shape_and_getitem_on_unknown_sizes():
    check_grads(lambda x: exprc.reshape(x, -1) * exprc.reshape(x, -1)[::-1], [draw((2, 3), R, 1)])
    check_grads(lambda x: x[1:, ::2] * 2.0 + x[0, :2], [draw((3, 4), R, 1)])


MATMUL = [((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)),
          ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 5)), ((4,), (2, 4, 3))]


@pytest.mark.parametrize("sa,sb", MATMUL, ids=[f"{a}@{b}" for a, b in MATMUL])
def test_matmul_rule(sa, sb):
    arrays = [draw(sa, R, 1), draw(sb, R, 2)]
    check_grads(exprc.matmul, arrays, shapes=[sa, sb])
    check_grads(exprc.matmul, arrays)


def test_dot_and_cast_rules():
    check_grads(lambda a, b: exprc.dot(a, b) * 2.0, [draw((3, 4), R, 1), draw((4, 2), R, 2)])
    x = exprc.vector("x", "float32")
    g = exprc.grad(exprc.sum(exprc.astype(x, "float64") * 3.0), x)
    assert g.dtype == "float32"
    assert_close(g.eval({x: np.ones(2, np.float32)}), np.full(2, 3.0, np.float32))
    y = exprc.vector("y")
    g = exprc.grad(exprc.sum(exprc.astype(y, "int64") * y), y)  # no gradient through an integer cast
    assert_close(g.eval({y: np.array([1.5, -2.5])}), np.array([1.0, -2.0]))


# -- scalar formulas against sympy ---------------------------------------------------------
sympy = pytest.importorskip("sympy")
SYM_FUNCS = {"sin": exprc.sin, "cos": exprc.cos, "tan": exprc.tan, "exp": exprc.exp, "log": exprc.log,
             "sqrt": exprc.sqrt, "tanh": exprc.tanh, "sinh": exprc.sinh, "cosh": exprc.cosh, "asin": exprc.arcsin,
             "acos": exprc.arccos, "atan": exprc.arctan, "atan2": exprc.arctan2, "asinh": exprc.arcsinh,
             "acosh": exprc.arccosh, "atanh": exprc.arctanh,
             "erf": exprc.erf, "erfc": exprc.erfc, "Abs": exprc.abs}
FORMULAS = ["sin(x)*exp(y)", "log(1 + x**2)/y", "atan2(y, x)", "sqrt(x*y)", "tanh(x)**3 - cosh(y)", "x**y",
            "erf(x)*erfc(y)", "asin(x/3)*acos(y/4)", "atan(x*y) + asinh(x) + acosh(y + 2) + atanh(x/4)",
            "exp(-x**2/2)/sqrt(2*pi)", "1/(1 + exp(-x*y))", "log(exp(x) + exp(y))", "Abs(x - y)**1.5",
            "sinh(x)/(cos(y) + 2) + tan(x/2)"]


@pytest.mark.parametrize("formula", FORMULAS)
def test_scalar_formulas_against_sympy(formula):
    sx, sy = sympy.symbols("x y", real=True)
    expr = sympy.sympify(formula, locals={"x": sx, "y": sy})
    build = sympy.lambdify((sx, sy), expr, modules=[SYM_FUNCS, "math"])
    x, y = exprc.scalar("x"), exprc.scalar("y")
    e = exprc.as_node(build(x, y))
    gx, gy = exprc.grad(e, [x, y], disconnected="zero")
    hxx = exprc.grad(gx, x, disconnected="zero")  # second order by applying grad again
    f = exprc.function([x, y], [gx, gy, hxx], backend="numpy")
    for px, py in [(0.7, 1.3), (1.1, 0.4), (0.3, 2.5)]:
        want = [float(sympy.diff(expr, *v).evalf(subs={sx: px, sy: py})) for v in ([sx], [sy], [sx, sx])]
        got = f(px, py)
        np.testing.assert_allclose([float(g) for g in got], want, rtol=1e-12, atol=1e-13)


# -- second order, vector products ----------------------------------------------------------------
HESSIAN = [
    ("sin_x2", lambda x: exprc.sum(exprc.sin(x) * x ** 2)),
    ("logsumexp", lambda x: exprc.logsumexp(x * 2.0)),
    ("quadratic", lambda x: x @ (np.arange(9.0).reshape(3, 3) @ x)),
    ("softplus_prod", lambda x: exprc.sum(exprc.softplus(x)) * exprc.prod(x)),
    ("max_norm", lambda x: exprc.max(x) * exprc.sqrt(exprc.sum(exprc.square(x)))),
]


@pytest.mark.parametrize("name,fn", HESSIAN, ids=[h[0] for h in HESSIAN])
def test_hessian_against_finite_differences_of_the_gradient(name, fn):
    x = exprc.vector("x", shape=(3,))
    data = np.array([0.3, -0.7, 1.1])
    h = exprc.hessian(fn(x), x)
    assert h.type.shape == (3, 3)
    fg = exprc.function([x], exprc.grad(fn(x), x), backend="numpy")
    eps = 1e-6
    want = np.stack([(fg(data + eps * e) - fg(data - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
    np.testing.assert_allclose(h.eval({x: data}), want, rtol=1e-6, atol=1e-7)
    if name == "quadratic":
        a = np.arange(9.0).reshape(3, 3)
        assert_close(h.eval({x: data}), a + a.T)


def test_third_derivative_and_grad_through_gradient_ops():
    x = exprc.scalar("x")
    d3 = exprc.grad(exprc.grad(exprc.grad(exprc.sin(x) * x, x), x), x)
    v = 0.4
    assert_close(d3.eval({x: v}), np.float64(-3 * math.sin(v) - v * math.cos(v)))
    m = exprc.matrix("m")  # second order through sum_to, fill, inc_subtensor, split_part, reshape_like
    cost = exprc.sum(exprc.exp(m[0] * m[:, :1]) * exprc.mean(exprc.concatenate([m, m * m], 0), 0))
    cost = cost + exprc.sum(exprc.reshape(m, -1) ** 3)
    g = exprc.grad(cost, m)
    data = draw((2, 3), R, 9)
    second = exprc.grad(exprc.sum(g * g), m)
    f2 = exprc.function([m], exprc.sum(g * g), backend="numpy")
    (want,) = fd_grads(lambda d: float(f2(d)), [data])
    np.testing.assert_allclose(second.eval({m: data}), want, rtol=1e-5, atol=1e-6)


def test_vjp_jvp_and_jacobian():
    x = exprc.vector("x", shape=(3,))
    a = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    out = exprc.tanh(a @ x) * exprc.sum(x)
    data = np.array([0.2, -0.4, 0.9])
    f = exprc.function([x], out, backend="numpy")
    eps = 1e-6
    jac_fd = np.stack([(f(data + eps * e) - f(data - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
    jac = exprc.jacobian(out, x)
    assert jac.type.shape == (2, 3)
    np.testing.assert_allclose(jac.eval({x: data}), jac_fd, rtol=1e-7, atol=1e-8)
    ct = np.array([0.5, -2.0])
    np.testing.assert_allclose(exprc.vjp(out, x, ct).eval({x: data}), ct @ jac_fd, rtol=1e-7)
    t = np.array([1.0, 0.5, -1.5])
    tangent = exprc.jvp(out, x, t)
    assert {n.op for n in toposort([tangent]) if n.op == "input"} == {"input"}
    assert [n for n in toposort([tangent]) if n.op == "input"] == [x]
    np.testing.assert_allclose(tangent.eval({x: data}), jac_fd @ t, rtol=1e-7)
    # Lists keep their structure; a jacobian of a matrix expression has shape expr.shape + var.shape.
    m = exprc.matrix("m", shape=(2, 2))
    j1, j2 = exprc.jacobian(m * exprc.sum(x), [m, x])
    assert j1.type.shape == (2, 2, 2, 2) and j2.type.shape == (2, 2, 3)
    md = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert_close(j2.eval({m: md, x: data}), np.repeat(md[:, :, None], 3, 2))
    assert_close(j1.eval({m: md, x: data}), np.eye(4).reshape(2, 2, 2, 2) * data.sum())
    _, t2 = exprc.jvp([out, exprc.sum(x * x)], [x], [t])
    np.testing.assert_allclose(t2.eval({x: data}), 2 * data @ t)


# -- structure -------------------------------------------------------------------------
def test_gradient_graph_is_linear_in_the_graph_size():
    x = exprc.vector("x")
    y = x
    for i in range(1000):
        y = [exprc.sin, exprc.tanh, lambda v: v * 1.01 + x, exprc.softplus][i % 4](y)
    cost = exprc.sum(y)
    g = exprc.grad(cost, x)
    n_forward = len(toposort([cost]))
    n_total = len(toposort([g]))
    assert n_total <= 6 * n_forward, (n_total, n_forward)
    assert len(toposort([exprc.grad(cost * cost, x)])) <= n_total + 10  # shared, not duplicated


def test_gradient_of_a_100000_node_chain():
    x = exprc.scalar("x")
    y = x
    for i in range(100_000):  # exp(-exp(-...)): no recursion anywhere, one gradient node per node
        y = exprc.exp(y) if i % 2 else -y
    g = exprc.grad(y, x)
    assert len(toposort([g])) < 250_000
    small = x
    for _ in range(200):
        small = exprc.sin(small) + x
    gs = exprc.grad(small, x).eval({x: 0.3})
    (want,) = fd_grads(lambda v: float(small.eval({x: v})), [np.array(0.3)])
    np.testing.assert_allclose(gs, want, rtol=1e-6)


# -- errors and zero gradients --------------------------------------------------------------
def test_errors():
    x, y = exprc.vector("x"), exprc.vector("y")
    with pytest.raises(ShapeError, match=r"scalar.*shape \(\?,\)"):
        exprc.grad(exprc.exp(x), x)
    with pytest.raises(DisconnectedInputError, match="'y'|y "):
        exprc.grad(exprc.sum(x), [x, y])
    _, gy = exprc.grad(exprc.sum(x), [x, y], disconnected="zero")
    assert_close(gy.eval({y: np.ones(3)}), np.zeros(3))
    with pytest.warns(RuntimeWarning, match="does not depend"):
        exprc.grad(exprc.sum(x), y, disconnected="warn")
    with pytest.raises(ValueError, match="disconnected"):
        exprc.grad(exprc.sum(x), x, disconnected="ignore")
    with pytest.raises(DTypeError, match="float"):
        exprc.grad(exprc.sum(exprc.vector("i", "int64")), x, disconnected="zero")
    with pytest.raises(TypeError):
        exprc.grad(exprc.sum(x), "x")
    xv = np.array([0.5, -1.0, 2.0])  # a size known at call time: the Jacobian is a loop (no longer an error)
    assert_close(exprc.jacobian(exprc.exp(x), x).eval({x: xv}), np.diag(np.exp(xv)))
    assert isinstance(exprc.grad(exprc.sum(x), (x,)), tuple)


def test_zero_gradients_of_integer_inputs_and_piecewise_constant_ops():
    x = exprc.vector("x")
    n = exprc.vector("n", "int64")
    b = exprc.vector("b", "bool")
    cost = exprc.sum(x * n) + exprc.sum(exprc.where(b, x, 0.0))
    gx, gn, gb = exprc.grad(cost, [x, n, b])
    assert gn.dtype == "float64" and gb.dtype == "float64"
    vals = {x: np.array([1.0, 2.0]), n: np.array([3, 4]), b: np.array([True, False])}
    assert_close(gn.eval(vals), np.zeros(2))
    assert_close(gb.eval(vals), np.zeros(2))
    assert_close(gx.eval(vals), np.array([4.0, 4.0]))
    for fn in [exprc.floor, exprc.ceil, exprc.round, exprc.sign, lambda v: exprc.astype(v > 0, "float64"),
               lambda v: exprc.astype(exprc.argmax(v), "float64"), lambda v: v // 2.0]:
        g = exprc.grad(exprc.sum(fn(x)), x)  # connected, but the derivative is 0
        assert_close(g.eval({x: np.array([0.3, 1.7])}), np.zeros(2))


# -- stability ------------------------------------------------------------------------------
BACKENDS = ["numpy", "c"]


def expit(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _grad_fn(build, backend, ndim=1):
    x = exprc.tensor("x", ndim=ndim)
    return exprc.function([x], exprc.grad(build(x), x), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_gradients_in_the_tails(backend):
    far = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    sig = expit(far)
    g = _grad_fn(lambda x: exprc.sum(exprc.softplus(x)), backend)(far)
    assert g[0] == 0.0 and g[-1] == 1.0
    assert_close(g, sig)
    g = _grad_fn(lambda x: exprc.sum(exprc.log(exprc.sigmoid(x))), backend)(far)
    assert_close(g, 1 - sig)
    g = _grad_fn(lambda x: exprc.sum(exprc.log(1 + exprc.exp(x))), backend)(far)  # the naive softplus
    assert_close(g, sig)
    big = np.array([1000.0, 999.0, 1001.0, -1000.0])
    soft = np.exp(big - big.max()) / np.exp(big - big.max()).sum()
    g = _grad_fn(exprc.logsumexp, backend)(big)
    assert_close(g, soft, ulps=16)
    w = np.array([1.0, 2.0, 0.5, -1.0])
    g = _grad_fn(lambda x: exprc.sum(exprc.log_softmax(x) * w), backend)(big)
    assert_close(g, w - soft * w.sum(), ulps=16)
    g = _grad_fn(lambda x: exprc.sum(exprc.log(exprc.softmax(x)) * w), backend)(big)  # the naive form
    assert_close(g, w - soft * w.sum(), ulps=16)
    g = _grad_fn(lambda x: exprc.sum(exprc.log1p(x)), backend)(np.array([1e-20, 1e300, -0.5]))
    assert_close(g, np.array([1.0, 1e-300, 2.0]))


def test_softmax_and_logsumexp_gradients_do_not_route_through_the_max():
    """The max shift of softmax/logsumexp is stop_gradient'ed (as JAX does): its derivative terms
    cancel exactly, so the gradient graph has no argmax mask (``eq``) and one reduction fewer,
    and the gradient of the mean cross-entropy is exactly (softmax - Y) / n where NumPy's is."""
    z, Y = exprc.matrix("z"), exprc.matrix("Y")
    for loss in (-exprc.mean(exprc.sum(Y * exprc.log(exprc.softmax(z, axis=1)), axis=1)),
                 exprc.sum(exprc.logsumexp(z, axis=1)) - exprc.sum(Y * z)):
        g = exprc.grad(loss, z)
        ops = {n.op for n in toposort(exprc.optimize([g]).outputs)}
        assert "eq" not in ops and "max" in ops, ops
    rng = np.random.default_rng(5)
    zv = rng.standard_normal((6, 4)) * 30
    yv = np.eye(4)[rng.integers(0, 4, 6)]
    p = np.exp(zv - zv.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for backend in BACKENDS:
        g = exprc.function([z, Y], exprc.grad(exprc.sum(exprc.logsumexp(z, axis=1)) - exprc.sum(Y * z), z),
                           backend=backend)(zv, yv)
        assert_close(g, p - yv, ulps=16)


def _softmax_rows(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessians_of_naive_logsumexp_and_log_softmax_at_tied_maxima(backend):
    """Found in review: the Hessian of log(sum(exp(x))) at x = 0 (Newton's first step from zero
    weights) came out 0.  The stabilized form took the row's maxima out of the sum of exps and routed
    their gradient through the max: a right first derivative whose own derivative drops the tied
    maxima.  Naive spellings are now differentiated through exprc.logsumexp's form (the shift's
    gradient stopped): diag(p) - p p^T at ties, and wherever else."""
    x = exprc.vector("x")
    w = np.array([1.0, -2.0, 0.5, 3.0])
    cases = [(exprc.log(exprc.sum(exprc.exp(x))), 1.0),
             (exprc.log(exprc.mean(exprc.exp(x))), 1.0),
             (exprc.sum(w * exprc.log(exprc.exp(x) / exprc.sum(exprc.exp(x), keepdims=True))), -w.sum())]
    for cost, scale in cases:
        f = exprc.function([x], exprc.hessian(cost, x), backend=backend)
        for v in ([0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, -2.0], [5.0, 5.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0],
                  [800.0, 800.0, 1.0, -700.0]):
            v = np.array(v)
            p = _softmax_rows(v)
            assert_close(f(v), scale * (np.diag(p) - np.outer(p, p)), ulps=64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_a_naive_softmax_beside_a_max_or_a_constant_are_finite(backend):
    """Found in review: grad(sum(max(softmax(x)))) with softmax spelled exp(x) / sum(exp(x)) was NaN
    for the row [700, 710, 1]: a graph with a max (or a consider_constant) is differentiated as
    written, and the quotient's derivative multiplied 0 by exp(700) = inf.  The quotient is now
    differentiated as exprc.softmax (the shift's gradient stopped) on every path."""
    x, w = exprc.matrix("x"), exprc.matrix("w")
    sm = exprc.exp(x) / exprc.sum(exprc.exp(x), axis=-1, keepdims=True)
    xv = np.array([[700.0, 710.0, 1.0], [1.0, 2.0, 3.0], [0.5, -800.0, 2.0], [-1000.0, -990.0, -995.0]])
    wv = np.arange(12.0).reshape(4, 3) - 5
    p = _softmax_rows(xv)
    top = p.argmax(axis=-1)
    want_max = np.zeros_like(p)
    for r, j in enumerate(top):  # d p_j / d x = p_j (e_j - p)
        want_max[r] = -p[r, j] * p[r]
        want_max[r, j] += p[r, j]
    want_w = p * (wv - (wv * p).sum(axis=-1, keepdims=True))
    for g, want in [(exprc.grad(exprc.sum(exprc.max(sm, axis=-1)), x), want_max),
                    (exprc.grad(exprc.sum(w * sm), x, consider_constant=[w]), want_w)]:
        got = exprc.function([x, w], g, backend=backend)(xv, wv)
        assert np.isfinite(got).all(), got
        assert_close(got, want, ulps=64)
    # Denominators spelled without keepdims (a vector's 0-d sum, a dimshuffle): softmax too.
    v, u = exprc.vector("v"), exprc.vector("u")
    e = exprc.exp(x)
    for y, ins, args, want in [
            (exprc.sum(u * (exprc.exp(v) / exprc.sum(exprc.exp(v)))), [v, u], (xv[0], wv[0]), want_w[:1]),
            (exprc.sum(w * (e / exprc.sum(e, axis=1).dimshuffle(0, "x"))), [x, w], (xv, wv), want_w),
            (exprc.sum(exprc.max(e / exprc.sum(e, axis=1).dimshuffle(0, "x"), axis=1)), [x, w], (xv, wv), want_max)]:
        got = exprc.function(ins, exprc.grad(y, ins[0]), backend=backend)(*args)
        assert_close(np.atleast_2d(got), want, ulps=64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_stable_forms_keep_held_and_differentiated_nodes_and_tiny_derivatives(backend):
    """Found in review of the commit that added softmax to autodiff's stable forms: (1) a replacement
    dropped the sum of exps it recomputes, so consider_constant=[that sum] was ignored and a
    gradient with respect to it (or to exp(x) below it) came out 0 without an error; (2) routed
    through the stop_gradient shift, the gradient of a naive softmax lost a tiny derivative at the
    row maximum (d p_0 / d x_0 at x = [40, 0, -5]: 0 for 4.28e-18), which the optimizer's form keeps;
    (3) a +inf logit made every entry of a naive log-softmax's gradient NaN (exprc.log_softmax:
    only its own)."""
    x, w = exprc.vector("x"), exprc.vector("w")
    xv, wv = np.array([0.3, 1.0, -2.0]), np.array([1.0, -2.0, 0.5])
    E = np.exp(xv)
    S = E.sum()
    e = exprc.exp(x)
    s, sk, m = exprc.sum(e), exprc.sum(e, keepdims=True), exprc.mean(e)

    def run(g, *args):
        return exprc.function([x, w], g, backend=backend)(*args)

    held = [(exprc.grad(exprc.sum(w * (e / s)), x, consider_constant=[s]), wv * E / S),
            (exprc.grad(exprc.sum(w * exprc.log(e / sk)), x, consider_constant=[sk]), wv),
            (exprc.grad(exprc.log(m) + exprc.sum(x), x, consider_constant=[m]), np.ones(3)),
            (exprc.grad(exprc.sum(w * (e / s)), s), -np.sum(wv * E) / S**2),
            (exprc.grad(exprc.sum(w * exprc.log(e / sk)), sk), np.array([-wv.sum() / S])),
            (exprc.grad(exprc.log(m), m), 1 / E.mean()),
            (exprc.grad(exprc.log(m), e), np.full(3, 1 / S))]
    for g, want in held:
        assert_close(run(g, xv, wv), np.asarray(want, dtype=np.float64), ulps=16)
    v = np.array([40.0, 0.0, -5.0])
    p = _softmax_rows(v)
    want = np.array([p[0] * (p[1] + p[2]), -p[0] * p[1], -p[0] * p[2]])  # (no cancellation)
    assert_close(run(exprc.grad((e / s)[0] + 0 * exprc.sum(w), x), v, wv), want, ulps=16)
    assert_close(run(exprc.hessian(exprc.log(s), x), v, wv)[0], want, ulps=16)
    inf = np.array([np.inf, 0.0, 1.0])
    for cost in (exprc.sum(w * exprc.log(e / s)) + 0 * exprc.max(x), exprc.sum(w * exprc.log(e / s))):
        got = run(exprc.grad(cost, x), inf, wv)
        assert np.isnan(got[0]) and (got[1:] == wv[1:]).all(), got


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_log_mean_exp_spellings_at_huge_logits(backend):
    """Found in review: log(sum(exp(x)) / n) (a log-mean-exp), log(2 sum(exp(x))), -log(1 / sum(exp(x)))
    and log(S / T) had finite values but NaN gradients at logits of 900 (the quotient taken apart into
    masked branches whose zero cotangents still met exp(x) = inf); they are differentiated as
    logsumexp(x) -+ log(c) now: the softmax, on the stabilized path and the as-written one (a max in
    the graph)."""
    x = exprc.matrix("x")
    S, T = exprc.sum(exprc.exp(x), axis=1), exprc.sum(exprc.exp(2 * x), axis=1)
    xv = np.random.default_rng(0).uniform(-3, 3, (2, 4)) + 900
    p, q = _softmax_rows(xv), _softmax_rows(2 * xv)
    for cost, want in [(exprc.log(S / 3), p), (exprc.log(2 * S), p), (-exprc.log(1 / S), p), (exprc.log(S / T), p - 2 * q),
                       (exprc.log(exprc.mean(exprc.exp(x), axis=1) * 2), p)]:
        for extra in (0, 0 * exprc.sum(exprc.max(x, axis=1))):
            got = exprc.function([x], exprc.grad(exprc.sum(cost) + extra, x), backend=backend)(xv)
            assert_close(got, want, ulps=64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_softmax_weighted_sums(backend):
    """sum(u exp(x)) / sum(exp(x)) and sum(u exp(x) / sum(exp(x))) (rules softmax_weighted_sum,
    softmax_of_product): the gradient p (u - sum(u p)) for logits that overflow, and the Hessian at
    tied logits (central differences of that gradient)."""
    v, u = exprc.vector("v"), exprc.vector("u")
    uv = np.array([1.0, -2.0, 3.0, 0.5])

    def want(x):
        p = _softmax_rows(x)
        return p * (uv - (uv * p).sum())

    h = 1e-6
    for y in (exprc.sum(u * exprc.exp(v)) / exprc.sum(exprc.exp(v)), exprc.sum(u * exprc.exp(v) / exprc.sum(exprc.exp(v))),
              exprc.mean(exprc.exp(v) * u) / exprc.mean(exprc.exp(v)),
              exprc.sum(exprc.sum(u * exprc.exp(v))[None] / exprc.sum(exprc.exp(v))[None])):  # (_of_views)
        g = exprc.function([v, u], exprc.grad(y, v), backend=backend)
        for x in ([700.0, 710.0, 1.0, -800.0], [-1000.0, -1001.0, -1005.0, -2000.0], [1.0, 2.0, 3.0, 4.0]):
            x = np.array(x)
            assert_close(g(x, uv), want(x), ulps=64)
        hess = exprc.function([v, u], exprc.hessian(y, v), backend=backend)
        for x in (np.zeros(4), np.array([2.0, 2.0, -1.0, 2.0])):
            fd = np.array([(want(x + h * e) - want(x - h * e)) / (2 * h) for e in np.eye(4)])
            np.testing.assert_allclose(hess(x, uv), fd, rtol=0, atol=1e-8)
        # Found in review: on the as-written path (a max in the graph, a consider_constant, a wrt
        # that is not a variable) these were NaN for logits of 700.
        x = np.array([700.0, 710.0, 1.0, -800.0])
        g = exprc.function([v, u], exprc.grad(y + 0 * exprc.max(v), v), backend=backend)
        assert_close(g(x, uv), want(x), ulps=64)
        g = exprc.function([v, u], exprc.grad(y, v, consider_constant=[u * 1.0]), backend=backend)
        assert_close(g(x, uv), want(x), ulps=64)
    hv = 2.0 * v  # (wrt a node that is not a variable)
    for y in (exprc.sum(u * exprc.exp(hv)) / exprc.sum(exprc.exp(hv)), exprc.sum(u * exprc.exp(hv) / exprc.sum(exprc.exp(hv)))):
        x = np.array([350.0, 355.0, 0.5, -400.0])
        got = exprc.function([v, u], exprc.grad(y, hv), backend=backend)(x, uv)
        assert_close(got, want(2 * x), ulps=64)


def test_quotients_of_views_that_are_not_weighted_sums_differentiate_as_written():
    """Found in review: autodiff's pattern for v(sum(u exp(x))) / v(sum(exp(x))) (_weighted_views) read
    any quotient of two views, and crashed (IndexError, TypeError) on a normalization by a vector
    or by a view of another shape; these are differentiated as written."""
    x, w, y = exprc.matrix("x"), exprc.matrix("w"), exprc.vector("y")
    xv = np.random.default_rng(7).normal(size=(3, 2))
    wv, yv = np.random.default_rng(8).uniform(0.5, 2, (3, 2)), np.array([0.5, 2.0, -3.0])
    cases = [(exprc.sum(w * x, 1)[:, None] / y[:, None], wv / yv[:, None]),
             (exprc.sum(w * x, 1)[:, None] / exprc.exp(y)[:, None], wv / np.exp(yv)[:, None]),
             (exprc.sum(w * x, 1, keepdims=True).T / exprc.sum(x, 1, keepdims=True).T,
              (wv * xv.sum(1, keepdims=True) - (wv * xv).sum(1, keepdims=True)) / xv.sum(1, keepdims=True) ** 2)]
    for num, want in cases:
        g = exprc.function([x, w, y], exprc.grad(exprc.sum(num), x))(xv, wv, yv)
        assert_close(g, want, ulps=64)


def test_the_gradient_of_an_operand_of_an_operand_is_one_sum_to():
    """sum_to(sum_to(g, a), b) with b an operand of a is one sum_to (rule sum_to_twice): an MLP step's
    plan is then one native call (the nested one ran as a NumPy step every call), and gradients are
    right when broadcasting happens at call time (b given as 1 x k)."""
    x, W, b, V, c, Y = (exprc.matrix(n) for n in ("x", "W", "b", "V", "c", "Y"))
    h = exprc.tanh(x @ W + b)
    loss = exprc.sum((h @ V + c) * Y)
    grads = exprc.grad(loss, [W, b, V, c])
    nested = [n for n in toposort(exprc.optimize(grads).outputs)
              if n.op == "sum_to" and n.inputs[0].op == "sum_to"]
    assert not nested
    rng = np.random.default_rng(2)
    xv, Wv, Vv, Yv = (rng.standard_normal(s) for s in ((5, 3), (3, 4), (4, 2), (5, 2)))
    for bv, cv in [(rng.standard_normal((1, 4)), rng.standard_normal((1, 2))),
                   (rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))]:
        hv_full = np.tanh(xv @ Wv + bv)
        dz = (Yv @ Vv.T) * (1 - hv_full ** 2)
        want = [xv.T @ dz, dz.sum(0, keepdims=True) if bv.shape[0] == 1 else dz, hv_full.T @ Yv,
                Yv.sum(0, keepdims=True) if cv.shape[0] == 1 else Yv]
        for backend in BACKENDS:
            f = exprc.function([x, W, b, V, c, Y], grads, backend=backend)
            for g, w in zip(f(xv, Wv, bv, Vv, cv, Yv), want):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    step = [p - 0.1 * g for p, g in zip([W, b, V, c], grads)]  # an SGD step's outputs
    f = exprc.function([x, W, b, V, c, Y], [loss, *step], backend="c")
    assert f._kernel._make_plan([xv, Wv, rng.standard_normal((5, 4)), Vv, rng.standard_normal((5, 2)), Yv],
                                None).simple


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_cross_entropy_on_logits(backend):
    z, t = exprc.vector("z"), exprc.vector("t")
    p = exprc.sigmoid(z)
    naive = -exprc.sum(t * exprc.log(p) + (1 - t) * exprc.log(1 - p))
    f = exprc.function([z, t], [naive, exprc.grad(naive, z)], backend=backend)
    zs = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0, 40.0])
    ts = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    _, g = f(zs, ts)
    assert np.isfinite(g).all()
    assert_close(g, expit(zs) - ts)


# -- C backend against the NumPy backend -------------------------------------------------------
C_CASES = [
    ("mlp", lambda x, w: exprc.sum(exprc.tanh(x @ w) ** 2) + exprc.logsumexp(x, 1).sum(), (4, 3), (3, 2)),
    ("broadcast", lambda x, w: exprc.mean(exprc.sigmoid(x[:, :2] * w[0]) * exprc.max(x, 1, keepdims=True)), (4, 3), (3, 2)),
    ("softmax_xent", lambda x, w: -exprc.sum(exprc.log_softmax(x @ w) * np.eye(2)[[0, 1, 1, 0]]), (4, 3), (3, 2)),
    ("shape_ops", lambda x, w: exprc.sum(exprc.square(exprc.reshape(exprc.concatenate([x, exprc.exp(x[:1])], 0) @ w,
                                                                     -1))) + exprc.sum(x[1:, ::2] * w[0, :1]),
     (4, 3), (3, 2)),
]


@pytest.mark.parametrize("name,fn,sx,sw", C_CASES, ids=[c[0] for c in C_CASES])
def test_c_backend_gradients_match_numpy(name, fn, sx, sw):
    x, w = exprc.matrix("x"), exprc.matrix("w")
    cost = fn(x, w)
    grads = exprc.grad(cost, [x, w])
    data = [draw(sx, R, 1), draw(sw, R, 2)]
    want = exprc.function([x, w], [cost, *grads], backend="numpy")(*data)
    got = exprc.function([x, w], [cost, *grads], backend="c")(*data)
    for g, v in zip(got, want):
        assert_close(g, v, ulps=64)


def test_every_builtin_op_has_a_gradient_rule():
    # A fresh interpreter: other tests register custom ops without rules.
    code = ("import exprc; from exprc.ops import OPS; "
            "print(len(OPS), [n for n, op in OPS.items() if op.kind != 'leaf' and op.grad is None])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert int(out.split()[0]) > 80
    assert out.split(None, 1)[1].strip() == "[]"


def test_log1mexp_rule():
    if not hasattr(exprc, "log1mexp"):
        pytest.skip("no log1mexp op")
    check_grads(exprc.log1mexp, [-draw((2, 3), POS, 3)])


# == issue 14 item 5: Theano's grad options (consider_constant, known_grads, disconnected_inputs) ==========
# == and stop_gradient / zero_grad / disconnected_grad ====================================================
def _has_op(outputs, op):
    outputs = [outputs] if isinstance(outputs, exprc.Node) else list(outputs)
    return any(n.op == op for n in toposort(outputs))


def test_stop_gradient_is_the_identity_with_a_zero_gradient():
    x = exprc.vector("x")
    sg = exprc.stop_gradient
    assert exprc.zero_grad is sg and exprc.disconnected_grad is sg
    xv = draw((4,), R, 11)
    assert_close(sg(x).eval({x: xv}), xv)
    # d/dx sum(x * sg(x)) = sg(x) = x, not 2x
    g = exprc.grad(exprc.sum(x * sg(x)), x)
    assert_close(g.eval({x: xv}), xv)
    # grad takes the graph as built: the stop_gradient is still there (nothing optimized first)
    assert _has_op(g, "stop_gradient")
    # d/dx sum(sin(x) * sg(exp(x)) + sg(x)**2) = cos(x) exp(x)
    g = exprc.grad(exprc.sum(exprc.sin(x) * sg(exprc.exp(x)) + sg(x) ** 2), x)
    assert_close(g.eval({x: xv}), np.cos(xv) * np.exp(xv), ulps=4)
    # reached only through stop_gradient: connected, zero gradient (JAX, Theano's zero_grad); no error
    assert_close(exprc.grad(exprc.sum(sg(exprc.exp(x))), x).eval({x: xv}), np.zeros(4))
    # integers, constants, printing, SymPy
    n = exprc.vector("n", "int64")
    assert sg(n).dtype == "int64" and sg(n).type == n.type
    assert_close(sg(2.5).eval({}), np.float64(2.5))
    assert exprc.pprint(sg(x) * 2) == "stop_gradient(x) * 2.0"
    pytest.importorskip("sympy")
    assert str(exprc.to_sympy(sg(exprc.scalar("s")) + 1)) == "s + 1"


def test_stop_gradient_second_order_and_vjp_jvp():
    x = exprc.vector("x", shape=(3,))
    xv = draw((3,), R, 12)
    # grad of sum(x**2 * sg(x)) is 2 x sg(x); its derivative is diag(2 sg(x)) = diag(2x)
    h = exprc.hessian(exprc.sum(x ** 2 * exprc.stop_gradient(x)), x)
    assert_close(h.eval({x: xv}), np.diag(2 * xv), ulps=4)
    y = exprc.sin(x) * exprc.stop_gradient(exprc.cos(x))
    ct = draw((3,), R, 13)
    assert_close(exprc.vjp(y, x, ct).eval({x: xv}), ct * np.cos(xv) * np.cos(xv), ulps=4)
    assert_close(exprc.jvp(y, x, ct).eval({x: xv}), ct * np.cos(xv) * np.cos(xv), ulps=4)


def test_stop_gradient_costs_nothing_after_optimize():
    x, y = exprc.matrix("x"), exprc.vector("y")
    sg = exprc.stop_gradient
    with_sg = exprc.sum(x * sg(x), axis=0) + exprc.exp(sg(y)) * sg(y * 2.0) + sg(exprc.sum(x, axis=0) > 0)
    without = exprc.sum(x * x, axis=0) + exprc.exp(y) * (y * 2.0) + (exprc.sum(x, axis=0) > 0)
    opt = exprc.optimize(with_sg)
    assert not _has_op(opt.outputs, "stop_gradient")
    assert opt.outputs[0] is exprc.optimize(without).outputs[0]
    assert {(t.pass_name, t.rule) for t in opt.trace if t.before.op == "stop_gradient"} == {
        ("canonicalize", "stop_gradient_to_identity")}
    f1 = exprc.function([x, y], with_sg, backend="c")
    f2 = exprc.function([x, y], without, backend="c")
    assert f1.source == f2.source  # the generated C is the same
    # gradients of it: no stop_gradient left once compiled
    g = exprc.grad(exprc.sum(with_sg), [x, y])
    assert _has_op(g, "stop_gradient") and not _has_op(exprc.optimize(g).outputs, "stop_gradient")


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_stop_gradient_kept_by_exclude_still_compiles(backend):
    x = exprc.matrix("x")
    e = exprc.exp(exprc.stop_gradient(x)) + exprc.stop_gradient(exprc.astype(x > 0, "int64"))
    xv = draw((2, 3), R, 14)
    f = exprc.function([x], e, backend=backend, exclude=["stop_gradient_to_identity"])
    assert _has_op(f.graph.outputs, "stop_gradient")
    assert_close(f(xv), np.exp(xv) + (xv > 0), ulps=2)
    # a stop_gradient of an input as the whole output
    assert_close(exprc.function([x], exprc.stop_gradient(x), backend=backend)(xv), xv)


def test_stop_gradient_serializes():
    x = exprc.matrix("x")
    e = exprc.sum(x * exprc.stop_gradient(exprc.sin(x)))
    back = exprc.loads(exprc.dumps(e))
    assert exprc.pprint(back) == exprc.pprint(e) == "sum(x * stop_gradient(sin(x)))" and back.type == e.type
    (xb,) = [n for n in toposort([back]) if n.op == "input"]
    xv = draw((2, 2), R, 15)
    assert_close(exprc.grad(back, xb).eval({xb: xv}), np.sin(xv))  # still stops the gradient once loaded
    import pickle

    assert exprc.pprint(pickle.loads(pickle.dumps(e))) == exprc.pprint(e)


def test_stop_gradient_in_a_3000_deep_chain():
    x = exprc.vector("x")
    h = x
    for _ in range(1500):
        h = exprc.sin(h) + x
    t = exprc.stop_gradient(h)
    for _ in range(1500):
        t = exprc.sin(t) * 0.5 + x * 0.001
    g = exprc.grad(exprc.sum(t), x)
    f = exprc.function([x], [t, g], backend="numpy")
    assert not _has_op(f.graph.outputs, "stop_gradient")
    xv = np.array([0.3, -1.2])
    tv, gv = f(xv)
    # by hand, forward mode, with the stopped value constant
    hv = xv.copy()
    for _ in range(1500):
        hv = np.sin(hv) + xv
    tt, dt = hv, np.zeros(2)
    for _ in range(1500):
        tt, dt = np.sin(tt) * 0.5 + xv * 0.001, np.cos(tt) * 0.5 * dt + 0.001
    np.testing.assert_allclose(tv, tt, rtol=1e-12)
    np.testing.assert_allclose(gv, dt, rtol=1e-12)


def test_consider_constant():
    x = exprc.vector("x")
    xv = draw((5,), R, 16)
    h = exprc.sin(x)
    e = exprc.exp(h)
    # the constant intermediate: d/dx sum(e * h) with e constant is e cos(x)
    g = exprc.grad(exprc.sum(e * h), x, consider_constant=[e])
    assert_close(g.eval({x: xv}), np.exp(np.sin(xv)) * np.cos(xv), ulps=4)
    # the same as stop_gradient there, and the other paths through h still count
    cost = exprc.sum(h * h) + exprc.sum(e)
    g1 = exprc.grad(cost, x, consider_constant=e)
    g2 = exprc.grad(exprc.sum(h * h) + exprc.sum(exprc.stop_gradient(e)), x)
    assert_close(g1.eval({x: xv}), 2 * np.sin(xv) * np.cos(xv), ulps=4)
    assert_close(g1.eval({x: xv}), g2.eval({x: xv}))
    # finite differences of the function with e frozen at its value
    ev = np.exp(np.sin(xv))
    (want,) = fd_grads(lambda v: float(np.sum(np.sin(v) ** 2) + np.sum(ev)), [xv])
    np.testing.assert_allclose(g1.eval({x: xv}), want, rtol=1e-6, atol=1e-8)
    # a variable reached only through constants is disconnected (as Theano)
    with pytest.raises(DisconnectedInputError, match="consider_constant"):
        exprc.grad(exprc.sum(e), x, consider_constant=[h])
    assert_close(exprc.grad(exprc.sum(e), x, consider_constant=[h], disconnected="zero").eval({x: xv}), np.zeros(5))
    # the gradient at a constant node itself is still computed
    assert_close(exprc.grad(exprc.sum(e), h, consider_constant=[h]).eval({x: xv}), np.exp(np.sin(xv)))
    with pytest.raises(TypeError, match="consider_constant"):
        exprc.grad(exprc.sum(e), x, consider_constant=["e"])


def test_consider_constant_survives_the_stable_forms():
    # log(sigmoid(z)) is differentiated as -softplus(-z): a constant sigmoid(z) must not be rewritten away.
    z = exprc.vector("z")
    s = exprc.sigmoid(z)
    zv = draw((4,), R, 17)
    cost = exprc.sum(exprc.log(s)) + exprc.sum(z * 3.0)
    g = exprc.grad(cost, z, consider_constant=[s])
    assert_close(g.eval({z: zv}), np.full(4, 3.0))
    # a wrt above a rewritten composition is found in the rebuilt graph (it used to get zeros)
    y = exprc.exp(exprc.log(s))
    assert_close(exprc.grad(exprc.sum(y * 2.0), y).eval({z: zv}), np.full(4, 2.0))
    # and a consider_constant node above one still stops the gradient
    g = exprc.grad(exprc.sum(y * z), z, consider_constant=[y])
    assert_close(g.eval({z: zv}), expit(zv), ulps=8)


def test_consider_constant_in_vjp_jvp_jacobian_hessian():
    x = exprc.vector("x", shape=(3,))
    xv = draw((3,), R, 18)
    c = exprc.cos(x)
    y = exprc.sin(x) * c
    ct = draw((3,), R, 19)
    assert_close(exprc.vjp(y, x, ct, consider_constant=[c]).eval({x: xv}), ct * np.cos(xv) ** 2, ulps=4)
    assert_close(exprc.jvp(y, x, ct, consider_constant=[c]).eval({x: xv}), ct * np.cos(xv) ** 2, ulps=4)
    assert_close(exprc.jacobian(y, x, consider_constant=[c]).eval({x: xv}), np.diag(np.cos(xv) ** 2), ulps=4)
    h = exprc.hessian(exprc.sum(x ** 2 * c), x, consider_constant=c)
    assert_close(h.eval({x: xv}), np.diag(2 * np.cos(xv)), ulps=4)


def test_known_grads():
    x = exprc.vector("x", shape=(4,))
    w = exprc.vector("w", shape=(4,))
    xv, wv, gv = draw((4,), R, 20), draw((4,), R, 21), draw((4,), R, 22)
    h = exprc.tanh(x * w)
    dh = 1 - np.tanh(xv * wv) ** 2
    vals = {x: xv, w: wv}
    # alone (cost None): the backward sweep starts at h
    gx, gw = exprc.grad(None, [x, w], known_grads={h: gv})
    assert_close(gx.eval(vals), gv * dh * wv, ulps=8)
    assert_close(gw.eval(vals), gv * dh * xv, ulps=8)
    # with a cost: added to what flows into h from the cost
    cost = exprc.sum(h ** 2)
    gx = exprc.grad(cost, x, known_grads={h: gv})
    assert_close(gx.eval(vals), (2 * np.tanh(xv * wv) + gv) * dh * wv, ulps=8)
    # against finite differences of cost + <h, gv>
    want = fd_grads(lambda a: float(np.sum(np.tanh(a * wv) ** 2) + np.sum(np.tanh(a * wv) * gv)), [xv])[0]
    np.testing.assert_allclose(gx.eval(vals), want, rtol=1e-6, atol=1e-8)
    # on an input, a symbolic seed, a scalar seed broadcast, several seeds
    assert_close(exprc.grad(None, x, known_grads={x: gv}).eval({}), gv)
    seed = exprc.vector("seed", shape=(4,))
    assert_close(exprc.grad(None, x, known_grads={h: seed * 2.0}).eval({**vals, seed: gv}), 2 * gv * dh * wv, ulps=8)
    assert_close(exprc.grad(None, x, known_grads={h: 1.0}).eval(vals), dh * wv, ulps=8)
    u = exprc.exp(h)
    g = exprc.grad(None, x, known_grads={u: gv, h: 1.0})
    assert_close(g.eval(vals), (gv * np.exp(np.tanh(xv * wv)) + 1) * dh * wv, ulps=8)
    # with consider_constant: the seed at u does not pass the constant u
    g = exprc.grad(exprc.sum(h), x, known_grads={u: gv}, consider_constant=[u])
    assert_close(g.eval(vals), dh * wv, ulps=8)


def test_known_grads_broadcast_and_dtypes():
    x = exprc.matrix("x", shape=(1, 3))
    big = exprc.matrix("big", shape=(4, 3))
    xv, bv = draw((1, 3), R, 23), draw((4, 3), R, 24)
    h = exprc.sin(x)
    # a seed of shape (4, 3) for a (1, 3) node: summed over the broadcast axis
    g = exprc.grad(None, x, known_grads={h: big})
    assert g.type.shape == (1, 3)
    assert_close(g.eval({x: xv, big: bv}), bv.sum(0, keepdims=True) * np.cos(xv), ulps=8)
    # float32 node, float64 seed: cast
    y = exprc.vector("y", "float32", shape=(2,))
    g = exprc.grad(None, y, known_grads={y * 3.0: np.array([1.0, 2.0])})
    assert g.dtype == "float32"
    assert_close(g.eval({y: np.ones(2, "float32")}), np.array([3.0, 6.0], "float32"))


def test_known_grads_errors_name_the_variable():
    x = exprc.matrix("x", shape=(2, 3))
    h = exprc.sin(x)
    with pytest.raises(ShapeError, match=r"known_grads for sin\(x\).*\(3, 2\).*\(2, 3\)"):
        exprc.grad(None, x, known_grads={h: np.ones((3, 2))})
    with pytest.raises(ShapeError, match="known_grads for 'x'"):
        exprc.grad(exprc.sum(h), x, known_grads={x: np.ones(4)})
    assert issubclass(ShapeError, exprc.errors.ExprcError)
    with pytest.raises(DTypeError, match="known_grads for 'n'"):
        exprc.grad(None, x, known_grads={exprc.vector("n", "int64"): np.ones(2)}, disconnected="zero")
    with pytest.raises(DTypeError, match="bool"):
        exprc.grad(None, x, known_grads={h: np.ones((2, 3), bool)})
    with pytest.raises(TypeError, match="mapping"):
        exprc.grad(None, x, known_grads=[(h, 1.0)])
    with pytest.raises(TypeError, match="keys"):
        exprc.grad(None, x, known_grads={"h": 1.0})
    with pytest.raises(ValueError, match="nothing to differentiate"):
        exprc.grad(None, x)
    with pytest.raises(DisconnectedInputError):
        exprc.grad(None, x, known_grads={exprc.vector("other"): 1.0})


def test_disconnected_inputs_is_theanos_spelling():
    x, y = exprc.vector("x"), exprc.vector("y")
    cost = exprc.sum(x)
    with pytest.raises(DisconnectedInputError):
        exprc.grad(cost, [x, y], disconnected_inputs="raise")
    _, gy = exprc.grad(cost, [x, y], disconnected_inputs="ignore")
    assert_close(gy.eval({y: np.ones(2)}), np.zeros(2))
    with pytest.warns(RuntimeWarning, match="does not depend"):
        exprc.grad(cost, y, disconnected_inputs="warn")
    exprc.grad(cost, y, disconnected="zero", disconnected_inputs="ignore")  # the same mode twice is fine
    with pytest.raises(ValueError, match="disagree"):
        exprc.grad(cost, y, disconnected="raise", disconnected_inputs="ignore")
    with pytest.raises(ValueError, match="disconnected_inputs"):
        exprc.grad(cost, y, disconnected_inputs="zero")  # Theano's values only: raise, warn, ignore
    exprc.grad(cost, y, "zero")  # disconnected= stays positional


def test_grad_options_c_backend_matches_numpy():
    x, w = exprc.matrix("x"), exprc.matrix("w")
    h = exprc.tanh(x @ w)
    e = exprc.exp(-h)
    seed = exprc.matrix("seed")
    cost = exprc.sum(h * exprc.stop_gradient(h)) + exprc.mean(e * h)
    grads = exprc.grad(cost, [x, w], consider_constant=[e], known_grads={h: seed})
    data = [draw((3, 4), R, 25), draw((4, 2), R, 26), draw((3, 2), R, 27)]
    want = exprc.function([x, w, seed], grads, backend="numpy")(*data)
    got = exprc.function([x, w, seed], grads, backend="c")(*data)
    for g, v in zip(got, want):
        assert_close(g, v, ulps=64)
    # by hand: dcost/dh = sg(h) + e / h.size (e constant) + seed
    xv, wv, sv = data
    hv = np.tanh(xv @ wv)
    dh = (hv + np.exp(-hv) / hv.size + sv) * (1 - hv ** 2)
    np.testing.assert_allclose(want[0], dh @ wv.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(want[1], xv.T @ dh, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_branch_not_taken_leaks_no_nan_into_the_gradient(backend):
    """where(x > 0, sqrt(x), 0) at x < 0: sqrt's derivative is NaN there and its cotangent zero;
    0 * NaN must not reach x (the contribution is masked again), as nested and shared branches."""
    x = exprc.vector("x")
    pts = np.array([-4.0, -1.0, 0.25, 4.0])
    cases = [
        (exprc.where(x > 0, exprc.sqrt(x), 0.0), np.where(pts > 0, 0.5 / np.sqrt(np.abs(pts)), 0.0)),
        (exprc.where(x < 0, exprc.log(-x) * 2.0, x), np.where(pts < 0, 2.0 / pts, 1.0)),
        (exprc.where(x > 0, exprc.where(x > 1, exprc.log(x - 1.0), x * x), x),
         np.where(pts > 1, 1.0 / (pts - 1.0), np.where(pts > 0, 2 * pts, 1.0))),
    ]
    for e, want in cases:
        got = exprc.function([x], exprc.grad(exprc.sum(e), x), backend=backend)(pts)
        np.testing.assert_allclose(got, want, rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_the_stable_forms(backend):
    """exprc.grad differentiates elementwise graphs in their stable forms: the derivative of
    sin(x)/x - 1 near 0 (its series branch), of log(1 + x) for tiny x and of exp(-x) - 1 + x,
    within 4 bits of mpmath's where the formula as written loses every bit; NaN at x = 0 stays."""
    import mpmath

    from exprc.accuracy import bits_lost

    x = exprc.vector("x")
    pts = np.concatenate([np.geomspace(1e-9, 0.9, 60), -np.geomspace(1e-9, 0.9, 60)])
    for build in [lambda m, v: m.sin(v) / v - 1, lambda m, v: m.log(1 + v), lambda m, v: m.exp(-v) - 1 + v]:
        f = exprc.function([x], exprc.grad(exprc.sum(build(exprc, x)), x), backend=backend)
        got = f(pts)
        with mpmath.workdps(60):
            want = np.array([float(mpmath.diff(lambda t, b=build: b(mpmath, t), mpmath.mpf(p))) for p in pts])
        assert max(bits_lost(a, b) for a, b in zip(got, want)) <= 4.0
    f = exprc.function([x], exprc.grad(exprc.sum(exprc.sin(x) / x - 1), x), backend=backend)
    assert np.isnan(f(np.array([0.0]))[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_stable_forms_of_two_arguments(backend):
    """exp(a)/exp(b), exp(a)/(exp(a) + exp(b)) and x - log(exp(x) + exp(y)): every partial within 4
    bits of mpmath's, where a - b is large and rounds.  Their stable forms carry TwoSum's rounding
    error of a - b (the op two_sum_err); once an optimization of the gradient simplified the six
    adds of that error back to 0 (8.6 bits lost), and the quotients' own derivatives overflowed
    (exp(a)/exp(b)/exp(b)) or cancelled (1/S - exp(a)/S**2) before."""
    import mpmath

    from exprc.accuracy import bits_lost, reference

    rng = np.random.default_rng(5)
    pa, pb = rng.uniform(-690, 690, 60), rng.uniform(-690, 690, 60)
    pa[:3], pb[:3] = [-665.5754502681843, 99.95384063808422, 69.8], [-695.5673337419338, -449.3122373838094, -0.0435]
    a, b = exprc.vector("a"), exprc.vector("b")
    for build in [lambda m, u, v: m.exp(u) / m.exp(v), lambda m, u, v: m.exp(u) / (m.exp(u) + m.exp(v)),
                  lambda m, u, v: u - m.log(m.exp(u) + m.exp(v))]:
        f = exprc.function([a, b], exprc.grad(exprc.sum(build(exprc, a, b)), [a, b]), backend=backend)
        got = f(pa, pb)
        for k in range(2):
            def part(m, *args, k=k, b=build):  # (reference: at doubling precision until it settles)
                return mpmath.diff(lambda t: b(m, *(args[:k] + (t,) + args[k + 1:])), args[k])

            lost = bits_lost(np.broadcast_to(got[k], pa.shape), reference(part, [pa, pb]))
            assert lost.max() <= 4.0, (k, pa[np.argmax(lost)], pb[np.argmax(lost)], lost.max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_of_the_quadratic_formula(backend, sign):
    """(-b + sqrt(b*b - 4ac)) / (2a) and its other root, |b| up to 1e8: every partial within 4 bits of
    mpmath's.  The stable branch -(4ac / t) / (2a) becomes -2c / t (quotient_into_branches, then
    product_cancel): the quotient's derivative in a, -(4c/t)/(2a) + (4ac/t)/(2a**2) + ..., lost
    every bit."""
    import mpmath

    from exprc.accuracy import bits_lost, reference

    rng = np.random.default_rng(8)
    pa, pc = rng.uniform(0.5, 2.0, 40), rng.uniform(0.5, 2.0, 40)
    pb = sign * np.exp(rng.uniform(np.log(10.0), np.log(1e8), 40))

    def root(m, a, b, c):
        return (-b + m.sqrt(b * b - 4 * a * c)) / (2 * a) if sign > 0 else (-b - m.sqrt(b * b - 4 * a * c)) / (2 * a)

    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    f = exprc.function([a, b, c], exprc.grad(exprc.sum(root(exprc, a, b, c)), [a, b, c]), backend=backend)
    got = f(pa, pb, pc)
    for k in range(3):
        def part(m, *args, k=k):
            return mpmath.diff(lambda t: root(m, *(args[:k] + (t,) + args[k + 1:])), args[k])

        lost = bits_lost(np.broadcast_to(got[k], pa.shape), reference(part, [pa, pb, pc]))
        assert lost.max() <= 4.0, (k, lost.max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_exp_over_expm1_over_its_whole_range(backend):
    """exp(x)/(exp(x) - 1) is -1/expm1(-x) except below x = -20: that form's derivative,
    -exp(-x)/expm1(-x)**2, overflows to 0 from x = -355 where the true one is -exp(x)."""
    import mpmath

    from exprc.accuracy import bits_lost, reference

    x = exprc.vector("x")
    pts = np.concatenate([-np.geomspace(1e-6, 740, 80), np.geomspace(1e-6, 700, 80)])
    f = exprc.function([x], exprc.grad(exprc.sum(exprc.exp(x) / (exprc.exp(x) - 1)), x), backend=backend)
    want = reference(lambda m, v: mpmath.diff(lambda t: m.exp(t) / (m.exp(t) - 1), v), [pts])
    assert bits_lost(f(pts), want).max() <= 4.0


def test_gradient_stabilization_skips_what_it_must_not_touch():
    """Graphs with a max shift or stop_gradient (softmax, logsumexp), loops, or intermediate
    wrt nodes are differentiated as written (see autodiff._stabilized)."""
    from exprc.autodiff import _stabilized

    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.sin(x) / x - 1
    assert _stabilized([e], [x], []) != [e]
    for outs, wrt, cc in [([exprc.logsumexp(x)], [x], []), ([exprc.sum(exprc.softmax(x) * y)], [x], []),
                          ([e], [x * 2.0], []), ([e], [x], [y])]:
        assert _stabilized(outs, wrt, cc) == outs


def test_unary_derivatives_keep_their_accuracy_in_the_tails():
    """expm1' = exp (not expm1 + 1, which is 0 below x = -37 and loses bits from x < -1) and
    sigmoid' = sigmoid(x) sigmoid(-x) (not s (1 - s), 0 above x = 37), against mpmath."""
    import mpmath

    from exprc.accuracy import bits_lost

    x = exprc.vector("x")
    pts = np.array([-700.0, -300.0, -40.0, -10.0, -1.5, -1e-8, 0.0, 1e-8, 2.0, 30.0, 40.0, 300.0, 700.0])
    for fn, exact in ((exprc.expm1, lambda t: mpmath.exp(t)),
                      (exprc.sigmoid, lambda t: mpmath.exp(-t) / (1 + mpmath.exp(-t)) ** 2)):
        for backend in ("numpy", "c"):
            g = exprc.function([x], exprc.grad(exprc.sum(fn(x)), x), backend=backend)(pts)
            ref = np.array([float(exact(mpmath.mpf(float(p)))) for p in pts])
            assert bits_lost(g, ref).max() <= 2, (fn, backend, g, ref)


def test_masked_branch_gradient_stays_zero_through_an_operand_of_unknown_length():
    """where(|a| < 700 & |b| < 700, exp(a) / exp(b), exp(a - b)) with two vectors of unknown length:
    the gradient of the quotient branch is summed to a's shape before exp(a)'s rule multiplies it by
    exp(a) = inf where that branch is not taken; the mask is carried through the sum, so the
    gradient there is the other branch's, not 0 * inf = NaN."""
    a, b = exprc.vector("a"), exprc.vector("b")
    safe = (exprc.abs(a) < 700.0) & (exprc.abs(b) < 700.0)
    e = exprc.where(safe, exprc.exp(a) / exprc.exp(b), exprc.exp(a - b))
    ga, gb = exprc.grad(exprc.sum(e), [a, b])
    av, bv = np.array([705.0, 750.0, 3.0, -710.0]), np.array([10.0, 60.0, 1.0, -720.0])
    want = np.exp(av - bv)
    for backend in ("numpy", "c"):
        f = exprc.function([a, b], [ga, gb], backend=backend)
        with np.errstate(all="ignore"):
            got_a, got_b = f(av, bv)
        np.testing.assert_allclose(got_a, want, rtol=1e-13)
        np.testing.assert_allclose(got_b, -want, rtol=1e-13)
        # a broadcast operand: its gradient sums selected and unselected elements; still no NaN
        with np.errstate(all="ignore"):
            got_a1, _ = f(np.array([705.0]), bv[:3])
        np.testing.assert_allclose(got_a1, np.exp(705.0 - bv[:3]).sum(keepdims=True), rtol=1e-13)


def test_pow_derivative_with_an_exponent_whose_predecessor_rounds():
    """d/dx x**0.2 = 0.2 x**-0.8, where 0.2 - 1 rounds: computing x**(0.2 - 1.0) costs |log x| ulps;
    the rule uses x**0.2 / x instead (exact exponent), and keeps the plain form at 0, inf and where
    x**0.2 is not a normal number.  Against mpmath with the exponent's exact value."""
    import mpmath

    from exprc.accuracy import bits_lost

    x = exprc.vector("x")
    pts = np.array([7e-297, 1e-200, 1e-5, 0.3, 1.0, 7.5, 1e100, 1e300])
    for p in (0.2, 1 / 3, 1.1, -0.3, 2.5):
        with mpmath.workprec(200):
            ref = np.array([float(mpmath.mpf(p) * mpmath.mpf(float(t)) ** (mpmath.mpf(p) - 1)) for t in pts])
        for backend in ("numpy", "c"):
            with np.errstate(all="ignore"):
                got = exprc.function([x], exprc.grad(exprc.sum(x ** p), x), backend=backend)(pts)
                edge = exprc.function([x], exprc.grad(exprc.sum(x ** p), x), backend=backend)(
                    np.array([0.0, np.inf, np.nan]))
            assert bits_lost(got, ref).max() <= 2, (p, backend, got, ref)
            with np.errstate(all="ignore"):
                np.testing.assert_array_equal(edge, p * np.array([0.0, np.inf, np.nan]) ** (p - 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_to_terms_sums_two_paths_of_one_shape_before_reducing(backend):
    """x's gradient along two paths of one shape is reduced once (sum_to_terms): x of size 1 broadcast
    against w of size 5.  Paths of different shapes are reduced apart: y (5) and z (7) against x (1)
    can only be summed after their reductions (summed first, they would not even broadcast)."""
    x, w, y, z = (exprc.vector(s) for s in "xwyz")
    xv, wv, yv, zv = np.array([0.3]), np.linspace(-2, 2, 5), np.linspace(1, 2, 5), np.linspace(-1, 3, 7)
    f = exprc.function([x, w], exprc.grad(exprc.sum(x * exprc.sin(w)) + exprc.sum(x * exprc.cos(w)), x),
                       backend=backend)
    assert "sum_to_terms" in f.rewrites
    assert sum(n.op == "sum_to" for n in toposort(list(f.graph.outputs))) == 1
    np.testing.assert_allclose(f(xv, wv), [np.sum(np.sin(wv) + np.cos(wv))], rtol=1e-14)
    g = exprc.function([x, y, z], exprc.grad(exprc.sum(x * y) + exprc.sum(x * z), x), backend=backend)
    assert "sum_to_terms" not in g.rewrites
    np.testing.assert_allclose(g(xv, yv, zv), [yv.sum() + zv.sum()], rtol=1e-14)
    np.testing.assert_allclose(g(np.ones(5), yv, np.ones(5)), yv + 1, rtol=1e-14)


def test_sum_to_terms_with_negated_terms_and_the_full_shape():
    """sum_to(a) - sum_to(b) and -sum_to(a) + sum_to(b) (what the chain rule through a subtraction gives),
    against NumPy, where the reduction happens and where it is the identity (sizes equal)."""
    x, w = exprc.vector("x"), exprc.vector("w")
    e = exprc.sum(x * exprc.exp(w)) - exprc.sum(x * w * w) + exprc.sum(-x * exprc.sin(w))
    f = exprc.function([x, w], exprc.grad(e, x))
    assert "sum_to_terms" in f.rewrites
    wv = np.linspace(-3, 3, 11)
    want = np.exp(wv) - wv * wv - np.sin(wv)
    np.testing.assert_allclose(f(np.array([2.0]), wv), [want.sum()], rtol=1e-13)
    np.testing.assert_allclose(f(np.full(11, 2.0), wv), want, rtol=1e-14)


def _central_difference(loss, args: list, i: int, h: float = 1e-6) -> np.ndarray:
    """d loss / d args[i], element by element, by central differences (``loss`` a compiled function)."""
    d = np.zeros(args[i].shape)
    for idx in np.ndindex(args[i].shape):
        up, down = [a.copy() for a in args], [a.copy() for a in args]
        up[i][idx] += h
        down[i][idx] -= h
        d[idx] = (loss(*up) - loss(*down)) / (2 * h)
    return d


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lazily_broadcast_gradient_counts_what_it_stands_for(backend):
    """The gradient of a full sum is a scalar standing for the whole summed array; an operand broadcast
    along the same axes must receive the count of elements it was added to: d/ds sum(v + s) is len(v)
    (it was 1.0 before, for every operand reached through +, -, neg from a sum or mean), d/db sum(X + b)
    is the number of rows.  Against finite differences of the loss, with call-time sizes of 1 too."""
    s, v, X, b = exprc.scalar("s"), exprc.vector("v"), exprc.matrix("X"), exprc.vector("b")
    c = exprc.tensor("c", "float64", ndim=2, shape=(None, 1))
    cases = [(exprc.sum(v + s), [v, s]), (exprc.mean(v + s), [v, s]), (exprc.sum(s - v) * 2, [v, s]),
             (-exprc.sum(-(v + s)), [v, s]), (exprc.sum(X + b), [X, b]), (exprc.mean(X - b) + exprc.sum(b), [X, b]),
             (exprc.sum(X - c), [X, c]), (exprc.sum(c + b), [c, b]), (exprc.sum(exprc.broadcast_to(s, (5,))) + 0 * exprc.sum(v), [v, s]),
             (exprc.sum(s * s + v), [v, s])]
    rng = np.random.default_rng(4)
    values = {s: [np.array(0.7)], v: [rng.normal(size=5), rng.normal(size=1)], X: [rng.normal(size=(4, 3)), rng.normal(size=(1, 3))],
              b: [rng.normal(size=3)], c: [rng.normal(size=(4, 1))]}
    for loss, ins in cases:
        f = exprc.function(ins, exprc.grad(loss, ins), backend=backend)
        L = exprc.function(ins, loss, backend="numpy")
        for k in range(2):
            args = [values[x][min(k, len(values[x]) - 1)] for x in ins]
            if k and args[0].shape[0] == 1 and ins[1] is c:
                continue
            for i, (x, got) in enumerate(zip(ins, f(*args))):
                np.testing.assert_allclose(got, _central_difference(L, args, i), rtol=1e-6, atol=1e-8,
                                           err_msg=f"{exprc.pprint(loss)} d/{x}")


def test_a_gradient_sized_by_an_operand_counts_the_sizes_it_was_broadcast_with():
    """Review of 81a33cb: g * w has w's size, 1 at call time, and reached v + w, whose size is v's:
    d/dw sum(w (v + w)) was 12.5 (14), d/dw sum((v + w)/w) -46 (-40), d/dw sum(broadcast_to(w, 4) w) 2.5 (4),
    d/dX sum(X (X + Y)) with X (2, 1) [7, 20] ([9, 24]), the hessian of the first [[2]] ([[8]]); and the
    sum_to op's rule passed its gradient on unsummed: d/dw of sum(grad(sum(v w), v) v) with len(w) = 1 was
    v itself ([1, 2, 3, 4], not [10]).  Against finite differences; w*G of a gather keeps its one kernel
    (test_indexing: no fill where the sizes are the gather's and G's)."""
    v, w, X, Y = exprc.vector("v"), exprc.vector("w"), exprc.matrix("X"), exprc.matrix("Y")
    vv, wv, Xv, Yv = np.array([1.0, 2, 3, 4]), np.array([0.5]), np.array([[1.0], [2]]), np.arange(6.0).reshape(2, 3)

    gv = exprc.grad(exprc.sum(v * w), v)
    cases = [(exprc.sum(w * (v + w)), [v, w], [vv, wv], 1), (exprc.sum((v + w) / w), [v, w], [vv, wv], 1),
             (exprc.mean(-(v + w) * exprc.exp(w)), [v, w], [vv, wv], 1),
             (exprc.sum(exprc.broadcast_to(w, (4,)) * w) + 0 * exprc.sum(v), [v, w], [vv, wv], 1),
             (exprc.sum(X * (X + Y)), [X, Y], [Xv, Yv], 0), (exprc.sum(X * (X + Y)), [X, Y], [np.array([[1.0, 2, 3]]), Yv], 0),
             (exprc.sum(gv * v), [v, w], [vv, wv], 1)]
    for backend in BACKENDS:
        for loss, ins, args, i in cases:
            got = exprc.function(ins, exprc.grad(loss, ins[i]), backend=backend)(*args)
            want = _central_difference(exprc.function(ins, loss, backend="numpy"), args, i)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=exprc.pprint(loss))
        h = exprc.function([v, w], exprc.hessian(exprc.sum(w * (v + w)), w), backend=backend)(vv, wv)
        np.testing.assert_allclose(h, [[8.0]])


def test_an_operand_of_a_reduction_and_its_epilogue_compiles():
    """x0 read by both the reduced values (where(x1 < x0, ...)) and the epilogue (2 x0 + ...) of one
    reduction kernel: the epilogue loads it again (it was rendered as a constant: AttributeError, for
    the value and for this gradient before its lazily broadcast terms were counted)."""
    for dtype in ("float64", "float32"):
        x0, x1 = exprc.scalar("x0", dtype), exprc.vector("x1", dtype)
        e = exprc.sum(exprc.where(x1 < x0, -1.0, 0.0)) + 2.0 * x0 + 1.0
        f = exprc.function([x0, x1], e, backend="c")
        (k,) = f.kernels  # (one reduction kernel, x0 read before and after the sum)
        assert k["ops"][:3] == ["lt", "where", "sum"] and "mul" in k["ops"][3:], k["ops"]
        for a1 in (np.array([0.1, 0.5, -1.0]), np.array([])):
            a0 = np.array(0.3, dtype)
            want = -np.sum(a1.astype(dtype) < a0) + 2 * a0 + 1
            assert f(a0, a1.astype(dtype)) == pytest.approx(want, rel=1e-6)
    x0, x1 = exprc.scalar("x0"), exprc.vector("x1")
    loss = exprc.sum(x0 - exprc.maximum(x1, x0) + x0 * x0 + (x1 + x1))
    a0, a1 = np.array(0.3), np.array([0.1, 0.5, 0.35, 0.9, -1.0])
    g0, g1 = exprc.function([x0, x1], exprc.grad(loss, [x0, x1]))(a0, a1)
    assert g0 == pytest.approx(5 * (1 + 2 * 0.3) - 2)  # (x1 < x0 at 0.1 and -1.0)
    np.testing.assert_array_equal(g1, 2 - (a1 > a0))


def test_random_broadcasting_graphs_against_central_differences():
    """A small gradient fuzzer: random graphs of elementwise ops over a scalar, vectors and matrices whose
    sizes are known only at call time (and are 1 there for some), their full sum differentiated with
    respect to every input on both backends against central differences of the sum (the fuzzer that found
    the lazily broadcast gradients' wrong counts: d/ds sum(v + s) was 1)."""
    import random

    rnd, rng = random.Random(7), np.random.default_rng(7)
    shapes = [(), (1,), (5,), (1, 5), (4, 1), (4, 5)]
    unary = [exprc.sin, exprc.tanh, exprc.sigmoid, lambda a: a * a, lambda a: -a, lambda a: a * 0.5 + 1.0]
    binary = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / (1.0 + b * b)]
    checked = 0
    while checked < 24:
        sh = [rnd.choice(shapes) for _ in range(rnd.randint(1, 3))]
        ins = [exprc.tensor(f"x{i}", "float64", ndim=len(s)) for i, s in enumerate(sh)]
        pool = list(ins)
        for _ in range(rnd.randint(2, 6)):
            pool.append(rnd.choice(unary)(rnd.choice(pool)) if rnd.random() < 0.4
                        else rnd.choice(binary)(rnd.choice(pool), rnd.choice(pool)))
        loss = exprc.sum(pool[-1] + pool[-2] + pool[0])
        args = [rng.normal(size=s) for s in sh]
        L = exprc.function(ins, loss, backend="numpy")
        try:
            L(*args)
        except exprc.errors.ShapeError:
            continue  # (shapes that do not broadcast)
        grads = exprc.grad(loss, ins, disconnected="zero")
        for backend in BACKENDS:
            got = exprc.function(ins, grads, backend=backend)(*args)
            for i, g in enumerate(got):
                np.testing.assert_allclose(np.broadcast_to(g, args[i].shape), _central_difference(L, args, i),
                                           rtol=1e-5, atol=1e-6, err_msg=f"{exprc.pprint(loss)} d/x{i} {sh}")
        checked += 1
