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
    # (a scan's or ifelse's count is checked against its loop body or branches)
    assert {n for n, (lo, hi) in counts.items() if hi is None} == {"concatenate", "split_part", "subtensor", "scatter",
                                                                   "scan", "ifelse"}
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


# -- loops and conditions ----------------------------------------------------------------------------
def _same(got, want):
    for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _round_trips(f, *calls, tmp_path=None):
    """``f`` through dumps/loads, save/load and pickle: the same results on every argument tuple in
    ``calls`` and the same generated source.  Returns the reloaded functions."""
    import pickle

    again = [exprc.loads(exprc.dumps(f)), pickle.loads(pickle.dumps(f))]
    if tmp_path is not None:
        exprc.save(f, tmp_path / "f.json")
        again.append(exprc.load(tmp_path / "f.json"))
    for g in again:
        assert isinstance(g, exprc.Function) and g.backend == f.backend
        assert g.source == f.source
        for args in calls:
            _same(g(*args), f(*args))
    return again


def _rnn():
    r = np.random.default_rng(0)
    w = exprc.shared(r.normal(size=(3, 3)) * 0.5, "W")  # read by the body: hoisted as a loop operand
    xs, h0 = exprc.matrix("xs"), exprc.vector("h0")
    hs, _ = exprc.scan(lambda xt, h: exprc.tanh(exprc.dot(w, h) + xt), sequences=xs, outputs_info=h0)
    loss = (hs ** 2).sum()
    gw, gxs, gh0 = exprc.grad(loss, [w, xs, h0])  # backpropagation through time: a reverse loop
    return [xs, h0], [hs, loss, gw, gxs, gh0]


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_loop_with_shared_weights_and_its_gradient_round_trip(backend, tmp_path):
    ins, outs = _rnn()
    f = exprc.function(ins, outs, backend=backend)
    r = np.random.default_rng(1)
    calls = [(r.normal(size=(n, 3)), r.normal(size=3)) for n in (5, 2)]
    _round_trips(f, *calls, tmp_path=tmp_path)


def test_pickled_train_and_predict_functions_keep_sharing_the_loop_weights():
    import pickle

    w = exprc.shared(np.eye(2) * 0.5, "W")
    xs, h0 = exprc.matrix("xs"), exprc.vector("h0")
    hs, _ = exprc.scan(lambda xt, h: exprc.tanh(exprc.dot(w, h) + xt), sequences=xs, outputs_info=h0)
    loss = (hs ** 2).sum()
    train = exprc.function([xs, h0], loss, updates=[(w, w - 0.1 * exprc.grad(loss, w))], backend="numpy")
    predict = exprc.function([xs, h0], hs[-1], backend="numpy")
    train2, predict2 = pickle.loads(pickle.dumps([train, predict]))
    args = (np.ones((3, 2)), np.array([0.5, -0.5]))
    before = predict2(*args)
    _same(before, predict(*args))
    _same(train2(*args), train(*args))
    after = predict2(*args)
    assert not np.array_equal(after, before)  # train2 moved the W that predict2 reads
    _same(after, predict(*args))  # both pairs trained once


def test_taps_go_backwards_invariants_and_several_results_round_trip():
    x, h0, w = exprc.vector("x"), exprc.matrix("h0"), exprc.scalar("w")

    def step(xm1, x0, x2, hm2, hm1, w_):
        return hm1 * w_ + hm2 * 0.5 + xm1 - x0 * x2, (hm1 * x0).sum()

    (hs, tot), _ = exprc.scan(step, sequences={"input": x, "taps": [-1, 0, 2]},
                              outputs_info=[{"initial": h0, "taps": [-2, -1]}, None], non_sequences=w,
                              go_backwards=True)
    ys, _ = exprc.scan(lambda a, s: s + a, sequences=x, outputs_info=exprc.constant(0.0), n_steps=3)
    f = exprc.function([x, h0, w], [hs, tot, ys])
    r = np.random.default_rng(2)
    g, _ = _round_trips(f, (r.normal(size=8), r.normal(size=(2, 4)), 0.9), (r.normal(size=6), r.normal(size=(3, 2)), 1.1))
    loops = [n.arg("loop") for n in _all_nodes(g.outputs) if n.op == "scan"]
    assert [(lp.go_backwards, lp.seq_taps, lp.state_taps, lp.n_invariants) for lp in loops] == [
        (True, ((-1, 0, 2),), ((-2, -1), None), 1), (False, ((0,),), ((-1,),), 0)]


