"""exprc.fusion: merging independent elementwise kernels (``_merge_siblings``).

The pass finds, for each elementwise kernel, the first earlier one it may join from the index of the
last step it reads (issue 13: it asked networkx for a path between every pair of steps, cubic in the
steps).  These tests pin its merges to the pairwise definition, kept here as the reference.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import exprc
from exprc import fusion
from exprc.fusion import Kernel, lower


def _pairwise_merge_siblings(steps):
    """The definition, as the pass was written before issue 13: networkx path queries per pair."""
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(steps)))
    dag.add_edges_from(sorted(fusion._edges(steps)))
    merged_into: dict[int, int] = {}
    for i, s in enumerate(steps):
        if not isinstance(s, Kernel) or s.kind != "elemwise":
            continue
        for j in range(i):
            t = steps[j]
            if j in merged_into or not isinstance(t, Kernel) or t.kind != "elemwise":
                continue
            shape = s.outputs[0].type.shape
            if any(m.type.shape != shape for m in t.outputs + s.outputs):
                continue
            if nx.has_path(dag, j, i) or nx.has_path(dag, i, j):
                continue
            if None in shape and fusion._external(t) != fusion._external(s):
                continue
            if any(m in dag and nx.has_path(dag, m, i) for m in range(j + 1, i)):
                continue
            t.outputs += s.outputs
            t.body += [m for m in s.body if m not in set(t.body)]
            merged_into[i] = j
            dag = nx.contracted_nodes(dag, j, i, self_loops=False)
            break
    return [s for i, s in enumerate(steps) if i not in merged_into]


def _signature(program):
    """Steps, kernels' outputs, bodies and operands by node identity, and the buffers."""
    steps = []
    for s in program.steps:
        if isinstance(s, Kernel):
            steps.append((s.index, s.kind, s.name, [id(n) for n in s.outputs], [id(n) for n in s.body],
                          [id(n) for n in s.operands], id(s.reduce), id(s.matmul)))
        else:
            steps.append(id(s.node))
    return steps, [id(n) for n in program.materialized]


def _assert_same_as_pairwise(monkeypatch, outputs, optimize: bool) -> list:
    if optimize:
        fg = exprc.optimize(list(outputs))
        outputs, inputs = list(fg.outputs), list(fg.inputs)
    else:
        inputs = [n for n in exprc.graph.toposort(outputs) if n.op == "input"]
    programs = []
    for fuse in (True, False):
        for native_matmul in (False, True):
            got = lower(outputs, inputs, fuse=fuse, native_matmul=native_matmul)
            with monkeypatch.context() as m:
                m.setattr(fusion, "_merge_siblings", _pairwise_merge_siblings)
                want = lower(outputs, inputs, fuse=fuse, native_matmul=native_matmul)
            assert _signature(got) == _signature(want), (fuse, native_matmul)
            programs.append(got)
    return programs


_UNARY = [exprc.sin, exprc.exp, exprc.tanh, exprc.cos, lambda v: -v, lambda v: v * 0.5, abs]


def _random_graph(rng: random.Random) -> list:
    """Matrices of static, partly and fully dynamic shapes through elementwise ops, broadcast rows
    and columns, reductions broadcast back and matrix products; several outputs."""
    shapes = [(3, 4), (None, 4), (None, None)]
    x = exprc.matrix("x", shape=rng.choice(shapes))
    z = exprc.matrix("z", shape=rng.choice(shapes))
    row = exprc.vector("r", shape=(rng.choice([4, None]),))
    col = exprc.vector("c", shape=(rng.choice([3, None]),))
    pool = [x, z, x + z]
    for _ in range(rng.randint(3, 30)):
        k = rng.random()
        a = rng.choice(pool)
        try:
            if k < 0.35:
                v = rng.choice(_UNARY)(a)
            elif k < 0.6:
                v = a + rng.choice(pool) if rng.random() < 0.7 else a * rng.choice(pool)
            elif k < 0.7:
                v = a - exprc.cos(row)
            elif k < 0.75:
                v = a * exprc.dimshuffle(col, (0, "x"))
            elif k < 0.85:
                v = a - exprc.mean(a, axis=rng.choice([0, 1]), keepdims=True)
            elif k < 0.9:
                v = exprc.matmul(a, exprc.transpose(rng.choice(pool)))[:, :1] + a
            else:
                v = a + exprc.sum(rng.choice(pool))
        except exprc.errors.ExprcError:  # shapes that do not broadcast
            continue
        pool.append(v)
    return rng.sample(pool[3:], k=min(len(pool) - 3, rng.randint(1, 5))) or [x + 1.0]


