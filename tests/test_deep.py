"""Deep graphs through every public entry point (issue 13, "Deep graphs").

Every traversal is iterative: chains thousands of nodes deep must build, print, optimize,
compile, differentiate, save and load without touching Python's recursion limit (the tests run
at the default limit of 1,000 frames) and in time near-linear in the depth.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import exprc
from exprc.backends.plan import Planner
from exprc.fusion import lower

assert sys.getrecursionlimit() <= 1000 + 100, "deep-graph tests must run at the default recursion limit"


def elementwise_chain(n: int) -> tuple[exprc.Node, exprc.Node]:
    x = exprc.vector("x")
    y = x
    for i in range(n):
        y = exprc.sin(y) if i % 2 else y * 0.5
    return x, y


def test_planner_shape_of_a_2000_deep_fused_chain():
    # The planner works out the shape of a fused loop's output by walking its elemwise operands:
    # recursively before, a RecursionError on the first call of any chain ~2,000 deep.
    x, y = elementwise_chain(2500)
    program = lower([y], [x])
    planner = Planner(program, types.SimpleNamespace(slots=[x, y], kernels=[], p_size=0), [x], [y],
                      resolve_steps=False)
    shapes: dict = {}
    assert planner.shape(y, {x: np.zeros(7)}, shapes) == (7,)
    assert len(shapes) == 2502  # the chain, x and the constant 0.5
    # same errors as before: shapes that do not broadcast name the op and both shapes
    z = exprc.vector("z")
    planner = Planner(lower([y + z], [x, z]), types.SimpleNamespace(slots=[], kernels=[], p_size=0),
                      [x, z], [y + z], resolve_steps=False)
    with pytest.raises(exprc.errors.ShapeError, match=r"add: shapes \(7,\) and \(3,\)"):
        planner.shape(y + z, {x: np.zeros(7), z: np.zeros(3)}, {})


# -- a 5,000-deep chain through every public entry point ----------------------------------------------
DEPTH = 5000


def mixed_chain(x: exprc.Node, n: int = DEPTH) -> exprc.Node:
    """``n`` operations on matrix ``x``: elementwise ops, broadcasts of a row vector and, every
    few hundred, a reduction broadcast back (so fusion, planning and rewriting all run)."""
    y = x
    for i in range(n - 2 * (n // 400)):
        k = i % 6
        if k == 0:
            y = exprc.sin(y)
        elif k == 1:
            y = y * 0.5
        elif k == 2:
            y = exprc.tanh(y) + 0.25
        elif k == 3:
            y = y - exprc.cos(x[0])  # a broadcast row
        elif k == 4:
            y = exprc.exp(-y * y)
        else:
            y = y + 1.0
        if i % 400 == 399:
            y = y - exprc.mean(y, axis=1, keepdims=True)
    return y


def _lowered(program) -> tuple[int, ...]:
    """(steps, kernels, reduction kernels, kernels with several outputs, outputs of kernels)."""
    ks = program.kernels
    return (len(program.steps), len(ks), sum(k.kind == "reduce" for k in ks),
            sum(len(k.outputs) > 1 for k in ks), sum(len(k.outputs) for k in ks))


@pytest.mark.parametrize(("shape", "fused", "unfused"), [
    # (the gradient is of the chain's stable form, see autodiff._stabilized: 490 kernels fewer than
    # the chain as written gave; 992 fewer again since a cheap node read by several groups is
    # recomputed in each, fusion.RECOMPUTED: 3024 kernels and 10502 body nodes before, 11987 now;
    # one reduction more since the chain's last op, y - cos(x[0]), gives the row its gradient summed over
    # the rows: the sum's lazy scalar gradient was passed to it uncounted, 1.65 off at 4 links)
    ((3, 4), (2034, 2033, 512, 0, 2033), (8513, 8512, 512, 1991, 10504)),
    ((None, None), (2538, 2034, 512, 1, 2035), (9516, 9012, 512, 1493, 10507)),
])
def test_lowering_a_3000_deep_chain_through_reductions_and_broadcasts(shape, fused, unfused):
    # Merging independent kernels asked networkx for a path between every pair of steps: cubic in
    # the steps (61 s of an 800-deep gradient's compile, 0.5 s now).  The kernels are the same: the
    # chain's fused ones were counted with the old pass, the other counts match it at depths up to
    # 400 (at 3,000 it would take hours; tests/test_fusion.py compares the two definitions).
    x = exprc.matrix("x", shape=shape)
    y = mixed_chain(x, 3000)
    program = lower([y], [x])
    assert "".join(k.kind[0] for k in program.kernels) == "ee" + "re" * 7  # cos(x[0]), then a mean every 400
    assert [len(k.body) for k in program.kernels] == [1, 599, 1, 601, 1, 602, 1, 600, 1, 601, 1, 602, 1, 600, 1, 280]
    assert len(lower([y], [x], fuse=False).kernels) == 4493  # one kernel an op, none merged
    g = exprc.grad(exprc.sum(y), x)
    assert _lowered(lower([g], [x])) == fused
    assert _lowered(lower([g], [x], fuse=False)) == unfused


def depth_of(expr: exprc.Node) -> int:
    depth: dict = {}
    for n in exprc.graph.toposort([expr]):
        depth[n] = 1 + max([depth[i] for i in n.inputs]) if n.inputs else 0
    return depth[expr]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("deep-cache")
    mp.setenv("EXPRC_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def deep(cache_dir):
    x = exprc.matrix("x")
    y = mixed_chain(x)
    assert depth_of(y) >= DEPTH - 100
    data = np.random.default_rng(0).uniform(-1, 1, size=(3, 4))
    f_numpy = exprc.function([x], y, backend="numpy")
    return types.SimpleNamespace(x=x, y=y, data=data, want=f_numpy(data), f_numpy=f_numpy)


@pytest.fixture(scope="module")
def deep_c(deep):
    """The chain compiled on C (gcc takes ~12 s of it): called here, compiled only for CUDA there."""
    return exprc.function([deep.x], deep.y, backend="c")


def test_deep_printing(deep):
    assert repr(deep.y).startswith("Tensor(float64[?, ?]")
    assert exprc.pprint(deep.y).count("sin(") >= DEPTH // 7
    assert exprc.pprint(deep.y, max_nodes=100).count("…") >= 1
    assert exprc.debugprint(deep.y).count("\n") >= DEPTH
    assert exprc.to_dot(deep.y).startswith("digraph")


def test_deep_optimize_compile_call_eval(deep, deep_c):
    (opt,) = exprc.optimize([deep.y]).outputs
    assert depth_of(opt) > 1000
    np.testing.assert_allclose(deep_c(deep.data), deep.want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(deep.y.eval({deep.x: deep.data}), deep.want, rtol=1e-12, atol=1e-12)
    jitted = exprc.jit(lambda a: mixed_chain(a), backend="numpy")
    np.testing.assert_allclose(jitted(deep.data), deep.want, rtol=1e-12, atol=1e-12)


def test_deep_gradients(deep):
    cost = exprc.sum(deep.y)
    g = exprc.grad(cost, deep.x)
    # numpy backend: on C, ~1.2 kernels a level take the C compiler ~0.12 s a level (depth 1,600:
    # 188 s to compile, 0.55 s of it lowering), ~10 minutes here
    fg = exprc.function([deep.x], g, backend="numpy")
    eps = 1e-6
    d = np.zeros_like(deep.data)
    d[1, 2] = eps
    f = exprc.function([deep.x], cost, backend="numpy")
    fd = (f(deep.data + d) - f(deep.data - d)) / (2 * eps)
    assert abs(fg(deep.data)[1, 2] - fd) < 1e-5 * max(1.0, abs(fd))
    # jvp and vjp of a (shorter: one sweep each) deep chain
    v = exprc.vector("v", shape=(2,))
    chain = v
    for i in range(DEPTH):
        chain = exprc.sin(chain) if i % 2 else chain * 0.999
    t = exprc.vector("t", shape=(2,))
    tangent = exprc.jvp(chain, v, t)
    cot = exprc.vjp(chain, v, t)
    fv = exprc.function([v, t], [tangent, cot], backend="numpy")
    a, b = fv(np.array([0.3, 0.7]), np.ones(2))
    np.testing.assert_allclose(a, b, rtol=1e-12)  # elementwise: J is diagonal
    jac = exprc.function([v], exprc.jacobian(chain, v), backend="numpy")(np.array([0.3, 0.7]))
    np.testing.assert_allclose(np.diag(jac), a, rtol=1e-12)


def test_deep_save_load_pickle(deep, tmp_path):
    exprc.save(deep.y, tmp_path / "deep.json")
    back = exprc.load(tmp_path / "deep.json")
    (x2,) = exprc.graph.graph_inputs([back])
    np.testing.assert_allclose(back.eval({x2: deep.data}), deep.want, rtol=1e-12, atol=1e-12)
    again = exprc.loads(exprc.dumps([deep.y, deep.x]))
    assert again[0].type == deep.y.type
    import pickle

    x3, y3 = pickle.loads(pickle.dumps((deep.x, deep.y)))
    np.testing.assert_allclose(y3.eval({x3: deep.data}), deep.want, rtol=1e-12, atol=1e-12)
    f2 = pickle.loads(pickle.dumps(deep.f_numpy))
    np.testing.assert_allclose(f2(deep.data), deep.want, rtol=1e-12, atol=1e-12)


def test_deep_sympy_and_networkx(deep):
    with pytest.raises(exprc.errors.ExprcError, match=r"operations deep, more than max_depth=200"):
        exprc.to_sympy(deep.y)
    g = exprc.to_networkx([deep.y])
    (back,) = exprc.from_networkx(g)
    assert back is deep.y


def test_deep_cuda_render_and_compile_only(deep, deep_c):
    source, _layout, program = exprc.cuda.render([deep.y])
    assert "__global__" in source and len(program.kernels) >= 2
    if exprc.cuda.unavailable_reason() is None or "NVRTC" not in (exprc.cuda.unavailable_reason() or ""):
        compiled = exprc.cuda.compile_only(deep_c)  # a compiled Function: its graph is not optimized again
        assert compiled.ptx and compiled.source == source


def test_deep_accuracy_search_is_bounded(deep):
    f = exprc.function([deep.x], deep.y, backend="numpy", accuracy="search")
    np.testing.assert_allclose(f(deep.data), deep.want, rtol=1e-9, atol=1e-9)
    assert f.accuracy_report is not None


def test_deep_shared_updates_and_cache_list(deep, cache_dir):
    import subprocess

    w = exprc.shared(np.zeros((3, 4)), "w")
    # -O0: gcc takes 3 s on this source instead of 12 s at the default -O2 (deep_c compiles with that)
    with exprc.config(extra_cflags=("-O0",)):
        step = exprc.function([deep.x], exprc.sum(deep.y), updates=[(w, w + deep.y)], backend="c")
    step(deep.data)
    step(deep.data)
    np.testing.assert_allclose(w.get_value(), 2 * deep.want, rtol=1e-12, atol=1e-12)
    out = subprocess.run([sys.executable, "-m", "exprc", "cache", "list"], check=False, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "EXPRC_CACHE_DIR": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") >= 2


def test_a_3000_deep_chain_under_stable_forms_shares_its_max_and_runs():
    """share_maxima (pipeline) walks and rebuilds the whole graph, iteratively: a 3,000-deep chain
    under exprc.logsumexp - the user's max and exprc.softmax compiles at the default recursion
    limit, computes one max, and gives the NumPy backend's values (and -inf/empty over an empty
    axis, where only the stable forms are asked for)."""
    x = exprc.matrix("x")
    e = x
    for _ in range(3000):
        e = exprc.sin(e) + 0.5
    outs = [exprc.logsumexp(e, 1, keepdims=True) - exprc.max(e, 1, keepdims=True), exprc.softmax(e, 1)]
    f = exprc.function([x], outs)
    assert sum(n.op == "max" for n in exprc.graph.toposort(list(f.graph.outputs))) == 1
    xv = np.random.default_rng(0).normal(size=(4, 5))
    for got, want in zip(f(xv), exprc.function([x], outs, backend="numpy")(xv)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    stable = exprc.function([x], [exprc.logsumexp(e, 1), exprc.softmax(e, 1)])(np.zeros((2, 0)))
    np.testing.assert_array_equal(stable[0], [-np.inf, -np.inf])
    assert stable[1].shape == (2, 0)