def test_nested_loops_and_the_gradient_through_them_round_trip():
    a, v = exprc.matrix("a"), exprc.vector("v")

    def outer(row, acc):
        inner, _ = exprc.scan(lambda e, s: s * 0.5 + exprc.sin(e), sequences=row, outputs_info=acc)
        return inner[-1]

    res, _ = exprc.scan(outer, sequences=a, outputs_info=v[0])
    f = exprc.function([a, v], [res, exprc.grad(res.sum(), a)])
    r = np.random.default_rng(3)
    g, _ = _round_trips(f, (r.normal(size=(4, 3)), r.normal(size=2)), (r.normal(size=(2, 5)), r.normal(size=1)))
    # the bodies' placeholders are fresh inputs, not the outer graph's
    outer_inputs = set(g.inputs)
    loops = [n.arg("loop") for n in _all_nodes(g.outputs) if n.op == "scan"]
    assert len(loops) >= 3
    for loop in loops:
        assert all(p.op == "input" and p not in outer_inputs for p in loop.inputs)


def _all_nodes(outputs):
    """Every node, inside loop bodies and branches too."""
    from exprc.graph import toposort

    seen, todo, out = set(), list(outputs), []
    while todo:
        for n in toposort(todo):
            if n not in seen:
                seen.add(n)
                out.append(n)
        todo = []
        for n in out:
            if n.op == "scan" and n.arg("loop") not in seen:
                seen.add(n.arg("loop"))
                todo += list(n.arg("loop").outputs) + list(n.arg("loop").inputs)
            if n.op == "ifelse" and n.arg("branches") not in seen:
                b = n.arg("branches")
                seen.add(b)
                todo += [b.then, b.orelse, *b.inputs]
    return out


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_updates_returned_by_scan_round_trip(backend):
    count = exprc.shared(np.float64(0.0), "count")
    v = exprc.vector("v")
    ys, upd = exprc.scan(lambda e: (e * 2 + count, {count: count + 1}), sequences=v)
    f = exprc.function([v], ys, updates=upd, backend=backend)
    g, h = _round_trips(f)  # (calls change the state: compared by hand below)
    x = np.arange(4.0)
    _same(g(x), f(x))
    _same(h(x), x * 2 + np.arange(4.0))
    assert count.get_value() == 4.0 and g.updates[0][0].get_value() == 4.0
    assert g.updates[0][0] is not count


def test_conditions_while_loops_fori_loops_and_hessians_round_trip():
    s, v = exprc.scalar("s"), exprc.vector("v")
    c = exprc.ifelse(s > 0, exprc.exp(v).sum(), (v * s).sum())
    w = exprc.while_loop(lambda t: t < 100, lambda t: t * 2 + 1, exprc.abs(v).sum())
    fo = exprc.fori_loop(0, 5, lambda i, t: t * 1.5 + exprc.astype(i, "float64"), v)
    inner_if, _ = exprc.scan(lambda e: exprc.ifelse(e > 0, e * 2, -e), sequences=v)
    hess = exprc.hessian((v ** 3).sum() + v[0] * v[1], v)
    f = exprc.function([s, v], [c, exprc.grad(c, v), w, fo, exprc.grad(fo.sum(), v), inner_if, hess])
    r = np.random.default_rng(4)
    _round_trips(f, (1.0, r.normal(size=4)), (-1.0, r.normal(size=3)))


def test_saved_loop_expressions_rebuild_the_same_graph():
    _, outs = _rnn()
    back = exprc.loads(exprc.dumps(outs))
    assert [exprc.pprint(b) for b in back] == [exprc.pprint(o) for o in outs]
    assert [b.type for b in back] == [o.type for o in outs]
    doc = json.loads(exprc.dumps(outs[0]))
    assert doc["version"] == 1  # an old reader would find no loop in an old file: same version
    (scan,) = [e for e in doc["nodes"] if e["op"] == "scan"]
    loop = scan["attrs"]["loop"]
    assert set(loop) == {"body", "seq_taps", "state_taps", "keep", "n_invariants", "until", "go_backwards",
                         "from_sequences", "labels", "name"}
    assert set(loop["body"]) == {"nodes", "inputs", "outputs"} and loop["state_taps"] == [[-1]]


