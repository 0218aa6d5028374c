"""Candidate forms for the accuracy search: SymPy transforms, series branches, regimes.

:func:`candidates` yields replacements for one place of the graph: the SymPy forms of the
subexpression (``together``, ``cancel``, ``expand_log`` …, :func:`transforms`), then Taylor or
asymptotic polynomials behind a branch on one variable whose radius is chosen on the training
points (numeric Taylor coefficients from Cauchy's integral reach further than SymPy's series).
:func:`regimes` joins two scored candidates by ``where(x < t, a, b)``.  Every SymPy call is
charged to the search's budget (:meth:`exprc.accuracy.scoring.Context.sympy_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from exprc.accuracy.exact import mp as _mp
from exprc.accuracy.scoring import Context, Scored, refine_boundary, try_replacement
from exprc.graph import Node, toposort
from exprc.rewrite.forms import horner

#: Subexpressions larger than this (in nodes) are not handed to SymPy: it gets slow, and the forms the
#: default pipeline builds (series branches with dozens of terms) are not what SymPy should start from.
SYMPY_MAX_NODES = 40

#: Orders of the Taylor polynomials tried (terms below x**k; 1/x**k at infinity).
SERIES_ORDERS = (4, 8, 14)

#: Degrees of the Taylor polynomials at 0 computed from numeric coefficients (one-variable forms).
TAYLOR_DEGREES = (24, 40)
#: Radius of the circle the numeric coefficients are integrated on (the form must be analytic inside;
#: a pole there gives a polynomial that the scoring then rejects).
TAYLOR_RADIUS = 0.5


def transforms() -> list[tuple[str, Callable[[Any], Any]]]:
    import sympy as sp

    def erf_reflect(e: Any) -> Any:  # 1 + erf(z) = erfc(-z): no cancellation for z -> -inf
        return e.replace(sp.erf, lambda z: sp.erfc(-z) - 1)

    def erfc_form(e: Any) -> Any:
        return e.replace(sp.erf, lambda z: 1 - sp.erfc(z))

    def sincos(e: Any) -> Any:  # tan x - sin x = sin x (1 - cos x) / cos x: the rules then fix 1 - cos x
        e = e.replace(sp.tan, lambda a: sp.sin(a) / sp.cos(a)).replace(sp.tanh, lambda a: sp.sinh(a) / sp.cosh(a))
        return sp.factor(sp.together(e))

    def log_near_one(e: Any) -> Any:  # log(u) = log1p(u - 1), u - 1 simplified: log(p/(1-p)) near p = 1/2
        from sympy.codegen.cfunctions import log1p

        return e.replace(sp.log, lambda u: log1p(sp.cancel(u - 1)))

    return [
        ("sympy.log(u)->log1p(cancel(u-1))", log_near_one),
        ("sympy.logcombine", lambda e: sp.logcombine(e, force=True)),  # log p - log(1-p) -> log(p/(1-p))
        ("sympy.together", sp.together), ("sympy.cancel", sp.cancel), ("sympy.expand", sp.expand),
        ("sympy.factor", sp.factor), ("sympy.radsimp", sp.radsimp), ("sympy.trigsimp", sp.trigsimp),
        ("sympy.expand_trig", sp.expand_trig), ("sympy.expand_log", lambda e: sp.expand_log(e, force=True)),
        ("sympy.rewrite(exp)", lambda e: e.rewrite(sp.exp)),
        ("sympy.erf->erfc(-z)", lambda e: sp.expand(erf_reflect(e))),
        ("sympy.erf->1-erfc", lambda e: sp.expand(erfc_form(e))),
        ("sympy.tan->sin/cos,factor", sincos), ("sympy.simplify", sp.simplify),
    ]


def candidates(ctx: Context, form_of: Node, place: Node, current: Scored) -> Iterator[tuple[str, Node]]:
    """(source, replacement for ``place``) pairs: SymPy forms of ``form_of``, then series branches."""
    import sympy as sp

    from exprc.sympy_bridge import from_sympy, to_sympy

    body = toposort([form_of])
    if len(body) > SYMPY_MAX_NODES or any(n.op == "where" for n in body):
        return
    syms = {v: sp.Symbol(f"v{i}", real=True) for i, v in enumerate(ctx.inputs)}
    mapping = {syms[v].name: v for v in ctx.inputs}
    try:
        with ctx.sympy_time():
            e = sp.expand_func(to_sympy(form_of, syms))
    except Exception:  # noqa: BLE001 - not convertible, or out of time
        return
    seen = {sp.srepr(e)}
    for name, fn in transforms():
        try:
            with ctx.sympy_time():
                f = fn(e)
                text = sp.srepr(f)
        except Exception:  # noqa: BLE001, S112 - SymPy fails on some forms, or ran out of time
            continue
        if text in seen:
            continue
        seen.add(text)
        try:
            yield name, from_sympy(f, mapping)
        except Exception:  # noqa: BLE001, S112 - a form with no exprc equivalent (complex numbers ...)
            continue
    yield from _series(ctx, e, place, current, mapping)


def _series(ctx: Context, e: Any, place: Node, current: Scored, mapping: dict) -> Iterator[tuple[str, Node]]:
    """Taylor (or asymptotic) polynomials of ``e`` in one variable, behind a branch on that variable whose
    radius is chosen on the training points."""
    import sympy as sp

    from exprc import api
    from exprc.sympy_bridge import from_sympy

    for s in sorted(e.free_symbols, key=lambda s: s.name):
        var = mapping[s.name]
        x = ctx.points[ctx.inputs.index(var)]
        for x0 in (0, sp.oo, -sp.oo, *_cancellation_points(ctx, e, s, x, current)):
            if x0 == 0 and not np.any(np.abs(x) < 1):
                continue
            if x0 in (sp.oo, -sp.oo) and not np.any(x * (1 if x0 == sp.oo else -1) > 1e3):
                continue
            # At a finite x0 != 0 the series is in h = x - x0 (exact near x0 by Sterbenz), never expanded
            # back into powers of x, which would cancel as the formula does.
            h = sp.Symbol(f"{s.name}_h", real=True) if x0 not in (0, sp.oo, -sp.oo) else s
            local = {**mapping, h.name: api.sub(var, float(x0))} if h is not s else mapping
            try:  # one expansion, truncated to fewer terms below (SymPy's series is the slow part)
                with ctx.sympy_time():
                    at = (e.subs(s, x0 + h), 0) if h is not s else (e, x0)
                    full = sp.series(at[0], h, at[1], SERIES_ORDERS[-1]).removeO()
                terms = [(t.as_coeff_exponent(h)[1], t) for t in sp.Add.make_args(sp.expand(full))]
            except Exception:  # noqa: BLE001 - no series there, or out of time
                terms = []
            polys: list[tuple[str, Node]] = []
            for order in SERIES_ORDERS:
                try:
                    keep = [t for k, t in terms if k.is_number and (k > -order if x0 in (sp.oo, -sp.oo) else k < order)]
                    poly = sp.Add(*keep)
                    if not keep or poly.has(sp.O) or poly.has(sp.zoo) or poly.has(sp.nan) or poly == 0 \
                            or (order != SERIES_ORDERS[-1] and len(keep) == len(terms)):
                        continue
                    if h is not s:  # (Horner in h: from_sympy's powers of (x - x0) are pow nodes)
                        coeffs = [0.0] * order
                        for t in keep:
                            c, k = t.as_coeff_exponent(h)
                            if not (k.is_integer and k >= 0 and c.is_number):
                                raise ValueError("not a Taylor polynomial")
                            coeffs[int(k)] += float(c)
                        polys.append((f"series at {x0}, order {order}", horner(local[h.name], coeffs, var)))
                        continue
                    polys.append((f"series at {x0}, order {order}", from_sympy(poly, local)))
                except Exception:  # noqa: BLE001, S112 - a coefficient with no exprc form
                    continue
            if x0 == 0 and len(e.free_symbols) == 1:
                # Long Taylor polynomials from numeric coefficients: the cancellation of f(x) - x
                # forms (atan, asin, tanh(x)/x) reaches far from 0, past what 14 terms cover.
                for degree in TAYLOR_DEGREES:
                    coeffs = taylor_coefficients(ctx, e, s, degree)
                    if coeffs is not None:
                        polys.append((f"taylor at 0, degree {degree}", horner(var, coeffs, var)))
            finite = x0 not in (sp.oo, -sp.oo)
            for where, node in polys:
                sign = -1.0 if x0 == -sp.oo else 1.0
                with np.errstate(all="ignore"):  # distance to x0: |x - x0|, or 1/x on the side of the infinity
                    near = np.abs(x - float(x0)) if finite else np.where(x * sign > 0, 1.0 / (x * sign), np.inf)
                cand = try_replacement(ctx, current, place, node, "series")
                if cand is None:
                    continue
                gap = _split(near, cand.errors[ctx.train], current.errors[ctx.train], ctx.train)
                if gap is None:
                    continue
                r = refine_boundary(ctx, gap, cand.outputs, current.outputs,
                                    lambda d, x0=x0, sign=sign, finite=finite: d + float(x0) if finite else sign / d)
                if finite and x0 != 0:
                    yield where, api.where(api.abs(api.sub(var, float(x0))) < r, node, place)
                elif x0 == 0:
                    yield where, api.where(api.abs(var) < r, node, place)
                    # At x = 0 itself the formula may be undefined (1/x - 1/tan x): keep its NaN there.
                    yield where + ", 0 excluded", api.where((api.abs(var) < r) & api.not_equal(var, 0.0), node,
                                                            place)
                else:
                    yield where, api.where(var * sign > 1.0 / r, node, place)


def _cancellation_points(ctx: Context, e: Any, s: Any, x: np.ndarray, current: Scored) -> list[Any]:
    """Finite points x0 != 0 to expand ``e`` at: a zero of ``e`` near the training point where the
    current form loses most bits (the formula cancels to 0 there: the Bernoulli KL divergence at p = 1/2),
    when it is a dyadic rational, so that x - x0 is exact near it.  One variable's forms only."""
    import sympy as sp

    if len(e.free_symbols) != 1:
        return []
    errs = np.asarray(current.errors[ctx.train], dtype=np.float64)
    xs = x[ctx.train]
    if not errs.size or not np.isfinite(errs).any() or np.nanmax(errs) <= 4:
        return []
    guess = float(xs[int(np.nanargmax(np.where(np.isfinite(errs), errs, -1.0)))])
    mp = _mp()
    try:
        with ctx.sympy_time():
            f = sp.lambdify(s, e, modules="mpmath")
            with mp.workdps(40):
                root = None
                for g in (f, lambda t: mp.diff(f, t)):  # (a double zero, as KL's at 1/2: the slope's zero)
                    try:
                        r = mp.findroot(g, mp.mpf(guess))
                    except (ValueError, ZeroDivisionError):
                        continue
                    if abs(f(r)) < mp.mpf(10) ** -30 * max(1, abs(f(mp.mpf(guess)))):
                        root = r
                        break
        if root is None:
            return []
        root = float(mp.re(root))
    except Exception:  # noqa: BLE001 - no root near there, or out of time
        return []
    x0 = sp.nsimplify(root, rational=True, tolerance=1e-12)
    if x0 == 0 or not x0.is_Rational or x0.q & (x0.q - 1) or x0.q > 2**20 or abs(float(x0) - guess) > 1:
        return []  # (not dyadic: x - x0 would be rounded)
    return [x0]