@pytest.mark.parametrize("seed", range(8))
def test_merges_match_the_pairwise_definition_on_random_graphs(monkeypatch, seed):
    rng = random.Random(seed)
    for case in range(12):
        _assert_same_as_pairwise(monkeypatch, _random_graph(rng), optimize=case % 2 == 0)


def _chain(x, n: int):
    """Elementwise ops, broadcast rows and a mean broadcast back every 10 ops."""
    y = x
    for i in range(n):
        k = i % 4
        y = exprc.sin(y) if k == 0 else y * 0.5 if k == 1 else y - exprc.cos(x[0]) if k == 2 else exprc.exp(-y * y)
        if i % 10 == 9:
            y = y - exprc.mean(y, axis=1, keepdims=True)
    return y


@pytest.mark.parametrize("shape", [(3, 4), (None, None)])
def test_merges_match_the_pairwise_definition_on_a_gradient(monkeypatch, shape):
    # a gradient reads the forward values back: many independent kernels, far-apart siblings
    x = exprc.matrix("x", shape=shape)
    g = exprc.grad(exprc.sum(_chain(x, 20)), x)
    programs = _assert_same_as_pairwise(monkeypatch, [g], optimize=False)
    assert any(len(k.outputs) > 1 for p in programs for k in p.kernels)  # something merged
    _assert_same_as_pairwise(monkeypatch, [g], optimize=True)


def test_which_siblings_merge():
    x = exprc.matrix("x", shape=(3, 4))
    z = exprc.matrix("z", shape=(3, 4))
    # independent loops of one static shape: one kernel with both outputs
    (k,) = lower([exprc.sin(x), exprc.exp(z)], [x, z]).kernels
    assert len(k.outputs) == 2
    # different shapes never share a loop
    assert len(lower([exprc.sin(x), exprc.exp(z[0])], [x, z]).kernels) == 2
    # one reads the other (through a reduction): never merged
    a = exprc.sin(x)
    assert [k.kind for k in lower([a, exprc.exp(z) + exprc.sum(a)], [x, z]).kernels] == \
        ["elemwise", "reduce", "elemwise"]
    # a size known only at run time: merged only when both loops read the same arrays
    u = exprc.matrix("u")
    v = exprc.matrix("v")
    assert len(lower([exprc.sin(u), exprc.exp(v)], [u, v]).kernels) == 2
    (k,) = lower([exprc.sin(u), exprc.exp(u)], [u]).kernels
    assert len(k.outputs) == 2


def test_schedule_is_networkx_lexicographic_topological_order():
    """fusion._schedule (Kahn's algorithm, lowest step first) orders steps exactly as networkx's
    lexicographical_topological_sort did, on graphs with many independent steps."""
    import networkx as nx

    rng = np.random.default_rng(5)
    xs = [exprc.vector(f"x{i}") for i in range(6)]
    outs = []
    for _ in range(12):
        a, b = rng.choice(6, 2)
        outs.append(exprc.sum(exprc.exp(xs[a]) * xs[b]) + exprc.max(xs[b] - xs[a]))
    program = lower(outs, xs, fuse=False)
    steps = program.steps[::-1]  # any order of the same steps
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(steps)))
    dag.add_edges_from(fusion._edges(steps))
    want = [steps[i] for i in nx.lexicographical_topological_sort(dag)]
    assert fusion._schedule(steps) == want
    assert len(want) > 20