def test_documents_without_loops_still_load():
    # written by exprc before loops could be saved
    old = ('{"format":"exprc-graph","version":1,"exprc":"0.1.0","kind":"expression","nodes":[{"op":"input",'
           '"name":"x","dtype":"float64","shape":[null]},{"op":"constant","dtype":"float64","shape":[],'
           '"data":"AAAAAAAAAEA="},{"op":"mul","inputs":[0,1]},{"op":"sum","inputs":[2],"attrs":{"axis":[0],'
           '"keepdims":false}}],"outputs":[3],"single":true}')
    e = exprc.loads(old)
    (x,) = [n for n in exprc.FunctionGraph((), (e,)).nodes if n.is_input]
    assert exprc.function([x], e)(np.arange(3.0)) == 6.0
    assert exprc.dumps(e) == old


def _nest(depth, v):
    if depth == 0:
        return v * 1.01 + 1
    return exprc.fori_loop(0, 2, lambda i, t: _nest(depth - 1, t), v)


def test_nesting_depth_is_bounded_when_saving_and_loading(monkeypatch):
    from exprc import serialize

    v = exprc.vector("v")
    deepest = _nest(serialize.MAX_NESTING, v)
    f = exprc.function([v], deepest, backend="numpy")
    g = exprc.loads(exprc.dumps(f))  # the deepest that saves also loads (JSON depth within limits)
    _same(g(np.arange(2.0)), f(np.arange(2.0)))
    with pytest.raises(SerializationError, match="nested more than"):
        exprc.dumps(_nest(serialize.MAX_NESTING + 1, v))
    text = exprc.dumps(_nest(3, v))
    monkeypatch.setattr(serialize, "MAX_NESTING", 2)
    with pytest.raises(SerializationError, match=r"node \d+ \(scan\) body: node \d+ \(scan\): .*nested more than 2"):
        exprc.loads(text)


def test_max_nodes_counts_the_nodes_of_loop_bodies():
    _, outs = _rnn()
    text = exprc.dumps(outs[1])
    doc = json.loads(text)
    top = len(doc["nodes"])
    exprc.loads(text, max_nodes=10_000)
    with pytest.raises(SerializationError, match="counting loop bodies"):
        exprc.loads(text, max_nodes=top + 1)


# hostile loops: a base document, one mutation each, the message expected
def _loop_doc():
    x, h0, w = exprc.vector("x"), exprc.vector("h0"), exprc.scalar("w")

    def step(xm1, x0, h, w_):
        return h * w_ + xm1 - x0, (h * x0).sum()

    (hs, tot), _ = exprc.scan(step, sequences={"input": x, "taps": [-1, 0]}, outputs_info=[h0, None],
                              non_sequences=w)
    c = exprc.ifelse(w > 0, hs.sum(), tot.sum() * 2, boundary=[hs, tot])
    return json.loads(exprc.dumps(exprc.function([x, h0, w], [hs, tot, c], backend="numpy")))


def _find(doc, op):
    return next(i for i, e in enumerate(doc["nodes"]) if e["op"] == op)


def _loop_case(fn):
    def make():
        doc = _loop_doc()
        i = _find(doc, "scan")
        fn(doc, doc["nodes"][i], doc["nodes"][i]["attrs"]["loop"])
        return json.dumps(doc)
    return make


def _if_case(fn):
    def make():
        doc = _loop_doc()
        i = _find(doc, "ifelse")
        fn(doc, doc["nodes"][i], doc["nodes"][i]["attrs"]["branches"])
        return json.dumps(doc)
    return make


def _const(dtype, shape=()):
    import base64

    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return {"op": "constant", "dtype": dtype, "shape": list(shape), "data": base64.b64encode(b"\0" * n).decode()}


def _body_append(loop, entry, output=None):
    loop["body"]["nodes"].append(entry)
    if output is not None:
        loop["body"]["outputs"][output] = len(loop["body"]["nodes"]) - 1


