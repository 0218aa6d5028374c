"""Every op of the API evaluated against NumPy (values and dtypes)."""

import math
import warnings

import numpy as np
import pytest
from conftest import assert_close

import exprc
from exprc.ops import OPS

RNG = np.random.default_rng(0)
X = RNG.uniform(-2, 2, size=(3, 4))
POS = RNG.uniform(0.1, 3, size=(3, 4))
UNIT = RNG.uniform(-0.9, 0.9, size=(3, 4))
SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, -2.5, 0.5])

UNARY = [  # name, data
    ("exp", X), ("exp2", X), ("expm1", X), ("log", POS), ("log2", POS), ("log10", POS), ("log1p", POS),
    ("sqrt", POS), ("cbrt", X), ("square", X), ("reciprocal", POS), ("sin", X), ("cos", X), ("tan", X),
    ("arcsin", UNIT), ("arccos", UNIT), ("arctan", X), ("sinh", X), ("cosh", X), ("tanh", X), ("arcsinh", X),
    ("arccosh", POS + 1), ("arctanh", UNIT), ("floor", X), ("ceil", X), ("round", X), ("sign", X),
    ("abs", X), ("negative", X), ("isnan", SPECIAL), ("isinf", SPECIAL), ("isfinite", SPECIAL),
]


