"""pprint (infix, parenthesization checked by evaluating the text), debugprint, DOT and reprs."""

import io

import numpy as np
import pytest

import exprc

a, b, c = exprc.scalar("a"), exprc.scalar("b"), exprc.scalar("c")
VALUES = {"a": 1.7, "b": -0.3, "c": 2.9}
NS = {"__builtins__": {}, "float64": np.float64, "log1p": np.log1p, "exp": np.exp, "square": np.square,
      "maximum": np.maximum, "where": np.where, "sum": np.sum, **{k: np.float64(v) for k, v in VALUES.items()}}


def _check_roundtrip(expr):
    text = exprc.pprint(expr)
    got = eval(text.replace(".astype(float64)", "*1.0"), dict(NS))
    want = expr.eval({a: VALUES["a"], b: VALUES["b"], c: VALUES["c"]})
    np.testing.assert_array_equal(np.asarray(got, dtype=want.dtype), want)
    return text


@pytest.mark.parametrize("build,text", [
    (lambda: exprc.log1p(a) * b, "log1p(a) * b"),
    (lambda: a - (b - c), "a - (b - c)"),
    (lambda: (a - b) - c, "a - b - c"),
    (lambda: (a + b) * c, "(a + b) * c"),
    (lambda: a * (b / c), "a * (b / c)"),
    (lambda: a + (b + c), "a + (b + c)"),
    (lambda: a / (b * c), "a / (b * c)"),
    (lambda: -a ** 2, "-a ** 2.0"),
    (lambda: (-a) ** 2, "(-a) ** 2.0"),
    (lambda: a ** b ** c, "a ** b ** c"),
    (lambda: (a ** b) ** c, "(a ** b) ** c"),
    (lambda: a // (b % c), "a // (b % c)"),
    (lambda: -(a * b), "-(a * b)"),
    (lambda: a * -b, "a * -b"),
    (lambda: a - -1.0, "a - -1.0"),
    (lambda: exprc.exp(a + b) * exprc.maximum(a, c), "exp(a + b) * maximum(a, c)"),
])
def test_pprint_infix_and_parentheses(build, text):
    assert _check_roundtrip(build()) == text


def test_comparisons_never_chain():
    e = exprc.equal(a < b, b < c)
    text = exprc.pprint(e)
    assert text == "(a < b) == (b < c)"
    assert bool(eval(text, dict(NS))) == bool(e.eval({a: 1.0, b: 2.0, c: 0.0}))
    p, q = exprc.scalar("p", "bool"), exprc.scalar("q", "bool")
    assert exprc.pprint((p & q) | ~p) == "p & q | ~p"
    assert exprc.pprint(p & (q | p)) == "p & (q | p)"


def test_pprint_other_forms():
    x = exprc.matrix("x")
    assert exprc.pprint(x.sum(axis=1)) == "sum(x, axis=(1,))"
    assert exprc.pprint(x.sum()) == "sum(x)"
    assert exprc.pprint(x[0, 1:3]) == "x[0, 1:3]"
    assert exprc.pprint(x.astype("float32")) == "x.astype(float32)"
    assert exprc.pprint([x + 1.0, x * 2.0]) == "x + 1.0, x * 2.0"
    long = exprc.exp(exprc.sin(exprc.cos(exprc.tanh(exprc.sqrt(x * x + x * 3.0 + 12345.0 + x * 7.0)))))
    text = exprc.pprint(long * long + long)
    assert text.startswith("t0 = exp(") and text.endswith("t0 * t0 + t0")


def test_debugprint_tree_with_types_and_shared_nodes():
    x = exprc.vector("x", "float32")
    e = exprc.exp(x) * exprc.exp(x)
    out = exprc.debugprint(e)
    lines = out.splitlines()
    assert lines[0] == "mul float32[?] id=0"
    assert lines[1] == " |exp float32[?] id=1"
    assert lines[2] == " | |x float32[?] id=2"
    assert lines[3] == " |*1"
    buf = io.StringIO()
    exprc.debugprint(e, file=buf)
    assert buf.getvalue().strip() == out
    f = exprc.function([x], e * 1, backend="numpy")
    # the optimized graph: * 1 is gone and x * x is canonically square(x)
    assert exprc.debugprint(f) == exprc.debugprint(exprc.square(exprc.exp(x)))
    assert exprc.debugprint(f).splitlines()[0] == "square float32[?] id=0"


def test_to_dot_and_reprs():
    x = exprc.vector("x")
    y = x - 2.0
    dot = exprc.to_dot(y)
    assert dot.startswith("digraph") and '[label="0"]' in dot and '[label="1"]' in dot and "sub" in dot
    assert repr(x) == "Tensor(float64[?], name='x')"
    assert repr(y) == "Tensor(float64[?], 'x - 2.0')"
    f = exprc.function([x], y, backend="numpy")
    assert "numpy" in repr(f) and "x - 2.0" in repr(f)
    assert "def compiled(v0)" in f.source


def test_special_constants_print_as_python():
    x = exprc.scalar("x")
    text = exprc.pprint(exprc.maximum(x, float("-inf")) + float("inf"))
    assert "float('-inf')" in text and "float('inf')" in text


def test_pprint_max_nodes_prints_the_nodes_nearest_the_outputs_in_bounded_work():
    # A generated kernel's comment printed everything upstream of the kernel: on a chain through
    # reductions, O(depth) per kernel and megabytes of C.  max_nodes bounds the text and the work.
    x = exprc.matrix("x")
    y = x
    for i in range(20_000):
        y = exprc.sin(y) if i % 2 else y * 0.5
        if i % 500 == 499:
            y = y - exprc.sum(y, axis=1, keepdims=True) + exprc.mean(y, axis=0)
    text = exprc.pprint(y, max_nodes=50)
    assert text.endswith(")") and "…" in text and len(text) <= 40 * 50
    assert text.startswith("sin(sin(") or "mean(" in text
    small = exprc.log1p(x) * exprc.sum(x, axis=0)
    assert exprc.pprint(small, max_nodes=50) == exprc.pprint(small)  # fits: the plain text
    assert exprc.pprint(exprc.exp(exprc.exp(exprc.exp(x))), max_nodes=2) == "exp(exp(…))"


# -- Print: the identity that prints its value (Theano's Print, issue 19 item 3) -------------------
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_print_writes_the_value_each_call_and_changes_nothing(backend, capsys):
    x, y = exprc.vector("x"), exprc.vector("y")
    h = exprc.exp(x) * 2.0
    e = [exprc.sum(exprc.Print(h, "h is") + y), (exprc.log1p(x) * y).print("lp", summary=True)]
    plain = exprc.function([x, y], [exprc.sum(h + y), exprc.log1p(x) * y], backend=backend)
    f = exprc.function([x, y], e, backend=backend)
    X, Y = np.array([0.0, 1.0, np.nan, -1.0]), np.array([1.0, 2.0, 3.0, 4.0])
    capsys.readouterr()
    for _ in range(2):
        got, want = f(X, Y), plain(X, Y)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    out = capsys.readouterr().out.splitlines()
    assert out.count(f"h is {np.array2string(np.exp(X) * 2.0)}") == 2
    with np.errstate(all="ignore"):
        lp = np.log1p(X) * Y
    fin = lp[np.isfinite(lp)]
    summary = (f"lp shape=(4,) dtype=float64 min={fin.min().item()!r} max={fin.max().item()!r} "
               f"mean={fin.mean().item()!r} nan=1 inf=1")
    assert out.count(summary) == 2 and len(out) == 4


def test_print_is_never_folded_nor_run_once_per_plan(capsys):
    """A print of a constant or of a shape prints on every call, not at compile or plan time."""
    x = exprc.vector("x")
    f = exprc.function([x], [x + exprc.Print(exprc.constant(np.arange(3.0)), "c"),
                             exprc.Print(x.shape, "n") * 2], backend="c")
    assert capsys.readouterr().out == ""
    for _ in range(3):
        a, b = f(np.ones(3))
        np.testing.assert_array_equal(a, [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(b, [6])
    out = capsys.readouterr().out.splitlines()
    assert out.count("c [0. 1. 2.]") == 3 and out.count("n [3]") == 3


def test_print_gradient_theano_spelling_errors_and_saving(capsys, tmp_path):
    x = exprc.vector("x")
    g = exprc.grad(exprc.sum(exprc.Print("x")(x) ** 2), x)
    np.testing.assert_array_equal(exprc.function([x], g)(np.array([1.0, -2.0])), [2.0, -4.0])
    assert "x [ 1. -2.]" in capsys.readouterr().out
    with pytest.raises(TypeError, match="message must be a string"):
        exprc.Print(x, 3)
    e = exprc.Print(x * 2, "twice", summary=True)
    back = exprc.loads(exprc.dumps(e))
    assert back.op == "print" and back.arg("message") == "twice" and back.arg("summary") is True
