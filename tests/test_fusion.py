"""exprc.fusion: merging independent elementwise kernels (``_merge_siblings``).

The pass finds, for each elementwise kernel, the first earlier one it may join from the index of the
last step it reads (issue 13: it asked networkx for a path between every pair of steps, cubic in the
steps).  These tests pin its merges to the pairwise definition, kept here as the reference.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

import exprc
from exprc import fusion
from exprc.function import clear_memo
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


def test_cheap_shared_nodes_are_recomputed_not_stored(monkeypatch):
    """logsumexp's stable form reads y = x - max(x) and its mask y == 0 in two reductions: each
    reduction recomputes them from x (4 kernels, no (rows, n) temporary) where they used to be two
    kernels writing two matrices (6).  An expensive shared node (exp) is still computed once."""
    x = exprc.matrix("x")
    lse = exprc.function([x], exprc.log(exprc.sum(exprc.exp(x), axis=-1)), config=exprc.Config(row_fusion=False))
    assert len(lse.kernels) == 4
    program = lower(list(lse.graph.outputs), [x], epilogues=True)
    assert not [n for n in program.materialized if n.ndim == 2 and n.type.shape[-1] != 1]  # (rows, n)
    monkeypatch.setattr(fusion, "MAX_COPIES", 0)
    assert len(lower(list(lse.graph.outputs), [x], epilogues=True).kernels) == 6
    monkeypatch.undo()
    e = exprc.exp(x)
    program = lower([exprc.sum(e, axis=-1), e * 2.0 + 1.0], [x])
    assert sum(n.op == "exp" for k in program.kernels for n in k.body) == 1
    # an output is stored, never only recomputed
    y = x - 1.0
    program = lower([y, exprc.sum(y * y, axis=-1), exprc.max(y, axis=-1)], [x])
    assert y in program.materialized


@pytest.mark.parametrize("threads", [1, 2])
def test_recomputed_nodes_give_the_reference_bits(threads, monkeypatch):
    """Differential: graphs whose cheap nodes (sub, eq, where, mul, cast) feed several reductions and
    elementwise outputs, with a broadcast operand, NaN/inf rows, empty rows and a strided view, against
    the NumPy backend; and the same bits as without recomputing (every op copied is exact in IEEE)."""
    x, c = exprc.matrix("x"), exprc.matrix("c")
    y = x - exprc.max(x, axis=-1, keepdims=True)
    top = exprc.equal(y, 0.0)
    d = exprc.where(top, y * c, -y)
    outs = [exprc.sum(exprc.where(top, 0.0, exprc.exp(y)), axis=-1), exprc.sum(top.astype("float64"), axis=-1),
            exprc.min(d, axis=-1), d + y, exprc.log(exprc.sum(exprc.exp(x), axis=-1, keepdims=True)) - x]
    rng = np.random.default_rng(5)
    xv = rng.normal(size=(37, 13)) * 4
    xv[3] = np.nan
    xv[5, 2] = np.inf
    xv[7, :] = -np.inf
    cv = rng.normal(size=(37, 1))
    cfg = exprc.Config(num_threads=threads, row_fusion=False)  # (row kernels recompute in their passes)
    f = exprc.function([x, c], outs, config=cfg)
    ref = exprc.function([x, c], outs, backend="numpy")
    monkeypatch.setattr(fusion, "MAX_COPIES", 0)
    # (the graph index keys on exprc's files, not on a patched module: without it, this compile would
    # load the record the first one wrote)
    monkeypatch.setenv("EXPRC_GRAPH_INDEX", "0")
    clear_memo()
    stored = exprc.function([x, c], outs, config=cfg)  # (every shared node in a temporary)
    monkeypatch.undo()
    clear_memo()
    assert len(stored.kernels) > len(f.kernels)
    for args in ((xv, cv), (xv[:, ::2], cv), (xv[:0], cv[:0]), (np.asfortranarray(xv), cv)):
        with np.errstate(all="ignore"):
            got, want, before = f(*args), ref(*args), stored(*args)
        for g, w, b in zip(got, want, before):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=0)
            np.testing.assert_array_equal(g, b)


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


# -- row kernels -------------------------------------------------------------------------------------

def _row_cases(dtype="float64"):
    z, y = exprc.matrix("z", dtype), exprc.matrix("y", dtype)
    b = exprc.vector("b", dtype)
    zb = z + b

    def lsm(a):
        return a - exprc.max(a, axis=1, keepdims=True) - exprc.log(
            exprc.sum(exprc.exp(a - exprc.max(a, axis=1, keepdims=True)), axis=1, keepdims=True))

    mu = exprc.mean(z, axis=1, keepdims=True)
    return {
        "softmax": ([z, b], [exprc.softmax(zb, axis=1)]),
        "log_softmax": ([z, b], [lsm(zb)]),
        "logsumexp": ([z], [exprc.logsumexp(z, axis=1)]),
        "standardize": ([z], [(z - mu) / exprc.sqrt(exprc.mean((z - mu) ** 2, axis=1, keepdims=True) + 1e-5)]),
        "xent_and_grad": ([z, b, y], [-exprc.mean(exprc.sum(y * exprc.log(exprc.softmax(zb, axis=1)), axis=1)),
                                      exprc.grad(-exprc.mean(exprc.sum(y * exprc.log(exprc.softmax(zb, axis=1)),
                                                                       axis=1)), [z])[0]]),
        "minmax": ([z], [z - exprc.min(z, axis=1, keepdims=True), exprc.max(z * 2, axis=1), exprc.prod(z, axis=1)]),
        # a column statistic computed by another kernel, read along every row (not as a row result)
        "column_stat": ([z], [exprc.softmax(z + exprc.sum(z * 2.0, axis=0), axis=1)]),
    }


def _row_args(name, rng, shape, dtype):
    z = rng.standard_normal(shape).astype(dtype) * 4
    args = [z]
    if name in ("softmax", "log_softmax", "xent_and_grad"):
        args.append(rng.standard_normal(shape[1]).astype(dtype))
    if name == "xent_and_grad":
        y = np.zeros(shape, dtype)
        if shape[0] and shape[1]:
            y[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = 1
        args.append(y)
    return args


@pytest.mark.parametrize("name", sorted(_row_cases()))
def test_row_kernels_fuse_a_row_reduction_with_what_surrounds_it(name):
    """Each case is one row kernel (plus what is not per-row: a mean over the rows), where it was a
    kernel per reduction and per broadcast before; every intermediate of the row kernel stays in
    registers (only the outputs are buffers)."""
    ins, outs = _row_cases()[name]
    prog = lower(list(exprc.function(ins, outs, backend="numpy").graph.outputs), ins, rows=True, epilogues=True,
                 host_scalars=True)
    rows = [k for k in prog.kernels if k.kind == "rows"]
    assert len(rows) == 1, [k.kind for k in prog.kernels]
    assert not [k for k in prog.kernels if k.kind == "reduce" and k.reduce.arg("axis") == (1,)]
    assert set(rows[0].outputs) <= set(prog.materialized)
    assert {n for n in prog.materialized if n.ndim == 2 and n.type.shape[1] != 1} <= set(prog.outputs)  # (no temporaries)


def test_a_row_result_without_its_axis_is_not_read_per_row():
    """Found in review: exp(M) / sum(exp(M), axis=1) divides column j by row j's sum (a 1-d result
    broadcasts along the last axis), but the reduction and the quotient both read M, merged as
    siblings into one row kernel, and the kernel divided each row by its own sum (off by 1.03 on C,
    stability rules or not).  A row kernel no longer takes a matrix node that reads a 1-d value
    computed in it; NumPy's values on square matrices of static and unknown sizes."""
    rng = np.random.default_rng(6)
    for shape in [(3, 3), (40, 40), (None, None)]:
        m = exprc.matrix("m", shape=shape) if shape[0] else exprc.matrix("m")
        e = exprc.exp(m)
        cases = [(e / exprc.sum(e, axis=1), lambda v: np.exp(v) / np.exp(v).sum(1)),
                 (e + exprc.sum(e, axis=1), lambda v: np.exp(v) + np.exp(v).sum(1)),
                 (m / exprc.sum(e, axis=1), lambda v: v / np.exp(v).sum(1)),
                 (e / exprc.max(e, axis=1), lambda v: np.exp(v) / np.exp(v).max(1)),
                 (e - exprc.log(exprc.sum(e, axis=1)), lambda v: np.exp(v) - np.log(np.exp(v).sum(1))),
                 (e / exprc.sum(e, axis=1, keepdims=True), lambda v: np.exp(v) / np.exp(v).sum(1, keepdims=True))]
        v = rng.standard_normal((shape[0] or 17,) * 2)
        for out, ref in cases:
            for ex in ((), ("stability",)):
                got = exprc.function([m], out, backend="c", exclude=ex)(v)
                np.testing.assert_allclose(got, ref(v), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(_row_cases()))