@pytest.mark.parametrize("name,data", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unary_against_numpy(name, data, dtype):
    data = data.astype(dtype)
    x = exprc.tensor("x", dtype, ndim=data.ndim)
    ref = np.round if name == "round" else getattr(np, name)
    assert_close(getattr(exprc, name)(x).eval({x: data}), ref(data))
    v = exprc.vector("v", dtype)
    with np.errstate(all="ignore"):
        assert_close(getattr(exprc, name)(v).eval({v: SPECIAL.astype(dtype)}), ref(SPECIAL.astype(dtype)))


@pytest.mark.parametrize("name", ["abs", "negative", "square", "sign", "floor", "ceil", "round", "exp", "sqrt"])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_unary_on_ints(name, dtype):
    data = np.array([-3, -1, 0, 2, 5], dtype=dtype)
    x = exprc.vector("x", dtype)
    ref = np.round if name == "round" else getattr(np, name)
    with np.errstate(all="ignore"):
        assert_close(getattr(exprc, name)(x).eval({x: data}), ref(data))


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_sum_err_is_the_exact_rounding_error(backend, dtype):
    """two_sum_err(a, b) = (a + b) - fl(a + b) exactly (checked with fractions), at every magnitude;
    NaN where a + b is not finite."""
    from fractions import Fraction

    rng = np.random.default_rng(9)
    big = 1e30 if dtype == "float32" else 1e300
    a = (rng.choice([-1, 1], 400) * np.exp(rng.uniform(-60, np.log(big), 400))).astype(dtype)
    b = (rng.choice([-1, 1], 400) * np.exp(rng.uniform(-60, np.log(big), 400))).astype(dtype)
    x, y = exprc.vector("x", dtype), exprc.vector("y", dtype)
    f = exprc.function([x, y], exprc.api._apply("two_sum_err", x, y), backend=backend)
    got = f(a, b)
    assert got.dtype == dtype
    for u, v, e in zip(a, b, got):
        s = u + v
        if np.isfinite(s):
            assert Fraction(float(u)) + Fraction(float(v)) - Fraction(float(s)) == Fraction(float(e))
    inf = np.array([np.inf, -np.inf, np.nan, np.finfo(dtype).max], dtype)
    with np.errstate(all="ignore"):
        assert np.isnan(f(inf, np.array([1.0, 1.0, 1.0, np.finfo(dtype).max], dtype))).all()


def _products(dtype: str, n: int = 400, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of every sign whose product is a normal number, over magnitudes up to near the largest."""
    rng = np.random.default_rng(seed)
    big = np.log(1e18 if dtype == "float32" else 1e150)
    a = rng.choice([-1, 1], n) * np.exp(rng.uniform(-big / 2, big, n))
    b = rng.choice([-1, 1], n) * np.exp(rng.uniform(-big / 2, big, n)) / np.abs(a) ** rng.uniform(0, 1, n)
    return a.astype(dtype), b.astype(dtype)


def _exact_product_errors(a: np.ndarray, b: np.ndarray, got: np.ndarray) -> None:
    from fractions import Fraction

    tiny = np.finfo(a.dtype).tiny
    for u, v, e in zip(a, b, got):
        p = u * v
        if np.isfinite(p) and abs(p) > tiny * 2.0**60:  # (no part of the error below the normal range)
            assert Fraction(float(u)) * Fraction(float(v)) - Fraction(float(p)) == Fraction(float(e)), (u, v)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_prod_err_is_the_exact_rounding_error(backend, dtype):
    """two_prod_err(a, b) = a b - fl(a b) exactly (checked with fractions) wherever the product is
    finite and its error normal: one fma in C (FMA3), Dekker's product in NumPy (float32: in
    float64); a square (two_prod_err(x, x): the Gaussian's exp(-x**2/2)) too."""
    a, b = _products(dtype)
    x, y = exprc.vector("x", dtype), exprc.vector("y", dtype)
    f = exprc.function([x, y], [exprc.api._apply("two_prod_err", x, y), exprc.api._apply("two_prod_err", x, x)],
                       backend=backend)
    got, sq = f(a, b)
    assert got.dtype == dtype and sq.dtype == dtype
    _exact_product_errors(a, b, got)
    _exact_product_errors(a, a, sq)
    assert (sq[np.abs(a) < 1] == OPS["two_prod_err"].impl(a, a)[np.abs(a) < 1]).all()
    # Factors over the whole range (a huge one beside a tiny one: Veltkamp's split of 1e305 overflows;
    # the NumPy op splits the significands).  C's fallback without FMA splits the factors themselves:
    # there the pairs whose splits stay finite.
    info = np.finfo(dtype)
    r = np.random.default_rng(3)
    low, high = np.log(float(info.smallest_subnormal)), np.log(float(info.max)) - 1e-3
    a, b = (np.exp(r.uniform(low, high, 3000)) * r.choice([-1, 1], 3000) for _ in range(2))
    huge, tiny = (1e305, 1e-300) if dtype == "float64" else (1e38, 1e-37)
    a, b = np.append([huge, tiny], a).astype(dtype), np.append([tiny, huge], b).astype(dtype)
    split_ok = (np.abs(a) < 2.0 ** (info.maxexp - 28)) & (np.abs(b) < 2.0 ** (info.maxexp - 28))
    keep = split_ok | (backend == "numpy")
    with np.errstate(all="ignore"):
        got = f(a, b)[0]
        _exact_product_errors(a[keep], b[keep], got[keep])
        assert (np.isfinite(a * b) & ~split_ok).sum() > 20  # (the pairs the split alone would lose)


def test_two_prod_err_without_fma_is_dekkers_product():
    """The C helper where the target has no FMA (Veltkamp's split, Dekker's product), compiled with
    -mno-fma, and with -mfma (one fma): the exact error, each bit for bit the other's and NumPy's."""
    import ctypes
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("a C compiler is needed")
    header = Path(exprc.__file__).parent / "backends" / "c" / "templates" / "numpy_semantics.h"
    src = ("#include <math.h>\n#include <stdint.h>\n#define EXPRC_INLINE static inline\n" + header.read_text()
           + "\nvoid run(const double *a, const double *b, double *out, const float *fa, const float *fb,"
           " float *fout, int64_t n) {\n    for (int64_t i = 0; i < n; i++) {\n"
           "        out[i] = exprc_two_prod_err(a[i], b[i]); fout[i] = exprc_two_prod_errf(fa[i], fb[i]);\n    }\n}\n")
    a, b = _products("float64", 2000, 4)
    fa, fb = _products("float32", 2000, 5)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for flag in ("-mno-fma", "-mfma"):
            lib = Path(tmp) / f"t{flag}.so"
            r = subprocess.run([cc, "-O2", "-std=c99", "-fPIC", "-shared", flag, "-x", "c", "-", "-o", str(lib), "-lm"],
                               input=src, capture_output=True, text=True, check=False)
            if r.returncode:
                pytest.skip(f"{cc} {flag}: {r.stderr[-300:]}")
            out, fout = np.empty_like(a), np.empty_like(fa)
            ptr = [np.ctypeslib.as_ctypes(v) for v in (a, b, out, fa, fb, fout)]
            ctypes.CDLL(str(lib)).run(*ptr, ctypes.c_int64(len(a)))
            _exact_product_errors(a, b, out)
            _exact_product_errors(fa, fb, fout)
            results.append((out, fout))
    ok64 = np.isfinite(a * b) & (np.abs(a * b) > np.finfo(np.float64).tiny * 2.0**60)
    ok32 = np.isfinite(fa * fb) & (np.abs(fa * fb) > np.finfo(np.float32).tiny * 2.0**60)
    assert ok64.sum() > 1500 and ok32.sum() > 1500
    for out, fout in results:
        np.testing.assert_array_equal(out[ok64], OPS["two_prod_err"].impl(a, b)[ok64])
        np.testing.assert_array_equal(fout[ok32], OPS["two_prod_err"].impl(fa, fb)[ok32])


def test_two_prod_err_on_special_empty_strided_and_deep_graphs():
    """NaN, +-inf, -0.0 and 0 operands as the C helper's fma gives them, in both backends; empty and
    strided operands; a chain 3000 nodes deep (each link the error of the previous link's product
    with an input, plus an input) compiles and runs, against the NumPy op link by link."""
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.api._apply("two_prod_err", x, y)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, 1e308])
    a, b = np.repeat(special, len(special)), np.tile(special, len(special))
    with np.errstate(all="ignore"):
        got = [exprc.function([x, y], e, backend=be)(a, b) for be in ("c", "numpy")]
    np.testing.assert_array_equal(got[0], got[1])
    assert np.isnan(got[0][np.isnan(a) | np.isnan(b) | np.isinf(a) | np.isinf(b)]).all()
    _check_empty_strided_and_deep("two_prod_err", 5, 6)


