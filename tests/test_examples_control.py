"""The loop ports (examples/theano_tutorials/loops.py, lstm.py): the Theano loop tutorial's
examples against NumPy, and an LSTM language model whose forward cost matches NumPy to 1e-12,
whose BPTT gradient (``grad`` through ``scan``) matches central differences of the NumPy cost and
a hand-written NumPy BPTT, and whose SGD training matches the same training in NumPy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "theano_tutorials"))

import loops
import lstm

import exprc

TINY = {"n_vocab": 5, "n_embed": 3, "n_hidden": 4}


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_loop_examples_match_numpy(backend):
    with exprc.config(backend=backend):
        out = loops.run_all(verbose=False)  # asserts each result against NumPy (rtol 1e-12)
    assert set(out) >= {"power", "polynomial", "power_of_2", "sum_until (while_loop)", "logistic_map"}
    # The chaotic map amplifies any difference in rounding: the loop computes exactly what Python does.
    got, want = out["logistic_map"]
    assert got == want


def test_logistic_map_longer_run_is_exact():
    got, want = loops.logistic_map(3.9, 0.1, 2000)
    assert got == want


def _cost_fn(params, n_hidden, with_grads=False):
    tparams = lstm.init_tparams(params)
    x, y, cost = lstm.build_model(tparams, n_hidden)
    outs = [cost, *exprc.grad(cost, wrt=list(tparams.values()))] if with_grads else cost
    return exprc.function([x, y], outs), list(tparams)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_lstm_forward_matches_numpy(backend):
    params = lstm.init_params(20, 16, 32)
    x, y = lstm.make_data(16, 10, 20)
    with exprc.config(backend=backend):
        f, _ = _cost_fn(params, 32)
        got = float(f(x, y))
    want = lstm.numpy_forward(params, x, y)
    assert abs(got - want) <= 1e-12 * abs(want)
    assert 2.5 < want < 3.5  # about log(20) for an untrained model


def test_lstm_static_steps_match_numpy():
    params = lstm.init_params(20, 16, 32)
    x, y = lstm.make_data(16, 10, 20)
    tparams = lstm.init_tparams(params)
    xs, ys, cost = lstm.build_model(tparams, 32, shape=(10, 16))
    got = float(exprc.function([xs, ys], cost)(x, y))
    want = lstm.numpy_forward(params, x, y)
    assert abs(got - want) <= 1e-12 * abs(want)


def _central_differences(params, x, y, h=1e-5):
    out = {}
    for k, v in params.items():
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            plus = {**params, k: v.copy()}
            minus = {**params, k: v.copy()}
            plus[k][i] += h
            minus[k][i] -= h
            g[i] = (lstm.numpy_forward(plus, x, y) - lstm.numpy_forward(minus, x, y)) / (2 * h)
        out[k] = g
    return out


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_lstm_grad_matches_finite_differences(backend):
    params = lstm.init_params(**TINY, seed=7)
    params["lstm_b"] = np.random.default_rng(3).standard_normal(params["lstm_b"].shape) * 0.5  # no zero gates
    x, y = lstm.make_data(3, 4, TINY["n_vocab"])
    with exprc.config(backend=backend):
        f, names = _cost_fn(params, TINY["n_hidden"], with_grads=True)
        cost, *grads = f(x, y)
    assert abs(float(cost) - lstm.numpy_forward(params, x, y)) <= 1e-12 * abs(float(cost))
    fd = _central_differences(params, x, y)
    _, bptt = lstm.numpy_grads(params, x, y)
    for name, g in zip(names, grads):
        assert g.shape == params[name].shape, name
        scale = np.linalg.norm(fd[name])
        assert scale > 0, name
        assert np.linalg.norm(g - fd[name]) / scale < 1e-6, (name, np.linalg.norm(g - fd[name]) / scale)
        np.testing.assert_allclose(g, bptt[name], rtol=1e-10, atol=1e-13 * scale, err_msg=name)


def test_lstm_training_matches_numpy():
    kw = {"n_batches": 4, "n_epochs": 3}
    got = lstm.train_lstm(**kw, verbose=False)  # (C backend)
    want = lstm.numpy_reference(**kw)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert got[2] < got[1] < got[0] < np.log(20)  # it learns


def test_scripts_print(capsys):
    loops.run_all()
    lstm.train_lstm(n_batches=2, n_epochs=2)
    out = capsys.readouterr().out
    assert "power_of_2: [ 2.  4.  8. 16. 32. 64.]  (NumPy agrees)" in out
    assert "compiled the training step" in out and "epoch 2: mean minibatch cost" in out
