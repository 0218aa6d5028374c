"""exprc.save / exprc.load: round trips, the documented format, and hostile files (public API only)."""

import json

import numpy as np
import pytest

import exprc
from exprc.errors import ExprcError, SerializationError


def _expr():
    x = exprc.vector("x")
    m = exprc.matrix("m", "float32", shape=(None, 3))
    i = exprc.scalar("i", "int64")
    e = (exprc.sum(exprc.tanh(m.T[1:, None] * 2), axis=0) + exprc.log1p(exprc.abs(x))[::2].sum()
         + exprc.constant([1, 2, 3]).astype("float32").sum() + exprc.where(x[0] > 0, i, -i)
         + exprc.reshape(exprc.concatenate([x, x]), (-1, 2)).max(axis=1).sum()
         + exprc.logsumexp(exprc.broadcast_to(x[:1], (2, 1)), axis=0)[0])
    return (x, m, i), e


def _args():
    return (np.array([0.5, -1.0, 2.0, 3.0]), np.arange(6, dtype=np.float32).reshape(2, 3), np.int64(7))


def test_expression_round_trip(tmp_path):
    ins, e = _expr()
    path = tmp_path / "graph.json"
    exprc.save(e, path)
    e2 = exprc.load(path)
    assert isinstance(e2, exprc.Node) and e2 is not e
    assert exprc.pprint(e2) == exprc.pprint(e) and e2.type == e.type
    ins2 = sorted((n for n in exprc.FunctionGraph((), (e2,)).nodes if n.is_input), key=lambda n: n.name)
    f = exprc.function(sorted(ins, key=lambda n: n.name), e)
    f2 = exprc.function(ins2, e2)
    a = dict(zip("xmi", _args()))
    np.testing.assert_array_equal(f(a["i"], a["m"], a["x"]), f2(a["i"], a["m"], a["x"]))
    doc = json.loads(path.read_text())
    assert doc["format"] == "exprc-graph" and doc["version"] == 1 and doc["kind"] == "expression"
    lst = exprc.loads(exprc.dumps([e, ins[0] * 2]))
    assert isinstance(lst, list) and len(lst) == 2 and exprc.pprint(lst[1]) == "x * 2.0"
    # the same input in both outputs stays one input
    assert {n for n in exprc.FunctionGraph((), tuple(lst)).nodes if n.is_input and n.name == "x"}.__len__() == 1


def test_constants_keep_exact_values():
    vals = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324, 1 / 3, np.finfo(np.float64).max])
    c = exprc.constant(vals)
    back = exprc.loads(exprc.dumps(c))
    assert back.value.tobytes() == vals.tobytes()
    for v in (np.array([True, False]), np.arange(3, dtype=np.int32), np.float32(1.1), np.int64(-2**63)):
        back = exprc.loads(exprc.dumps(exprc.constant(v)))
        assert back.dtype == np.asarray(v).dtype.name and back.value.tobytes() == np.asarray(v).tobytes()


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_function_round_trip_with_updates_and_options(backend):
    x = exprc.vector("x", "float32")
    w = exprc.shared(np.ones(3, np.float32), "w")
    f = exprc.function([x], [w * x, exprc.sum(x)], updates=[(w, w + x)], backend=backend, allow_downcast=True,
                       exclude=["fold"])
    f(np.ones(3, np.float32))
    g = exprc.loads(exprc.dumps(f))
    assert isinstance(g, exprc.Function) and g.backend == backend
    assert g.inputs[0].name == "x" and g.allow_downcast and "fold" in g.config.exclude
    out, total = g(np.array([1.0, 2.0, 3.0]))  # float64 data: allow_downcast was kept
    np.testing.assert_array_equal(out, [2.0, 4.0, 6.0])  # w was saved as [2, 2, 2]
    assert total == 6.0
    (w2, _), = g.updates
    assert w2 is not w and w2.get_value().tolist() == [3.0, 4.0, 5.0]
    assert w.get_value().tolist() == [2.0, 2.0, 2.0]  # the original is untouched
    single = exprc.loads(exprc.dumps(exprc.function([x], x * 2, backend=backend)))
    assert single(np.ones(2, np.float32)).tolist() == [2.0, 2.0]


def test_deep_graphs_save_and_load_iteratively():
    x = exprc.scalar("x")
    e = x
    for i in range(6_000):  # far past Python's recursion limit
        e = e * 1.0001 + 1e-6 if i % 2 else exprc.sin(e)
    back = exprc.loads(exprc.dumps(e))
    assert back.type == e.type and back is not e
    nodes = exprc.FunctionGraph((), (back,)).nodes
    assert len(nodes) == len(exprc.FunctionGraph((), (e,)).nodes)
    assert exprc.pprint(back) == exprc.pprint(e)