def test_two_sum_err_on_empty_strided_and_deep_graphs():
    """Empty and strided operands against the NumPy reference; a chain 6000 nodes deep compiles and runs, each link the
    exact rounding error of the previous one plus an input.  exclude=("stability",): the depth is the
    point, and optimizing this chain of sums with the stability rules takes minutes.  gcc took 4
    minutes on it as one fused loop; fusion cuts it into kernels of at most MAX_BODY nodes now (8 s
    with an empty cache)."""
    _check_empty_strided_and_deep("two_sum_err", 3, 4)


def _check_empty_strided_and_deep(op: str, seed_a: int, seed_b: int) -> None:
    """``op(x, y)`` on empty operands and strided ones against the NumPy op; a chain 3000 links deep,
    ``op(previous, y) + x``, compiled and run against the NumPy op link by link."""
    x, y = exprc.vector("x"), exprc.vector("y")
    f = exprc.function([x, y], exprc.api._apply(op, x, y))
    assert f(np.zeros(0), np.zeros(0)).shape == (0,)
    a = np.random.default_rng(seed_a).standard_normal(4000) * 1e8
    b = np.random.default_rng(seed_b).standard_normal(4000)
    np.testing.assert_array_equal(f(a[::4], b[1::4]), OPS[op].impl(a[::4], b[1::4]))
    e = x
    for _ in range(3000):
        e = exprc.api._apply(op, e, y) + x
    g = exprc.function([x, y], e, exclude=("stability",))
    want = a[:8]
    for _ in range(3000):
        want = OPS[op].impl(want, b[:8]) + a[:8]
    np.testing.assert_array_equal(g(a[:8], b[:8]), want)


def test_special_functions_against_scipy():
    special = pytest.importorskip("scipy.special")
    x = exprc.vector("x")
    data = np.concatenate([np.linspace(-40, 40, 81), [0.0, -0.0, np.inf, -np.inf, np.nan, 800.0, -800.0]])
    assert_close(exprc.erf(x).eval({x: data}), special.erf(data), ulps=4)
    assert_close(exprc.erfc(x).eval({x: data}), special.erfc(data), ulps=4)
    assert_close(exprc.sigmoid(x).eval({x: data}), special.expit(data), ulps=4)
    assert_close(exprc.softplus(x).eval({x: data}), np.logaddexp(0, data), ulps=4)
    x32 = exprc.vector("x", "float32")
    d32 = data.astype(np.float32)
    assert_close(exprc.sigmoid(x32).eval({x32: d32}), special.expit(d32), ulps=4)
    assert_close(exprc.erf(x32).eval({x32: d32}), special.erf(d32).astype(np.float32), ulps=4)


def test_erfcx_against_mpmath_on_both_backends():
    """erfcx(x) = exp(x*x) erfc(x): within 2 bits where it is finite (the definition overflows to inf*0
    from x = 26.6; erfcx is ~1/(x sqrt(pi)) up to 1.8e308), inf below -26.64, NaN kept; float32 is the
    float64 value rounded."""
    from exprc.accuracy import bits_lost, reference

    rng = np.random.default_rng(3)
    data = np.concatenate([np.linspace(-26.6, 40, 400), 10 ** rng.uniform(-300, 308, 200), -(10 ** rng.uniform(-300, 1.4, 100)),
                           [0.0, -0.0, 9.999999999999998, 10.0, 26.5, 27.0, 1e154, 1.7976931348623157e308]])
    ref = reference(lambda m, x: m.erfcx(x), [data])
    x = exprc.vector("x")
    special = np.array([np.inf, -np.inf, np.nan, -26.7, -27.0, -1e300])
    for backend in ("numpy", "c"):
        f = exprc.function([x], exprc.erfcx(x), backend=backend)
        assert bits_lost(f(data), ref).max() <= 2
        got = f(special)
        assert got[0] == 0.0 and np.isposinf(got[1]) and np.isnan(got[2]) and np.isposinf(got[3:]).all()
        x32 = exprc.vector("x", "float32")
        d32 = data[np.abs(data) < 3e38].astype(np.float32)
        g = exprc.function([x32], exprc.erfcx(x32), backend=backend)
        with np.errstate(over="ignore"):  # (erfcx(-10) overflows float32)
            want = f(d32.astype(np.float64)).astype(np.float32)
        assert g(d32).dtype == np.float32
        assert_close(g(d32), want, ulps=1)


