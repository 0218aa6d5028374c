"""Dtypes and NumPy 2 (NEP 50) promotion: every op's result dtype against NumPy's."""

import itertools
import warnings

import numpy as np
import pytest

import exprc
from exprc.errors import DTypeError
from exprc.types import DTYPES, TensorType, as_dtype, broadcast_shapes, normalize_axis, promote


def _words(text):
    return text.split()


UNARY = _words("exp exp2 expm1 log log2 log10 log1p sqrt cbrt square reciprocal sin cos tan arcsin arccos arctan sinh "
         "cosh tanh arcsinh arccosh arctanh floor ceil round sign abs isnan isinf isfinite negative invert")
BINARY = _words("add subtract multiply true_divide floor_divide mod power maximum minimum arctan2 hypot logaddexp less "
          "less_equal greater greater_equal equal not_equal bitwise_and bitwise_or bitwise_xor")
FLOAT_FUNCS = set(_words("exp exp2 expm1 log log2 log10 log1p sqrt cbrt sin cos tan arcsin arccos arctan sinh cosh tanh "
                  "arcsinh arccosh arctanh arctan2 hypot logaddexp"))


def _numpy_dtype(fn, *operands):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return fn(*operands).dtype.name
        except TypeError:
            return "error"


def _exprc_dtype(fn, *operands):
    try:
        return fn(*operands).dtype
    except DTypeError:
        return "error"


def _expected(name, np_dt, dts):
    """NumPy's dtype, or exprc's documented deviation from it."""
    if name in FLOAT_FUNCS and np_dt == "float16":  # float functions on bool compute in float64
        return "float64"
    if name == "reciprocal" and all(d != "float32" and d != "float64" for d in dts):
        return "float64"  # reciprocal on ints/bools gives float64 (NumPy: integer reciprocal)
    if np_dt in ("int8", "float16"):  # bool arithmetic NumPy does in int8: exprc refuses it
        return "error"
    return np_dt


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("dt", DTYPES)
def test_unary_result_dtype_matches_numpy(name, dt):
    np_dt = _numpy_dtype(getattr(np, name), np.ones(2, dt))
    assert _exprc_dtype(getattr(exprc, name), exprc.vector("x", dt)) == _expected(name, np_dt, [dt])


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("d1,d2", list(itertools.product(DTYPES, DTYPES)))
def test_binary_result_dtype_matches_numpy(name, d1, d2):
    np_dt = _numpy_dtype(getattr(np, name), np.ones(2, d1), np.ones(2, d2))
    got = _exprc_dtype(getattr(exprc, name), exprc.vector("x", d1), exprc.vector("y", d2))
    assert got == _expected(name, np_dt, [d1, d2])


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("scalar", [True, 2, 2.5])
def test_python_scalars_are_weak(name, dt, scalar):
    """NEP 50: a Python scalar next to a tensor takes the tensor's kind where it fits."""
    np_dt = _numpy_dtype(getattr(np, name), np.ones(2, dt), scalar)
    got = _exprc_dtype(getattr(exprc, name), exprc.vector("x", dt), scalar)
    assert got == _expected(name, np_dt, [dt])
    np_dt = _numpy_dtype(getattr(np, name), scalar, np.ones(2, dt))
    got = _exprc_dtype(getattr(exprc, name), scalar, exprc.vector("x", dt))
    assert got == _expected(name, np_dt, [dt])


def test_nep50_examples():
    f32 = exprc.vector("a", "float32")
    i32 = exprc.vector("b", "int32")
    assert (f32 * 2.0).dtype == "float32"
    assert (i32 + 2.5).dtype == "float64"
    assert (i32 + 3).dtype == "int32"
    assert (f32 * np.float64(2.0)).dtype == "float64"  # NumPy scalars are strong
    assert (2.0 * f32).eval({f32: np.ones(2, np.float32)}).dtype == np.float32


@pytest.mark.parametrize("name", ["sum", "prod", "mean", "max", "min", "all", "any", "argmax", "argmin", "var",
                                  "std"])
@pytest.mark.parametrize("dt", DTYPES)
def test_reduction_dtype_matches_numpy(name, dt):
    np_dt = _numpy_dtype(lambda a: getattr(np, name)(a, axis=0), np.ones((2, 3), dt))
    got = _exprc_dtype(lambda a: getattr(exprc, name)(a, axis=0), exprc.matrix("x", dt))
    assert got == np_dt


@pytest.mark.parametrize("src,dst", list(itertools.product(DTYPES, DTYPES)))
def test_astype(src, dst):
    x = exprc.vector("x", src)
    y = x.astype(dst)
    assert y.dtype == dst
    data = np.array([0, 1, 3, 2], dtype=src) if src != "bool" else np.array([True, False])
    out = y.eval({x: data})
    np.testing.assert_array_equal(out, data.astype(dst))
    assert out.dtype == np.dtype(dst)
    if src == dst:
        assert y is x


def test_bool_subtract_and_negate_raise_like_numpy():
    b = exprc.vector("b", "bool")
    with pytest.raises(TypeError):
        np.ones(2, bool) - np.ones(2, bool)
    with pytest.raises(DTypeError, match="sub"):
        b - b
    with pytest.raises(DTypeError, match="neg"):
        _ = -b
    with pytest.raises(DTypeError):
        exprc.vector("f") & exprc.vector("g")


def test_as_dtype_and_promote():
    assert as_dtype(np.float32) == "float32"
    assert as_dtype("f8") == "float64"
    assert as_dtype(bool) == "bool"
    assert as_dtype(np.dtype("int32")) == "int32"
    for a, b in itertools.product(DTYPES, DTYPES):
        assert promote(a, b) == np.result_type(a, b).name
    with pytest.raises(DTypeError, match="float16"):
        as_dtype("float16")
    with pytest.raises(DTypeError):
        as_dtype("not a dtype")


def test_tensor_type_and_broadcast_shapes():
    t = TensorType("float32", (None, 1, 3))
    assert t.ndim == 3 and t.broadcastable == (False, True, False)
    assert str(t) == "float32[?, 1, 3]"
    assert broadcast_shapes([(None, 1), (3,)], "op") == (None, 3)
    assert broadcast_shapes([(1,), (None,)], "op") == (None,)
    assert broadcast_shapes([(2, 1), (1, 4)], "op") == (2, 4)
    with pytest.raises(exprc.errors.ShapeError, match=r"op: shapes \(2,\) and \(3,\)"):
        broadcast_shapes([(2,), (3,)], "op")
    assert normalize_axis(-1, 3, "s") == (2,)
    assert normalize_axis((2, 0), 3, "s") == (0, 2)
    with pytest.raises(exprc.errors.ShapeError, match="out of bounds"):
        normalize_axis(3, 3, "s")
    with pytest.raises(exprc.errors.ShapeError, match="repeated"):
        normalize_axis((0, -3), 3, "s")
