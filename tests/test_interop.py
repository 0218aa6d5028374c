"""SymPy interop and pickling (multiprocessing with the spawn context), public API only."""

import multiprocessing
import pickle

import numpy as np
import pytest
import sympy as sp
from sympy.codegen.cfunctions import expm1, hypot, log1p, log2

import exprc

x_, y_ = sp.symbols("x y")
FORMULAS = [
    x_ ** 2 + 3 * x_ * y_ - y_ / 2,
    sp.exp(-x_ ** 2) * sp.sin(y_),
    sp.sqrt(x_ ** 2 + y_ ** 2) - hypot(x_, y_),
    1 / (1 + sp.exp(-x_)),
    sp.log(1 + sp.exp(x_)) - x_,
    sp.Piecewise((x_, x_ > y_), (y_ ** 2, x_ < 0), (sp.cos(y_), True)),
    sp.Max(x_, y_, sp.Rational(1, 2)) + sp.Min(x_, 0),
    sp.atan2(y_, x_) * sp.pi + sp.E,
    x_ ** -3 + y_ ** sp.Rational(-1, 2),
    -x_ - y_,
    sp.Mod(x_, 2) + sp.floor(y_) - sp.ceiling(x_ / 3),
    sp.Abs(x_ - y_) * sp.sign(x_),
    sp.tanh(x_) * sp.cosh(y_) / (1 + sp.sinh(x_) ** 2),
    log1p(x_ ** 2) + expm1(-y_ ** 2) + log2(2 + sp.Abs(x_)),
    sp.atan(x_) + sp.asinh(y_) + sp.asin(x_ / 3),
    (x_ + 1) ** 2.5 - 2 ** x_,
    sp.Rational(7, 3) * x_ + sp.Float("0.1") * y_,
]


def _grid():
    a = np.linspace(-2.5, 2.5, 41)
    b = np.linspace(3, -1.7, 41)
    return a, b