BINARY = [
    ("add", lambda a, b: a + b), ("subtract", lambda a, b: a - b), ("multiply", lambda a, b: a * b),
    ("true_divide", lambda a, b: a / b), ("floor_divide", lambda a, b: a // b), ("mod", lambda a, b: a % b),
    ("power", lambda a, b: a ** b), ("maximum", np.maximum), ("minimum", np.minimum), ("arctan2", np.arctan2),
    ("hypot", np.hypot), ("logaddexp", np.logaddexp), ("less", lambda a, b: a < b),
    ("less_equal", lambda a, b: a <= b), ("greater", lambda a, b: a > b), ("greater_equal", lambda a, b: a >= b),
    ("equal", np.equal), ("not_equal", np.not_equal),
]


@pytest.mark.parametrize("name,ref", BINARY, ids=[b[0] for b in BINARY])
def test_binary_functions_and_operators_broadcast(name, ref):
    a = exprc.matrix("a", shape=(None, 4))
    b = exprc.tensor("b", ndim=1)
    av, bv = np.abs(X) + 0.5, np.append(SPECIAL[:3], 2.0)
    with np.errstate(all="ignore"):
        expected = ref(av, bv)
        assert_close(getattr(exprc, name)(a, b).eval({a: av, b: bv}), expected)
        if not isinstance(ref, np.ufunc):
            assert_close(ref(a, b).eval({a: av, b: bv}), expected)  # operators
            assert_close(ref(2.0, b).eval({b: bv}), ref(2.0, bv))  # reflected operators
            assert_close(ref(av, b).eval({b: bv}), expected)  # ndarray on the left defers to the node


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_division_and_modulo_follow_numpy(dtype):
    a, b = exprc.vector("a", dtype), exprc.vector("b", dtype)
    av = np.array([7, -7, 7, -7, 0, 5], dtype)
    bv = np.array([2, 2, -2, -2, 3, 0], dtype)
    with np.errstate(all="ignore"):
        for fn in (lambda x, y: x // y, lambda x, y: x % y, lambda x, y: x ** abs(y), lambda x, y: x / y):
            assert_close(fn(a, b).eval({a: av, b: bv}), fn(av, bv))


def test_logical_operators_on_bools():
    p, q = exprc.vector("p", "bool"), exprc.vector("q", "bool")
    pv, qv = np.array([True, True, False, False]), np.array([True, False, True, False])
    env = {p: pv, q: qv}
    assert_close((p & q).eval(env), pv & qv)
    assert_close((p | q).eval(env), pv | qv)
    assert_close((p ^ q).eval(env), pv ^ qv)
    assert_close((~p).eval(env), ~pv)
    assert_close(exprc.logical_not(p).eval(env), np.logical_not(pv))
    i = exprc.vector("i", "int32")
    assert_close((~i).eval({i: np.array([0, 5, -3], np.int32)}), ~np.array([0, 5, -3], np.int32))


def test_where_clip_minimum_maximum_nan():
    x = exprc.vector("x", "float32")
    d = SPECIAL.astype(np.float32)
    env = {x: d}
    assert_close(exprc.where(x > 0, x, 0.0).eval(env), np.where(d > 0, d, np.float32(0)))
    assert_close(exprc.where(x > 0, 1, 2.5).eval(env), np.where(d > 0, 1, 2.5))
    assert_close(exprc.clip(x, -1.0, 1.0).eval(env), np.clip(d, -1.0, 1.0))
    assert_close(x.clip(0, None).eval(env), np.clip(d, 0, None))
    assert_close(exprc.maximum(x, 0.0).eval(env), np.maximum(d, np.float32(0)))
    assert_close(exprc.minimum(x, 0.0).eval(env), np.minimum(d, np.float32(0)))


REDUCTIONS = ["sum", "prod", "mean", "max", "min", "var", "std", "all", "any"]
AXES = [None, 0, 1, -1, (0, 2), (0, 1, 2), ()]


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, axis, keepdims):
    data = RNG.uniform(-1, 1, size=(2, 3, 4))
    data[0, 1, 2] = 0.0
    x = exprc.tensor3("x")
    expected = getattr(np, name)(data, axis=axis, keepdims=keepdims)
    assert_close(getattr(exprc, name)(x, axis=axis, keepdims=keepdims).eval({x: data}), expected)
    assert_close(getattr(x, name)(axis=axis, keepdims=keepdims).eval({x: data}), expected)


@pytest.mark.parametrize("dtype", ["bool", "int32", "int64", "float32"])
@pytest.mark.parametrize("name", ["sum", "prod", "mean", "max", "min", "argmax", "argmin", "all", "any", "var"])
def test_reductions_per_dtype(dtype, name):
    data = (np.arange(12).reshape(3, 4) % 5 - 2).astype(dtype)
    x = exprc.matrix("x", dtype)
    for axis in (None, 0, 1):
        assert_close(getattr(exprc, name)(x, axis=axis).eval({x: data}), getattr(np, name)(data, axis=axis))


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_integer_mean_accumulates_in_float64(backend):
    """NumPy's mean of ints and bools sums in float64: an int64 accumulator wraps (issue 13)."""
    big = np.array([2**62] * 3 + [1], dtype=np.int64)
    rows = np.stack([big, big[::-1], -big]).astype(np.int64)
    x, m = exprc.vector("x", "int64"), exprc.matrix("m", "int64")
    f = exprc.function([x, m], [exprc.mean(x), exprc.mean(m, axis=1), exprc.mean(m, axis=0), exprc.mean(m)],
                       backend=backend)
    for got, want in zip(f(big, rows), [big.mean(), rows.mean(axis=1), rows.mean(axis=0), rows.mean()]):
        assert_close(got, want)
    assert float(f(big, rows)[0]) > 0
    i32, b = exprc.vector("i", "int32"), exprc.vector("b", "bool")
    top = np.full(5, np.iinfo(np.int32).max, dtype=np.int32)
    g = exprc.function([i32, b], [exprc.mean(i32), exprc.mean(b)], backend=backend)
    got = g(top, np.array([True, False, True]))
    assert_close(got[0], top.mean())
    assert_close(got[1], np.array([True, False, True]).mean())


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(axis, keepdims):
    data = np.array([[1.0, 5.0, 5.0], [7.0, -1.0, 7.0]])
    x = exprc.matrix("x")
    for name in ("argmax", "argmin"):
        got = getattr(exprc, name)(x, axis=axis, keepdims=keepdims).eval({x: data})
        assert_close(got, getattr(np, name)(data, axis=axis, keepdims=keepdims))


def test_logsumexp_softmax_log_softmax():
    special = pytest.importorskip("scipy.special")
    x = exprc.matrix("x")
    data = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0], [-np.inf, -np.inf, -np.inf]])
    with np.errstate(all="ignore"):
        for axis in (None, 0, 1, (0, 1)):
            for kd in (False, True):
                assert_close(exprc.logsumexp(x, axis=axis, keepdims=kd).eval({x: data}),
                             special.logsumexp(data, axis=axis, keepdims=kd), ulps=4)
        ok = data[:2]
        assert_close(exprc.softmax(x).eval({x: ok}), special.softmax(ok, axis=-1), ulps=4)
        assert_close(exprc.softmax(x, axis=0).eval({x: ok}), special.softmax(ok, axis=0), ulps=4)
        assert_close(exprc.log_softmax(x).eval({x: ok}), special.log_softmax(ok, axis=-1), ulps=4)
        assert_close(exprc.log_softmax(x, axis=0).eval({x: ok}), special.log_softmax(ok, axis=0), ulps=4)