def taylor_coefficients(ctx: Context, e: Any, s: Any, degree: int) -> list[float] | None:
    """Taylor coefficients c_0..c_degree of the one-variable SymPy form ``e`` at 0, from Cauchy's
    integral on a circle of radius :data:`TAYLOR_RADIUS` (the trapezoidal rule, exact to far below
    float64 for an analytic form): no symbolic differentiation, and a removable singularity at 0
    (``tanh(x)/x``) does not matter because the form is never evaluated there.  None when the form
    cannot be evaluated on the circle or is not real on the real axis."""
    import sympy as sp

    mp = _mp()
    # The trapezoidal rule aliases c_k with c_(k+n) r^n: for a form analytic out to radius 1, n = 256
    # points put that at 0.5**256 ~ 1e-77, below the 60-digit working precision.
    n = 256
    try:
        with ctx.sympy_time():
            f = sp.lambdify(s, e, modules="mpmath")
            with mp.workdps(60):
                r = mp.mpf(TAYLOR_RADIUS)
                vals = [mp.mpc(f(r * mp.expjpi(mp.mpf(2 * j) / n))) for j in range(n)]
                coeffs = []
                for k in range(degree + 1):
                    c = mp.fsum(v * mp.expjpi(mp.mpf(-2 * j * k) / n) for j, v in enumerate(vals)) / n / r ** k
                    coeffs.append(c)
                scale = max(abs(c) * r ** k for k, c in enumerate(coeffs))
                if not scale or not mp.isfinite(scale):
                    return None
                if any(abs(c.imag) * r ** k > 1e-30 * scale for k, c in enumerate(coeffs)):
                    return None  # not real on the real axis (a branch cut through the circle)
                # Coefficients that are zero in exact arithmetic come out at the integration's noise (a
                # stray 1e-26 x term would swamp x**3/3 for |x| < 1e-12).
                return [0.0 if abs(c.real) * r ** k < 1e-30 * scale else float(c.real) for k, c in enumerate(coeffs)]
    except Exception:  # noqa: BLE001 - no value on the circle (a pole on it, a domain error ...), or out of time
        return None


