"""Losses and metrics."""

from __future__ import annotations

import numpy as np

import exprc


def softmax_cross_entropy(logits: exprc.Node, targets: exprc.Node) -> exprc.Node:
    """Mean cross-entropy of one-hot (or soft) ``targets`` against ``softmax(logits)``, computed
    with ``log_softmax`` (stable for any logits)."""
    return -exprc.mean(exprc.sum(targets * exprc.log_softmax(logits, axis=-1), axis=-1))


def accuracy(logits: exprc.Node, labels: exprc.Node) -> exprc.Node:
    """Fraction of rows whose largest logit is at the (integer) label."""
    return exprc.mean(exprc.equal(exprc.argmax(logits, axis=-1), labels).astype("float64"))


def one_hot(labels: np.ndarray, n: int, dtype: str = "float32") -> np.ndarray:
    out = np.zeros((len(labels), n), dtype)
    out[np.arange(len(labels)), labels] = 1
    return out
