"""Custom elementwise ops and rewrite rules, written as an outside library would (public API only)."""

import string

import numpy as np
import pytest

import exprc
from exprc.function import clear_memo
from exprc.rewrite import C, P, X


def _swish(x):
    return x / (1 + np.exp(-x))


swish = exprc.custom_op(
    "swish", numpy=_swish, c="({0} * exprc_sigmoid{f}({0}))",
    grad=lambda node, g: (g * (node + exprc.sigmoid(node.inputs[0]) * (1 - node)),),
    doc="x * sigmoid(x)")
# A binary op without a C expression for ints, with a different CUDA spelling.
smooth_max = exprc.custom_op(
    "smooth_max", numpy=lambda a, b: np.logaddexp(a, b), c="exprc_logaddexp{f}({0}, {1})",
    cuda="exprc_logaddexp{f}({0}, {1})", commutative=True,
    grad=lambda node, g: (g * exprc.exp(node.inputs[0] - node), g * exprc.exp(node.inputs[1] - node)))
# NumPy only: runs as a NumPy step between native loops in the C backend.
sinc = exprc.custom_op("npsinc", numpy=np.sinc)
clamp01 = exprc.custom_op("clamp01", numpy=lambda x: np.clip(x, 0, 1), dtype_rule="any",
                          c="exprc_min{f}(exprc_max{f}({0}, 0), 1)",
                          c_int="(({0}) < 0 ? 0 : (({0}) > 1 ? 1 : ({0})))")


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_custom_op_runs_fuses_and_prints(backend, dtype, close):
    x = exprc.vector("x", dtype)
    y = exprc.vector("y", dtype)
    expr = swish(x) * 2 + smooth_max(x, y) - sinc(x)
    f = exprc.function([x, y], expr, backend=backend)
    a = np.linspace(-5, 5, 101).astype(dtype)
    b = np.cos(a).astype(dtype)
    with np.errstate(all="ignore"):
        want = (_swish(a) * 2 + np.logaddexp(a, b) - np.sinc(a)).astype(dtype)
    close(f(a, b), want, ulps=64)
    assert exprc.pprint(expr) == "swish(x) * 2.0 + smooth_max(x, y) - npsinc(x)"
    assert swish.__name__ == "swish" and swish.__doc__ == "x * sigmoid(x)"
    if backend == "c":
        # swish and smooth_max fuse with mul/add into native loops; npsinc is a NumPy step
        assert "exprc_sigmoid" in f.source and "exprc_logaddexp" in f.source
        assert any("swish" in k["ops"] for k in f.kernels)
        assert not any("npsinc" in k["ops"] for k in f.kernels)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_custom_op_dtype_rules(backend):
    i = exprc.vector("i", "int64")
    x = exprc.vector("x", "float32")
    assert clamp01(i).dtype == "int64" and clamp01(x).dtype == "float32"
    assert swish(i).dtype == "float64"  # "float": ints compute in float64, as exp
    f = exprc.function([i, x], [clamp01(i), clamp01(x)], backend=backend)
    a, b = f(np.array([-3, 0, 1, 7]), np.array([-0.5, 0.25, 2.0], np.float32))
    assert a.tolist() == [0, 0, 1, 1] and b.tolist() == [0.0, 0.25, 1.0]


def test_custom_op_folds_and_caches():
    assert swish(exprc.constant(0.0)).op == "swish"  # built lazily; folded by the optimizer
    x = exprc.scalar("x")
    f = exprc.function([x], x + swish(exprc.constant(1.0)), backend="c")
    assert "constant_fold" in " ".join(f.rewrites)
    assert abs(f(0.0) - _swish(1.0)) < 1e-15
    g = exprc.function([x], swish(x), backend="c")
    h = exprc.function([x], swish(x), backend="c", config=exprc.Config(num_threads=1))
    assert g.cache_path is not None and g.cache_path == h.cache_path  # same source, one cache entry


