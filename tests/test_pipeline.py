"""optimize(): the ordered passes, the trace, config and exclude handling."""

import numpy as np

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
