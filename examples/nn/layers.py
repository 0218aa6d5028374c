"""Layers and activations: functions from exprc expressions to exprc expressions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

import exprc


def relu(x: exprc.Node) -> exprc.Node:
    return exprc.maximum(x, 0)


def tanh(x: exprc.Node) -> exprc.Node:
    return exprc.tanh(x)


def sigmoid(x: exprc.Node) -> exprc.Node:
    return exprc.sigmoid(x)


def softmax(x: exprc.Node) -> exprc.Node:
    return exprc.softmax(x, axis=-1)


class Dense:
    """``activation(x @ W + b)`` with ``W`` (Glorot-uniform) and ``b`` (zeros) as shared variables."""

    def __init__(self, n_in: int, n_out: int, activation: Callable | None = None, rng: np.random.Generator | None = None,
                 dtype: str = "float32", name: str = "dense"):
        rng = rng if rng is not None else np.random.default_rng()
        limit = np.sqrt(6.0 / (n_in + n_out))
        # Static shapes (parameters never change size) let exprc prove gradient shapes at compile time.
        self.W = exprc.shared(rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype), f"{name}.W",
                              shape=(n_in, n_out))
        self.b = exprc.shared(np.zeros(n_out, dtype), f"{name}.b", shape=(n_out,))
        self.activation = activation

    @property
    def params(self) -> list[exprc.SharedVariable]:
        return [self.W, self.b]

    def __call__(self, x: exprc.Node) -> exprc.Node:
        z = x @ self.W + self.b
        return self.activation(z) if self.activation is not None else z


def dropout(x: exprc.Node, p: float, rng: exprc.random.Stream) -> exprc.Node:
    """Inverted dropout: each element of ``x`` is zeroed with probability ``p`` and the rest are
    scaled by ``1 / (1 - p)``, so the expected value is ``x`` and prediction needs no rescaling.

    The mask is drawn with ``size=x.shape``, so it is generated inside the loop that computes ``x``
    (never stored), and a compiled function that uses it advances ``rng`` on every call (a new mask
    each step).  For :func:`exprc.grad` the mask is a constant: the gradient is ``mask / keep``."""
    keep = 1.0 - p
    mask = rng.bernoulli(size=x.shape, p=keep, dtype=x.dtype)
    return x * mask / keep


class Dropout:
    """Inverted dropout with drop probability ``p`` (Lasagne's and Keras's meaning of ``p``); active
    only when called with ``train=True`` (the training step), the identity otherwise (prediction).

    The masks come from ``rng``, an :class:`exprc.random.Stream` (a new one seeded with ``seed`` when
    not given); ``rng.seed(s)`` replays the same masks."""

    def __init__(self, p: float = 0.5, rng: exprc.random.Stream | None = None, seed: int = 0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng if rng is not None else exprc.random.Stream(seed)

    @property
    def params(self) -> list[exprc.SharedVariable]:
        return []

    def __call__(self, x: exprc.Node, train: bool = False) -> exprc.Node:
        return dropout(x, self.p, self.rng) if train and self.p > 0.0 else x


class MLP:
    """Dense layers of the given sizes; ``activation`` between them, raw logits out.

    ``dropout`` > 0 puts a :class:`Dropout` of that drop probability after every hidden layer; its
    masks come from ``self.rng`` (``exprc.random.Stream(seed)``) and are drawn only by
    ``net(x, train=True)`` (:func:`nn.compile_classifier` builds the training step that way and the
    prediction with ``train=False``)."""

    def __init__(self, sizes: Sequence[int], activation: Callable = relu, seed: int = 0, dtype: str = "float32",
                 dropout: float = 0.0):
        rng = np.random.default_rng(seed)
        self.rng = exprc.random.Stream(seed) if dropout > 0.0 else None
        self.layers: list = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            hidden = i < len(sizes) - 2
            self.layers.append(Dense(a, b, activation if hidden else None, rng, dtype, f"layer{i}"))
            if hidden and dropout > 0.0:
                self.layers.append(Dropout(dropout, self.rng))
        self.dtype = dtype

    @property
    def params(self) -> list[exprc.SharedVariable]:
        return [p for layer in self.layers for p in layer.params]

    def __call__(self, x: exprc.Node, train: bool = False) -> exprc.Node:
        for layer in self.layers:
            x = layer(x, train) if isinstance(layer, Dropout) else layer(x)
        return x
