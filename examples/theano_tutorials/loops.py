"""The Theano tutorial's loop examples (``Loop`` / ``scan``), in exprc.

Each example builds its graph as the tutorial does, compiles it once, calls it and checks the
result against the same computation written with NumPy (or a Python loop):

* ``power``: ``A**k`` by ``k`` steps of ``prior_result * A`` (``n_steps`` symbolic, ``A`` a
  non-sequence, the last row kept);
* ``polynomial``: ``sum(c[i] * x**i)`` by a scan over the coefficients and ``arange``;
* ``triangular``: accumulating ``arange(up_to)`` into a scalar;
* ``tanh_rows``: ``tanh(x(t).dot(W) + b)`` over the rows of a matrix;
* ``taps``: ``x(t) = x(t-2).dot(U) + x(t-1).dot(V) + tanh(x(t-1).dot(W) + b)`` (two output taps);
* ``counter``: a shared variable updated by the loop (``updates``, no outputs);
* ``power_of_2``: the tutorial's ``until`` example (doubling until past a bound);
* ``sum_until``: the prefix of a sequence summed until its sum exceeds a threshold, with
  ``scan`` + ``until`` and with ``while_loop``;
* ``logistic_map``: ``x = r*x*(1-x)`` iterated with ``fori_loop``.

What differs from the Theano original: ``import exprc as T`` (and ``exprc`` for ``theano``),
``T.scalar(name, "int32")`` for ``T.iscalar``, and the polynomial's ``arange`` is as long as the
coefficients: exprc's scan raises on sequences of different lengths where Theano silently runs
as many steps as the shortest (the tutorial's ``arange(10000)`` next to a 3-coefficient vector).

Run: ``python examples/theano_tutorials/loops.py`` (prints each result and its check).
"""

from __future__ import annotations

import numpy as np

import exprc
import exprc as T


def power(A_val: np.ndarray, k_val: int) -> tuple[np.ndarray, np.ndarray]:
    """``A**k`` elementwise; returns (exprc, NumPy)."""
    k = T.scalar("k", "int32")
    A = T.vector("A")
    result, updates = exprc.scan(fn=lambda prior_result, A: prior_result * A,
                                 outputs_info=T.ones_like(A), non_sequences=A, n_steps=k)
    final_result = result[-1]  # only the last row is wanted
    f = exprc.function(inputs=[A, k], outputs=final_result, updates=updates)
    return f(A_val, k_val), np.asarray(A_val, dtype=float) ** k_val


def polynomial(coeffs: np.ndarray, x_val: float) -> tuple[float, float]:
    """``sum(coeffs[i] * x**i)``; returns (exprc, NumPy)."""
    coefficients = T.vector("coefficients")
    x = T.scalar("x")
    components, _updates = exprc.scan(fn=lambda coefficient, power, free_variable: coefficient * (free_variable ** power),
                                      outputs_info=None,
                                      sequences=[coefficients, T.arange(coefficients.shape[0])],
                                      non_sequences=x)
    polynomial = components.sum()
    f = exprc.function(inputs=[coefficients, x], outputs=polynomial)
    coeffs = np.asarray(coeffs, dtype=float)
    return float(f(coeffs, x_val)), float(np.sum(coeffs * x_val ** np.arange(len(coeffs))))


def triangular(up_to_val: int) -> tuple[np.ndarray, np.ndarray]:
    """The running sums of ``arange(up_to)``; returns (exprc, NumPy)."""
    up_to = T.scalar("up_to", "int32")

    def accumulate_by_adding(arange_val, sum_to_date):
        return sum_to_date + arange_val

    seq = T.arange(up_to)
    outputs_info = T.constant(np.asarray(0, seq.dtype))
    scan_result, _scan_updates = exprc.scan(fn=accumulate_by_adding, outputs_info=outputs_info, sequences=seq)
    f = exprc.function(inputs=[up_to], outputs=scan_result)
    return f(up_to_val), np.cumsum(np.arange(up_to_val))


