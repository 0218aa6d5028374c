"""The Theano tutorial ports (examples/theano_tutorials/): minibatch SGD through givens and a
symbolic index over shared datasets, the NLL by gather; per-epoch losses match a NumPy
implementation of the same training to 1e-12."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "theano_tutorials"))

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
