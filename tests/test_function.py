"""exprc.function / Function / eval / jit: binding, conversions, errors."""

import numpy as np
import pytest

import exprc
from exprc.errors import InputTypeError, MissingInputError, ShapeError


def test_function_positional_keyword_and_outputs():
    x, y = exprc.vector("x"), exprc.scalar("y", "int64")
    f = exprc.function([x, y], x * y, backend="numpy")
    np.testing.assert_array_equal(f(np.array([1.0, 2.0]), 3), [3.0, 6.0])
    np.testing.assert_array_equal(f([1.0, 2.0], y=2), [2.0, 4.0])
    np.testing.assert_array_equal(f(x=[1, 2], y=np.int64(1)), [1.0, 2.0])
    g = exprc.function([x, y], [x + y, x.sum()], backend="numpy")
    out = g([1.0, 2.0], 1)
    assert isinstance(out, list) and len(out) == 2
    np.testing.assert_array_equal(out[0], [2.0, 3.0])
    assert out[1] == 3.0 and isinstance(out[1], np.ndarray)
    assert f.inputs == (x, y) and f.outputs == [x * y] and f.backend == "numpy"
    assert f.graph.outputs[0].op == "mul" and isinstance(f.rewrites, list)
    assert "def compiled" in f.source


def test_outputs_never_alias_inputs():
    x = exprc.vector("x")
    f = exprc.function([x], [x, x.T], backend="numpy")
    d = np.array([1.0, 2.0])
    a, b = f(d)
    a[0] = 99.0
    assert d[0] == 1.0 and b[0] == 1.0


def test_error_messages_name_argument_and_expectation():
    x = exprc.vector("x")
    f = exprc.function([x], x * 2.0, backend="numpy")
    with pytest.raises(InputTypeError) as exc:
        f(np.zeros((2, 2), np.int64))
    assert str(exc.value) == "argument 'x' (position 0): expected a float64 array with ndim 1, got int64 with ndim 2"
    assert isinstance(exc.value, TypeError) and isinstance(exc.value, ValueError)
    with pytest.raises(TypeError, match=r"expected 1 arguments \(x\), got 2"):
        f([1.0], [2.0])
    with pytest.raises(TypeError, match="expected 1 arguments"):
        f()
    with pytest.raises(TypeError, match="unknown keyword argument 'z'"):
        f(z=[1.0])
    with pytest.raises(TypeError, match="multiple values"):
        f([1.0], x=[1.0])
    with pytest.raises(TypeError, match="symbolic"):
        f(x)
    with pytest.raises(TypeError, match="got <U1 data"):
        f(np.array(["a"]))


def test_casts_safe_done_lossy_refused():
    x32 = exprc.vector("x", "float32")
    f = exprc.function([x32], x32 + 1.0, backend="numpy")
    with pytest.raises(InputTypeError, match="allow_downcast"):
        f(np.array([0.1], np.float64))
    out = f(np.array([1, 2], np.int64))  # int data into a float input: done
    assert out.dtype == np.float32 and list(out) == [2.0, 3.0]
    assert f([0.5]).dtype == np.float32  # Python floats are weak
    g = exprc.function([x32], x32 + 1.0, backend="numpy", allow_downcast=True)
    np.testing.assert_array_equal(g(np.array([0.1])), np.array([0.1], np.float32) + np.float32(1))
    i32 = exprc.vector("i", "int32")
    h = exprc.function([i32], i32 * 2, backend="numpy")
    with pytest.raises(InputTypeError):
        h(np.array([1.5]))
    with pytest.raises(InputTypeError):
        h(np.array([1], np.int64))
    assert h([1, 2]).dtype == np.int32
    with pytest.raises(InputTypeError, match="do not fit"):
        h([2 ** 40])
    b = exprc.vector("b", "bool")
    with pytest.raises(InputTypeError):
        exprc.function([b], ~b, backend="numpy", allow_downcast=True)(np.array([1, 0]))


def test_static_shape_checked_at_call():
    x = exprc.matrix("x", shape=(None, 3))
    f = exprc.function([x], x.sum(axis=1), backend="numpy")
    np.testing.assert_array_equal(f(np.ones((2, 3))), [3.0, 3.0])
    with pytest.raises(ShapeError, match=r"argument 'x' \(position 0\): expected shape \(\?, 3\), got \(2, 4\)"):
        f(np.ones((2, 4)))


def test_missing_input_error_at_function_time():
    x, y = exprc.vector("x"), exprc.vector("hidden")
    with pytest.raises(MissingInputError, match="hidden"):
        exprc.function([x], x + y, backend="numpy")
    with pytest.raises(MissingInputError, match="hidden"):
        (x + y).eval({x: [1.0]})
    with pytest.raises(TypeError, match="inputs"):
        exprc.function([x + 1.0], x, backend="numpy")
    with pytest.raises(ValueError, match="twice"):
        exprc.function([x, x], x, backend="numpy")


def test_eval_by_variable_or_name():
    x, y = exprc.vector("x"), exprc.vector("y")
    e = x - y
    np.testing.assert_array_equal(e.eval({x: [3.0], y: [1.0]}), [2.0])
    np.testing.assert_array_equal(e.eval({"x": [3.0], "y": [5.0]}), [-2.0])
    assert exprc.constant(4.0).eval() == 4.0


def test_jit_traces_once_per_signature():
    calls = []

    @exprc.jit(backend="numpy")
    def f(a, b):
        calls.append((a.dtype, a.ndim))
        return exprc.exp(a) + b

    np.testing.assert_allclose(f(np.zeros(3), np.ones(3)), np.exp(np.zeros(3)) + 1)
    np.testing.assert_allclose(f(np.ones(3), np.ones(3)), np.exp(np.ones(3)) + 1)
    assert len(calls) == 1 and len(f.functions) == 1
    out = f(np.zeros(2, np.float32), np.ones(2, np.float32))
    assert out.dtype == np.float32 and len(calls) == 2
    f(np.zeros((2, 2)), np.ones(2))
    assert len(calls) == 3 and calls[-1] == ("float64", 2)
    assert f.__name__ == "f"

    @exprc.jit
    def g(a):
        return a * 2

    np.testing.assert_array_equal(g(np.array([1, 2], np.int32)), [2, 4])


def test_backend_selection_errors():
    x = exprc.vector("x")
    with pytest.raises(exprc.errors.BackendUnavailable):
        exprc.function([x], x, backend="no-such-backend")