def test_var_std_ddof():
    x = exprc.matrix("x")
    for ddof in (0, 1):
        assert_close(exprc.var(x, axis=1, ddof=ddof).eval({x: X}), np.var(X, axis=1, ddof=ddof))
        assert_close(exprc.std(x, ddof=ddof).eval({x: X}), np.std(X, ddof=ddof))



@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic_n", "static_n"])
def test_var_std_ddof_at_least_n_follow_numpy(backend, static):
    """NumPy divides by max(n - ddof, 0): NaN (0/0) or inf, never -0.0 or a negative variance."""
    data = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    x = exprc.matrix("x", shape=data.shape if static else (None, None))
    for ddof in (2, 3, 4, 7):
        outs = [exprc.var(x, ddof=ddof), exprc.std(x, ddof=ddof), exprc.var(x, axis=1, ddof=ddof),
                exprc.std(x, axis=0, ddof=ddof), exprc.var(x.astype("float32"), axis=1, ddof=ddof)]
        f = exprc.function([x], outs, backend=backend)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "Degrees of freedom <= 0"
            want = [np.var(data, ddof=ddof), np.std(data, ddof=ddof), np.var(data, axis=1, ddof=ddof),
                    np.std(data, axis=0, ddof=ddof), np.var(data.astype(np.float32), axis=1, ddof=ddof)]
        for got, w in zip(f(data), want):
            assert_close(got, w)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(w))

@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)), ((), (3,))])
def test_dot_and_matmul(sa, sb):
    av, bv = RNG.uniform(-1, 1, sa), RNG.uniform(-1, 1, sb)
    a, b = exprc.tensor("a", ndim=len(sa)), exprc.tensor("b", ndim=len(sb))
    assert_close(exprc.dot(a, b).eval({a: av, b: bv}), np.asarray(np.dot(av, bv)))
    assert_close(a.dot(b).eval({a: av, b: bv}), np.asarray(np.dot(av, bv)))
    if sa and sb:
        assert_close((a @ b).eval({a: av, b: bv}), av @ bv)
        assert_close(exprc.matmul(a, b).eval({a: av, b: bv}), np.matmul(av, bv))


