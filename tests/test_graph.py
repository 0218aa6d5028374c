"""The IR: immutable interned nodes, iterative traversals on deep graphs, the networkx bridge."""

import gc
import sys
import weakref

import networkx as nx
import numpy as np
import pytest

import exprc
from exprc.graph import Node, substitute, toposort


def test_interning_same_expression_same_object():
    x, y = exprc.vector("x"), exprc.vector("y")
    assert (exprc.log1p(x) * y) is (exprc.log1p(x) * y)
    assert (x + 1.0) is (x + 1.0)
    assert exprc.sum(x, axis=0) is x.sum(axis=0)
    assert exprc.constant([1.0, 2.0]) is exprc.constant(np.array([1.0, 2.0]))
    assert (x + 1.0) is not (x + 2.0)
    assert exprc.constant(0.0) is not exprc.constant(-0.0)  # constants compare by bytes
    assert exprc.constant(1, "int32") is not exprc.constant(1, "int64")
    assert exprc.vector("x") is not x  # variables are never merged, even with equal names


def test_nodes_are_immutable_and_hash_by_identity():
    x = exprc.vector("x")
    e = x * 2.0
    with pytest.raises(AttributeError):
        e.op = "add"
    with pytest.raises(AttributeError):
        e.inputs = ()
    same = e
    assert e == same and e != x
    assert {e: 1}[x * 2.0] == 1
    with pytest.raises(TypeError):
        bool(x > 0)
    with pytest.raises(TypeError):
        iter(x)


def test_node_fields():
    x = exprc.matrix("x", "float32", shape=(None, 3))
    e = x.sum(axis=1)
    assert e.op == "sum" and e.inputs == (x,) and e.arg("axis") == (1,) and e.arg("keepdims") is False
    assert x.name == "x" and x.is_input and not e.is_input and e.name is None
    assert exprc.constant(2.0).is_constant and exprc.constant(2.0).value == 2.0
    with pytest.raises(AttributeError):
        _ = x.value
    assert len(exprc.vector("v", shape=(4,))) == 4
    with pytest.raises(TypeError):
        len(x)


def test_toposort_inputs_first_and_shared_once():
    x = exprc.vector("x")
    a = exprc.exp(x)
    out = a * a + a
    order = toposort([out])
    assert order[-1] is out and order[0] is x
    assert len(order) == len(set(order)) == 4
    for i, n in enumerate(order):
        assert all(order.index(j) < i for j in n.inputs)


def test_substitute_rebuilds_types():
    x = exprc.vector("x")
    y = exprc.vector("y", "float32")
    e = exprc.exp(x) * exprc.sqrt(x)
    (e2,) = substitute([e], {x: y})
    assert e2.dtype == "float32" and e2.inputs[0].inputs[0] is y
    assert e2 is exprc.exp(y) * exprc.sqrt(y)


CHAIN = 100_000
STEPS = 2 * CHAIN // 3 + 2  # each pair of steps adds three op nodes: add, tanh, mul


def test_deep_chain_builds_prints_optimizes_evaluates_and_is_freed():
    limit = sys.getrecursionlimit()
    x = exprc.vector("x")
    y = x
    for i in range(STEPS):
        y = exprc.tanh(y) * 0.5 if i % 2 else y + 1.0
    assert len(toposort([y])) >= CHAIN
    data = np.array([-1.0, 0.0, 2.0])
    ref = data.copy()
    for i in range(STEPS):
        ref = np.tanh(ref) * 0.5 if i % 2 else ref + 1.0

    text = exprc.pprint(y)
    assert text.startswith("tanh(") and text.count("tanh(") == STEPS // 2
    tree = exprc.debugprint(y)
    assert tree.count("\n") + 1 >= CHAIN and "mul float64[?]" in tree.splitlines()[0]
    assert len(max(tree.splitlines(), key=len)) < 200  # indentation stays bounded
    assert "Tensor(float64[?]" in repr(y)
    g = exprc.optimize(y)
    assert g.outputs[0].op == "mul"
    np.testing.assert_allclose(y.eval({x: data}), ref, rtol=1e-12)
    f = exprc.function([x], y, backend="numpy")
    np.testing.assert_allclose(f(data), ref, rtol=1e-12)
    assert sys.getrecursionlimit() == limit

    alive = weakref.ref(y)
    inner = weakref.ref(y.inputs[0].inputs[0])
    del y, g, f, text, tree
    gc.collect()
    assert alive() is None and inner() is None


def _roundtrip(outs):
    g = exprc.to_networkx(outs)
    assert isinstance(g, nx.MultiDiGraph)
    return g, exprc.from_networkx(g)


def test_networkx_keeps_operand_order_and_multi_edges():
    x, y = exprc.vector("x"), exprc.vector("y")
    sq = x * x
    g, back = _roundtrip([sq, x - y, y - x])
    assert back[0] is sq and back[1] is x - y and back[2] is y - x
    ids = {d["node"]: i for i, d in g.nodes(data=True)}
    assert g.number_of_edges(ids[x], ids[sq]) == 2
    assert sorted(d["pos"] for _, _, d in g.in_edges(ids[x - y], data=True)) == [0, 1]
    data = {x: np.array([1.0, 4.0]), y: np.array([3.0, 2.0])}
    np.testing.assert_array_equal(back[1].eval(data), data[x] - data[y])


def test_from_networkx_rebuilds_edited_graph():
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.exp(x - y)
    g = exprc.to_networkx([e])
    ids = {d["node"]: i for i, d in g.nodes(data=True)}
    sub = ids[x - y]
    # swap the operands of x - y by editing edge positions
    for u, v, k, d in list(g.in_edges(sub, keys=True, data=True)):
        d["pos"] = 1 - d["pos"]
    (e2,) = exprc.from_networkx(g)
    assert e2 is exprc.exp(y - x)


def test_deep_chain_networkx_roundtrip_is_iterative():
    x = exprc.vector("x")
    y = x
    for _ in range(20_000):
        y = exprc.sin(y)
    (back,) = exprc.from_networkx(exprc.to_networkx([y]))
    assert back is y


def test_node_class_exported():
    assert exprc.Node is Node