SCAN = r"node \d+ \(scan\)"
HOSTILE_LOOPS = {
    "seq taps repeated": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[0, 0]])), "ascending list of distinct"),
    "seq taps unsorted": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[0, -1]])), "ascending list of distinct"),
    "seq taps empty": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[]])), "non-empty"),
    "seq tap huge": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[-1, 10**12]])), "integers in"),
    "seq tap bool": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[-1, True]])), "integers in"),
    "seq tap float": (_loop_case(lambda d, n, lp: lp.update(seq_taps=[[-1, 0.5]])), "integers in"),
    "seq taps not a list": (_loop_case(lambda d, n, lp: lp.update(seq_taps="0")), "seq_taps"),
    "state tap not negative": (_loop_case(lambda d, n, lp: lp.update(state_taps=[[0], None])), r"in \[-\d+, -1\]"),
    "state taps a number": (_loop_case(lambda d, n, lp: lp.update(state_taps=[-1, None])), "state_taps"),
    "keep unknown": (_loop_case(lambda d, n, lp: lp.update(keep=["all", "some"])), "keep must list"),
    "keep too short": (_loop_case(lambda d, n, lp: lp.update(keep=["all"])), "keep must list"),
    "keep last of a result not fed back": (_loop_case(lambda d, n, lp: lp.update(keep=["all", "last"])),
                                           "keep 'last' is only"),
    "n_invariants negative": (_loop_case(lambda d, n, lp: lp.update(n_invariants=-1)), "n_invariants"),
    "n_invariants bool": (_loop_case(lambda d, n, lp: lp.update(n_invariants=True)), "n_invariants"),
    "n_invariants inconsistent": (_loop_case(lambda d, n, lp: lp.update(n_invariants=2)), "need 5 operands"),
    "operand missing": (_loop_case(lambda d, n, lp: n["inputs"].pop()), "need 4 operands"),
    "extra result": (_loop_case(lambda d, n, lp: lp.update(state_taps=[[-1], None, None],
                                                           keep=["all"] * 3)), "3 results need 3"),
    "until without its condition": (_loop_case(lambda d, n, lp: lp.update(until=True)), "until condition need 3"),
    "until a number": (_loop_case(lambda d, n, lp: lp.update(until=1)), "'until' has the wrong type"),
    "go_backwards a string": (_loop_case(lambda d, n, lp: lp.update(go_backwards="yes")), "go_backwards"),
    "until condition a float": (_loop_case(lambda d, n, lp: (lp.update(until=True), lp["body"]["outputs"].append(0))),
                                "until condition must be a 0-d bool"),
    "labels not strings": (_loop_case(lambda d, n, lp: lp.update(labels=[1, 2])), "labels"),
    "labels too many": (_loop_case(lambda d, n, lp: lp.update(labels=["a", "b", "c"])), "labels"),
    "label too long": (_loop_case(lambda d, n, lp: lp.update(labels=["a" * 10_000])), "labels"),
    "name too long": (_loop_case(lambda d, n, lp: lp.update(name="n" * 10_000)), "name longer"),
    "name not a string": (_loop_case(lambda d, n, lp: lp.update(name=None)), "'name' has the wrong type"),
    "field missing": (_loop_case(lambda d, n, lp: lp.pop("keep")), "a loop has the fields"),
    "field unknown": (_loop_case(lambda d, n, lp: lp.update(code="print(1)")), "a loop has the fields"),
    "loop not an object": (_loop_case(lambda d, n, lp: n["attrs"].update(loop=[1])), "must be a JSON object"),
    "loop attribute renamed": (_loop_case(lambda d, n, lp: n.update(attrs={"loops": lp})), "takes the attributes"),
    "loop attribute on another op": (lambda: _mutate(lambda d: d["nodes"][-1]["attrs"].update(loop={"body": {}})),
                                     "unexpected attribute value|takes the attributes"),
    "body not an object": (_loop_case(lambda d, n, lp: lp.update(body=[])), "the body must be an object"),
    "body field unknown": (_loop_case(lambda d, n, lp: lp["body"].update(extra=1)), "the body must be an object"),
    "body input not an input": (_loop_case(lambda d, n, lp: lp["body"]["inputs"].__setitem__(0, 2)),
                                "body input 2 is not an input node"),
    "body input repeated": (_loop_case(lambda d, n, lp: lp["body"]["inputs"].__setitem__(1, lp["body"]["inputs"][0])),
                            "repeat"),
    "body input out of range": (_loop_case(lambda d, n, lp: lp["body"]["inputs"].__setitem__(0, 99)), "body inputs"),
    "body output out of range": (_loop_case(lambda d, n, lp: lp["body"]["outputs"].__setitem__(0, -1)), "body outputs"),
    "body reads an undeclared input": (_loop_case(lambda d, n, lp: _body_append(
        lp, {"op": "input", "name": "free", "dtype": "float64", "shape": []})), "not one of the body's inputs"),
    "body holds a shared variable": (_loop_case(lambda d, n, lp: _body_append(
        lp, {"op": "shared", "name": "s", "dtype": "float64", "shape": [],
             "value": {"shape": [], "data": "AAAAAAAAAAA="}})), "cannot hold a shared variable"),
    "body shared by reference": (_loop_case(lambda d, n, lp: _body_append(lp, {"op": "shared", "ref": 0})),
                                 "cannot hold a shared variable"),
    "body node hostile": (_loop_case(lambda d, n, lp: lp["body"]["nodes"][-1].update(op="system")),
                          SCAN + r" body: node \d+ \(system\): unknown op"),
    "body node forward reference": (_loop_case(lambda d, n, lp: lp["body"]["nodes"][2].update(inputs=[0, 7])),
                                    SCAN + r" body: node 2 \(mul\): operand"),
    "placeholder dtype": (_loop_case(lambda d, n, lp: lp["body"]["nodes"][lp["body"]["inputs"][0]].update(
        dtype="float32")), "placeholder of sequence 0 tap -1 is float32"),
    "placeholder ndim": (_loop_case(lambda d, n, lp: lp["body"]["nodes"][lp["body"]["inputs"][-1]].update(
        shape=[None])), "placeholder of invariant 0"),
    "placeholder fixes a size the operand does not": (_loop_case(
        lambda d, n, lp: lp["body"]["nodes"][lp["body"]["inputs"][2]].update(shape=[3])),
        "placeholder of result 0 tap -1"),
    "result dtype differs from its state": (_loop_case(lambda d, n, lp: _body_append(lp, _const("int64", (3,)), 0)),
                                            "the body's result 0 is"),
    "result shape differs from its state": (_loop_case(lambda d, n, lp: _body_append(lp, _const("float64"), 0)),
                                            "the body's result 0 is"),
    "n_steps negative": (_loop_case(lambda d, n, lp: lp.update(from_sequences=False)), "n_steps .* is the constant -1"),
    "while_loop without its until": (lambda: _while_case(lambda d, n, lp: (lp.update(until=False),
                                                                          lp["body"]["outputs"].pop())),
                                     "constant 4611686018427387904: more than .* until condition stops"),
    "n_steps a float": (_loop_case(lambda d, n, lp: d["nodes"][n["inputs"][0]].update(dtype="float64")),
                        "n_steps"),
    "sequence a scalar": (_loop_case(lambda d, n, lp: n["inputs"].__setitem__(1, n["inputs"][-1])),
                          "sequence 0 .* is 0-d"),
    "from_sequences without sequences": (lambda: _fori_case(lambda lp: lp.update(from_sequences=True)),
                                         "from_sequences needs"),
    "loop node read directly": (_loop_case(lambda d, n, lp: d["nodes"].append({"op": "neg", "inputs": [
        d["nodes"].index(n)]})), r"reads the loop node \d+ directly"),
    "loop node as output": (_loop_case(lambda d, n, lp: d.update(outputs=[d["nodes"].index(n)])),
                            "an output is a loop node"),
    "loop node as body output": (lambda: _fori_case(lambda lp: lp["body"]["outputs"].__setitem__(
        0, _find(lp["body"], "scan"))), "body output .* is a loop node"),
    "scan_output k too large": (lambda: _mutate_op("scan_output", lambda e: e["attrs"].update(k=2)),
                                r"node \d+ \(scan_output\): .*k must be one of the loop's 2 results"),
    "scan_output k negative": (lambda: _mutate_op("scan_output", lambda e: e["attrs"].update(k=-1)), "k must be"),
    "scan_output k bool": (lambda: _mutate_op("scan_output", lambda e: e["attrs"].update(k=True)), "k must be"),
    "scan_output of another node": (lambda: _mutate_op("scan_output", lambda e: e.update(inputs=[1])),
                                    "must be a loop"),
    "branches one output": (_if_case(lambda d, n, b: b["body"]["outputs"].pop()), "2 outputs"),
    "branches placeholder missing": (_if_case(lambda d, n, b: n["inputs"].append(1)), "placeholders for"),
    "branches dtypes differ": (_if_case(lambda d, n, b: _body_append(b, _const("int64"), 1)),
                               r"node \d+ \(ifelse\): bad branches: then is float64"),
    "branches ndim differ": (_if_case(lambda d, n, b: _body_append(b, _const("float64", (2,)), 1)),
                             "then is float64"),
    "branches condition a float": (_if_case(lambda d, n, b: n["inputs"].__setitem__(0, _find(d, "scan_output") + 1)),
                                   "condition .* must be a 0-d bool"),
    "branches field unknown": (_if_case(lambda d, n, b: b.update(then=0)), "have the field"),
    "branches placeholder type": (_if_case(lambda d, n, b: b["body"]["nodes"][b["body"]["inputs"][0]].update(
        dtype="int32")), "placeholder of operand 1"),
}