def test_custom_op_differentiates(close):
    if not hasattr(exprc, "grad"):
        pytest.skip("exprc.grad is not available")
    x, y = exprc.vector("x"), exprc.vector("y")
    a = np.linspace(-4, 4, 17)
    b = np.sin(a)
    gx = exprc.function([x], exprc.grad(exprc.sum(swish(x)), x))(a)
    s = 1 / (1 + np.exp(-a))
    close(gx, s + a * s * (1 - s), ulps=64)
    ga, gb = exprc.function([x, y], exprc.grad(exprc.sum(smooth_max(x, y) * 3.0), [x, y]))(a, b)
    close(ga, 3 * np.exp(a - np.logaddexp(a, b)), ulps=64)
    close(gb, 3 * np.exp(b - np.logaddexp(a, b)), ulps=64)
    # broadcasting of an operand is summed as for the built-ins
    s0 = exprc.scalar("s0")
    g0 = exprc.function([x, s0], exprc.grad(exprc.sum(smooth_max(x, s0)), s0))(a, 0.5)
    close(g0, np.sum(np.exp(0.5 - np.logaddexp(a, 0.5))), ulps=64)
    with pytest.raises(Exception, match="gradient"):  # no rule: a clear error
        exprc.grad(exprc.sum(sinc(x)), x)


def test_redefinition_and_name_validation():
    again = exprc.custom_op("swish", numpy=_swish, c="({0} * exprc_sigmoid{f}({0}))",
                            grad=lambda node, g: (g * (node + exprc.sigmoid(node.inputs[0]) * (1 - node)),))
    assert again.op == "swish"  # re-importing a module that defines an op is fine
    with pytest.raises(ValueError, match="different definition"):
        exprc.custom_op("swish", numpy=_swish, c="({0})")
    with pytest.raises(ValueError, match="built-in"):
        exprc.custom_op("exp", numpy=np.exp, c="exp{f}({0})")
    for bad in ["", "1abc", "a-b", "a b", "x" * 49, "naïve", "for", "exprc_x", "k_x", None, 3]:
        with pytest.raises(ValueError, match="name"):
            exprc.custom_op(bad, numpy=np.exp)


@pytest.mark.parametrize("template, why", [
    ("exp({0}", "parentheses"),
    ("exp({0}))", "parentheses"),
    ("{0", "braces"),
    ("({0}) }", "braces"),
    ("({ int y = {0}; y; })", ";"),
    ("{{0}}", "braces"),
    ("{0}); system(\"rm -rf /\"); (0", ";"),
    ("{0} /* x */", "/\\*"),
    ("{0} // x", "//"),
    ("{0}\n#include <stdio.h>", "non-printable"),
    ("#define X {0}", "#"),
    ("{0.__class__}", "placeholder"),
    ("{0!r}", "conversion"),
    ("{0:>10}", "format"),
    ("{1}", "placeholder"),
    ("{x}", "placeholder"),
    ("'a' + {0}", "literals"),
    ("{0} + x[0]", "characters outside"),
    ("", "non-empty"),
])
def test_templates_are_single_c_expressions(template, why):
    with pytest.raises(ValueError, match=why):
        exprc.custom_op("bad_template", numpy=np.exp, c=template, nin=1)


@pytest.mark.parametrize("template, why", [
    # digraphs and trigraphs spell braces, brackets and '#' without those characters
    ("(((double<::>)<% {0}, system(0) %>)<:0:>)", "digraph"),  # a compound literal calling system()
    ("(({0}) ? 0 <: 1 :> : 0)", "digraph"),
    ("%:define X {0}", "digraph"),
    ("({0} ??< 0 ??>)", "trigraph"),
    ("({0} ??( 0 ??))", "trigraph"),
    ("exp(<{f}: {0})", "digraph"),                   # '<' '{f}' ':' is '<:' for float64
    # identifiers that are not math.h functions, exprc helpers, types or math constants
    ("(system(0) + {0})", "system"),
    ("(exit(1) + {0})", "exit"),
    ("(abort() , {0})", "abort"),
    ("(__asm__ ({0}))", "__asm__"),
    ("(_Pragma ({0}))", "_Pragma"),
    ("(__builtin_trap(), {0})", "__builtin_trap"),
    ("(exprc_run(0, 0) + {0})", "exprc_run"),
    ("(sys{f}tem(0) + {0})", "system"),
    # pointers: address-of, dereference, pointer and function-pointer casts, function designators
    ("(*(&{0} + 100))", "address-of|dereference"),
    ("(((double (*)(double))4096)({0}))", "type name"),
    ("(*(double *)4096 + {0})", "type name|dereference"),
    ("((double)&{0})", "address-of"),
    ("(exp + 1, {0})", "must be called"),
    ("((*exp)({0}))", "dereference|must be called"),
])
def test_templates_cannot_leave_arithmetic(template, why):
    with pytest.raises(ValueError, match=why) as info:
        exprc.custom.check_template(template, 1, "c")
    assert str(info.value).startswith("custom_op: c ")  # names the argument
    with pytest.raises(ValueError, match=why) as info:
        exprc.custom_op("bad_template", numpy=np.exp, cuda=template, nin=1)
    assert str(info.value).startswith("custom_op: cuda ")
    assert "bad_template" not in exprc.custom.custom_ops()