def test_custom_ops_must_be_registered_to_load():
    cube = exprc.custom_op("ser_cube", numpy=lambda a: a * a * a, c="({0} * {0} * {0})")
    x = exprc.vector("x")
    text = exprc.dumps(cube(x) + 1)
    back = exprc.loads(text)
    assert exprc.pprint(back) == "ser_cube(x) + 1.0"
    with pytest.raises(SerializationError, match="unknown op 'not_registered_op'"):
        exprc.loads(text.replace("ser_cube", "not_registered_op"))


def _doc():
    x = exprc.vector("x")
    return json.loads(exprc.dumps(exprc.sum(x * 2.0, axis=0)))


def _mutate(fn):
    doc = _doc()
    fn(doc)
    return json.dumps(doc)


HOSTILE = {
    "truncated": lambda: exprc.dumps(exprc.vector("x") + 1)[:-7],
    "empty": lambda: "",
    "not an object": lambda: "[1, 2, 3]",
    "other format": lambda: json.dumps({"format": "something", "version": 1}),
    "newer version": lambda: _mutate(lambda d: d.update(version=2)),
    "version as string": lambda: _mutate(lambda d: d.update(version="1")),
    "unknown op": lambda: _mutate(lambda d: d["nodes"][-1].update(op="system")),
    "leaf op as operation": lambda: _mutate(lambda d: d["nodes"][-1].update(op="input")),
    "dunder op": lambda: _mutate(lambda d: d["nodes"][-1].update(op="__class__")),
    "nodes not a list": lambda: _mutate(lambda d: d.update(nodes={"a": 1})),
    "node not an object": lambda: _mutate(lambda d: d["nodes"].append(3)),
    "dtype unknown": lambda: _mutate(lambda d: d["nodes"][0].update(dtype="object")),
    "dtype wrong type": lambda: _mutate(lambda d: d["nodes"][0].update(dtype=7)),
    "forward reference": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[5])),
    "self reference": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[len(d["nodes"]) - 1])),
    "negative reference": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[-1])),
    "bool as index": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[True])),
    "output out of range": lambda: _mutate(lambda d: d.update(outputs=[99])),
    "no operands": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[])),
    "wrong arity": lambda: _mutate(lambda d: d["nodes"][-1].update(inputs=[0, 0, 0])),
    "attribute injection": lambda: _mutate(
        lambda d: d["nodes"][-1]["attrs"].update({"x=__import__('os').system('echo pwned'),y": 1})),
    "attribute object": lambda: _mutate(lambda d: d["nodes"][-1]["attrs"].update(axis={"a": 1})),
    "axis out of range": lambda: _mutate(lambda d: d["nodes"][-1]["attrs"].update(axis=[5])),
    "negative axis": lambda: _mutate(lambda d: d["nodes"][-1]["attrs"].update(axis=[-1])),
    "keepdims not bool": lambda: _mutate(lambda d: d["nodes"][-1]["attrs"].update(keepdims=1)),
    "huge input shape": lambda: _mutate(lambda d: d["nodes"][0].update(shape=[10**30])),
    "negative size": lambda: _mutate(lambda d: d["nodes"][0].update(shape=[-1])),
    "too many dims": lambda: _mutate(lambda d: d["nodes"][0].update(shape=[None] * 40)),
    "float size": lambda: _mutate(lambda d: d["nodes"][0].update(shape=[2.5])),
    "huge constant shape": lambda: _mutate(lambda d: d["nodes"][1].update(shape=[10**12])),
    "constant data short": lambda: _mutate(lambda d: d["nodes"][1].update(shape=[3])),
    "constant data not base64": lambda: _mutate(lambda d: d["nodes"][1].update(data="@@@@")),
    "constant data not a string": lambda: _mutate(lambda d: d["nodes"][1].update(data=[1, 2])),
    "NaN literal": lambda: exprc.dumps(exprc.vector("x") * 2).replace('"version":1', '"version":NaN'),
    "name too long": lambda: _mutate(lambda d: d["nodes"][0].update(name="x" * 5000)),
    "name not a string": lambda: _mutate(lambda d: d["nodes"][0].update(name=["x"])),
    "deep nesting": lambda: '{"format": "exprc-graph", "version": 1, "kind": "expression", "nodes": '
                            + "[" * 100_000 + "]" * 100_000 + "}",
    "kind unknown": lambda: _mutate(lambda d: d.update(kind="module")),
    "ref outside pickle": lambda: json.dumps({**_doc(), "nodes": [{"op": "shared", "ref": 0}], "outputs": [0]}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_or_hostile_files_give_a_clear_error(case, tmp_path, capfd):
    text = HOSTILE[case]()
    with pytest.raises(SerializationError) as exc:
        exprc.loads(text)
    assert isinstance(exc.value, ExprcError) and str(exc.value)
    assert "pwned" not in capfd.readouterr().out
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SerializationError, match="bad.json"):
        exprc.load(path)