def _mutate_op(op, fn):
    doc = _loop_doc()
    fn(doc["nodes"][_find(doc, op)])
    return json.dumps(doc)


def _while_case(fn):
    v = exprc.scalar("v")
    doc = json.loads(exprc.dumps(exprc.while_loop(lambda t: t < 100, lambda t: t * 2 + 1, v)))
    i = _find(doc, "scan")
    fn(doc, doc["nodes"][i], doc["nodes"][i]["attrs"]["loop"])
    return json.dumps(doc)


def _fori_case(fn):
    v = exprc.vector("v")
    doc = json.loads(exprc.dumps(_nest(2, v)))
    fn(doc["nodes"][_find(doc, "scan")]["attrs"]["loop"])
    return json.dumps(doc)


def test_the_hostile_loop_base_document_loads_and_runs():
    g = exprc.loads(json.dumps(_loop_doc()))
    hs, tot, c = g(np.arange(5.0), np.ones(2), 0.5)
    assert hs.shape == (4, 2) and tot.shape == (4,) and c == hs.sum()
    back = exprc.loads(_fori_case(lambda lp: None))  # the base of the cases that mutate a nested fori_loop
    assert back.type.shape == (None,)
    w = exprc.loads(_while_case(lambda *a: None))
    (v,) = [n for n in exprc.FunctionGraph((), (w,)).nodes if n.is_input]
    assert exprc.function([v], w)(3.0) == 127.0