def test_row_kernels_match_the_unfused_kernels(name, dtype):
    """Differential: the row kernel against the reference backend (NumPy), on shapes with one row,
    one column, none, NaN/inf rows, a transposed and a strided view, with 1 and 2 threads."""
    ins, outs = _row_cases(dtype)[name]
    ref = exprc.function(ins, outs, backend="numpy")
    fns = [exprc.function(ins, outs, config=exprc.Config(num_threads=t, row_fusion=True)) for t in (1, 2)]
    assert any(k["kind"] == "rows" for k in fns[0].kernels)
    default = any(k["kind"] == "rows" for k in exprc.function(ins, outs).kernels)
    assert default == (name not in ("minmax", "standardize"))  # (by default only rows with vector math)
    assert not any(k["kind"] == "rows" for k in exprc.function(ins, outs, config=exprc.Config(row_fusion=False)).kernels)
    rng = np.random.default_rng(5)
    tol = {"rtol": 2e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    for shape in [(7, 5), (1, 9), (9, 1), (300, 257), (0, 4), (3, 0)]:
        if shape[1] == 0 and name != "standardize":
            continue  # (a max over an empty row raises, as in NumPy)
        args = _row_args(name, rng, shape, dtype)
        if shape == (7, 5):
            args[0][2, 3], args[0][4, :] = np.nan, np.inf
        with np.errstate(all="ignore"):
            want = ref(*args)
        for f in fns:
            got = f(*args)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, equal_nan=True, **tol)
        for g, h in zip(fns[0](*args), fns[1](*args)):
            np.testing.assert_array_equal(g, h)  # (rows are split between threads whole)
    big = _row_args(name, rng, (40, 66), dtype)
    views = [np.asfortranarray(big[0]), big[0][::2, ::3], big[0].T.copy().T[:, 1:]]
    for v in views:
        args = [v] + [a[: v.shape[1]] if a.ndim == 1 else a[: v.shape[0], : v.shape[1]] for a in big[1:]]
        with np.errstate(all="ignore"):
            want = ref(*args)
        for g, w in zip(fns[0](*args), want):
            np.testing.assert_allclose(g, w, equal_nan=True, **tol)
    if name == "xent_and_grad":  # y broadcast along the rows: the gradient's sum_to really sums
        args = _row_args(name, rng, (6, 5), dtype)
        args[2] = args[2][:1]
        with np.errstate(all="ignore"):
            want = ref(*args)
        for g, w in zip(fns[0](*args), want):
            np.testing.assert_allclose(g, w, **tol)


# -- reduction epilogues and shape scalars -----------------------------------------------------------