@pytest.mark.parametrize(("build", "op", "refs", "want"), [
    (lambda x: x * x, "mul", [0], "takes 2 operands, got 1"),  # crashed a rewrite (IndexError)
    (lambda x: x + x, "add", [0, 0, 0, 0], "takes 2 operands, got 4"),  # computed x + x on C
    (lambda x: exprc.exp(x), "exp", [0, 0], "takes 1 operand, got 2"),  # loaded
    (lambda x: exprc.where(x > 0, x, x), "where", [1, 0], "takes 3 operands, got 2"),
    (lambda x: exprc.sum(x), "sum", [0, 0], "takes 1 operand, got 2"),
    (lambda x: exprc.reshape(x, (-1,)), "reshape", [0, 0], "takes 1 operand, got 2"),
    (lambda x: exprc.matmul(x, x), "matmul", [0, 0, 0], "takes 2 operands, got 3"),
])
def test_operand_counts_are_checked_on_load(build, op, refs, want):
    x = exprc.vector("x")
    doc = json.loads(exprc.dumps(build(x)))
    last = len(doc["nodes"]) - 1
    assert doc["nodes"][last]["op"] == op
    doc["nodes"][last]["inputs"] = refs
    with pytest.raises(SerializationError, match=f"node {last}: op '{op}' {want}"):
        exprc.loads(json.dumps(doc))


def test_every_op_row_knows_its_operand_count():
    import exprc.custom
    from exprc.ops import OPS
    from exprc.serialize import arity

    custom = set(exprc.custom.custom_ops())  # ops other test modules made in this process
    counts = {name: arity(row) for name, row in OPS.items() if row.kind != "leaf" and name not in custom}
    assert {n for n, (lo, hi) in counts.items() if hi is None} == {"concatenate", "split_part", "subtensor", "scatter"}
    assert counts["where"] == (3, 3) and counts["fill"] == (2, 2) and counts["neg"] == (1, 1)
    x = exprc.vector("x")
    for e in (exprc.concatenate([x, x, x]), exprc.sum(exprc.exp(x) * x), exprc.log1p(x) ** 2):
        back = exprc.loads(exprc.dumps(e))  # what exprc writes still loads
        assert exprc.pprint(back) == exprc.pprint(e) and back.type == e.type


def test_broadcast_to_a_huge_shape_is_refused():
    x = exprc.scalar("x")
    doc = json.loads(exprc.dumps(exprc.broadcast_to(x, (2, 3))))
    doc["nodes"][-1]["attrs"]["shape"] = [2**40, 2**40]
    with pytest.raises(SerializationError, match="2\\*\\*48"):
        exprc.loads(json.dumps(doc))


def test_size_limits_and_unreadable_files(tmp_path):
    text = exprc.dumps(exprc.vector("x") * 2)
    with pytest.raises(SerializationError, match="max_bytes"):
        exprc.loads(text, max_bytes=10)
    with pytest.raises(SerializationError, match="max_nodes"):
        exprc.loads(text, max_nodes=1)
    with pytest.raises(SerializationError, match="cannot read"):
        exprc.load(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="expected an expression"):
        exprc.dumps(object())


def test_loading_a_long_chain_runs_each_type_rule_once_per_signature(monkeypatch):
    # Loading a saved 1M-node chain took over 60 s: every node re-ran its type rule (promotion,
    # casts, broadcasting).  A rule depends only on operand types and attributes: once per signature.
    import dataclasses

    from exprc.ops import OPS

    x = exprc.vector("x")
    e = x
    for i in range(20_000):
        e = exprc.sin(e) if i % 2 else e * 0.5
    text = exprc.dumps(e)
    calls = {"sin": 0, "mul": 0}
    for name in calls:
        row = OPS[name]

        def counting(inputs, attrs, _infer=row.infer, _name=name):
            calls[_name] += 1
            return _infer(inputs, attrs)

        monkeypatch.setitem(OPS, name, dataclasses.replace(row, infer=counting))
    back = exprc.loads(text)
    assert calls == {"sin": 1, "mul": 1}
    assert back.type == e.type and exprc.pprint(back, max_nodes=20) == exprc.pprint(e, max_nodes=20)
    doc = json.loads(text)
    doc["nodes"][-1]["inputs"] = [0, 0]  # a signature seen before, with a wrong count: still refused
    with pytest.raises(SerializationError, match="takes 1 operand, got 2"):
        exprc.loads(json.dumps(doc))