@pytest.mark.parametrize("i", range(len(FORMULAS)))
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_from_sympy_matches_lambdify(i, backend):
    f = FORMULAS[i]
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.from_sympy(f, {x_: x, "y": y})  # symbols or their names
    a, b = _grid()
    with np.errstate(all="ignore"):
        want = sp.lambdify([x_, y_], f, "numpy")(a, b) * np.ones_like(a)
    got = exprc.function([x, y], e, backend=backend)(a, b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    # and back: to_sympy of the exprc expression is the same function
    back = exprc.to_sympy(e)
    assert back.free_symbols <= {x_, y_}
    with np.errstate(all="ignore"):
        again = sp.lambdify([x_, y_], back, "numpy")(a, b) * np.ones_like(a)
    np.testing.assert_allclose(again, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_to_sympy_round_trip_of_exprc_formulas():
    x, y = exprc.vector("x"), exprc.vector("y")
    exprs = [
        exprc.softplus(x) - exprc.sigmoid(y) * 2,
        exprc.logaddexp(x, y) / exprc.exp2(x),
        exprc.where(x > y, exprc.square(x), exprc.reciprocal(y)),
        exprc.log10(exprc.abs(x) + 1) ** 3 + exprc.cbrt(y),
        exprc.erf(x) + exprc.erfc(y) + exprc.arctan2(x, y),
        x // 2 + exprc.maximum(x, y) - exprc.minimum(x, 1.0),
    ]
    a, b = _grid()
    for e in exprs:
        s = exprc.to_sympy(e)
        assert s.free_symbols == {x_, y_}
        e2 = exprc.from_sympy(s, {x_: x, y_: y})
        np.testing.assert_allclose(exprc.function([x, y], e2)(a, b), exprc.function([x, y], e)(a, b),
                                   rtol=1e-12, atol=1e-14)
    assert exprc.to_sympy(x * 2.0 + 1) == 2 * x_ + 1
    assert sp.simplify(exprc.to_sympy(exprc.sigmoid(x)) - 1 / (1 + sp.exp(-x_))) == 0


def test_weak_scalars_keep_float32_and_unmapped_ops_round_trip():
    x = exprc.vector("x", "float32")
    e = exprc.from_sympy(2 * x_ ** 2 + sp.Rational(1, 3), {x_: x})
    assert e.dtype == "float32"
    r = exprc.round(x) + exprc.isnan(x)  # no SymPy counterparts: undefined functions of the same name
    s = exprc.to_sympy(r)
    assert "round(x)" in str(s) and "isnan(x)" in str(s)
    back = exprc.from_sympy(s, {x_: x})  # SymPy orders the terms its own way
    assert {n.op for n in exprc.FunctionGraph((), (back,)).nodes} == {n.op for n in exprc.FunctionGraph((), (r,)).nodes}
    d = np.array([0.4, 2.6, np.nan], np.float32)
    np.testing.assert_array_equal(exprc.function([x], back)(d), exprc.function([x], r)(d))
    z = exprc.vector("z", "float64")
    named = exprc.to_sympy(z + 1, symbols={z: sp.Symbol("zeta", positive=True)})
    assert named.free_symbols == {sp.Symbol("zeta", positive=True)}


def test_interop_errors():
    x = exprc.vector("x")
    with pytest.raises(TypeError, match="'sum' is not an elementwise op"):
        exprc.to_sympy(exprc.sum(x))
    with pytest.raises(TypeError, match="only scalar constants"):
        exprc.to_sympy(x + exprc.constant([1.0, 2.0]))
    with pytest.raises(KeyError, match="'y'"):
        exprc.from_sympy(x_ + y_, {x_: x})
    with pytest.raises(TypeError, match="besselj"):
        exprc.from_sympy(sp.besselj(0, x_), {x_: x})
    with pytest.raises(ValueError, match="not a real number"):
        exprc.from_sympy(x_ + sp.I, {x_: x})
    assert exprc.from_sympy(sp.Integer(3), {}).value == 3


def test_moderately_deep_sympy_expressions():
    # SymPy itself recurses on deep trees (it fails near depth 1000); exprc's side is iterative.
    x = exprc.scalar("x")
    e = x
    for i in range(120):
        e = exprc.sin(e) + 1.0 if i % 2 else exprc.cos(e)
    back = exprc.from_sympy(exprc.to_sympy(e), {x_: x})
    assert abs(exprc.function([x], back)(0.3) - exprc.function([x], e)(0.3)) < 1e-12


def test_deep_expressions_are_refused_by_to_sympy_with_the_depth_and_the_limit():
    # SymPy recursed (RecursionError from inside SymPy) on a 3,000-deep chain; now a clear error
    # before any SymPy call, naming the depth and the limit, which can be raised.
    x = exprc.scalar("x")
    e = x
    for i in range(3000):
        e = exprc.sin(e) if i % 2 else e * 0.5
    with pytest.raises(exprc.errors.ExprcError, match=r"3000 operations deep, more than max_depth=200"):
        exprc.to_sympy(e)
    shallow = x
    for _ in range(200):
        shallow = exprc.sin(shallow)
    back = exprc.from_sympy(exprc.to_sympy(shallow), {x_: x})  # at the limit: converts both ways
    assert abs(exprc.function([x], back)(0.3) - exprc.function([x], shallow)(0.3)) < 1e-12
    with pytest.raises(exprc.errors.ExprcError, match="more than max_depth=150"):
        exprc.to_sympy(shallow, max_depth=150)


# -- pickling ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_pickle_stores_the_graph_and_keeps_shared_variables_shared(backend):
    x = exprc.vector("x")
    w = exprc.shared(np.ones(3), "w")
    train = exprc.function([x], exprc.sum(w * x), updates=[(w, w + x)], backend=backend)
    predict = exprc.function([x], w * x, backend=backend)
    blob = pickle.dumps([train, predict])
    assert b"exprc-graph" in blob and b"\x7fELF" not in blob  # the JSON graph, not the binary
    train2, predict2 = pickle.loads(blob)
    assert train2.backend == backend and predict2.inputs[0].name == "x"
    train2(np.ones(3))
    np.testing.assert_array_equal(predict2(np.ones(3)), [2.0, 2.0, 2.0])  # one variable for both
    np.testing.assert_array_equal(predict(np.ones(3)), [1.0, 1.0, 1.0])  # the originals are untouched
    if backend == "c":
        assert train2.cache_path == train.cache_path  # unpickling hit the cache


def test_pickle_of_expressions_is_flat_and_keeps_inputs_and_shared_variables_shared():
    # Nodes pickled by pickle's default walk of their operands: a RecursionError near depth
    # 1,000 (and no node could be unpickled: Node.__new__ takes the op, operands, attributes).
    x = exprc.vector("x")
    w = exprc.shared(np.full(3, 0.5), "w")
    e = x
    for i in range(3000):
        e = exprc.sin(e) * 2.0 if i % 2 else e + w * x
    x2, e2, w2, small = pickle.loads(pickle.dumps((x, e, w, exprc.exp(x) - 1.0)))
    # one new input and one new shared variable per pickle, used by everything in it
    assert x2 is not x and x2.name == "x" and x2.type == x.type
    assert w2 is not w and isinstance(w2, exprc.SharedVariable)
    assert exprc.graph.graph_inputs([e2]) == [x2, w2] and exprc.graph.graph_inputs([small]) == [x2]
    assert e2.type == e.type and len(exprc.graph.toposort([e2])) == len(exprc.graph.toposort([e]))
    data = np.linspace(-1, 1, 3)
    np.testing.assert_array_equal(exprc.function([x2], e2, backend="numpy")(data),
                                  exprc.function([x], e, backend="numpy")(data))
    w2.set_value(np.zeros(3))
    np.testing.assert_array_equal(w.get_value(), np.full(3, 0.5))  # the original is untouched
    # constants and interior nodes are interned: rebuilt in the same process, the same nodes
    c = exprc.constant(np.arange(4.0)) * 2.0
    assert pickle.loads(pickle.dumps(c)) is c


def test_functions_work_in_spawned_processes():
    x = exprc.vector("x")
    f = exprc.function([x], exprc.softplus(x) * 2 - exprc.sum(x))
    data = [np.linspace(-3, 3, n) for n in (1, 5, 1000)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(f, data)
    for d, r in zip(data, results):
        np.testing.assert_allclose(r, f(d), rtol=1e-15)