def tanh_rows(X_val: np.ndarray, W_val: np.ndarray, b_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tanh(x(t).dot(W) + b)`` for each row ``x(t)`` of X; returns (exprc, NumPy)."""
    X, W, b_sym = T.matrix("X"), T.matrix("W"), T.vector("b_sym")
    results, _updates = exprc.scan(lambda v: T.tanh(T.dot(v, W) + b_sym), sequences=X)
    f = exprc.function(inputs=[X, W, b_sym], outputs=results)
    return f(X_val, W_val, b_val), np.tanh(X_val @ W_val + b_val)


def taps(X0: np.ndarray, U: np.ndarray, V: np.ndarray, W: np.ndarray, b: np.ndarray,
         n: int) -> tuple[np.ndarray, np.ndarray]:
    """``x(t) = x(t-2).dot(U) + x(t-1).dot(V) + tanh(x(t-1).dot(W) + b)`` from two initial rows
    ``X0``, ``n`` steps; returns (exprc, NumPy)."""
    X, U_s, V_s, W_s, b_s = T.matrix("X"), T.matrix("U"), T.matrix("V"), T.matrix("W"), T.vector("b")
    n_sym = T.scalar("n_sym", "int32")
    results, _updates = exprc.scan(
        lambda x_tm2, x_tm1: T.dot(x_tm2, U_s) + T.dot(x_tm1, V_s) + T.tanh(T.dot(x_tm1, W_s) + b_s),
        n_steps=n_sym, outputs_info=[{"initial": X, "taps": [-2, -1]}])
    f = exprc.function(inputs=[X, U_s, V_s, W_s, b_s, n_sym], outputs=results)
    x = [X0[0], X0[1]]
    for _ in range(n):
        x.append(x[-2] @ U + x[-1] @ V + np.tanh(x[-1] @ W + b))
    return f(X0, U, V, W, b, n), np.array(x[2:])


def counter(n: int) -> tuple[int, int]:
    """A shared counter incremented ``n`` times by a loop with no outputs, twice; returns
    (exprc's final value, 2 * n)."""
    k = exprc.shared(0, name="k")
    n_sym = T.scalar("n_sym", "int32")
    _results, updates = exprc.scan(lambda: {k: (k + 1)}, n_steps=n_sym)
    accumulator = exprc.function([n_sym], [], updates=updates)
    accumulator(n)
    accumulator(n)
    return int(k.get_value()), 2 * n


def power_of_2(max_val: float) -> tuple[np.ndarray, np.ndarray]:
    """Powers of 2 up to the first one past ``max_val`` (the tutorial's ``until``); returns
    (exprc, NumPy)."""

    def step(previous_power, max_value):
        return previous_power * 2, exprc.until(previous_power * 2 > max_value)

    max_value = T.scalar("max_value")
    values, _ = exprc.scan(step, outputs_info=T.constant(1.0), non_sequences=max_value, n_steps=1024)
    f = exprc.function([max_value], values)
    want = [2.0]
    while want[-1] <= max_val:
        want.append(want[-1] * 2)
    return f(max_val), np.array(want)


def sum_until(xs: np.ndarray, threshold: float) -> dict[str, tuple]:
    """The prefix sums of ``xs`` up to the first that exceeds ``threshold`` (or all of them):
    ``scan`` + ``until`` (the stacked sums) and ``while_loop`` (the final (count, sum)).
    Returns {name: (exprc, NumPy)}."""
    x, thr = T.vector("x"), T.scalar("threshold")
    sums, _ = exprc.scan(lambda v, s: (s + v, exprc.until(s + v > thr)),
                         sequences=x, outputs_info=T.constant(0.0))
    f_scan = exprc.function([x, thr], sums)

    def cond(state):
        i, s = state
        return T.logical_and(i < x.shape[0], s <= thr)

    def body(state):
        # exprc's while_loop also evaluates the body on the step where cond is false (and keeps
        # the old state), unlike JAX: x[i] would then read one past the end, so clamp i.
        i, s = state
        return i + 1, s + x[T.minimum(i, x.shape[0] - 1)]

    i_end, s_end = exprc.while_loop(cond, body, (T.constant(np.int64(0)), T.constant(0.0)))
    f_while = exprc.function([x, thr], [i_end, s_end])

    cum = np.cumsum(np.asarray(xs, dtype=float))
    over = np.nonzero(cum > threshold)[0]
    m = int(over[0]) + 1 if len(over) else len(cum)
    got_i, got_s = f_while(xs, threshold)
    return {"scan+until": (f_scan(xs, threshold), cum[:m]),
            "while_loop": ((int(got_i), float(got_s)), (m, float(cum[m - 1]) if m else 0.0))}


def logistic_map(r_val: float, x0_val: float, n: int) -> tuple[float, float]:
    """``x = r*x*(1-x)`` ``n`` times from ``x0`` (``fori_loop``); returns (exprc, a Python loop)."""
    r, x0, n_sym = T.scalar("r"), T.scalar("x0"), T.scalar("n", "int64")
    x_n = exprc.fori_loop(0, n_sym, lambda i, x: r * x * (1 - x), x0)
    f = exprc.function([r, x0, n_sym], x_n)
    x = x0_val
    for _ in range(n):
        x = r_val * x * (1 - x)
    return float(f(r_val, x0_val, n)), x


def run_all(verbose: bool = True, rtol: float = 1e-12) -> dict[str, tuple]:
    """Every example at small sizes, checked (assert) against its NumPy computation; returns
    {name: (exprc, NumPy)}."""
    rng = np.random.default_rng(0)
    d = 5
    W = rng.standard_normal((d, d)) * 0.3
    out = {
        "power": power(np.arange(10, dtype=float), 2),
        "polynomial": polynomial(np.asarray([1.0, 0.0, 2.0]), 3.0),
        "triangular": triangular(15),
        "tanh_rows": tanh_rows(rng.standard_normal((4, d)), W, rng.standard_normal(d)),
        "taps": taps(rng.standard_normal((2, d)), *(rng.standard_normal((d, d)) * 0.3 for _ in range(3)),
                     rng.standard_normal(d) * 0.1, 8),
        "counter": counter(7),
        "power_of_2": power_of_2(45.0),
        **{f"sum_until ({k})": v for k, v in sum_until(np.arange(1.0, 11.0), 20.0).items()},
        "sum_until (never exceeded)": sum_until(np.arange(1.0, 4.0), 100.0)["while_loop"],
        "logistic_map": logistic_map(3.7, 0.5, 30),
    }
    for name, (got, want) in out.items():
        if isinstance(got, tuple):
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=rtol, atol=0)
        else:
            assert np.shape(got) == np.shape(want), (name, np.shape(got), np.shape(want))
            np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=name)
        if verbose:
            print(f"{name}: {np.array2string(np.asarray(got), precision=6) if not isinstance(got, tuple) else got}"
                  f"  (NumPy agrees)")
    return out


if __name__ == "__main__":
    run_all()