@pytest.mark.parametrize("case", sorted(HOSTILE_LOOPS))
def test_malformed_loops_and_conditions_give_a_clear_error(case, tmp_path):
    make, want = HOSTILE_LOOPS[case]
    text = make()
    with pytest.raises(SerializationError, match=want):
        exprc.loads(text)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SerializationError, match="bad.json"):
        exprc.load(path)


def _slots(obj, path=()):
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield (*path, k)
        yield from _slots(v, (*path, k))


FUZZ_VALUES = [None, True, False, 0, 1, 2, -1, -2, 3, 10**9, -(10**9), 0.5, "", "all", "last", "x", "input", "scan",
               "float32", "int64", [], [0], [-1], [None], [3], [[-1]], [[0, 1]], [-1, 0], {}, {"a": 1}]


@pytest.mark.parametrize("which", ["loop and condition", "gradient"])
def test_random_corruptions_of_loops_never_crash_or_fail_unclearly(which):
    """Change, drop or add one to three values anywhere in the loops' and conditions' nodes (their
    small fields and their bodies): loading raises SerializationError or gives a function whose
    call works or raises an exprc error (never another exception)."""
    import copy

    r = np.random.default_rng(5)
    if which == "gradient":
        ins, outs = _rnn()
        base = json.loads(exprc.dumps(exprc.function(ins, outs[2:], backend="numpy")))
        args = (np.ones((3, 3)), np.ones(3))
    else:
        base = _loop_doc()
        args = (np.arange(6.0), np.ones(2), 0.5)
    control = [i for i, e in enumerate(base["nodes"]) if e["op"] in ("scan", "scan_output", "ifelse")]
    slots = [(i, p) for i in control for p in _slots(base["nodes"][i])]
    outcomes = {"refused": 0, "ran": 0, "exprc error": 0}
    for _ in range(250):
        doc = json.loads(json.dumps(base))
        for _ in range(r.integers(1, 4)):
            i, path = slots[r.integers(len(slots))]
            target = doc["nodes"][i]
            try:
                for k in path[:-1]:
                    target = target[k]
                key = path[-1]
                how = r.integers(6)
                value = copy.deepcopy(FUZZ_VALUES[r.integers(len(FUZZ_VALUES))])
                if how == 0 and isinstance(target, dict):
                    target.pop(key, None)
                elif how == 1 and isinstance(target, list):
                    target.append(value)
                else:
                    target[key] = value
            except (KeyError, IndexError, TypeError):  # an earlier change removed the path
                pass
        try:
            g = exprc.loads(json.dumps(doc))
        except SerializationError as exc:
            assert str(exc)
            outcomes["refused"] += 1
            continue
        try:
            g(*args)
            outcomes["ran"] += 1
        except ExprcError:
            outcomes["exprc error"] += 1
        except ValueError as exc:  # the NumPy backend's matmul reports mismatched sizes as NumPy does, loops or not
            assert "matmul" in str(exc)
            outcomes["exprc error"] += 1
    assert outcomes["refused"] > 100, outcomes