def test_batched_matmul_and_int_dot():
    a, b = exprc.tensor3("a"), exprc.matrix("b")
    av, bv = RNG.uniform(size=(2, 3, 4)), RNG.uniform(size=(4, 5))
    assert_close((a @ b).eval({a: av, b: bv}), av @ bv)
    i, j = exprc.matrix("i", "int32"), exprc.vector("j", "int64")
    iv, jv = np.arange(6, dtype=np.int32).reshape(2, 3), np.array([1, -2, 3])
    assert_close(exprc.dot(i, j).eval({i: iv, j: jv}), np.dot(iv, jv))


def test_shape_ops():
    data = np.arange(24.0).reshape(2, 3, 4)
    x = exprc.tensor3("x")
    env = {x: data}
    assert_close(exprc.reshape(x, (6, 4)).eval(env), data.reshape(6, 4))
    assert_close(x.reshape(4, -1).eval(env), data.reshape(4, -1))
    assert_close(exprc.transpose(x).eval(env), data.transpose())
    assert_close(exprc.transpose(x, (1, 0, 2)).eval(env), data.transpose(1, 0, 2))
    assert_close(x.transpose(2, 0, 1).eval(env), data.transpose(2, 0, 1))
    assert_close(x.T.eval(env), data.T)
    assert_close(exprc.expand_dims(x, 1).eval(env), np.expand_dims(data, 1))
    assert_close(exprc.expand_dims(x, (0, -1)).eval(env), np.expand_dims(data, (0, -1)))
    assert_close(exprc.flatten(x).eval(env), data.reshape(-1))
    y = exprc.tensor("y", shape=(2, 1, 4))
    yd = data[:, :1, :]
    assert_close(exprc.squeeze(y).eval({y: yd}), np.squeeze(yd))
    assert_close(exprc.squeeze(y, 1).eval({y: yd}), np.squeeze(yd, 1))
    assert_close(exprc.squeeze(x[:, :1], 1).eval(env), np.squeeze(data[:, :1], 1))
    assert_close(exprc.broadcast_to(y, (3, 2, 5, 4)).eval({y: yd}), np.broadcast_to(yd, (3, 2, 5, 4)))
    assert_close(exprc.concatenate([x, x * 2], axis=1).eval(env), np.concatenate([data, data * 2], axis=1))
    assert_close(exprc.concatenate([x, x], axis=-1).eval(env), np.concatenate([data, data], axis=-1))
    assert_close(exprc.stack([x, x + 1], axis=0).eval(env), np.stack([data, data + 1], axis=0))
    assert_close(exprc.stack([x, x + 1], axis=-1).eval(env), np.stack([data, data + 1], axis=-1))


def test_squeeze_of_unknown_size_is_checked_at_call_time():
    m = exprc.matrix("m")
    t = exprc.tensor3("t")
    assert_close(exprc.squeeze(t, 1).eval({t: np.ones((2, 1, 3))}), np.ones((2, 3)))
    with pytest.raises(ValueError, match="size is not 1"):
        exprc.squeeze(m, 0).eval({m: np.ones((3, 4))})


@pytest.mark.parametrize("key", [
    0, -1, slice(1, None), slice(None, None, -1), (0, 1), (slice(None), 2), (Ellipsis, 1), (None, 0),
    (1, None, slice(0, 3, 2)), (Ellipsis,), (slice(None), None, Ellipsis), (0, 1, 2), (-2, Ellipsis, slice(-3, -1)),
], ids=str)
def test_basic_indexing(key):
    data = np.arange(24.0).reshape(2, 3, 4)
    x = exprc.tensor3("x")
    assert_close(x[key].eval({x: data}), np.asarray(data[key]))


def test_symbolic_shape_and_attributes():
    x = exprc.matrix("x", "int32")
    s = x.shape
    assert isinstance(s, exprc.Node) and s.dtype == "int64" and s.ndim == 1
    data = np.zeros((3, 5), np.int32)
    assert_close(s.eval({x: data}), np.array(data.shape))
    assert_close(x.shape[1].eval({x: data}), np.int64(5))
    assert_close(exprc.shape(x).eval({x: data}), np.array([3, 5]))
    assert x.ndim == 2 and x.dtype == "int32"
    static = exprc.matrix("s", shape=(2, 7))
    assert static.shape.is_constant and list(static.shape.value) == [2, 7]
    y = exprc.vector("y")
    assert_close((y / y.shape[0]).eval({y: np.ones(4)}), np.ones(4) / 4)


