"""optimize(): the ordered passes, the trace, config and exclude handling."""

import numpy as np
import pytest

import exprc
from exprc.pipeline import PASSES, FunctionGraph


def test_passes_are_named_and_ordered():
    assert [p[0] for p in PASSES] == ["canonicalize", "stabilize", "stabilize_late", "specialize"]
    assert len({p[0] for p in PASSES}) == len(PASSES)
    assert PASSES[1][1] == "stability" and "canonicalize" in PASSES[1][2]  # canonical rules stay on


def test_optimize_returns_graph_with_trace():
    x = exprc.vector("x")
    e = (x * 1) ** 2
    g = exprc.optimize([e])
    assert isinstance(g, FunctionGraph)
    assert g.rewrites == ["mul_one", "pow_two"]
    assert g.outputs[0].op == "square" and g.outputs[0].inputs == (x,)
    t = g.trace[0]
    assert t.pass_name == "canonicalize" and t.before is x * 1 and t.after is x
    assert "mul_one" in str(t) and "x * 1" in str(t)
    assert g.nodes[-1] is g.outputs[0]
    assert g.to_networkx().number_of_nodes() == 2
    assert exprc.optimize(e).outputs == g.outputs  # a single node is accepted
    np.testing.assert_array_equal(g.outputs[0].eval({x: np.array([3.0])}), [9.0])


def test_optimize_function_graph_keeps_inputs_and_is_idempotent():
    x, y = exprc.vector("x"), exprc.vector("y")
    fg = FunctionGraph((x, y), (x - 0.0, y / 1))
    g = exprc.optimize(fg)
    assert g.inputs == (x, y) and g.outputs == (x, y)
    assert exprc.optimize(g).rewrites == []


def test_config_exclude_and_fixpoint_cap():
    x = exprc.vector("x")
    neg = exprc.negative
    e = neg(neg(neg(neg(x))))
    with exprc.config(exclude=("neg_neg",)):
        assert exprc.optimize([e]).outputs[0] is e
    assert exprc.optimize([e]).outputs[0] is x
    cfg = exprc.Config(max_rewrite_rounds=1)
    assert exprc.optimize([e], cfg).rewrites.count("neg_neg") >= 1


def test_rules_compose_across_rounds():
    x = exprc.vector("x")
    e = (x + exprc.constant(1.0) * exprc.constant(-0.0)) * (exprc.constant(2.0) - 1.0)
    g = exprc.optimize([e])
    assert g.outputs[0] is x
    assert set(g.rewrites) == {"constant_fold", "add_zero", "mul_one"}


def test_a_stable_forms_shift_shares_the_users_own_max():
    """The shift of exprc.logsumexp / the stability rules' forms is max(x, identity=True) (-inf over an
    empty axis); where the graph also holds the user's max(x) over the same axes (kept or not alike),
    the optimized graph computes one max, the user's (two before: a whole extra pass over x in a
    column reduction, 20-25% of a row kernel's time), and over an empty axis the function raises as
    the user's max does; without the user's max the shift keeps its identity."""
    from exprc.errors import ShapeError
    from exprc.graph import toposort

    x = exprc.matrix("x")
    for axis in (0, 1):
        user = exprc.max(x, axis=axis, keepdims=True)
        for outs in ([exprc.logsumexp(x, axis, keepdims=True), user], exprc.logsumexp(x, axis, keepdims=True) - user,
                     [x - user, exprc.log(exprc.sum(exprc.exp(x), axis=axis, keepdims=True))]):
            fg = exprc.optimize(outs if isinstance(outs, list) else [outs])
            maxes = [n for n in toposort(list(fg.outputs)) if n.op == "max"]
            assert maxes == [user], [exprc.pprint(n) for n in maxes]
            f = exprc.function([x], outs)
            xv = np.random.default_rng(axis).normal(size=(5, 4)) * 300
            ref = exprc.function([x], outs, backend="numpy")
            for g, w in zip(*(r if isinstance(r, list) else [r] for r in (f(xv), ref(xv)))):
                np.testing.assert_allclose(g, w, rtol=1e-13)
            with pytest.raises(ShapeError, match="zero-size"):
                f(np.zeros((0, 0)))
    alone = exprc.optimize([exprc.logsumexp(x, 1)])
    assert [n.arg("identity") for n in toposort(list(alone.outputs)) if n.op == "max"] == [True]
    # A user's max of a stable form: its shift is replaced in a later round (found in review: one
    # round kept the old softmax alive beside the new, 13 more nodes, one more exp, +35% time).
    e = exprc.exp(x) / exprc.sum(exprc.exp(x), 1, keepdims=True)
    outs = [exprc.exp(e) / exprc.sum(exprc.exp(e), 1, keepdims=True), exprc.max(x, 1, keepdims=True),
            exprc.max(e, 1, keepdims=True)]
    order = toposort(list(exprc.optimize(outs).outputs))
    assert [bool(n.arg("identity")) for n in order if n.op == "max"] == [False, False]  # (one round: 4 maxima)
    assert sum(n.op == "exp" for n in order) == 4  # (two per softmax, as written and shifted; one round: 5)


def test_a_process_that_only_unpickles_a_shift_still_shares_maxima():
    """Unpickling rebuilds nodes without their type rules: the flag that lets share_maxima run
    (ops/reduce.IDENTITY_MADE) is set there too, so a fresh process optimizing a pickled graph
    computes one max, as the process that built it."""
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    x = exprc.matrix("x")
    blob = pickle.dumps(exprc.logsumexp(x, 1, keepdims=True) - exprc.max(x, 1, keepdims=True))
    code = ("import pickle, sys, exprc\nfrom exprc.graph import toposort\n"
            "e = pickle.loads(sys.stdin.buffer.read())\n"
            "print(sum(n.op == 'max' for n in toposort(list(exprc.optimize([e]).outputs))))")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True, env=env, cwd="/")
    assert out.stdout.decode().strip() == "1", out