def _edit(doc, select, fn):
    """Apply ``fn`` to every node dict of a dumped graph ``doc`` that ``select`` picks (in place)."""
    if isinstance(doc, dict):
        if select(doc):
            fn(doc)
        for val in doc.values():
            _edit(val, select, fn)
    elif isinstance(doc, list):
        for val in doc:
            _edit(val, select, fn)


def test_guards_of_optimized_graphs_round_trip_and_older_files_load():
    """An optimized graph's guards: rare(c, everywhere) keeps its attribute through dumps/loads (the
    row-wise softmax's, True; exp(x)/expm1(x)'s, False); a file written before the attribute existed
    (rare without attributes) loads as everywhere=False; a non-bool attribute is refused."""
    m, v = exprc.matrix("m"), exprc.vector("v")
    outs = list(exprc.function([m], exprc.exp(m) / exprc.sum(exprc.exp(m), axis=1, keepdims=True)).graph.outputs)
    outs += list(exprc.function([v], exprc.exp(v) / exprc.expm1(v)).graph.outputs)
    flags = [n.arg("everywhere") for n in exprc.graph.toposort(outs) if n.op == "rare"]
    assert sorted(flags) == [False, True]
    back = exprc.loads(exprc.dumps(outs))
    assert sorted(n.arg("everywhere") for n in exprc.graph.toposort(back) if n.op == "rare") == [False, True]

    def edit(o, fn):
        _edit(o, lambda e: e.get("op") == "rare", fn)

    old = json.loads(exprc.dumps(outs))
    edit(old, lambda e: e.pop("attrs", None))
    assert [n.arg("everywhere") for n in exprc.graph.toposort(exprc.loads(json.dumps(old))) if n.op == "rare"] \
        == [False, False]
    bad = json.loads(exprc.dumps(outs))
    edit(bad, lambda e: e.__setitem__("attrs", {"everywhere": "yes"}))
    with pytest.raises(SerializationError, match="everywhere must be a bool"):
        exprc.loads(json.dumps(bad))


def test_the_identity_of_a_stable_forms_max_round_trips_and_is_checked():
    """max(x, identity=True) (the shift of exprc.logsumexp and of the stability rules' forms: -inf over
    an empty axis) keeps its attribute through dumps/loads, so the loaded function still gives -inf
    there; a max saved without it is NumPy's (raises there); identity other than true is refused."""
    from exprc.errors import ShapeError

    m = exprc.matrix("m")
    outs = [exprc.logsumexp(m, axis=1), exprc.max(m, axis=1)]
    back = exprc.loads(exprc.dumps(outs))
    flags = sorted(bool(n.arg("identity")) for n in exprc.graph.toposort(back) if n.op == "max")
    assert flags == [False, True]
    ins = [n for n in exprc.graph.toposort(back) if n.is_input]
    lse = exprc.function(ins, back[0])
    np.testing.assert_array_equal(lse(np.zeros((2, 0))), [-np.inf, -np.inf])
    with pytest.raises(ShapeError, match="zero-size"):
        exprc.function(ins, back[1])(np.zeros((2, 0)))

    def edit(o, fn):
        _edit(o, lambda e: e.get("op") == "max" and "identity" in (e.get("attrs") or {}), fn)

    for value in (False, "yes", 1):
        bad = json.loads(exprc.dumps(outs))
        edit(bad, lambda e, v=value: e["attrs"].__setitem__("identity", v))
        with pytest.raises(SerializationError, match="identity must be True"):
            exprc.loads(json.dumps(bad))
    bad = json.loads(exprc.dumps(outs))
    edit(bad, lambda e: e["attrs"].__setitem__("initial", 0))
    with pytest.raises(SerializationError, match="optionally"):
        exprc.loads(json.dumps(bad))
