"""Random expression graphs for property tests (reused to compare backends).

Every op is written once as ``fn(m, *operands)`` where ``m`` is either the
:mod:`exprc` module or :data:`NP` (NumPy plus the few functions NumPy lacks),
so the exprc graph and the NumPy reference apply exactly the same op sequence,
Python scalars (weakly typed under NEP 50) included.

``graph_cases()`` is a hypothesis strategy of :class:`GraphCase`: the exprc
expression, its input variables, a NumPy reference callable and argument arrays.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import exprc

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _keep(fn):
    """``fn`` at float precision: float results keep the operand's dtype; integers are made float64
    first, as exprc does (negating int64's minimum in its own dtype wraps: sigmoid(-2**63) came out 1)."""
    def wrapped(x):
        x = np.asarray(x)
        return fn(x).astype(x.dtype) if x.dtype.kind == "f" else fn(x.astype(np.float64))
    return wrapped


def _logsumexp(x, axis=None, keepdims=False):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)  # (-inf over an empty axis, as exprc's and SciPy's)
    shift = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    out = np.log(np.sum(np.exp(x - shift), axis=axis, keepdims=True)) + shift
    return out if keepdims else np.squeeze(out, axis=axis)


#: NumPy with exprc's extra functions, written in plain NumPy.
NP = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
NP.sigmoid = _keep(lambda x: np.exp(-np.logaddexp(0, -x)))
NP.softplus = _keep(lambda x: np.logaddexp(0, x))
NP.erf = _keep(_erf)
NP.erfc = _keep(_erfc)
NP.logsumexp = _logsumexp
NP.astype = lambda x, dt: np.asarray(x).astype(dt)

# (name, fn(m, x)): domain guards are part of the op sequence on both sides.
UNARY: list[tuple[str, Callable]] = [
    ("neg", lambda m, x: -x),
    ("abs", lambda m, x: abs(x)),
    ("square", lambda m, x: m.square(x)),
    ("sign", lambda m, x: m.sign(x)),
    ("floor", lambda m, x: m.floor(x)),
    ("ceil", lambda m, x: m.ceil(x)),
    ("round", lambda m, x: m.round(x)),
    ("exp", lambda m, x: m.exp(m.tanh(x) * 3)),
    ("exp2", lambda m, x: m.exp2(x)),
    ("expm1", lambda m, x: m.expm1(x)),
    ("log", lambda m, x: m.log(abs(x) + 1)),
    ("log2", lambda m, x: m.log2(abs(x))),
    ("log10", lambda m, x: m.log10(x)),
    ("log1p", lambda m, x: m.log1p(abs(x))),
    ("sqrt", lambda m, x: m.sqrt(abs(x))),
    ("cbrt", lambda m, x: m.cbrt(x)),
    ("reciprocal", lambda m, x: m.reciprocal(m.astype(x, "float64") + 0.5)),
    ("sin", lambda m, x: m.sin(x)),
    ("cos", lambda m, x: m.cos(x)),
    ("tan", lambda m, x: m.tan(x)),
    ("arcsin", lambda m, x: m.arcsin(m.tanh(x))),
    ("arccos", lambda m, x: m.arccos(m.tanh(x))),
    ("arctan", lambda m, x: m.arctan(x)),
    ("sinh", lambda m, x: m.sinh(x)),
    ("cosh", lambda m, x: m.cosh(x)),
    ("tanh", lambda m, x: m.tanh(x)),
    ("arcsinh", lambda m, x: m.arcsinh(x)),
    ("arccosh", lambda m, x: m.arccosh(abs(x) + 1)),
    ("arctanh", lambda m, x: m.arctanh(m.tanh(x) * 0.5)),
    ("sigmoid", lambda m, x: m.sigmoid(x)),
    ("softplus", lambda m, x: m.softplus(x)),
    ("erf", lambda m, x: m.erf(x)),
    ("erfc", lambda m, x: m.erfc(x)),
    ("isnan", lambda m, x: m.where(m.isnan(x), 1.0, x)),
    ("isinf", lambda m, x: m.where(m.isinf(x), 0.0, x)),
    ("isfinite", lambda m, x: m.where(m.isfinite(x), x, -1.0)),
    ("mul_const", lambda m, x: x * 1.5),
    ("add_int", lambda m, x: x + 2),
    ("rsub", lambda m, x: 3 - x),
    ("pow2", lambda m, x: x ** 2),
    ("pow1", lambda m, x: x ** 1),
    ("mul1", lambda m, x: x * 1),
    ("add_negzero", lambda m, x: x + (-0.0)),
    ("clip", lambda m, x: m.clip(x, -1, 2)),
]

