"""The Theano tutorial ports (examples/theano_tutorials/): minibatch SGD through givens and a
symbolic index over shared datasets, the NLL by gather; per-epoch losses match a NumPy
implementation of the same training to 1e-12."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "theano_tutorials"))

import dA
import logistic_sgd
import mlp


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_logistic_sgd_matches_numpy(backend):
    import exprc

    with exprc.config(backend=backend):
        got = logistic_sgd.sgd_optimization(n_epochs=2, verbose=False)
    want = logistic_sgd.numpy_reference(n_epochs=2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] < got[0] < np.log(10)  # it learns


def test_mlp_matches_numpy():
    got = mlp.test_mlp(n_epochs=2, verbose=False)
    want = mlp.numpy_reference(n_epochs=2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] < got[0]


def test_scripts_print_epochs(capsys):
    logistic_sgd.sgd_optimization(n_epochs=1)
    out = capsys.readouterr().out
    assert "compiled the training step" in out and "epoch 1: mean minibatch loss" in out


def _dA_cost_numpy(x, tilde_x, W, b, b_prime):
    y = 1 / (1 + np.exp(-(tilde_x @ W + b)))
    z = 1 / (1 + np.exp(-(y @ W.T + b_prime)))
    return np.mean(-np.sum(x * np.log(z) + (1 - x) * np.log(1 - z), axis=1))


def test_dA_learns_and_matches_numpy_without_corruption(capsys):
    got = dA.test_dA(training_epochs=3, corruption_level=0.0, verbose=False)
    np.testing.assert_allclose(got, dA.numpy_reference(training_epochs=3), rtol=1e-12)
    noisy = dA.test_dA(training_epochs=3, corruption_level=0.3)
    assert noisy[2] < noisy[1] < noisy[0]  # the cost decreases with corruption too
    assert got[2] < got[1] < got[0]
    out = capsys.readouterr().out
    assert "compiled the training step" in out and out.count("Training epoch") == 3


@pytest.mark.parametrize("level", [0.0, 0.3])
def test_dA_corruption_is_drawn_inside_the_step(level):
    da, train_da, _ = dA.build(corruption_level=level)
    start = [p.get_value() for p in da.params]
    costs = []
    for _ in range(3):  # the same minibatch from the same parameters
        for p, v in zip(da.params, start):
            p.set_value(v)
        costs.append(float(train_da(0)))
    x0 = dA.load_data()[:20]
    clean = _dA_cost_numpy(x0, x0, *start)
    if level == 0.0:
        assert costs[0] == costs[1] == costs[2]
        np.testing.assert_allclose(costs[0], clean, rtol=1e-12)
    else:
        assert len(set(costs)) == 3  # a new corruption mask each call
        assert all(abs(c - clean) > 1e-9 * clean for c in costs)
    assert da.theano_rng.state.get_value()[1] == 3  # the step advanced the stream once per call


def test_dA_corrupted_input_matches_numpy():
    import exprc

    data = dA.load_data()
    x = exprc.matrix("x", dA.floatX)
    da = dA.dA(np.random.default_rng(0), exprc.random.Stream(5), input=x, n_visible=data.shape[1], n_hidden=32)
    tilde = da.get_corrupted_input(x, 0.3)
    z = da.get_reconstructed_input(da.get_hidden_values(tilde))
    cost = exprc.mean(-exprc.sum(x * exprc.log(z) + (1 - x) * exprc.log(1 - z), axis=1))
    f = exprc.function([x], [cost, tilde])
    params = [p.get_value() for p in da.params]
    masks = []
    for _ in range(2):
        c, t = f(data)
        kept = t != 0
        assert np.array_equal(t[kept], data[kept])  # each element is the input or 0
        frac = 1 - kept.mean()
        assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / data.size)
        np.testing.assert_allclose(c, _dA_cost_numpy(data, t, *params), rtol=1e-12)
        masks.append(kept)
    assert not np.array_equal(masks[0], masks[1])