def _split(near: np.ndarray, inside: np.ndarray, outside: np.ndarray, train: slice) -> tuple[float, float] | None:
    """The two neighbouring sample values between which a threshold r minimises the training error of
    "inside where near < r, else outside"; None when the inside form helps nowhere."""
    d = near[train]
    order = np.argsort(d, kind="stable")
    d, a, b = d[order], inside[order], outside[order]
    # total(k) = sum(a[:k]) + sum(b[k:]): the first k points (smallest d) use the inside form
    total = np.concatenate([[0.0], np.cumsum(a)]) + np.concatenate([[b.sum()], b.sum() - np.cumsum(b)])
    k = int(np.argmin(total))
    if k == 0 or total[k] >= total[0] - 1e-9:
        return None
    if k == len(d):
        top = float(d[-1])
        return (top, top * 2) if top > 0 else (top, top + 1.0)
    lo, hi = float(d[k - 1]), float(d[k])
    return None if lo == hi else (lo, hi)


def regimes(ctx: Context, pool: list[Scored]) -> list[Scored]:
    """``where(x < t, a, b)`` for the best candidate and each of the next few, one variable at a time;
    then the best of those splits with each side split again (:func:`_second_regimes`)."""
    from exprc import api

    ranked = sorted({id(s): s for s in pool}.values(), key=lambda s: s.key(ctx.train))
    if len(ranked) < 2:
        return []
    best = ranked[0]
    out = []
    splits: list[tuple[Scored, int, float, Scored, Scored]] = []
    for other in ranked[1:6]:
        for vi, var in enumerate(ctx.inputs):
            x = ctx.points[vi, ctx.train]
            for left, right in ((best, other), (other, best)):
                gap = _threshold(x, left.errors[ctx.train], right.errors[ctx.train])
                if gap is None:
                    continue
                t = refine_boundary(ctx, gap, left.outputs, right.outputs, float)
                outs = [api.where(var < t, a, b) for a, b in zip(left.outputs, right.outputs)]
                split = ctx.score(outs, f"regime on {_name(var, vi)} < {t:.6g}")
                out.append(split)
                splits.append((split, vi, t, left, right))
    return out + _second_regimes(ctx, ranked[:6], splits)