BINARY: list[tuple[str, Callable]] = [
    ("add", lambda m, x, y: x + y),
    ("sub", lambda m, x, y: x - y),
    ("mul", lambda m, x, y: x * y),
    ("truediv", lambda m, x, y: x / y),
    ("floordiv", lambda m, x, y: x // y),
    ("mod", lambda m, x, y: x % y),
    ("pow", lambda m, x, y: abs(x) ** m.clip(y, 0, 3)),
    ("maximum", lambda m, x, y: m.maximum(x, y)),
    ("minimum", lambda m, x, y: m.minimum(x, y)),
    ("arctan2", lambda m, x, y: m.arctan2(x, y)),
    ("hypot", lambda m, x, y: m.hypot(x, y)),
    ("logaddexp", lambda m, x, y: m.logaddexp(x, y)),
    ("where_lt", lambda m, x, y: m.where(x < y, x, y)),
    ("where_ge", lambda m, x, y: m.where((x >= y) & (y > 0), y, x)),
    ("where_eq", lambda m, x, y: m.where(m.equal(x, y) | m.not_equal(x, x), x, y * 0.5)),
]

REDUCE: list[tuple[str, Callable]] = [
    ("sum", lambda m, x, axis, kd: m.sum(x, axis=axis, keepdims=kd)),
    ("prod", lambda m, x, axis, kd: m.prod(x, axis=axis, keepdims=kd)),
    ("mean", lambda m, x, axis, kd: m.mean(x, axis=axis, keepdims=kd)),
    ("max", lambda m, x, axis, kd: m.max(x, axis=axis, keepdims=kd)),
    ("min", lambda m, x, axis, kd: m.min(x, axis=axis, keepdims=kd)),
    ("var", lambda m, x, axis, kd: m.var(x, axis=axis, keepdims=kd)),
    ("std", lambda m, x, axis, kd: m.std(x, axis=axis, keepdims=kd)),
    ("logsumexp", lambda m, x, axis, kd: m.logsumexp(x, axis=axis, keepdims=kd)),
    ("all", lambda m, x, axis, kd: m.where(m.all(x > 0, axis=axis, keepdims=kd), 1.0, 0.0)),
    ("any", lambda m, x, axis, kd: m.where(m.any(x > 1, axis=axis, keepdims=kd), 1.0, 0.0)),
]

LEAF_DTYPES = ("float64", "float32", "int32", "int64")
SPECIALS = (0.0, -0.0, np.nan, np.inf, -np.inf)


@dataclass
class GraphCase:
    """One random graph: ``expr`` of ``inputs``; ``reference(*args)`` is NumPy's answer."""

    expr: exprc.Node
    inputs: list
    reference: Callable[..., np.ndarray]
    args: list
    steps: list = field(default_factory=list)

    def expected(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(self.reference(*[a.copy() for a in self.args]))

    def __repr__(self) -> str:
        return (f"GraphCase(steps={[s[0] for s in self.steps]}, inputs={[str(v.type) for v in self.inputs]},\n"
                f"  expr={exprc.pprint(self.expr)}, args={self.args})")


def _array(draw, dtype: str, shape: tuple, specials: bool) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype.startswith("int"):
        vals = draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n))
    else:
        width = 32 if dtype == "float32" else 64
        el = st.floats(-3, 3, width=width)
        if specials:
            el = st.one_of(el, el, el, st.sampled_from(SPECIALS))
        vals = draw(st.lists(el, min_size=n, max_size=n))
    return np.array(vals, dtype=dtype).reshape(shape)


@st.composite
def graph_cases(draw, max_inputs: int = 3, max_ops: int = 6, dtypes=LEAF_DTYPES, reductions: bool = True,
                specials: bool = True) -> GraphCase:
    """A random graph with broadcasting (size-1 dims included), mixed dtypes and reductions."""
    base = tuple(draw(st.lists(st.sampled_from([2, 3, 1]), min_size=1, max_size=3)))
    inputs, args = [], []
    for i in range(draw(st.integers(1, max_inputs))):
        nd = len(base) - draw(st.integers(0, len(base)))
        shape = tuple(1 if draw(st.booleans()) and draw(st.booleans()) else s for s in base[len(base) - nd:])
        dtype = draw(st.sampled_from(dtypes))
        static = draw(st.booleans())
        inputs.append(exprc.tensor(f"x{i}", dtype, shape=shape if static else None, ndim=None if static else nd))
        args.append(_array(draw, dtype, shape, specials))
    steps: list = []
    nodes = list(inputs)
    with np.errstate(all="ignore"):
        values = [a.copy() for a in args]
        for _ in range(draw(st.integers(1, max_ops))):
            kinds = ["binary", "unary", "binary"] + (["reduce"] if reductions else [])
            kind = draw(st.sampled_from(kinds))
            i = draw(st.integers(0, len(nodes) - 1))
            if kind == "binary":
                j = draw(st.integers(0, len(nodes) - 1))
                try:
                    np.broadcast_shapes(values[i].shape, values[j].shape)
                except ValueError:
                    kind = "unary"
            if kind == "unary":
                name, fn = draw(st.sampled_from(UNARY))
                step = (name, fn, (i,), ())
            elif kind == "binary":
                name, fn = draw(st.sampled_from(BINARY))
                step = (name, fn, (i, j), ())
            else:
                name, fn = draw(st.sampled_from(REDUCE))
                nd = values[i].ndim
                axis = None if nd == 0 else draw(st.one_of(
                    st.integers(-nd, nd - 1), st.none(),
                    st.lists(st.integers(0, nd - 1), unique=True, max_size=nd).map(tuple)))
                step = (name, fn, (i,), (axis, draw(st.booleans())))
            operands = [nodes[k] for k in step[2]]
            nodes.append(step[1](exprc, *operands, *step[3]))
            values.append(np.asarray(step[1](NP, *[values[k] for k in step[2]], *step[3])))
            steps.append(step)
    out = len(nodes) - 1

    def reference(*arrays):
        vals = list(arrays)
        for _, fn, idx, extra in steps:
            vals.append(fn(NP, *[vals[k] for k in idx], *extra))
        return np.asarray(vals[out])

    return GraphCase(nodes[out], inputs, reference, args, steps)
