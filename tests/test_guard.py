"""Config(nan_guard=True): NaN/Inf made from finite inputs raise NonFiniteError naming the node."""

from __future__ import annotations

import numpy as np
import pytest

import exprc
from exprc.errors import NonFiniteError

GUARD = exprc.Config(nan_guard=True)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_guard_names_the_first_node_that_made_nan_and_its_kernel(backend):
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.sum(exprc.log(x - y) * 2.0 + exprc.exp(y))
    f = exprc.function([x, y], e, config=GUARD, backend=backend)
    X, Y = np.array([3.0, 4.0]), np.array([1.0, 2.0])
    assert f(X, Y) == pytest.approx(np.sum(np.log(X - Y) * 2.0 + np.exp(Y)), rel=1e-15)
    with pytest.raises(NonFiniteError, match=r"log\(x - y\).*1 NaN/Inf value\(s\) of 2.*min=-1\.0 max=2\.0") as err:
        f(np.array([3.0, 1.0]), np.array([1.0, 2.0]))
    if backend == "c":
        assert " in kernel k" in str(err.value)
    assert isinstance(err.value, FloatingPointError)


def test_guard_lets_nan_inputs_propagate_and_checks_overflow_and_updates():
    """NaN in an input is IEEE propagation, not an error; exp overflowing to inf is; an update that
    would install a NaN raises before anything is installed."""
    x = exprc.vector("x")
    f = exprc.function([x], exprc.exp(x) * 0.5, config=GUARD)
    assert np.isnan(f(np.array([np.nan, 1.0]))[0])
    with pytest.raises(NonFiniteError, match=r"exp\(x\)"):
        f(np.array([800.0]))
    w = exprc.shared(np.ones(3), "w")
    g = exprc.vector("g")
    step = exprc.function([g], exprc.sum(w), updates={w: w - exprc.sqrt(g)}, config=GUARD)
    step(np.ones(3))
    np.testing.assert_array_equal(w.get_value(), np.zeros(3))
    with pytest.raises(NonFiniteError, match="sqrt"):
        step(np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(w.get_value(), np.zeros(3))  # nothing installed


def test_guard_off_is_the_plain_function_and_masked_nan_is_not_reported():
    x = exprc.vector("x")
    e = exprc.where(exprc.isnan(exprc.log(x)), 0.0, exprc.log(x))
    plain = exprc.function([x], exprc.log(x))
    assert type(plain._kernel).__name__ != "GuardedKernel"
    assert np.isnan(plain(np.array([-1.0]))[0])
    np.testing.assert_array_equal(exprc.function([x], e, config=GUARD)(np.array([-1.0, 1.0])), [0.0, 0.0])


def test_guard_keeps_the_dispatcher_and_still_raises_through_it():
    x = exprc.vector("x")
    f = exprc.function([x], [exprc.log(x), exprc.sqrt(x)], config=GUARD, backend="c")
    for _ in range(3):  # the second call attaches the C dispatcher (when one builds here)
        got = f(np.array([1.0, 4.0]))
        np.testing.assert_array_equal(got[1], [1.0, 2.0])
    with pytest.raises(NonFiniteError, match=r"log\(x\)"):
        f(np.array([0.0, 4.0]))  # -inf from a finite input
    with pytest.raises(NonFiniteError, match=r"sqrt\(x\)|log\(x\)"):
        f(np.array([-1.0, 4.0]))
