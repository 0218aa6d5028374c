"""Compiling a classifier's training step and prediction, and minibatch iteration."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np

import exprc
from nn.losses import softmax_cross_entropy


def compile_classifier(net: Any, optimizer: Any, n_features: int | None = None, n_classes: int | None = None,
                       config: exprc.Config | None = None) -> tuple[exprc.Function, exprc.Function]:
    """``step(x, y_onehot) -> loss`` (updates every parameter and optimizer state in the same call)
    and ``predict(x) -> logits``.

    A ``net`` whose call takes ``train`` (``nn.MLP``) is built with ``train=True`` for the step, so its
    dropout is active there (a new mask each call: the step also advances the net's random stream),
    and with ``train=False`` for ``predict``, which is deterministic."""
    x = exprc.matrix("x", net.dtype, shape=(None, n_features))
    y = exprc.matrix("y", net.dtype, shape=(None, n_classes))
    loss = softmax_cross_entropy(_forward(net, x, True), y)
    grads = exprc.grad(loss, net.params)
    step = exprc.function([x, y], loss, updates=optimizer.updates(net.params, grads), config=config)
    predict = exprc.function([x], _forward(net, x, False), config=config)
    return step, predict


def _forward(net: Any, x: exprc.Node, train: bool) -> exprc.Node:
    try:
        takes_train = "train" in inspect.signature(net).parameters
    except (TypeError, ValueError):  # no signature to read: a plain call
        takes_train = False
    return net(x, train=train) if takes_train else net(x)


def minibatches(x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """Shuffled minibatches (the last one may be smaller), contiguous arrays."""
    order = rng.permutation(len(x))
    for i in range(0, len(x), size):
        idx = order[i:i + size]
        yield np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx])
