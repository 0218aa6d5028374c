"""The C renderer: golden sources, determinism, literals, and no injection through names."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc.backends.c.render import CRenderer, c_literal
from exprc.fusion import lower
from exprc.pipeline import FunctionGraph, optimize

GOLDEN = Path(__file__).parent / "golden"


def render(inputs, outputs):
    fg = optimize(FunctionGraph(tuple(inputs), tuple(outputs)))
    program = lower(list(fg.outputs), list(fg.inputs), rows=True, epilogues=True, host_scalars=True)  # (as C)
    return CRenderer().render(program, exprc.pprint(list(outputs)))[0]


def _kernels_only(src: str) -> str:
    """The part after the shared prelude: the kernels and the entry point."""
    return src[src.index("/* k"):]


def golden_cases():
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    x = exprc.vector("x")
    m, v = exprc.matrix("m", "float32"), exprc.vector("v", "float32")
    key = exprc.vector("key", "int64")
    rows, bias = exprc.matrix("rows"), exprc.vector("bias")
    return {
        "bias_tanh_rows": ([rows, bias], [exprc.tanh(rows * 2.0 + bias[0])]),
        "e1_axpy": ([a, b, c], [a * b + c]),
        "logsumexp_reduce": ([x], [exprc.sum(exprc.exp(x - exprc.max(x)))]),
        "float32_broadcast_rowsum": ([m, v], [exprc.sum(exprc.tanh(m * v), axis=1)]),
        "softmax_rows": ([rows, bias], [exprc.softmax(rows + bias, axis=1)]),
        "dropout_draw": ([x, key], [x * exprc.random.bernoulli(key, size=x.shape, p=0.8, dtype="float64") / 0.8]),
    }


@pytest.mark.parametrize("name", sorted(golden_cases()))
def test_golden_sources(name):
    inputs, outputs = golden_cases()[name]
    src = _kernels_only(render(inputs, outputs))
    path = GOLDEN / f"{name}.c"
    if os.environ.get("EXPRC_UPDATE_GOLDEN"):
        path.write_text(src)
    assert src == path.read_text(), f"generated C for {name} changed; rerun with EXPRC_UPDATE_GOLDEN=1 and review"


SCRIPT = """
import exprc
a, b = exprc.vector("a"), exprc.matrix("b")
e = exprc.sum(exprc.exp(a - exprc.max(a))) + exprc.log1p(b * a).sum(axis=0)
f = exprc.function([a, b], e)
import hashlib; print(hashlib.sha256(f.source.encode()).hexdigest())
"""


def test_source_is_identical_across_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "EXPRC_CACHE_DIR": str(tmp_path),
           "PYTHONHASHSEED": "random"}
    outs = {subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert len(outs) == 1


@pytest.mark.parametrize("value", [0.1, -0.0, 1e-310, 1.7976931348623157e308, math.pi, 2.0**-1074])
def test_float_literals_round_trip(value):
    text = c_literal(value, "float64")
    assert float.fromhex(text.strip("()")) == value
    assert math.copysign(1, float.fromhex(text.strip("()"))) == math.copysign(1, value)


def test_special_literals():
    assert c_literal(float("nan"), "float64") == "NAN"
    assert c_literal(float("inf"), "float32") == "(float)INFINITY"
    assert c_literal(-(2**63), "int64") == "(INT64_MIN)"


def test_constants_compile_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    x = exprc.vector("x")
    consts = [0.1, -0.0, 1e-310, np.inf, 1 / 3]
    f = exprc.function([x], [x * c for c in consts] + [x + np.nan])
    got = f(np.array([1.0]))
    for g, c in zip(got, consts):
        assert g[0] == c or (g[0] == 0 and math.copysign(1, g[0]) == math.copysign(1, c))
    assert np.isnan(got[-1][0])


def test_names_never_inject_code(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    evil = "x */ int evil = 1; /* \\\n#include <stdio.h>"
    x = exprc.vector(evil)
    f = exprc.function([x], exprc.exp(x) + 1)
    code = re.sub(r"/\*.*?\*/", "", f.source, flags=re.DOTALL)  # what the compiler sees outside comments
    assert "evil" not in code and "stdio" not in code
    assert "evil" in f.source  # the name is shown, but only inside a defused comment
    np.testing.assert_allclose(f(np.zeros(2)), [2.0, 2.0])


def test_kernel_comment_shows_what_it_computes():
    a, b = exprc.vector("a"), exprc.vector("b")
    src = render([a, b], [exprc.log1p(a) * b])
    assert "/* k0_log1p_mul: log1p(a) * b */" in src


def test_vector_math_is_used(tmp_path, monkeypatch):
    """The contiguous loop must call libmvec (e.g. _ZGVdN4v_exp on AVX2), not scalar exp."""
    if subprocess.run(["which", "objdump"], capture_output=True, check=False).returncode:
        pytest.skip("objdump not available")
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    a, b = exprc.vector("a"), exprc.vector("b")
    # Helpers (sigmoid, logaddexp) must stay branch-free or the whole loop falls back to scalar calls.
    f = exprc.function([a, b], exprc.exp(a) * exprc.sin(a) + exprc.hypot(a, b) * exprc.sigmoid(b)
                       + exprc.logaddexp(a, b))
    from exprc.backends.c import compile as cc

    if not cc.has_vector_math(f.config):
        pytest.skip("no libmvec on this machine")
    lib = next(Path(f.cache_path).glob("*.so"))
    dis = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=False).stdout
    called = set(re.findall(r"call\s+\S+\s+<(\w+)@plt>", dis))
    for fn in ("exp", "sin", "hypot", "log1p"):
        assert any(c.startswith("_ZGV") and c.endswith("_" + fn) for c in called), (fn, sorted(called))


def test_sin_and_cos_of_one_argument_stay_vector_calls(tmp_path, monkeypatch):
    """gcc merges sin(x) and cos(x) into sincos, which libmvec lacks: the loop then ran one element at a
    time (the stable sin(x + e) - sin(x) was 15x slower than the naive one).  compile.NO_SINCOS turns that
    off; the library must call the vector sin and cos and no sincos, also with one of them in a where()."""
    if subprocess.run(["which", "objdump"], capture_output=True, check=False).returncode:
        pytest.skip("objdump not available")
    monkeypatch.setenv("EXPRC_CACHE_DIR", str(tmp_path))
    from exprc.backends.c import compile as cc

    if not cc.has_vector_math(exprc.Config()) or not cc._facts(exprc.Config())[4]:
        pytest.skip("no libmvec, or a compiler without -fdisable-tree-sincos")
    x, e = exprc.vector("x"), exprc.vector("e")
    f = exprc.function([x, e], [exprc.sin(x) * e + exprc.cos(x),
                                exprc.where(e > 0.5, exprc.sin(e) - exprc.cos(e) * x, e)])
    lib = next(Path(f.cache_path).glob("*.so"))
    dis = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=False).stdout
    called = set(re.findall(r"call\s+\S+\s+<(\w+)@plt>", dis))
    assert not any("sincos" in c for c in called), sorted(called)
    for fn in ("sin", "cos"):
        assert any(c.startswith("_ZGV") and c.endswith("_" + fn) for c in called), (fn, sorted(called))
    xs, es = np.linspace(-9, 9, 1001), np.linspace(0, 1, 1001)
    got = f(xs, es)
    np.testing.assert_allclose(got[0], np.sin(xs) * es + np.cos(xs), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(got[1], np.where(es > 0.5, np.sin(es) - np.cos(es) * xs, es), rtol=1e-14, atol=1e-15)


def test_guards_skip_their_rare_branch_with_the_same_bits():
    """where(rare(c), slow, fast) from a stability rule: a block where no element meets c runs a loop
    without the slow branch (_flat_fast), a block with one runs the full loop; both give the same bits
    (the second half repeats the first but for its rare elements)."""
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    outs = [exprc.exp(-a * a) * exprc.sin(b) + exprc.log1p(c * c), exprc.exp(a * 400.0) * exprc.exp(b * 400.0)]
    f = exprc.function([a, b, c], outs, config=exprc.Config(cache=False))
    assert "_flat_fast" in f.source and "_flat_rare" in f.source
    rng = np.random.default_rng(1)
    half = [rng.uniform(-3, 3, 8192) for _ in range(3)]
    half[2][5], half[0][7] = 1e200, 2.0  # rare: |c| > 1e150 (log1p_square); 400 a > 700 (exp_product)
    half[1][11] = np.nan
    full = [np.concatenate([h, h]) for h in half]
    full[2][8192 + 5], full[0][8192 + 7] = 0.5, 0.5
    for threads in (1, 2):
        got = exprc.function([a, b, c], outs, config=exprc.Config(cache=False, num_threads=threads))(*full)
        for g in got:
            same = np.ones(8192, bool)
            same[[5, 7]] = False
            assert np.array_equal(g[:8192][same].view(np.uint64), g[8192:][same].view(np.uint64))
    ref = exprc.function([a, b, c], outs, backend="numpy")(*full)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-15, equal_nan=True)  # libmvec vs NumPy: ulps
    want = 2 * np.log(1e200) + np.exp(-full[0][5] ** 2) * np.sin(full[1][5])  # log1p(c*c) overflows: the slow branch
    assert np.isfinite(got[0][5]) and abs(got[0][5] - want) < 1e-13 * want
    want = np.exp(400.0 * 2.0 + 400.0 * full[1][7])  # exp(800) overflows alone: the joined exp
    assert np.isfinite(got[1][7]) and abs(got[1][7] - want) < 1e-12 * want


@pytest.mark.parametrize("n,offset", [(1000, 0), (4099, 3), (257, 1), (70000, 0)])
def test_guards_choose_their_loop_per_block_with_the_same_bits(n, offset):
    """The rare scan picks the fast or the full loop per EXPRC_GBLOCK (256) elements: a rare element
    at a block's first or last place, in a remainder, or in a strided slice costs its block the full
    loop and changes no other element's bits (against every block running the full loop)."""
    a, c = exprc.vector("a"), exprc.vector("c")
    out = exprc.exp(-a * a) * exprc.sin(a) + exprc.log1p(c * c)  # rare: |c| > 1e150 (log1p_square)
    f = exprc.function([a, c], out)
    assert "_flat_guarded" in f.source and "EXPRC_GBLOCK" in f.source
    rng = np.random.default_rng(n)
    av, cv = rng.uniform(-3, 3, n + offset), rng.uniform(-3, 3, n + offset)
    few = [i for i in (0, 255, 256, 511, n - 1, n // 2) if i < n]
    many = sorted(set(few) | set(range(0, n, 64)))
    for layout in ("contiguous", "strided"):
        got = []
        for rare in (few, many):
            cc = cv.copy()
            cc[[offset + i for i in rare]] = 1e200
            if layout == "strided":
                a2, c2 = np.repeat(av[offset:], 2)[::2], np.repeat(cc[offset:], 2)[::2]
            else:
                a2, c2 = av[offset:], cc[offset:]
            got.append(f(a2, c2))
        keep = np.ones(n, bool)
        keep[many] = False
        assert np.array_equal(got[0][keep].view(np.uint64), got[1][keep].view(np.uint64)), layout
        want = 2 * np.log(1e200) + np.exp(-av[offset + few[0]] ** 2) * np.sin(av[offset + few[0]])
        assert abs(got[0][few[0]] - want) < 1e-13 * want


def test_guarded_gelu_and_its_gradient_give_each_element_its_own_bits():
    """GELU and its gradient in one function: guarded kernels (exp_exact_argument, exp_subnormal_product)
    whose full loop must vectorize as their fast loop does, or an element's bits depend on whether a
    neighbour in its block meets a rare condition (review of e59c97f: 48 of 300 N(0, 3) points differed
    from the element computed alone while a lo * sign(u) in the full loop kept gcc from vectorizing it)."""
    x = exprc.vector("x")
    e = 0.5 * x * (1 + exprc.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    f = exprc.function([x], [e, exprc.grad(exprc.sum(e), x)])
    v = np.random.default_rng(1).normal(0, 3, 300)
    together = f(v)
    alone = [f(v[j:j + 1]) for j in range(len(v))]
    for k in range(2):
        assert np.array_equal(together[k].view(np.uint64), np.array([a[k][0] for a in alone]).view(np.uint64))
    for t in (0.0, -5.0, -30.0):  # the neighbour decides whether the element's block runs the full loop
        w = np.full(64, -1.4463579380399347)
        w[1] = t
        assert f(w)[1][0].tobytes() == f(np.full(1, -1.4463579380399347))[1][0].tobytes()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vector_math_bits_do_not_depend_on_where_an_element_sits(dtype):
    """libmvec's lanes and the scalar libm differ by an ulp now and then, so a kernel with vector math
    runs every element through the vector loop (the flat loop on multiples of EXPRC_VBLOCK, the rest
    and every strided layout in padded blocks): a slice, a view, a transpose, a chunk end or a thread
    count never changes an element's bits.  (At cbfc888 this found 233 mismatching cases.)"""
    from conftest import assert_same_bits

    x, y = exprc.vector("x", dtype), exprc.vector("y", dtype)
    outs = [exprc.exp(-x * x) * exprc.sin(y) + exprc.log1p(x * x),  # a guarded kernel: rare/fast/full loops
            exprc.where(x > 0.3, exprc.cos(x), exprc.arctan(y)) + exprc.sigmoid(y) * exprc.tanh(x),
            exprc.softplus(x) - exprc.expm1(y) / 3 + exprc.abs(y) ** x]
    f = exprc.function([x, y], outs)
    assert "_block(" in f.source and "EXPRC_VBLOCK" in f.source
    rng = np.random.default_rng(11)
    a, b = (rng.uniform(-4, 4, 20011).astype(dtype) for _ in range(2))
    a[[3, 40, 77]], b[[5, 41, 90]] = np.nan, np.inf
    full = f(a, b)
    cases = [(lo, n) for lo in (0, 1, 7, 31, 33, 64) for n in (0, 1, 3, 31, 32, 33, 100, 1000, 8200)]
    for lo, n in cases:
        for g, w in zip(f(a[lo:lo + n].copy(), b[lo:lo + n].copy()), full):
            assert_same_bits(g, w[lo:lo + n])
    for sl in (slice(None, None, 3), slice(None, None, -1), slice(5, 9000, 7)):
        for g, w in zip(f(a[sl], b[sl]), full):  # strided: the block path
            assert_same_bits(g, w[sl])
    for g, w in zip(exprc.function([x, y], outs, config=exprc.Config(num_threads=2))(a, b), full):
        assert_same_bits(g, w)
    X, Y = exprc.matrix("X", dtype), exprc.matrix("Y", dtype)
    g2 = exprc.function([X, Y], [exprc.exp(X) * exprc.cos(Y) - exprc.log1p(X * X), exprc.tanh(X) * Y])
    A, B = a[:301 * 61].reshape(301, 61), b[:301 * 61].reshape(301, 61)
    G = g2(A, B)
    for view in (lambda M: M[:, 5:40], lambda M: M.T, lambda M: M[::2, ::3], lambda M: M[7:200],
                 lambda M: np.asfortranarray(M)):
        for g, w in zip(g2(view(A), view(B)), G):
            assert_same_bits(g, view(w))
    with np.errstate(all="ignore"):  # and the values are NumPy's to vector-math accuracy
        ref = np.exp(A) * np.cos(B) - np.log1p(A * A)
    np.testing.assert_allclose(G[0], ref, rtol=2e-5 if dtype == "float32" else 1e-13, atol=1e-6, equal_nan=True)


def test_a_bool_array_keeps_every_element_in_the_vector_loop():
    """A 1-byte array (a bool mask) makes gcc run the flat loop 64 lanes at a time: with blocks of 32,
    half of each went through the scalar epilogue, and 49 of 60 slices below changed bits by an ulp.
    Such kernels use blocks of EXPRC_VBLOCK_BYTE (64)."""
    from conftest import assert_same_bits

    x, m = exprc.vector("x"), exprc.vector("m", "bool")
    f = exprc.function([x, m], [exprc.where(m, exprc.exp(x), exprc.sin(x)), exprc.tanh(x) > 0.5])
    assert "EXPRC_VBLOCK_BYTE" in f.source
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-5, 5, 10000), rng.random(10000) < 0.5
    full = f(a, b)
    for lo in (0, 1, 31, 32, 33, 64):
        for n in (1, 31, 32, 33, 63, 64, 65, 96, 100, 1000):
            for g, w in zip(f(a[lo:lo + n].copy(), b[lo:lo + n].copy()), full):
                assert_same_bits(g, w[lo:lo + n])
    X, M = exprc.matrix("X"), exprc.matrix("M", "bool")
    g2 = exprc.function([X, M], exprc.where(M, exprc.exp(X - exprc.max(X, axis=1, keepdims=True)), 0.0))
    A, B = a[:600].reshape(60, 10), b[:600].reshape(60, 10)
    G = g2(A, B)
    for view in (lambda T: T[7:], lambda T: T[::2], lambda T: np.asfortranarray(T)):  # (whole rows: their max)
        assert_same_bits(g2(view(A), view(B)), view(G))


def test_a_reduction_keeping_the_last_axis_reads_rows_and_keeps_the_bits():
    """sum(x, axis=0) and its kind (the last axis kept) run with that axis innermost, an accumulator
    per element: each output still adds its elements in order, so the result is NumPy's sequential
    row-by-row reduction to the bit, and the same on one thread or two."""
    x, t = exprc.matrix("x"), exprc.tensor("t", "float64", ndim=3)
    outs = [exprc.sum(x, axis=0), exprc.max(x * 2.0, axis=0), exprc.mean(exprc.exp(x), axis=0),
            exprc.sum(x.astype("float32"), axis=0), exprc.min(x, axis=0, keepdims=True)]
    funcs = {n: exprc.function([x], outs, config=exprc.Config(num_threads=n)) for n in (1, 2)}
    assert "EXPRC_CBLOCK" in funcs[1].source
    rng = np.random.default_rng(7)
    for shape in [(128, 128), (7, 600), (1, 257), (3000, 300), (1000, 3), (300, 513), (50, 9000)]:  # (threads: 9000)
        a = rng.standard_normal(shape)
        a[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = np.nan
        got = funcs[1](a)
        np.testing.assert_array_equal(got[0], np.add.reduce(a, axis=0))
        np.testing.assert_array_equal(got[1], np.maximum.reduce(a * 2.0, axis=0))
        np.testing.assert_allclose(got[2], np.exp(a).mean(axis=0), rtol=1e-14)
        np.testing.assert_allclose(got[3], a.astype(np.float32).sum(axis=0, dtype=np.float64).astype(np.float32),
                                   rtol=1e-6)
        np.testing.assert_array_equal(got[4], a.min(axis=0, keepdims=True))
        for g, h in zip(got, funcs[2](a)):
            np.testing.assert_array_equal(g, h)
        for view in (a[::-1, ::2], a[:, 1:]):  # strided rows, offsets
            np.testing.assert_array_equal(funcs[2](view)[0], np.add.reduce(np.ascontiguousarray(view), axis=0))
    np.testing.assert_array_equal(exprc.function([x], exprc.sum(x, axis=0))(np.zeros((0, 4))), np.zeros(4))
    f3 = exprc.function([t], [exprc.sum(t, axis=(0, 1)), exprc.sum(t * t, axis=0)])
    c = rng.standard_normal((4, 5, 300))
    got = f3(c)
    np.testing.assert_array_equal(got[0], np.add.reduce(c.reshape(20, 300), axis=0))
    np.testing.assert_array_equal(got[1], np.add.reduce(c * c, axis=0))



def eight_lane_sums(m: np.ndarray) -> np.ndarray:
    """Each row of float64 ``m`` summed as the C backend's row sums add (render._eight_lanes): rows of 16
    or more into 8 partial sums, lane q taking elements q, q + 8, ..., combined pairwise, then the last
    n % 8 in order; shorter rows in order."""
    out = np.zeros(m.shape[0])
    for i, row in enumerate(m):
        acc, p = 0.0, 0
        if len(row) >= 16:
            s = [0.0] * 8
            while p + 8 <= len(row):
                for q in range(8):
                    s[q] += float(row[p + q])
                p += 8
            acc += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
        for v in row[p:]:
            acc += float(v)
        out[i] = acc
    return out

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_row_blocks_of_vector_math_match_numpy_and_keep_their_bits(dtype):
    """Row reductions whose operand calls vector math, and broadcast elementwise loops with vector
    math, run several short rows (up to EXPRC_RCHUNK / 2) through one padded SIMD block, a long row in
    blocks of EXPRC_RCHUNK: values are NumPy's to vector-math accuracy, a reduction adds in the order
    of eight lanes (eight_lane_sums: the same as a reduce kernel reading the values from memory), and
    an element's bits do not depend on its row length's block, the rows it shares a block
    with, the thread count, a view, or whether the exp sits in the reduction or an elementwise kernel."""
    from conftest import assert_same_bits

    x, c, mask = exprc.matrix("x", dtype), exprc.matrix("c", dtype), exprc.matrix("mask", "bool")
    e = exprc.exp(x - c)
    outs = [exprc.sum(e, axis=1), e, exprc.max(exprc.where(mask, exprc.tanh(x), -x), axis=1),
            exprc.mean(exprc.log1p(x * x), axis=1, keepdims=True) * c]
    funcs = {n: exprc.function([x, c, mask], outs, config=exprc.Config(num_threads=n)) for n in (1, 2)}
    src = funcs[1].source
    assert "EXPRC_RCHUNK / n1" in src and "ob0[i1 * R + r] = ob0[i1 * R];" in src  # (padded blocks of rows)
    rng = np.random.default_rng(5)
    tol = {"rtol": 3e-6, "atol": 1e-30} if dtype == "float32" else {"rtol": 1e-13, "atol": 1e-300}
    empty = exprc.function([x, c], [outs[0], outs[3]])  # (empty rows: max raises, as NumPy's)
    zero = empty(np.zeros((50, 0), dtype), np.ones((50, 1), dtype))
    assert (zero[0] == 0).all() and np.isnan(zero[1]).all()
    for n0, n1 in [(37, 1), (300, 7), (129, 10), (40, 127), (9, 128), (9, 129), (5, 300), (3, 600),
                   (2, 1000)]:
        xv = (rng.standard_normal((n0, n1)) * 5).astype(dtype)
        if xv.size:
            xv.flat[rng.integers(0, xv.size, 3)] = [np.nan, np.inf, -0.0]
        cv = rng.standard_normal((n0, 1)).astype(dtype)
        mv = rng.random((n0, n1)) < 0.5
        got = funcs[1](xv, cv, mv)
        with np.errstate(all="ignore"):
            ev = np.exp(xv - cv)
            want = [ev.sum(axis=1), ev, np.where(mv, np.tanh(xv), -xv).max(axis=1),
                    np.log1p(xv * xv).mean(axis=1, keepdims=True) * cv]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, equal_nan=True, **tol)
        # the sum adds the elementwise output's own values, in the row order of eight lanes
        if dtype == "float64":
            assert_same_bits(got[0], eight_lane_sums(got[1]))
        for g, h in zip(got, funcs[2](xv, cv, mv)):
            assert_same_bits(g, h)
        if n0 > 3:
            for g, h in zip(funcs[1](xv[2:], cv[2:], mv[2:]), got):  # other rows share the blocks
                assert_same_bits(g, h[2:])
            for g, h in zip(funcs[1](np.asfortranarray(xv), cv, mv), got):
                assert_same_bits(g, h)


def test_a_row_broadcast_under_vector_math_runs_the_flat_loop_per_row():
    """tanh(m + b), b a row broadcast along the rows (a layer's bias): long rows (64 and more) run the
    flat loop once per row (flag 2), short ones the strided path's packed blocks; both give the bits of
    the same values laid out contiguously, with 1 and 2 threads, and NumPy's values."""
    from conftest import assert_same_bits

    m, b = exprc.matrix("m"), exprc.vector("b")
    funcs = {t: exprc.function([m, b], exprc.tanh(m * 2.0 + b), config=exprc.Config(num_threads=t)) for t in (1, 2)}
    B = exprc.matrix("B")
    full = exprc.function([m, B], exprc.tanh(m * 2.0 + B))
    assert "n1 >= 2 * EXPRC_VBLOCK" in funcs[1].source
    rng = np.random.default_rng(4)
    for n0, n1 in [(50, 128), (7, 64), (3, 1000), (40, 63), (300, 10), (2, 65)]:
        mv, bv = rng.standard_normal((n0, n1)) * 3, rng.standard_normal(n1)
        mv[0, 0], bv[-1] = np.nan, np.inf
        got = funcs[1](mv, bv)
        assert_same_bits(got, full(mv, np.ascontiguousarray(np.broadcast_to(bv, (n0, n1)))))
        assert_same_bits(funcs[2](mv, bv), got)
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(got, np.tanh(mv * 2.0 + bv), rtol=1e-13, atol=1e-15)


def test_a_single_element_operand_keeps_the_contiguous_path():
    """exp(v - max(v, keepdims=True)): the keepdims max is one element of shape (1,), which the flat
    loop reads as a scalar and the planner lets through; the renderer dropped the contiguous path
    all the same, so the kernel ran 32-element copies through its strided loop (2.8x slower).  The
    kernel now dispatches on the flag, and contiguous, strided and reversed vectors give the same
    bits (the strided path runs the same loop on copies) and NumPy's values."""
    from conftest import assert_same_bits

    v = exprc.vector("v")
    m = exprc.max(v, keepdims=True)
    f = exprc.function([v], exprc.exp(v - m) * 2.0, config=exprc.Config(num_threads=1))
    kl = [k for k in f._kernel.layout.kernels if k.kernel.reduce is None]
    assert len(kl) == 1 and kl[0].accesses[1][0].type.shape == (1,)
    name = kl[0].kernel.name
    body = f.source[f.source.index(f"EXPRC_HIDDEN void {name}("):]
    assert "if (P[0])" in body[:body.index("\n}")], body[:600]
    rng = np.random.default_rng(8)
    x = rng.standard_normal(1001) * 30
    x[3], x[7] = -np.inf, -0.0
    got = f(x)
    np.testing.assert_allclose(got, np.exp(x - x.max()) * 2.0, rtol=1e-14, atol=0)
    y = rng.standard_normal(2003) * 30
    for view in (y[::2], y[::-2]):
        assert_same_bits(f(view), f(np.ascontiguousarray(view)))


ROWFLAT_CASES = {
    "column_slice": lambda X: X[:, 3:11],
    "reversed_rows": lambda X: X[::-1, 1:9],
    "every_other_row": lambda X: X[::2, :8],
    "contiguous": lambda X: np.ascontiguousarray(X[:, :8]),
}


@pytest.mark.parametrize("case", sorted(ROWFLAT_CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rows_of_wider_arrays_take_the_vector_loop_with_the_contiguous_bits(case, dtype):
    """A 2-d elementwise loop over row slices (LSTM gate slices) and a 0-d operand runs the flat
    loop per row (flag 2): the same bits as the same values
    laid out contiguously, NaN/inf/-0.0 included; a column broadcast or a transposed operand keeps
    the strided nest, with NumPy's values."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((37, 16)).astype(dtype) * 30
    X[0, 3], X[1, 4], X[2, 5], X[5, 3] = np.nan, np.inf, -np.inf, -0.0
    m, s = exprc.matrix("m", dtype), exprc.scalar("s", dtype)
    e = [exprc.tanh(m * 2.0) * s, exprc.softplus(m) - s, exprc.sigmoid(m) * exprc.exp(-m * m)]
    f = exprc.function([m, s], e, backend="c")
    view = ROWFLAT_CASES[case](X)
    got = f(view, np.asarray(0.5, dtype))
    want = f(np.ascontiguousarray(view), np.asarray(0.5, dtype))
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()
    with np.errstate(all="ignore"):
        ref = [np.tanh(view * 2) * np.asarray(0.5, dtype), np.logaddexp(0, view) - np.asarray(0.5, dtype),
               1 / (1 + np.exp(-view)) * np.exp(-view * view)]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=5e-6 if dtype == "float32" else 1e-13,
                                   atol=1e-5 if dtype == "float32" else 1e-13)  # (softplus(m) - v cancels)
    kl = [k for k in f._kernel.layout.kernels if k.kernel.reduce is None and k.kernel.matmul is None]
    assert kl and all(k.rowflat for k in kl)


def test_column_broadcast_and_transposed_operands_keep_the_strided_nest():
    rng = np.random.default_rng(4)
    A, c = rng.standard_normal((9, 7)), rng.standard_normal((9, 1))
    m, col = exprc.matrix("m"), exprc.matrix("c")
    f = exprc.function([m, col], exprc.exp(m) * col, backend="c")
    for a, cc in ((A, c), (A.T.copy().T, c), (np.asfortranarray(A), c), (A[:, :1], c), (A[:0], c[:0])):
        np.testing.assert_allclose(f(a, cc), np.exp(a) * cc, rtol=1e-15)
    plan = f._kernel._make_plan([np.asfortranarray(A), c], None)
    assert plan.P[f._kernel.layout.kernels[0].p_flag] == 0
    plan = f._kernel._make_plan([A[:, 2:6], np.ones((9, 4))[:, :1].copy()], None)
    assert plan.P[f._kernel.layout.kernels[0].p_flag] == 0  # (c broadcasts along the rows: stride 0)
    v = exprc.vector("v")
    g = exprc.function([m, v], exprc.exp(m) * v, backend="c")
    plan = g._kernel._make_plan([A[:, 2:6], np.ones(4)], None)
    # (a row vector under vector math: rows are contiguous, flag 2; the kernel takes the flat loop per
    # row for rows of 64 and more, the strided path's packed blocks below)
    assert plan.P[g._kernel.layout.kernels[0].p_flag] == 2
    for a, vv in ((A[:, 2:6], np.ones(4) * 0.5), (np.tile(A, (1, 20)), np.linspace(-1, 1, 140))):
        np.testing.assert_allclose(g(a, vv), np.exp(a) * vv, rtol=1e-15)
    h = exprc.function([m, col], exprc.exp(m) * col * 2.0, backend="c")
    plan = h._kernel._make_plan([A[:, 2:6], np.ones((9, 8))[:, 2:6]], None)
    assert plan.P[h._kernel.layout.kernels[0].p_flag] == 2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_from_expm1_is_within_a_few_ulps_of_mpmath(dtype):
    """The C backend's tanh (numpy_semantics.h: -t / (2 + t), t = expm1(-2|x|)) against mpmath: within
    4 ulps everywhere (measured 3.3), the special values as tanh gives them; with precise math the
    C library's tanh (NumPy's accuracy)."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(7)
    big = np.finfo(dtype).max
    x = np.concatenate([rng.uniform(-20, 20, 1500), rng.uniform(-1, 1, 500),
                        np.copysign(10.0 ** rng.uniform(-40, 4, 800), rng.uniform(-1, 1, 800)),
                        [0.0, -0.0, 1e-45, -1e-45, 19.1, -9.01, big, -big, np.inf, -np.inf, np.nan]]).astype(dtype)
    m, one = exprc.vector("m", dtype), exprc.scalar("one", dtype)  # (m * one: a fused kernel, not NumPy)
    for precise, bound in ((False, 4.0), (True, 2.0)):
        f = exprc.function([m, one], exprc.tanh(m * one), config=exprc.Config(precise_math=precise))
        assert "exprc_tanh" in f.source
        got = f(x, np.ones((), dtype))
        assert np.array_equal(np.signbit(got[x == 0]), np.signbit(x[x == 0]))
        assert np.isnan(got[np.isnan(x)]).all() and np.array_equal(got[np.isinf(x)], np.sign(x[np.isinf(x)]))
        worst = 0.0
        for xi, gi in zip(x[np.isfinite(x)].tolist(), got[np.isfinite(x)].tolist()):
            ref = mpmath.tanh(mpmath.mpf(xi))
            ulp = float(np.spacing(np.array(abs(float(ref)), dtype)))
            worst = max(worst, float(abs(mpmath.mpf(gi) - ref)) / ulp)
        assert worst <= bound, (precise, worst)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_counts_use_an_integer_counter_and_match_numpy(dtype):
    """sum(flag.astype(float)) and sum(where(flag, 1, 0)): the flag is added to an int64 counter (no
    select, which gcc compiled into branches: the stable logsumexp's count of maxima took 1.9 ms for 1e6
    elements), the same values in any order; partial counts of a chunked full reduction add up as
    counts (not as flags)."""
    x = exprc.matrix("x", dtype=dtype)
    v = exprc.vector("v", dtype=dtype)
    one, zero = np.array(1.0, dtype), np.array(0.0, dtype)
    outs = [exprc.sum((x > 0.5).astype(dtype), axis=1), exprc.mean(exprc.where(exprc.equal(x, 0.0), one, zero), axis=1),
            exprc.sum(exprc.where(x < -0.5, one, zero), axis=0)]
    f = exprc.function([x], outs, config=exprc.Config(row_fusion=False))
    assert "int64_t acc = 0;" in f.source and "acc += (v != 0);" in f.source
    rows = exprc.function([x], outs, config=exprc.Config(row_fusion=True))  # (a row kernel: int64_t counters too)
    assert "rows" in [k["kind"] for k in rows.kernels] and re.search(r"int64_t acc\d+_\d+ = 0;", rows.source)
    rng = np.random.default_rng(5)
    data = rng.normal(size=(20001, 10)).astype(dtype)
    data[::7, 3] = 0.0
    data[::11, 4] = -0.0
    data[5, :] = np.nan
    for fn in (f, rows):
        got = fn(data)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(got[0], (data > 0.5).sum(axis=1).astype(dtype))
            np.testing.assert_allclose(got[1], (data == 0.0).mean(axis=1).astype(dtype), rtol=1e-7)
            np.testing.assert_array_equal(got[2], (data < -0.5).sum(axis=0).astype(dtype))
    g = exprc.function([v], exprc.sum((v > 0.0).astype(dtype)))  # full contiguous: chunks and threads
    big = rng.normal(size=3_000_001).astype(dtype)
    assert g(big) == np.count_nonzero(big > 0.0)
    assert g(big[::3]) == np.count_nonzero(big[::3] > 0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_full_reductions_with_vector_math_on_strided_and_broadcast_operands(dtype, monkeypatch):
    """A full reduction whose operand calls vector math runs its SIMD loop whatever the layout: a
    single-element operand (the stable logsumexp of a vector shifts by max(x, keepdims=True), a (1,)
    array) is read as a scalar on the contiguous path, and a strided or reversed view goes through
    buffered blocks of EXPRC_RCHUNK elements (render._buffered_full) instead of scalar libm.  Sizes
    around the block (255 .. 513), NaN, +-inf; the contiguous path must be the one taken for
    the broadcast case (the planner's flag), and a strided view must give the contiguous copy's sum
    to rounding."""
    x = exprc.vector("x", dtype)
    m = exprc.matrix("m", dtype)
    outs = [exprc.logsumexp(x), exprc.sum(exprc.exp(x - exprc.max(x, keepdims=True)) * 2.0),
            exprc.sum(exprc.where(exprc.exp(x * 0.5) > 1.0, 1.0, 0.0).astype(dtype))]
    f = exprc.function([x], outs)
    src = f.source
    assert re.search(r"ob\d+\[b\] = ", src)  # (the strided path is buffered)
    ref = exprc.function([x], outs, backend="numpy")
    rng = np.random.default_rng(7)
    rtol = 2e-6 if dtype == "float32" else 1e-13
    for n in (1, 7, 255, 256, 257, 513, 5000):  # (a max of nothing raises, as in NumPy)
        base = (rng.normal(size=2 * n) * 3).astype(dtype)
        if n > 3:
            base[3] = np.nan if n % 2 else np.inf
        for v in (base[:n], base[::2], base[::-2], base[1::2]):
            with np.errstate(all="ignore"):
                want = ref(v)
                got = f(v)
                contiguous = f(np.ascontiguousarray(v))
            for g, w, c in zip(got, want, contiguous):
                np.testing.assert_allclose(g, w, rtol=rtol, equal_nan=True, err_msg=f"n={n}")
                np.testing.assert_allclose(g, c, rtol=rtol, equal_nan=True)
    g = exprc.function([m], [exprc.logsumexp(m, axis=None), exprc.sum(exprc.exp(m), axis=None)])
    mv = (rng.normal(size=(40, 31)) * 2).astype(dtype)
    for v in (mv, np.asfortranarray(mv), mv[::3, ::-2]):
        for a, b in zip(g(v), exprc.function([m], [exprc.logsumexp(m, axis=None), exprc.sum(exprc.exp(m), axis=None)],
                                               backend="numpy")(v)):
            np.testing.assert_allclose(a, b, rtol=rtol)
    from exprc.backends import plan as plan_module

    flags = []
    make = plan_module.Planner.make_plan

    def spy(self, arrays, out, plan):
        make(self, arrays, out, plan)
        flags.append([int(plan.P[kl.p_flag]) for kl in self.layout.kernels if kl.kernel.reduce is not None])

    monkeypatch.setattr(plan_module.Planner, "make_plan", spy)
    h = exprc.function([x], exprc.logsumexp(x))
    h(rng.normal(size=1000).astype(dtype))
    assert flags and all(flag == 1 for flag in flags[-1])  # (the (1,) shift keeps the contiguous path)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_buffered_row_sums_fold_into_eight_partial_sums(dtype):
    """A row sum whose values call vector math (sum(exp(x), axis=1) outside a row kernel) folds each row
    into 8 partial sums and the last n % 8 values in order (one chain of dependent adds took 4 cycles an
    element).  The order depends on the row length alone: the same bits on 1 and 2 threads, for a row
    alone and among others, short rows sharing a block and long ones cut into blocks (lengths around 16,
    128 and 256); within n eps sum|values| of the exact sum (math.fsum), NaN and inf kept."""
    x = exprc.matrix("x", dtype)
    e = exprc.sum(exprc.exp(x), axis=1)
    f1 = exprc.function([x], e, config=exprc.Config(num_threads=1))
    f2 = exprc.function([x], e, config=exprc.Config(num_threads=2))
    assert [k["kind"] for k in f1.kernels] == ["reduce"]
    assert "s7 +=" in f1.source
    rng = np.random.default_rng(7)
    for n1 in (1, 7, 15, 16, 17, 31, 100, 127, 128, 129, 255, 256, 257, 600, 1001):
        xs = rng.uniform(-5, 5, (300, n1)).astype(dtype)
        got = f1(xs)
        np.testing.assert_array_equal(got, f2(xs))
        for i in (0, 137, 299):
            np.testing.assert_array_equal(f1(xs[i:i + 1])[0], got[i])
        vals = np.exp(xs.astype(np.float64))
        exact = np.array([math.fsum(r) for r in vals])
        tol = (n1 + 4) * np.finfo(dtype).eps * vals.sum(axis=1)
        assert (np.abs(got - exact) <= tol).all(), n1
    xs = rng.uniform(-5, 5, (4, 40)).astype(dtype)
    xs[0, 3], xs[1, 39], xs[2, 20] = np.nan, np.inf, -np.inf
    got = f1(xs)
    assert np.isnan(got[0]) and got[1] == np.inf and np.isfinite(got[2:]).all()