def test_methods():
    x = exprc.matrix("x")
    env = {x: X}
    assert_close(x.sum(axis=0).eval(env), X.sum(axis=0))
    assert_close(x.max().eval(env), X.max())
    assert_close(x.min(axis=1).eval(env), X.min(axis=1))
    assert_close(x.mean().eval(env), X.mean())
    assert_close(x.prod(axis=1).eval(env), X.prod(axis=1))
    assert_close(x.argmax(axis=1).eval(env), X.argmax(axis=1))
    assert_close(x.std().eval(env), X.std())
    assert_close(x.var(axis=0).eval(env), X.var(axis=0))
    assert_close((x > 0).all(axis=1).eval(env), (X > 0).all(axis=1))
    assert_close((x > 0).any().eval(env), (X > 0).any())
    assert_close(abs(x).eval(env), abs(X))
    assert_close((-x).eval(env), -X)
    assert_close((+x).eval(env), +X)
    assert_close(x.astype("float32").eval(env), X.astype(np.float32))
    assert_close(x.flatten().eval(env), X.flatten())
    assert_close(x.squeeze().eval(env), X)


def test_constants_and_arithmetic_on_them():
    c = exprc.constant([1, 2, 3])
    assert c.dtype == "int64"
    assert_close((c * 2).eval(), np.array([1, 2, 3]) * 2)
    assert exprc.constant(1.5, "float32").dtype == "float32"
    assert exprc.constant(np.float32(1.5)).dtype == "float32"
    assert exprc.constant(True).dtype == "bool"
    assert_close(exprc.exp(exprc.constant(1.0)).eval(), np.exp(np.float64(1.0)))
    assert math.isclose(float((exprc.constant(2.0) ** 0.5).eval()), math.sqrt(2.0))
    assert_close((np.float32(2.0) * exprc.vector("v", "float32")).eval({"v": np.ones(2, np.float32)}),
                 np.full(2, 2.0, np.float32))


# -- facts declared next to the rows ------------------------------------------------------------
DTYPES = ["bool", "int32", "int64", "float32", "float64"]


def _samples(dtype):
    if dtype == "bool":
        return np.array([False, True])
    if dtype.startswith("int"):
        info = np.iinfo(dtype)
        return np.array([info.min, -3, 0, 7, info.max], dtype=dtype)
    return np.array([-np.inf, -2.5, -0.0, 0.0, 1.5, np.inf], dtype=dtype)