def _name(var: Node, i: int) -> str:
    return var.arg("name") or f"input {i}"


#: A side of a split needs this many training points to be split again.
MIN_SIDE = 8


def _second_regimes(ctx: Context, ranked: list[Scored],
                    splits: list[tuple[Scored, int, float, Scored, Scored]]) -> list[Scored]:
    """Regimes over more than one variable: the best single split ``where(x < t, a, b)`` with one side
    split again, on any input (another one: a regime over two variables; the same: a third segment),
    between that side's form and each of the other candidates, on that side's training points only:
    ``where(x < t, where(y < s, a, c), b)`` or ``where(x < t, a, where(y < s, b, c))``."""
    from exprc import api

    if not splits:
        return []
    _, vi, t, left, right = min(splits, key=lambda z: z[0].key(ctx.train))
    var, x = ctx.inputs[vi], ctx.points[vi, ctx.train]
    out = []
    for below, keep in ((True, left), (False, right)):
        side = x < t if below else ~(x < t)
        if int(side.sum()) < MIN_SIDE:
            continue
        for other in ranked:
            if other is keep:
                continue
            for wi, w in enumerate(ctx.inputs):
                xw = ctx.points[wi, ctx.train][side]
                for a, b in ((keep, other), (other, keep)):
                    gap = _threshold(xw, a.errors[ctx.train][side], b.errors[ctx.train][side])
                    if gap is None:
                        continue
                    s = refine_boundary(ctx, gap, a.outputs, b.outputs, float)
                    inner = [api.where(w < s, p, q) for p, q in zip(a.outputs, b.outputs)]
                    outs = [api.where(var < t, i, r) if below else api.where(var < t, lft, i)
                            for i, lft, r in zip(inner, left.outputs, right.outputs)]
                    where_ = f"{_name(var, vi)} {'<' if below else '>='} {t:.6g}"
                    out.append(ctx.score(outs, f"regimes: {_name(w, wi)} < {s:.6g} where {where_}"))
    return out


def _threshold(x: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[float, float] | None:
    """The two neighbouring sample values between which a split t minimises the error of ``left`` below t
    and ``right`` above; None when one side alone is as good."""
    order = np.argsort(x, kind="stable")
    xs, a, b = x[order], left[order], right[order]
    total = np.concatenate([[0.0], np.cumsum(a)]) + np.concatenate([[b.sum()], b.sum() - np.cumsum(b)])
    k = int(np.argmin(total))
    if k == 0 or k == len(xs) or total[k] >= min(total[0], total[-1]) - 1e-9 or xs[k - 1] == xs[k]:
        return None
    return float(xs[k - 1]), float(xs[k])
