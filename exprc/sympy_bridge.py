"""SymPy interop: :func:`to_sympy` and :func:`from_sympy`, for elementwise formulas.

``to_sympy(expr)`` maps each graph input to ``sympy.Symbol(name)`` and each
elementwise op to its SymPy function (``log1p``, ``expm1``, ``exp2``, ``log2``,
``log10``, ``hypot`` and ``cbrt`` from :mod:`sympy.codegen.cfunctions`;
``sigmoid`` and ``softplus`` written out; ``where`` as ``Piecewise``).  Ops with no
SymPy counterpart (``round``, ``isnan``, custom ops …) become undefined SymPy
functions of the same name, which :func:`from_sympy` maps back.  Reductions and
shape operations are not elementwise formulas and raise ``TypeError``.

``from_sympy(sympy_expr, {symbol: variable})`` builds the exprc expression; SymPy
numbers become weak Python scalars (so a float32 variable stays float32), and
``x**-1`` / ``x**(1/2)`` / ``x**2`` / ``E**x`` become ``reciprocal`` / ``sqrt`` /
``square`` / ``exp``.  Both directions walk the expression with an explicit
stack (no recursion limit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from exprc import api
from exprc.errors import ExprcError
from exprc.graph import Node, toposort
from exprc.ops import OPS


def _sympy() -> Any:
    import sympy

    return sympy


def _cfun() -> Any:
    from sympy.codegen import cfunctions

    return cfunctions


# -- exprc -> SymPy --------------------------------------------------------------------------------
def _to_table() -> dict[str, Callable[..., Any]]:
    sp, cf = _sympy(), _cfun()
    return {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
        "truediv": lambda a, b: a / b, "pow": lambda a, b: a ** b, "neg": lambda a: -a,
        "floordiv": lambda a, b: sp.floor(a / b), "mod": sp.Mod,
        "square": lambda a: a ** 2, "reciprocal": lambda a: 1 / a, "abs": sp.Abs, "sign": sp.sign,
        "exp": sp.exp, "exp2": cf.exp2, "expm1": cf.expm1, "log": sp.log, "log2": cf.log2, "log10": cf.log10,
        "log1p": cf.log1p, "sqrt": sp.sqrt, "cbrt": cf.Cbrt,
        "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
        "arctan2": sp.atan2, "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "arcsinh": sp.asinh,
        "arccosh": sp.acosh, "arctanh": sp.atanh, "erf": sp.erf, "erfc": sp.erfc,
        "sigmoid": lambda a: 1 / (1 + sp.exp(-a)), "softplus": lambda a: sp.log(1 + sp.exp(a)),
        "logaddexp": lambda a, b: sp.log(sp.exp(a) + sp.exp(b)), "hypot": cf.hypot,
        "two_sum_err": lambda a, b: sp.Integer(0),  # (exact arithmetic does not round a + b)
        "two_prod_err": lambda a, b: sp.Integer(0),
        "floor": sp.floor, "ceil": sp.ceiling, "maximum": sp.Max, "minimum": sp.Min,
        "lt": sp.Lt, "le": sp.Le, "gt": sp.Gt, "ge": sp.Ge, "eq": sp.Eq, "ne": sp.Ne,
        "where": lambda c, a, b: sp.Piecewise((a, c), (b, True)),
        "stop_gradient": lambda a: a,  # the identity on values (it only steers exprc.grad)
        "rare": lambda a: a,  # the identity on values (it only steers code generation)
    }


#: Ops :func:`to_sympy` has no SymPy function for, and why (tests/test_op_facts.py checks that every op
#: is in :func:`sympy_ops` or here).
NO_SYMPY: dict[str, str] = {
    **dict.fromkeys(("and", "or", "xor", "invert", "round", "isnan", "isinf", "isfinite", "log1mexp", "erfcx", "fill"),
                    "no SymPy counterpart: an undefined SymPy function of the same name, which from_sympy maps "
                    "back (SymPy cannot simplify through it)"),
    **dict.fromkeys(("sum", "prod", "mean", "max", "min", "all", "any", "argmax", "argmin"),
                    "a reduction: not an elementwise formula (to_sympy raises TypeError)"),
    **dict.fromkeys(("dimshuffle", "reshape", "reshape_like", "broadcast_to", "concatenate", "getitem", "shape",
                     "inc_subtensor", "sum_to", "split_part"),
                    "a shape op: not an elementwise formula (to_sympy raises TypeError)"),
    "matmul": "linear algebra: not an elementwise formula (to_sympy raises TypeError)",
    "print": "a side effect (it prints each call), which SymPy cannot carry (to_sympy raises TypeError)",
    **dict.fromkeys(("alloc", "arange"), "a creation op: not an elementwise formula (to_sympy raises TypeError)"),
    **dict.fromkeys(("subtensor", "scatter"), "an index op: not an elementwise formula (to_sympy raises TypeError)"),
    **dict.fromkeys(("scan", "scan_output", "ifelse"), "control flow: not an elementwise formula (to_sympy raises "
                                                       "TypeError)"),
    **dict.fromkeys(("random_uniform", "random_normal", "random_integers", "random_binomial", "random_permutation",
                     "random_model"), "a random draw: not a formula of its operands (to_sympy raises on it)"),
}


def sympy_ops() -> frozenset[str]:
    """The ops :func:`to_sympy` maps to a SymPy expression of their own (imports SymPy)."""
    return frozenset(_to_table()) | {"cast"}  # (a widening cast: the same real number)


def _const_to_sympy(node: Node) -> Any:
    sp = _sympy()
    arr = node.value
    if arr.ndim:
        raise TypeError(f"to_sympy: only scalar constants map to SymPy, got a constant of shape {arr.shape}")
    v = arr.item()
    if isinstance(v, bool):
        return sp.true if v else sp.false
    if isinstance(v, int):
        return sp.Integer(v)
    if math.isnan(v):
        return sp.nan
    if math.isinf(v):
        return sp.oo if v > 0 else -sp.oo
    if v.is_integer() and abs(v) < 2**53:
        return sp.Integer(int(v))  # exact: 2.0 * x prints as 2*x
    return sp.Float(v, 17) if node.dtype == "float64" else sp.Float(v, 9)


#: The deepest expression :func:`to_sympy` converts by default.  exprc's side is iterative, but
#: SymPy builds, compares and prints expressions recursively: at Python's default recursion limit
#: building a chain of ``sin`` fails between depth 200 and 300 (the frames in use decide), and
#: ``str()`` of a chain near depth 150 (printing is SymPy's: convert, then print if it fits).
MAX_SYMPY_DEPTH = 200


def to_sympy(expr: Node, symbols: Mapping[Node, Any] | None = None, max_depth: int = MAX_SYMPY_DEPTH) -> Any:
    """The SymPy expression of the elementwise exprc expression ``expr``.

    ``symbols`` maps graph inputs to SymPy symbols; inputs not in it become
    ``sympy.Symbol(name)`` (unnamed inputs: ``_x<uid>``).  The expression is built bottom-up;
    one deeper than ``max_depth`` operations raises :class:`~exprc.errors.ExprcError` before any
    SymPy call (SymPy itself recurses: raise ``sys.setrecursionlimit`` with ``max_depth``)."""
    sp = _sympy()
    expr = api.as_node(expr)
    table = _to_table()
    order = toposort([expr])
    depth: dict[Node, int] = {}  # operations on the longest path down to a leaf
    for n in order:
        depth[n] = 1 + max([depth[i] for i in n.inputs]) if n.inputs else 0
    if depth[expr] > max_depth:
        raise ExprcError(f"to_sympy: the expression is {depth[expr]} operations deep, more than "
                         f"max_depth={max_depth} (SymPy builds expressions recursively and fails between depth "
                         f"200 and 300 at Python's default recursion limit); pass a larger max_depth= together "
                         f"with sys.setrecursionlimit, or keep the expression in exprc")
    done: dict[Node, Any] = {}
    for n in order:
        if n.op == "input":
            if symbols is not None and n in symbols:
                done[n] = symbols[n]
            else:
                done[n] = sp.Symbol(n.arg("name") or f"_x{n.arg('uid')}")
        elif n.op == "constant":
            done[n] = _const_to_sympy(n)
        elif n.op == "cast":
            if n.dtype in ("float32", "float64") or n.inputs[0].dtype != "bool" and n.dtype == "int64":
                done[n] = done[n.inputs[0]]  # a widening cast: the same real number
            else:
                raise TypeError(f"to_sympy: a cast from {n.inputs[0].dtype} to {n.dtype} has no SymPy equivalent")
        elif n.op in table:
            done[n] = table[n.op](*[done[i] for i in n.inputs])
        elif OPS[n.op].kind == "elemwise" and not n.attrs:
            done[n] = sp.Function(n.op)(*[done[i] for i in n.inputs])
        else:
            raise TypeError(f"to_sympy: {n.op!r} is not an elementwise op; only elementwise formulas map to SymPy")
    return done[expr]


# -- SymPy -> exprc --------------------------------------------------------------------------------
def _fold(fn: Callable[[Any, Any], Any], args: list) -> Any:
    out = args[0]
    for a in args[1:]:
        out = fn(out, a)
    return out


def _number(e: Any) -> Any:
    """A SymPy constant as a weak Python scalar, or None when ``e`` depends on symbols."""
    sp = _sympy()
    if e is sp.true or e is sp.false:
        return bool(e)
    if not getattr(e, "is_number", False) or e.free_symbols:
        return None
    if e.is_Integer:
        return int(e)
    if e is sp.nan:
        return math.nan
    if e is sp.oo or e is sp.S.NegativeInfinity:
        return math.inf if e is sp.oo else -math.inf
    if e is sp.zoo:
        raise ValueError("from_sympy: complex infinity (zoo) is not a real number")
    z = complex(e.evalf(17))
    if z.imag:
        raise ValueError(f"from_sympy: {e} is not a real number")
    return z.real


def _from_table() -> dict[Any, Callable[..., Any]]:
    sp, cf = _sympy(), _cfun()
    return {
        sp.exp: api.exp, sp.log: api.log, sp.sin: api.sin, sp.cos: api.cos, sp.tan: api.tan,
        sp.asin: api.arcsin, sp.acos: api.arccos, sp.atan: api.arctan, sp.atan2: api.arctan2,
        sp.sinh: api.sinh, sp.cosh: api.cosh, sp.tanh: api.tanh, sp.asinh: api.arcsinh, sp.acosh: api.arccosh,
        sp.atanh: api.arctanh, sp.erf: api.erf, sp.erfc: api.erfc, sp.Abs: api.abs, sp.sign: api.sign,
        sp.floor: api.floor, sp.ceiling: api.ceil, sp.Mod: api.mod,
        cf.log1p: api.log1p, cf.expm1: api.expm1, cf.exp2: api.exp2, cf.log2: api.log2, cf.log10: api.log10,
        cf.Cbrt: api.cbrt, cf.hypot: api.hypot,
        sp.Max: lambda *a: _fold(api.maximum, list(a)), sp.Min: lambda *a: _fold(api.minimum, list(a)),
        sp.StrictLessThan: api.less, sp.LessThan: api.less_equal, sp.StrictGreaterThan: api.greater,
        sp.GreaterThan: api.greater_equal, sp.Equality: api.equal, sp.Unequality: api.not_equal,
        sp.And: lambda *a: _fold(api.logical_and, list(a)), sp.Or: lambda *a: _fold(api.logical_or, list(a)),
        sp.Xor: lambda *a: _fold(api.logical_xor, list(a)), sp.Not: api.logical_not,
    }


def _pow(base: Any, ex: Any, ex_sym: Any) -> Any:
    sp = _sympy()
    if ex_sym == sp.Rational(1, 2):
        return api.sqrt(base)
    if ex_sym == sp.Rational(-1, 2):
        return api.reciprocal(api.sqrt(base))
    if ex_sym == 2:
        return api.square(base)
    if ex_sym == -1:
        return api.reciprocal(base)
    if ex_sym == 1:
        return base
    return api.power(base, ex)


def _children(e: Any) -> list:
    sp = _sympy()
    if isinstance(e, sp.Piecewise):
        return [part for pair in e.args for part in pair.args if part is not sp.true]
    return [a for a in e.args if isinstance(a, sp.Basic)]


def from_sympy(expr: Any, mapping: Mapping[Any, Any]) -> Node:
    """The exprc expression of the SymPy expression ``expr``.

    ``mapping`` maps each free symbol (or its name) to an exprc variable or
    expression.  Undefined SymPy functions named like an exprc elementwise op
    (``sympy.Function("softplus")``, custom ops) map to that op."""
    sp = _sympy()
    expr = sp.sympify(expr)
    by_name = {(k.name if hasattr(k, "name") else k): v for k, v in mapping.items()}
    table = _from_table()
    done: dict[Any, Any] = {}
    # Post-order over the expression tree with an explicit stack (shared subtrees once).
    stack: list[tuple[Any, bool]] = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in done:
            continue
        if ready:
            done[e] = _convert(e, done, table)
            continue
        if e.is_Symbol:
            if e.name not in by_name:
                raise KeyError(f"from_sympy: no exprc variable given for the symbol {e.name!r}")
            done[e] = api.as_node(by_name[e.name])
            continue
        num = _number(e)
        if num is not None:
            done[e] = num
            continue
        stack.append((e, True))
        stack.extend((a, False) for a in _children(e) if a not in done)
    out = done[expr]
    return out if isinstance(out, Node) else api.constant(out)


def _convert(e: Any, done: dict, table: dict) -> Any:
    sp = _sympy()
    if isinstance(e, sp.Piecewise):
        pieces = list(e.args)
        if pieces[-1][1] is not sp.true:
            raise ValueError("from_sympy: a Piecewise needs a last (value, True) branch")
        out = done[pieces[-1][0]]
        for value, cond in reversed(pieces[:-1]):
            out = api.where(done[cond], done[value], out)
        return out
    args = [done[a] for a in e.args]
    if e.is_Add:  # terms -1*t become subtractions
        out: Any = None
        negs = []
        for a, t in zip(args, e.args):
            if t.is_Mul and t.args[0] == -1:
                rest = [done[r] for r in t.args[1:]]
                negs.append(_fold(lambda p, q: p * q, rest))
            else:
                out = a if out is None else out + a
        for t in negs:
            out = -t if out is None else out - t
        return out
    if e.is_Mul:  # factors f**-1 become divisors, a factor -1 a negation
        num, den, negate = [], [], False
        for a, t in zip(args, e.args):
            if t == -1:
                negate = not negate
            elif t.is_Pow and t.exp == -1:
                den.append(done[t.base])
            else:
                num.append(a)
        out = _fold(lambda p, q: p * q, num) if num else 1.0
        if den:
            out = out / _fold(lambda p, q: p * q, den)
        return -out if negate else out
    if e.is_Pow:
        base, ex = args
        if e.base is sp.E:
            return api.exp(ex)
        return _pow(base, ex, e.exp)
    fn = type(e) if not isinstance(e, sp.core.function.AppliedUndef) else None
    if fn is not None and fn in table:
        return table[fn](*args)
    if isinstance(e, sp.core.function.AppliedUndef):
        name = type(e).__name__
        row = OPS.get(name)
        if row is not None and row.kind == "elemwise":
            return row.make(tuple(api._operands(*args)), {})
    raise TypeError(f"from_sympy: {type(e).__name__} has no exprc equivalent")


__all__ = ["from_sympy", "to_sympy"]