@pytest.mark.parametrize("op", sorted(exprc.ops.REDUCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduction_identity_is_the_identity_of_its_combine(op, dtype):
    from exprc.ops import OPS, REDUCTIONS

    red = REDUCTIONS[op]
    assert OPS[op].kind == "reduce" and OPS[red.combine].kind == "elemwise"
    acc = red.accumulator(dtype)
    assert np.can_cast(dtype, acc) if red.accumulate != "flag" else acc == "bool"
    x = _samples(dtype).astype(acc) if red.accumulate != "flag" else _samples(dtype) != 0
    e = np.asarray(red.identity(dtype), dtype=acc)
    got = OPS[red.combine].impl(e, x)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(OPS[red.combine].impl(x, e), x)


def test_reduction_facts_spelled_in_c():
    from exprc.ops import REDUCTIONS

    spelled = {(op, dt): REDUCTIONS[op].c_identity(dt) for op in REDUCTIONS for dt in DTYPES}
    assert spelled["max", "float32"] == "-INFINITY" and spelled["min", "float64"] == "INFINITY"
    assert spelled["max", "int32"] == "INT32_MIN" and spelled["min", "int64"] == "INT64_MAX"
    assert spelled["max", "bool"] == "0" and spelled["min", "bool"] == "1"
    assert spelled["sum", "float32"] == "0" and spelled["prod", "int32"] == "1"
    assert spelled["all", "float64"] == "1" and spelled["any", "int64"] == "0"
    assert REDUCTIONS["sum"].accumulator("float32") == "float64"  # float32 sums accumulate in double
    assert REDUCTIONS["mean"].mean and not REDUCTIONS["sum"].mean
    assert {REDUCTIONS["mean"].accumulator(dt) for dt in DTYPES} == {"float64"}  # NumPy's mean of ints
    assert [op for op in REDUCTIONS if REDUCTIONS[op].tracks_nan("float64")] == ["max", "min"]
    assert not REDUCTIONS["max"].tracks_nan("int64")


def test_every_node_carries_the_attributes_its_row_declares():
    from exprc.graph import toposort
    from exprc.ops import OPS

    x, m = exprc.vector("x"), exprc.matrix("m")
    outs = [exprc.sum(m, axis=0), exprc.argmax(m, axis=1), m.astype("float32"), m.T, m.reshape(-1),
            exprc.broadcast_to(exprc.vector("b", shape=(4,)), (3, 4)),
            exprc.concatenate([x, x]), m[1:, 0], exprc.stack([x, x]), m.shape]
    outs += exprc.grad(exprc.sum(exprc.concatenate([x, x])[1:] * m[0, :].sum()), [x, m])
    seen = set()
    for n in toposort(outs):
        names = {k for k, _ in n.attrs}
        assert set(OPS[n.op].attr_names) <= names <= set(OPS[n.op].attr_names) | set(OPS[n.op].optional_attrs), n.op
        seen.add(n.op)
    assert {"sum", "argmax", "cast", "dimshuffle", "reshape", "broadcast_to", "concatenate", "getitem",
            "inc_subtensor", "input", "constant"} <= seen
    with_attrs = {name for name, row in OPS.items() if row.attr_names}
    assert {"cast", "dimshuffle", "split_part", "sum", "argmin"} <= with_attrs
    assert "add" not in with_attrs and "matmul" not in with_attrs
    assert {name for name, row in OPS.items() if row.optional_attrs} == {"max", "min"}


# -- where the C and reference backends must agree, and where exprc deliberately differs from NumPy ---------
# (README, "Deviations from NumPy"; issue 13)
BACKENDS = ["c", "numpy"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_to_negative_integer_power(backend, dtype):
    """A negative constant exponent is refused when the graph is built (NumPy raises ValueError at
    call time; a native kernel has no way to raise).  Exponents only known at call time give C's
    truncated integer result on every backend: 1 for base 1, +-1 for base -1, else 0."""
    x, y = exprc.vector("x", dtype), exprc.vector("y", dtype)
    for exponent in (-1, np.array([2, -3], dtype=dtype)):
        with pytest.raises(exprc.errors.DTypeError, match=r"pow: .*negative"):
            x ** exponent
    with pytest.raises(exprc.errors.DTypeError, match=r"pow: .*negative"):
        exprc.power(exprc.constant(np.array([2, 3], dtype=dtype)), -2)
    assert_close((x ** -1.0).eval({x: np.array([2], dtype=dtype)}), np.array([0.5]))  # float exponent: fine
    base = np.array([1, -1, -1, 0, 2, -3, 7, 3, -2], dtype=dtype)
    expo = np.array([-5, -1, -2, -1, -1, -2, 0, 3, 5], dtype=dtype)
    got = exprc.function([x, y], x ** y, backend=backend)(base, expo)
    assert_close(got, np.array([1, -1, 1, 0, 0, 0, 1, 27, -32], dtype=dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sign_of_zeros_and_nan_follows_numpy(backend, dtype):
    data = np.array([-0.0, 0.0, np.nan, -np.nan, -2.0, 3.0, -np.inf, np.inf, 1e-310], dtype=dtype)
    x = exprc.vector("x", dtype)
    got = exprc.function([x], exprc.sign(x), backend=backend)(data)
    assert_close(got, np.sign(data))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(np.sign(data)))  # sign(-0.0) is +0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["floor", "ceil", "round"])
@pytest.mark.parametrize("dtype", ["bool", "int32", "int64"])
def test_rounding_bools_and_ints_is_the_identity(backend, name, dtype):
    """floor/ceil/round of bools and ints return the operand unchanged, in its dtype, on every backend
    and whatever the NumPy version (np.floor(bool) is float16 before NumPy 2.3, np.rint(int) float64)."""
    from exprc.ops import OPS

    data = np.array([True, False, True]) if dtype == "bool" else np.array([-3, 0, 2**31 - 1], dtype=dtype)
    x = exprc.vector("x", dtype)
    if name == "round" and dtype == "bool":
        with pytest.raises(exprc.errors.DTypeError):
            exprc.round(x)
        return
    got = exprc.function([x], getattr(exprc, name)(x), backend=backend)(data)
    assert_close(got, data)
    ref = OPS[name].impl(data)  # the reference row itself (constant folding uses it too)
    assert ref.dtype == data.dtype and np.array_equal(ref, data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_sum_prod_mean_accumulate_in_float64(backend):
    """Deliberate deviation: float32 sum/prod/mean keep their running value in float64 and round once
    (NumPy keeps float32).  The float32 product of 10,000 numbers near 1 whose exact product is
    1.2e-200 is 0 here; NumPy's float32 product stalls at the smallest subnormal, 1e-45."""
    a = np.random.default_rng(0).uniform(0.5, 1.5, 10_000).astype(np.float32)
    x, m = exprc.vector("x", "float32"), exprc.matrix("m", "float32")
    f = exprc.function([x, m], [exprc.prod(x), exprc.sum(x), exprc.mean(x), exprc.prod(m, axis=1)],
                       backend=backend)
    rows = a.reshape(4, -1)
    wide = a.astype(np.float64)
    got = f(a, rows)
    assert np.prod(a) > 0 and got[0] == 0  # NumPy: 1e-45; the float64 product rounds to 0 in float32
    assert_close(got[0], np.float32(np.prod(wide)))
    assert_close(got[1], np.float32(np.sum(wide)), ulps=1)
    assert_close(got[2], np.float32(np.mean(wide)), ulps=1)
    assert_close(got[3], np.prod(rows.astype(np.float64), axis=1).astype(np.float32), ulps=1)