def _epilogue_cases():
    g, m = exprc.matrix("g"), exprc.matrix("m")
    b, c, v = exprc.vector("b"), exprc.vector("c"), exprc.vector("v")
    lr = exprc.scalar("lr")
    return {
        "bias_update": ([g, b, lr], [b - lr * exprc.sum(g, axis=0)]),
        "neg_mean": ([g], [-exprc.mean(g)]),
        "row_offset": ([m, v], [v * 2.0 + exprc.max(m, axis=1)]),
        "kept_and_used": ([g, b], [exprc.sum(g, axis=0), b - exprc.sum(g, axis=0) * 0.5]),
        "bias_grad_step": ([g, b, c], [c - 0.1 * exprc.grad(exprc.sum(exprc.tanh(g + b)), [b])[0]]),
    }


@pytest.mark.parametrize("name", sorted(_epilogue_cases()))
def test_a_reduction_computes_its_consumer_where_it_stores(name):
    """An elementwise kernel over a reduction's result (a bias update, a loss's negation) runs in the
    reduction kernel, where each result is stored: one kernel and no temporary; the values are the
    reference backend's, with the shapes broadcasting at call time going to the reference."""
    ins, outs = _epilogue_cases()[name]
    f = exprc.function(ins, outs)
    ref = exprc.function(ins, outs, backend="numpy")
    reds = [k for k in f._kernel.program.kernels if k.kind == "reduce"]
    assert [k for k in reds if k.epilogue], [k.ops for k in f._kernel.program.kernels]
    assert not [k for k in f._kernel.program.kernels if k.kind == "elemwise" and k.outputs[0].ndim <= 1]
    rng = np.random.default_rng(9)
    for shape in [(6, 5), (1, 3), (300, 70), (0, 4), (4, 0)]:
        if name == "row_offset" and shape[1] == 0:
            continue  # (a max over an empty row raises)
        args = []
        for x in ins:
            if x.ndim == 2:
                args.append(rng.standard_normal(shape))
            elif x.ndim == 1:
                args.append(rng.standard_normal(shape[0] if name == "row_offset" else shape[1]))
            else:
                args.append(np.asarray(0.25))
        if shape == (6, 5):
            args[0][2, 1] = np.nan
        for got, want in zip(f(*args), ref(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, equal_nan=True)
        if shape == (300, 70):  # strided and transposed operands, and a broadcast vector
            views = [a[::2, ::-1] if a.ndim == 2 else a for a in args]
            views = [v[: views[0].shape[0 if name == "row_offset" else 1]] if v.ndim == 1 else v for v in views]
            for got, want in zip(f(*views), ref(*views)):
                np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
            bcast = [a[:1] if a.ndim == 1 else a for a in args]
            with np.errstate(all="ignore"):
                for got, want in zip(f(*bcast), ref(*bcast)):
                    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


def test_an_epilogue_keeps_vector_math_out():
    """exp over a reduction's result stays in its own (vectorized) kernel: the epilogue loop is scalar,
    and glibc's scalar exp is not its vector one."""
    g = exprc.matrix("g")
    f = exprc.function([g], exprc.exp(exprc.sum(g, axis=0)))
    assert [k.epilogue for k in f._kernel.program.kernels if k.kind == "reduce"] == [[]]


def test_the_softmax_regression_step_is_six_kernels_with_no_per_call_scalars():
    """Issue 17's step (bench/train_step.py) with Config(row_fusion=True): the forward log-softmax, the
    loss per row and the logits' gradient are one row kernel; the loss's -mean and the bias update are reduction epilogues; the
    batch size's 1/n is computed once per signature (shape steps), not by a kernel on every call."""
    x, y, W, b = exprc.matrix("x"), exprc.matrix("y"), exprc.matrix("W"), exprc.vector("b")
    p = exprc.softmax(exprc.dot(x, W) + b, axis=1)
    loss = -exprc.mean(exprc.sum(y * exprc.log(p), axis=1))
    gW, gb = exprc.grad(loss, [W, b])
    f = exprc.function([x, y, W, b], [loss, W - 0.1 * gW, b - 0.1 * gb], config=exprc.Config(row_fusion=True))
    kinds = sorted(k.kind for k in f._kernel.program.kernels)
    assert kinds == ["elemwise", "matmul", "matmul", "reduce", "reduce", "rows"], kinds
    assert not [k for k in f._kernel.program.kernels if all(o.ndim == 0 for o in k.outputs) and k.kind == "elemwise"]
    ref = exprc.function([x, y, W, b], [loss, W - 0.1 * gW, b - 0.1 * gb], backend="numpy")
    rng = np.random.default_rng(4)
    for n in (128, 7, 1):  # a new batch size: a new plan and its own 1/n
        xv, Wv, bv = rng.standard_normal((n, 64)), rng.standard_normal((64, 10)) * 0.1, rng.standard_normal(10)
        yv = np.eye(10)[rng.integers(0, 10, n)]
        for got, want in zip(f(xv, yv, Wv, bv), ref(xv, yv, Wv, bv)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_short_rows_read_a_reduced_operand_back_instead_of_computing_it_again():
    """The stable softmax's numerator exp(x - m) (1 + err) is the operand of its row sum: in the batched
    path of short rows the division reads it from the sum's buffer (one TwoSum and correction per
    element, not two, and no exp carried in a buffer of its own), with the values of the numpy backend
    (rows of 1 to 33 elements, NaN, -inf and +inf rows)."""
    x = exprc.matrix("x")
    e = exprc.exp(x) / exprc.sum(exprc.exp(x), axis=1, keepdims=True)
    f = exprc.function([x], e)
    src = f.source
    batched = src[src.index("if (n1 > 0 && n1 <= 32)"):]
    batched = batched[:batched.index("return;")]
    assert batched.count("exprc_two_sum_err(") == 1 and "kb0" not in batched, batched
    assert re.search(r"= \(vb\d+\[p\] / y\d+\[r\]\);", batched), batched
    ref = exprc.function([x], e, backend="numpy")
    rng = np.random.default_rng(2)
    for n1 in (1, 2, 7, 8, 10, 31, 32, 33):
        xv = rng.standard_normal((70, n1)) * 30
        xv[1, 0], xv[2, :], xv[3, -1] = np.nan, -np.inf, np.inf
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(f(xv), ref(xv), rtol=1e-14, atol=1e-300, equal_nan=True)


def test_short_rows_fold_in_the_loop_that_computes_the_values():
    """The stable logsumexp over short rows: the sum of exp(x - m) and the count of maxima fold in the
    loop that computes them (no buffer of values stored and read back by a loop of their own); the
    softmax's numerator, which its division reads again, is still stored, and folded from there.  Values
    against NumPy's max-shifted formulas in float64 (rows of 1 to 33, NaN, -inf and +inf rows, both
    dtypes)."""
    def batched_loops(src: str) -> list[str]:
        part = src[src.index("if (n1 > 0 && n1 <= "):]
        part = part[:part.index("return;")]
        return part.split("for (int64_t i1 = 0; i1 < n1; i1++) {")[1:]

    for dtype in ("float64", "float32"):
        x = exprc.matrix("x", dtype)
        lse = exprc.function([x], exprc.log(exprc.sum(exprc.exp(x), axis=1)))
        body = next(lp for lp in batched_loops(lse.source) if re.search(r"\bexpf?\(", lp))
        assert re.search(r"acc\d+\[r\] \+= t\d+;", body) and re.search(r"acc\d+\[r\] \+= \(t\d+ != 0\);", body), body
        assert not re.search(r"\bvb\d+\[p\] =", lse.source), "a folded value is stored although nothing reads it"
        sm = exprc.function([x], exprc.exp(x) / exprc.sum(exprc.exp(x), axis=1, keepdims=True))
        assert re.search(r"\bvb\d+\[p\] = t\d+;", sm.source) and re.search(r"\+= vb\d+\[i1 \* R \+ r\];", sm.source)
        rng = np.random.default_rng(5)
        tol = {"rtol": 2e-6, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-14, "atol": 1e-14}
        for n1 in (1, 2, 7, 8, 10, 31, 32, 33):
            xv = (rng.standard_normal((70, n1)) * 30).astype(dtype)
            xv[1, 0], xv[2, :], xv[3, -1] = np.nan, -np.inf, np.inf
            with np.errstate(all="ignore"):
                x64 = xv.astype(np.float64)
                m = np.max(x64, axis=1, keepdims=True)
                want_lse = np.log(np.sum(np.exp(x64 - np.where(np.isfinite(m), m, 0)), axis=1)) \
                    + np.where(np.isfinite(m), m, 0)[:, 0]
                mf = np.where(np.isfinite(m), m, 0)  # (a +inf row: the quotient as written, 0 and NaN)
                want_sm = np.exp(x64 - mf) / np.sum(np.exp(x64 - mf), axis=1, keepdims=True)
                np.testing.assert_allclose(lse(xv), want_lse, equal_nan=True, err_msg=f"lse n1={n1}", **tol)
                np.testing.assert_allclose(sm(xv), want_sm, equal_nan=True, err_msg=f"softmax n1={n1}", **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_short_rows_share_blocks_in_row_kernels(dtype, monkeypatch):
    """Rows of up to 32 elements run several to a SIMD loop (render._short_rows_batched): row lengths 1
    to 17 and 31 to 33 around that limit, row counts that leave a partial last block (R = 256 // n1 rows to a
    block), a column operand, a 0-d one, a bool output and a count of a comparison (bool buffers),
    NaN, +-inf and all--inf rows, C, Fortran and strided layouts; against NumPy, and the same bits
    with 1 and 2 threads (a row's value must not depend on the rows sharing its block)."""
    from exprc.backends.c.kernel import CKernel

    def no_fallback(*_):
        raise AssertionError("the call went to the reference backend, not the row kernel")

    monkeypatch.setattr(CKernel, "_fallback", no_fallback)
    z, c, s = exprc.matrix("z", dtype), exprc.matrix("c", dtype, shape=(None, 1)), exprc.scalar("s", dtype)
    m = exprc.max(z, axis=1, keepdims=True)
    e = exprc.exp(z - m)
    outs = [e / exprc.sum(e, axis=1, keepdims=True),                    # softmax (a carried exp)
            exprc.logsumexp(z * s, axis=1),                             # the stable count-of-maxima form
            exprc.sum(z > c, axis=1),                                   # a count over a comparison
            (z - exprc.mean(z, axis=1, keepdims=True)) * c > s,         # a bool matrix output
            exprc.log1p(exprc.abs(exprc.min(z, axis=1, keepdims=True) * c)) + exprc.max(z * 2, axis=1,
                                                                                         keepdims=True)]
    ins = [z, c, s]
    ref = exprc.function(ins, outs, backend="numpy")
    fns = [exprc.function(ins, outs, config=exprc.Config(num_threads=t, row_fusion=True)) for t in (1, 2)]
    assert [k["kind"] for k in fns[0].kernels] == ["rows"]
    tol = {"rtol": 3e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    rng = np.random.default_rng(11)
    for n1 in [*range(1, 18), 31, 32, 33]:
        for n0 in (1, 3, 256 // n1 + 1, 600):
            zv = (rng.standard_normal((n0, n1)) * 3).astype(dtype)
            if n0 > 3:
                zv[1, 0], zv[2, :] = np.nan, -np.inf
                zv[3, -1] = np.inf
            cv = rng.standard_normal((n0, 1)).astype(dtype)
            for layout in ("C", "F", "strided"):
                zl = (np.asfortranarray(zv) if layout == "F" else
                      np.repeat(zv, 2, axis=1)[:, ::2] if layout == "strided" else zv)
                args = [zl, cv, np.asarray(0.7, dtype)]
                with np.errstate(all="ignore"):
                    want = ref(*args)
                got = [fn(*args) for fn in fns]
                for g, w in zip(got[0], want):
                    if w.dtype == bool:
                        np.testing.assert_array_equal(g, w)
                    else:
                        np.testing.assert_allclose(g, w, equal_nan=True, err_msg=f"{n0}x{n1} {layout}", **tol)
                for g, h in zip(*got):
                    np.testing.assert_array_equal(g, h)


def test_a_call_a_row_kernel_cannot_run_uses_the_graph_compiled_without_row_kernels(monkeypatch):
    """Row kernels are the default, so a call whose shapes they cannot express (a (None, None) input
    passed as a column, which makes exp(c * 2) one value per row) must not drop to NumPy op by op: it
    runs the same graph compiled with Config(row_fusion=False), built on the first such call; with
    out= too.  Calls of the row kernel's own shapes keep using it."""

    z, c = exprc.matrix("z"), exprc.matrix("c")
    out = exprc.softmax(z + exprc.exp(c * 2), axis=1)
    f = exprc.function([z, c], out)
    ref = exprc.function([z, c], out, backend="numpy")
    assert [k["kind"] for k in f.kernels] == ["rows"]
    rng = np.random.default_rng(3)
    zv, cv = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    np.testing.assert_allclose(f(zv, cv), ref(zv, cv), rtol=1e-13)
    assert f._kernel._rowless is None
    monkeypatch.setattr(type(f._kernel.planner), "reference", lambda self: pytest.fail("ran NumPy op by op"))
    for col in (rng.normal(size=(50, 1)), rng.normal(size=(1, 7))):
        np.testing.assert_allclose(f(zv, col), ref(zv, col), rtol=1e-13)
        buf = np.empty((50, 7))
        f(zv, col, out=buf)
        np.testing.assert_allclose(buf, ref(zv, col), rtol=1e-13)
    rowless = f._kernel._rowless
    assert rowless is not None and "rows" not in [k["kind"] for k in rowless.kernels]


def test_a_chain_of_row_reductions_is_cut_into_row_kernels_of_bounded_depth():
    """Each pass of a row kernel recomputes the cheap whole-row values it reads, so a chain of 60
    layers tanh(e - mean(e)) in one row kernel would render quadratically (280 layers: 9.7 MB of C,
    204 s of gcc).  Row kernels stop at MAX_ROW_PASSES reduction levels; a layer norm with its
    gradient (4 levels) is still one.  Values: NumPy's."""
    x = exprc.matrix("x")
    e = x
    for k in range(60):
        e = exprc.tanh((e - exprc.mean(e, axis=1, keepdims=True)) * (1.0 + k / 60))
    program = lower([e], [x], rows=True)
    rows = [k for k in program.kernels if k.kind == "rows"]
    assert len(rows) >= 60 // fusion.MAX_ROW_PASSES
    assert all(max(fusion.row_levels(k)[1].values()) <= fusion.MAX_ROW_PASSES for k in rows)
    xv = np.random.default_rng(2).normal(size=(9, 13))
    np.testing.assert_allclose(exprc.function([x], e)(xv), exprc.function([x], e, backend="numpy")(xv), rtol=1e-12)
    z, g = exprc.matrix("z"), exprc.matrix("g")
    mu = exprc.mean(z, axis=1, keepdims=True)
    ln = (z - mu) / exprc.sqrt(exprc.mean((z - mu) ** 2, axis=1, keepdims=True) + 1e-5)
    outs = [ln, *exprc.grad(exprc.sum(ln * g), [z])]
    assert [k["kind"] for k in exprc.function([z, g], outs, config=exprc.Config(row_fusion=True)).kernels] == ["rows"]


@pytest.mark.parametrize("row_fusion", [None, True])
def test_row_kernels_reviewed_edges(row_fusion, monkeypatch):
    """Found in review of the row-kernel default (each was a wrong answer, a crash or a cost):
    a reduction over axis 1 of a one-value-per-row value (a declared column, c * 2, expand_dims(v, 1),
    a keepdims max, or a (None, None) input passed as (n, 1)) was folded as a whole row (n1 times,
    and read past the column's end); a row's bits depended on its layout (strided rows ran a scalar
    loop); a signature the row kernel cannot run was re-planned on every call; and row kernels
    switched off fusion's cheap copies in graphs without a row reduction."""
    cfg = exprc.Config(row_fusion=row_fusion)
    z, c, m, v = exprc.matrix("z"), exprc.matrix("c", shape=(None, 1)), exprc.matrix("m"), exprc.vector("v")
    sm = exprc.softmax(z, axis=1)
    outs = [sm * exprc.sum(c, axis=1, keepdims=True), sm * exprc.prod(c * 2, axis=1, keepdims=True),
            sm * exprc.mean(exprc.expand_dims(v, 1), axis=1, keepdims=True),
            sm + exprc.sum(exprc.max(z, axis=1, keepdims=True), axis=1, keepdims=True),
            exprc.logsumexp(z, axis=1) * exprc.max(m, axis=1), sm * exprc.sum(m, axis=1, keepdims=True)]
    f = exprc.function([z, c, v, m], outs, config=cfg)
    ref = exprc.function([z, c, v, m], outs, backend="numpy")
    rng = np.random.default_rng(4)
    for n1 in (5, 40, 300):
        zv, cv, vv = rng.normal(size=(6, n1)), rng.normal(size=(6, 1)) + 3, rng.normal(size=6)
        for mv in (rng.normal(size=(6, n1)), rng.normal(size=(6, 1))):  # ((6, 1): reduced as a row here)
            for g, w in zip(f(zv, cv, vv, mv), ref(zv, cv, vv, mv)):
                np.testing.assert_allclose(g, w, rtol=1e-12, err_msg=f"n1={n1}")
    # the same bits whatever the layout: C, Fortran, rows at odd offsets
    h = exprc.function([z], [sm, exprc.logsumexp(z, axis=1)], config=cfg.replace(num_threads=1))
    for n1 in (8, 40, 1000):
        base = rng.normal(size=(50, n1 + 3)) * 5
        zc = np.ascontiguousarray(base[:, 1:n1 + 1])
        for other in (np.asfortranarray(zc), base[:, 1:n1 + 1], zc[::-1][::-1]):
            for a, b in zip(h(zc), h(other)):
                np.testing.assert_array_equal(a, b)
    # strided rows of mixed float32 / float64 arrays (their scratch slices stay aligned), odd lengths
    z32 = exprc.matrix("z32", "float32")
    mixed = [exprc.softmax(z32, axis=1), exprc.logsumexp(z, axis=1) + exprc.sum(z32 * 2, axis=1)]
    fm = exprc.function([z32, z], mixed, config=cfg)
    for n1 in (37, 41):
        a32, a64 = np.asfortranarray(rng.normal(size=(9, n1)).astype("float32")), np.asfortranarray(rng.normal(size=(9, n1)))
        want = exprc.function([z32, z], mixed, backend="numpy")(a32, a64)
        for g, w in zip(fm(a32, a64), want):
            np.testing.assert_allclose(g, w, rtol=2e-6)
    # a call the row kernel cannot run is planned once, then goes straight to the graph without rows
    from exprc.backends.c.kernel import CKernel

    k = exprc.function([z, m], exprc.softmax(z + exprc.exp(m * 2), axis=1), config=cfg)
    made = []
    plan = CKernel._make_plan
    monkeypatch.setattr(CKernel, "_make_plan", lambda self, *a: made.append(self) or plan(self, *a))
    zk, col = rng.normal(size=(7, 5)), rng.normal(size=(7, 1))
    for _ in range(3):
        k(zk, col)
    assert made.count(k._kernel) == 1
    # fusion's cheap copies where no row kernel takes them: a vector's log-sum-exp, beside a softmax
    lse = exprc.log(exprc.sum(exprc.exp(v)))
    assert len(exprc.function([v], lse, config=cfg).kernels) == len(
        exprc.function([v], lse, config=exprc.Config(row_fusion=False)).kernels) == 4
    beside = exprc.function([z, v], [sm, lse], config=cfg).kernels
    assert len([k for k in beside if k["kind"] != "rows"]) == 4


@pytest.mark.parametrize("seed", range(4))
def test_random_row_graphs_match_the_reference(seed):
    """Random chains of row reductions (sum, max, min, mean, prod; keepdims), what reads them back along
    the row, transcendentals and a third operand broadcast as a matrix, a column, a row or 1 x 1, on
    shapes with one row or one column, NaN, and Fortran order: row kernels against the reference."""
    import random

    rng = random.Random(seed)
    made = 0
    for it in range(15):
        z, b, c = exprc.matrix("z"), exprc.vector("b"), exprc.matrix("c")
        full, rows = [z, z * 0.5 + b], []
        for _ in range(rng.randint(2, 7)):
            k, a = rng.random(), rng.choice(full)
            if k < 0.35:
                red = rng.choice(["sum", "max", "min", "mean", "prod"])
                rows.append(getattr(exprc, red)(a if red != "prod" else exprc.tanh(a) + 1.5, axis=1, keepdims=True))
            elif k < 0.6 and rows:
                full.append(a - rng.choice(rows) * rng.choice([1.0, -0.5]))
            elif k < 0.75:
                full.append(rng.choice([exprc.exp, exprc.tanh, exprc.abs, exprc.sigmoid])(a))
            elif k < 0.85 and rows:
                rows.append(exprc.log1p(exprc.abs(rng.choice(rows))) + c)
            else:
                full.append(a * rng.choice(full) + c)
        outs = [full[-1], exprc.sum(full[-2] * 2.0, axis=1), *rows[-1:]]
        shape = rng.choice([(1, 1), (2, 3), (7, 5), (33, 1), (1, 40), (64, 70)])
        npr = np.random.default_rng(seed * 100 + it)
        zv, bv = npr.standard_normal(shape), npr.standard_normal(shape[1])
        cv = npr.standard_normal(rng.choice([shape, (shape[0], 1), (1, shape[1]), (1, 1)]))
        if it % 5 == 0:
            zv[0, 0] = np.nan
        if it % 7 == 0:
            zv = np.asfortranarray(zv)
        f = exprc.function([z, b, c], outs, config=exprc.Config(row_fusion=True))
        made += any(k.kind == "rows" for k in f._kernel.program.kernels)
        with np.errstate(all="ignore"):
            want = exprc.function([z, b, c], outs, backend="numpy")(zv, bv, cv)
        for g, w in zip(f(zv, bv, cv), want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert made >= 12  # (the chains do make row kernels)


def test_a_long_elementwise_group_becomes_kernels_of_bounded_length():
    """gcc's time on one loop body grows faster than its length (two_sum_err chains: 1000 links 24 s,
    3000 links 4 minutes), so a group longer than MAX_BODY is cut into several kernels.  Each cut
    stores only the values that cross it: between two links of a chain (the running value; the first
    kernel also y*y and y*y + 1, which every link reads; that no guard's slow branch is cut,
    tests/test_cuda.py's 3000-guard kernel checks); the values are NumPy's, on contiguous and strided
    operands."""
    x, y = exprc.vector("x"), exprc.vector("y")
    sq = y * y
    e = x
    for i in range(1800):
        # (contractions, so that the backends' last-bit differences do not grow along the chain)
        e = exprc.log1p(e * e) * 0.5 + x if i % 3 == 0 else (e * sq / (sq + 1) + x if i % 3 == 1 else exprc.sin(e) * 0.5 - y)
    prog = lower([e], [x, y])
    kernels = prog.kernels
    assert len(kernels) >= 4 and all(len(k.body) <= fusion.MAX_BODY for k in kernels)
    assert len(kernels[0].outputs) <= 3 and all(len(k.outputs) == 1 for k in kernels[1:]) and sum(len(k.body) for k in kernels) == len(
        {n for k in kernels for n in k.body})
    f = exprc.function([x, y], e)  # (optimized: the stability rules guard log1p of a square)
    assert len(f.kernels) >= len(kernels)
    whole = exprc.function([x, y], e, backend="numpy")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(3001), rng.standard_normal(3001)
    np.testing.assert_allclose(f(a, b), whole(a, b), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(f(a[:3000:3], b[1::3]), whole(a[:3000:3], b[1::3]), rtol=1e-12, atol=1e-300)


def test_a_long_group_is_cut_before_a_reduction_or_a_row_kernel_takes_it():
    """Found in review: a reduction absorbed its 4500-node producer whole, and row fusion merged the
    cut slices back into one row kernel; both now keep to MAX_BODY (the reduction reads the last
    slice's stored value), with NumPy's values."""
    x, m = exprc.vector("x"), exprc.matrix("m")
    e, e2 = x, m
    for _ in range(1500):
        e, e2 = exprc.sin(e) * 0.5 + x, exprc.sin(e2) * 0.5 + m
    total = exprc.sum(e)
    assert all(len(k.body) <= fusion.MAX_BODY for k in lower([total], [x]).kernels)
    soft = e2 / exprc.sum(e2, axis=1, keepdims=True)
    kernels = lower([soft], [m], rows=True).kernels
    assert all(len(k.body) <= fusion.MAX_BODY for k in kernels) and any(k.rows for k in kernels)
    a, b = np.random.default_rng(0).standard_normal(1000), np.random.default_rng(1).standard_normal((50, 7))
    np.testing.assert_allclose(exprc.function([x], total)(a), exprc.function([x], total, backend="numpy")(a),
                               rtol=1e-12)
    got = exprc.function([m], soft, config=exprc.Config(row_fusion=True))(b)
    np.testing.assert_allclose(got, exprc.function([m], soft, backend="numpy")(b), rtol=1e-12, atol=1e-13)


def test_a_long_group_with_recomputed_nodes_and_an_output_in_its_middle_is_cut_too():
    """Found in review: a group holding a node other groups recompute (x * 0.3, read by every link and
    by the second output's group) was left whole (kernels of 2102 and 2401 nodes), and merging
    independent siblings could pass MAX_BODY.  The cut group stores such a node once for its later
    slices; NumPy's values on contiguous and strided operands."""
    x = exprc.vector("x")
    c = x * 0.3
    e, mids = x, []
    for _ in range(1500):
        e = exprc.sin(e) * 0.5 + c
        mids.append(e)
    outs = [e, mids[700] * 2]
    kernels = lower(outs, [x]).kernels
    assert all(len(k.body) <= fusion.MAX_BODY for k in kernels)
    stores = [o for k in kernels for o in k.outputs]
    assert len(stores) == len(set(stores))  # (each value written by one kernel)
    f, g = exprc.function([x], outs), exprc.function([x], outs, backend="numpy")
    a = np.random.default_rng(0).standard_normal(1001)
    for arg in (a, a[::2]):
        for got, want in zip(f(arg), g(arg)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_row_guards_run_their_fast_branches_and_redo_only_the_rows_whose_condition_holds(dtype, monkeypatch):
    """A row kernel with guards ``where(rare(c), slow, fast)`` whose condition holds one value per row
    (render.render_rows): every row through the fast branches, then the rows where a condition holds
    (runs of them, across the 1024-row groups) through the slow ones.  Slow and fast branches differ by
    far more than rounding here, so a row given the wrong branch shows.  Against the NumPy backend (the
    where as written), with one condition (split), two conditions and a gradient's masks (not split:
    the kernel as it is); rows of 1 to 300 (the batched short rows and one row at a time),
    C, Fortran and strided layouts, no rows, 1 and 2 threads the same bits, and each row's bits
    the same when it is computed alone (no row depends on its neighbours' flags)."""
    from exprc.backends.c.kernel import CKernel
    from exprc.graph import constant_node
    from exprc.rewrite.forms import guard

    def no_fallback(*_):
        raise AssertionError("the call went to the reference backend, not the row kernel")

    monkeypatch.setattr(CKernel, "_fallback", no_fallback)
    z, c = exprc.matrix("z", dtype), exprc.matrix("c", dtype, shape=(None, 1))
    mx = exprc.max(z, axis=1, keepdims=True)
    s = exprc.sum(exprc.exp(z), axis=1, keepdims=True)
    one = guard(mx > 2.0, exprc.exp(z - mx) * 3.0, exprc.exp(z) / (s + 1.0))  # (not a softmax: one guard)
    two = guard(exprc.min(z, axis=1, keepdims=True) < c, z * 5.0 + 1.0, z - 1.0)
    zero = constant_node(0.0, dtype)
    cases = {"one condition": [one, exprc.sum(one * z, axis=1)],
             "two conditions": [one * two, exprc.sum(two, axis=1), guard(s > 40.0, exprc.log(s), s - 7.0)],
             # (a branch that is a constant, as a gradient's masks where(rare(c), g, 0): no matrix, so the
             # kernel runs as it is)
             "gradient": [exprc.grad(exprc.sum(one * z) + exprc.sum(two * two), z),
                          exprc.sum(guard(mx > 2.0, exprc.exp(z), zero), axis=1), guard(mx > 2.0, z, zero) * z]}
    tol = {"rtol": 2e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    rng = np.random.default_rng(11)
    for label, outs in cases.items():
        ins = [z, c]
        ref = exprc.function(ins, outs, backend="numpy")
        fns = [exprc.function(ins, outs, config=exprc.Config(num_threads=t)) for t in (1, 2)]
        assert "rows" in [k["kind"] for k in fns[0].kernels], label
        lazy = bool(re.search(r"_fast\(ptrs, P, s, e, fl\)", fns[0].source)) and "_slow(ptrs, P, i, j)" in fns[0].source
        assert lazy == (label == "one condition"), label  # (several conditions: not split)
        for n0, n1 in ((2600, 1), (2600, 3), (2600, 8), (700, 17), (700, 32), (300, 33), (50, 300), (0, 5)):
            zv = rng.uniform(-3.0, 1.5, (n0, n1)).astype(dtype)
            # flagged runs across the groups of 1024 rows, single rows, a whole group, NaN and inf rows
            for a, b in ((1020, 1030), (2040, 2049), (5, 6), (1024, 2048), (0, 3)):
                zv[a:b] += 3.0
            if n0 and n1:
                zv[7, 0], zv[9, -1], zv[11, :] = np.nan, np.inf, -np.inf
            cv = rng.uniform(-3.5, -1.0, (n0, 1)).astype(dtype)
            for view in (lambda a: a, np.asfortranarray, lambda a: np.repeat(a, 2, axis=1)[:, ::2]):
                zz, cc = view(zv), view(cv)
                with np.errstate(all="ignore"):
                    want = ref(zz, cc)
                    got = [f(zz, cc) for f in fns]
                for w, g1, g2 in zip(want, *got):
                    scale = 10.0 if label == "gradient" else 1.0  # (sums of products that cancel)
                    np.testing.assert_allclose(g1, w, equal_nan=True, err_msg=f"{label} {n0}x{n1}",
                                               rtol=tol["rtol"] * scale, atol=tol["atol"] * scale)
                    assert np.array_equal(g1, g2, equal_nan=True), f"{label} {n0}x{n1}: 1 and 2 threads differ"
            for i in range(0, n0, max(1, n0 // 40)):
                with np.errstate(all="ignore"):
                    alone = fns[0](zv[i:i + 1], cv[i:i + 1])
                    whole = fns[0](zv, cv)
                for a, w in zip(alone, whole):
                    assert np.array_equal(a[0], w[i], equal_nan=True), f"{label} row {i} of {n0}x{n1} alone"


def test_row_guards_leave_outputs_that_read_no_guard_to_the_fast_pass():
    """A row kernel's output that reads no guard keeps the fast pass's bits on a row where a guard's
    condition holds (the slow pass stores only the guarded outputs): a long row's vectorized sum has
    other bits in a loop of other contents, so recomputing it made its bits depend on another input
    (found by review: 1208 of 2000 rows of 40).  Rows of 3, 40 and 300, one and two conditions."""
    from exprc.rewrite.forms import guard

    z, c = exprc.matrix("z"), exprc.matrix("c", shape=(None, 1))
    v = z + c
    flagged = exprc.max(v, axis=1, keepdims=True) > 2.0
    one = guard(flagged, exprc.exp(v - 2.0) * 3.0, exprc.exp(v) / (exprc.sum(exprc.exp(v), axis=1, keepdims=True) + 1.0))
    two = guard(exprc.min(v, axis=1, keepdims=True) < -40.0, v * 5.0, v - 1.0)
    rng = np.random.default_rng(12)
    softmax = exprc.exp(v) / exprc.sum(exprc.exp(v), axis=1, keepdims=True)  # (the rule's guard: sum > max)
    for outs in ([one, exprc.sum(z * z, axis=1), exprc.sum(exprc.sin(z), axis=1)],
                 [one + two, exprc.sum(z * z, axis=1), exprc.sum(exprc.sin(z), axis=1)],
                 [softmax, exprc.sum(z * z, axis=1), exprc.sum(exprc.sin(z), axis=1)]):
        f = exprc.function([z, c], outs)
        assert ("_slow(ptrs, P, i, j)" in f.source) == (outs[0] is not one + two)  # (two conditions: not split)
        for n1 in (3, 40, 300):
            zv = rng.uniform(-3.0, 3.0, (500, n1))
            calm, hot = f(zv, np.zeros((500, 1))), f(zv, np.full((500, 1), 800.0))
            for a, b in zip(calm[1:], hot[1:]):
                assert np.array_equal(a, b), n1
            assert not np.array_equal(calm[0], hot[0])



def test_row_guards_of_several_conditions_are_not_split():
    """Two row-wise softmaxes in one row kernel (two conditions): a row flagged for one must not change
    the other's bits (a subagent review: splitting them together, softmax(x) changed on 500 of 1000
    rows as y did).  Several everywhere-conditions take their stable forms alone, as a lowering
    without row kernels: softmax(x) the same bits whatever y, rows of 8 and 40, both dtypes."""
    for dtype in ("float64", "float32"):
        x, y = exprc.matrix("x", dtype), exprc.matrix("y", dtype)

        def sm(v):
            return exprc.exp(v) / exprc.sum(exprc.exp(v), axis=1, keepdims=True)

        f = exprc.function([x, y], [sm(x), sm(y), sm(x) + sm(y)])
        assert [k["kind"] for k in f.kernels] == ["rows"] and "_slow(" not in f.source
        rng = np.random.default_rng(13)
        for n1 in (8, 40):
            xv, yv = rng.uniform(-3, 3, (1000, n1)).astype(dtype), rng.uniform(-3, 3, (1000, n1)).astype(dtype)
            hot = (yv + 800 * (np.arange(1000)[:, None] % 2 == 0)).astype(dtype)
            with np.errstate(all="ignore"):
                assert np.array_equal(f(xv, yv)[0], f(xv, hot)[0]), (dtype, n1)
