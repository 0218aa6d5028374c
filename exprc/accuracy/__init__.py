"""Accuracy: measuring bits lost against exact values, and the search that lowers them.

* :mod:`exprc.accuracy.exact`: the one mpmath table, keyed by op name, and the exact
  evaluation of a graph;
* :mod:`exprc.accuracy.measure`: ``bits_lost``, ``reference`` (a formula in mpmath), ``sample``;
* :mod:`exprc.accuracy.search`: ``accuracy="search"`` (also importable as ``exprc.search``),
  with its sampling and scoring in :mod:`.scoring` and its rewrites in :mod:`.candidates`.

Importing this package loads neither mpmath nor the search (the search costs ~30 ms to import).
"""

from exprc.accuracy.measure import PREC, bits_lost, mp_namespace, reference, sample

__all__ = ["PREC", "bits_lost", "mp_namespace", "reference", "sample"]