@pytest.mark.parametrize("template", [
    "({0} * exprc_sigmoid{f}({0}))", "exprc_logaddexp{f}({0}, {1})", "exprc_min{f}(exprc_max{f}({0}, 0), 1)",
    "(({0}) < 0 ? 0 : (({0}) > 1 ? 1 : ({0})))", "({0} * {0} * {0})", "(({T}){0} + 1.5e-3{f})",
    "(expf({0}) * M_PI + (double)(int64_t){1})", "(isnan({0}) ? NAN : fma({0}, {1}, -0x1p-3))",
    "(({0} & 3) | ({1} << 2)) ^ ~{0}", "exprc_ipow_{T}({0}, {1})", "({0} * -{1} - +{1} / !{1})",
])
def test_arithmetic_templates_pass(template):
    nin = 2 if "{1}" in template else 1
    assert exprc.custom.check_template(template, nin, "c") == template


def test_builtin_op_templates_pass_the_custom_checks():
    from exprc.ops import OPS

    for op in list(OPS.values()):
        for what in ("c", "c_int", "cuda"):
            t = getattr(op, what, None)
            if op.kind == "elemwise" and isinstance(t, str) and op.name not in exprc.custom.custom_ops():
                used = {int(f) for _, f, _, _ in string.Formatter().parse(t) if f and f.isdigit()}
                if used == set(range(len(used))):  # `fill` ignores its first operand
                    exprc.custom.check_template(t, len(used), f"{op.name}.{what}")


def test_unused_operand_and_bad_arguments():
    with pytest.raises(ValueError, match="never uses"):
        exprc.custom_op("unused_op", numpy=np.add, c="({0} + 1)", nin=2)
    with pytest.raises(ValueError, match="dtype_rule"):
        exprc.custom_op("badrule", numpy=np.exp, dtype_rule="complex")
    with pytest.raises(TypeError, match="numpy"):
        exprc.custom_op("nonumpy", numpy=None)
    with pytest.raises(TypeError, match="takes 2 operand"):
        smooth_max(exprc.vector("x"))


@pytest.fixture
def user_rules():
    """Rules a test registers are removed after it, and the registry's generation restored: a user rule
    turns the graph index off for the whole process, which would leave every later test without it."""
    from exprc.rewrite import core

    core.load_rules()
    before, generation = set(core.REGISTRY), core.GENERATION[0]
    yield
    for name in set(core.REGISTRY) - before:
        del core.REGISTRY[name]
    core.GENERATION[0] = generation
    clear_memo()


def test_rewrite_rule_from_a_library(user_rules):
    calls = []

    @exprc.rewrite_rule("mylib_swish_of_zero", tags=["canonicalize", "mylib"], pattern=P("swish", C(0.0)))
    def _swish_zero(node):
        """swish(0) = 0."""
        calls.append(node)
        return exprc.constant(np.zeros(node.type.shape), node.dtype) if node.ndim else exprc.constant(0.0)

    def _double_neg_swish(node, a):
        """A rule that builds swish(a) * 1 (the canonical rules then drop the * 1)."""
        return None if a.dtype != "float64" else swish(a) * 1.0

    exprc.register_rewrite("mylib_noop", ["specialize", "mylib"], _double_neg_swish, P("swish", X("a")))
    x = exprc.scalar("x")
    f = exprc.function([x], x + swish(exprc.constant(0.0)), backend="numpy")
    assert "mylib_swish_of_zero" in f.rewrites and calls
    g = exprc.function([x], x + swish(exprc.constant(0.0)), backend="numpy", exclude=["mylib"])
    assert "mylib_swish_of_zero" not in g.rewrites
    h = exprc.function([x], x + swish(exprc.constant(0.0)), backend="numpy", exclude=["mylib_swish_of_zero"])
    assert "mylib_swish_of_zero" not in h.rewrites
    with pytest.raises(ValueError, match="already registered"):
        exprc.register_rewrite("mylib_noop", ["specialize"], _double_neg_swish)
