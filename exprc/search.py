"""Accuracy search (``exprc.function(..., accuracy="search", domain=...)``): Herbie's loop on exprc graphs.

The default pipeline applies fixed stability rules.  The search *measures*: it samples the domain,
finds the subexpressions that lose bits, tries equivalent forms of them, and keeps a form only when
the whole output gets measurably closer to the exact result.  Read :func:`search` top-down:

1. **Sample** the domain deterministically (:func:`sample_domain`): a fixed seed, log-uniform
   magnitudes for ranges spanning orders of magnitude (both signs when ``lo < 0 < hi``), a quarter of
   the points uniform, and special points (0, ±tiny, ±1, the bounds).  A training set chooses forms, a
   separate validation set decides whether a change is accepted (Herbie's train/test split).
2. **Exact values** of every node with mpmath (:data:`MP_OPS`, keyed by the op names of
   :mod:`exprc.ops`), each point at doubling precision until every node's value rounded to float64
   agrees between two precisions; **float values** with the NumPy reference of each op
   (``exprc.ops.OPS[name].impl``) in the node's dtype.
3. **Localize**: the local error of a node is the bits lost when its op is applied to the correctly
   rounded exact values of its operands (Herbie).  The worst nodes, their parents and the user's whole
   formula are the places to rewrite.
4. **Candidates** for each place: SymPy transforms (``together``, ``cancel``, ``expand``, ``factor``,
   ``radsimp``, ``trigsimp``, ``expand_trig``, ``expand_log(force=True)``, ``simplify``, rewrites
   with ``exp``, erf/erfc reflections) and Taylor series around 0 and ±∞ behind a branch
   ``where(|x - x0| < r, series, expr)`` with ``r`` chosen on the samples.  Every candidate goes
   through :func:`exprc.optimize`, so the stability rules apply to the new form too.
5. **Score** each candidate by the bits lost of the whole output against the exact reference of the
   user's formula (computed once); keep the best (ties: fewer nodes, then the printed text).
6. **Regimes**: two candidates joined by ``where(x < t, a, b)`` for one variable, ``t`` between two
   sorted sample points, chosen to minimise the training error.
7. **Never worse**: a change is accepted only when it lowers the mean bits on the validation points,
   does not raise their maximum, and no sampled point is more than 1 bit worse than the default
   pipeline (a NaN or Inf the default got right counts 64 bits, so those are kept).

The result (the chosen graph as :mod:`exprc.serialize` JSON, and the :class:`AccuracyReport`) is
cached on disk through :func:`exprc.cache.load`, keyed by the serialized input graph, the domain, the
:class:`Settings`, the excluded rules, the names of the registered rules, :data:`ALGORITHM` and the exprc
version: another process gets it without
searching.  Everything iterates in sorted or graph order with a fixed seed, so the same graph and
domain give the same result in every process.  SymPy work is bounded by a count of calls
(:attr:`Settings.sympy_calls`); a time box per call (:attr:`Settings.sympy_seconds`, generous) only
guards against a runaway call, and a search where it fired is reported (``timeouts``) and not cached.

Scope: elementwise float graphs with scalar constants.  An output that holds a reduction, a shape
operation or an op without an mpmath row is left as the default pipeline made it (and listed under
``skipped`` in the report).  Shared variables and ``updates`` are not supported with the search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exprc.accuracy import bits_lost
from exprc.config import Config
from exprc.errors import DomainError, DTypeError
from exprc.graph import Node, substitute, toposort
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph, optimize
from exprc.rewrite.forms import horner

MODES = ("default", "search")

#: Domain of an input the caller did not bound: every magnitude from 1e-300 to 1e300, both signs
#: (1e-37 .. 1e37 for float32), as Herbie samples all of the floats.
DEFAULT_RANGE = {"float64": (-1e300, 1e300), "float32": (-1e37, 1e37)}
_TINY = {"float64": 1e-300, "float32": 1e-37}

#: Version of the search algorithm, part of the cache key: bump it when a change alters what it chooses.
ALGORITHM = "7"
#: Subexpressions larger than this (in nodes) are not handed to SymPy: it gets slow, and the forms the
#: default pipeline builds (series branches with dozens of terms) are not what SymPy should start from.
SYMPY_MAX_NODES = 40

#: Never worse: no sampled point may lose more than 1 bit against the default pipeline, except that a
#: point may go up to this many bits (3 ulps): a default that is exact at x = 1 by luck must not veto a
#: form that fixes 50 bits elsewhere.
SLACK_BITS = 2.0

#: Orders of the Taylor polynomials tried (terms below x**k; 1/x**k at infinity).
SERIES_ORDERS = (4, 8, 14)

#: Degrees of the Taylor polynomials at 0 computed from numeric coefficients (one-variable forms).
TAYLOR_DEGREES = (24, 40)
#: Radius of the circle the numeric coefficients are integrated on (the form must be analytic inside;
#: a pole there gives a polynomial that the scoring then rejects).
TAYLOR_RADIUS = 0.5

#: Per-process counters (tests read them): searches run, cache hits.
STATS = {"searches": 0, "cache_hits": 0}


@dataclass(frozen=True)
class Settings:
    """How much the search samples and tries.  Pass one as ``accuracy=`` for other sizes."""

    points: int = 256  #: training points (random, besides the special points)
    validation: int = 256  #: validation points, a separate draw
    seed: int = 0
    rounds: int = 3  #: localize-rewrite-accept rounds
    locations: int = 3  #: worst nodes rewritten per round
    #: SymPy calls for the whole search; past it, no more SymPy forms.  A count, not seconds, so the
    #: same search makes the same choices on a fast and a slow machine.
    sympy_calls: int = 300
    #: Safety net for one SymPy call that runs away (main thread only, SIGALRM).  Generous so that it
    #: never fires on the forms the search hands SymPy; when it does, the result is not cached.
    sympy_seconds: float = 20.0

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# -- the report ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One accepted rewrite: where, what it became, where the form came from, bits on validation points."""

    original: str
    winner: str
    source: str
    before_mean: float
    before_max: float
    after_mean: float
    after_max: float


@dataclass
class AccuracyReport:
    """What the search did: ``changes`` (accepted, in order), the output's bits before/after on the
    validation points, the subexpressions it localized, outputs it skipped and why, timing."""

    changes: list[Change] = field(default_factory=list)
    before_mean: float = 0.0
    before_max: float = 0.0
    after_mean: float = 0.0
    after_max: float = 0.0
    points: int = 0
    validation: int = 0
    searched: list[tuple[str, float, float]] = field(default_factory=list)  # (subexpression, mean, max)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0  #: time the search took when it ran (a cache hit keeps the original figure)
    sympy_calls: int = 0  #: SymPy calls the search made (at most Settings.sympy_calls)
    #: SymPy calls cut by the time box (Settings.sympy_seconds): the result may depend on the machine's
    #: speed, so it is not cached
    timeouts: int = 0
    cached: bool = False  #: True when this process loaded it from the disk cache

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], cached: bool = False) -> AccuracyReport:
        d = dict(d)
        d["changes"] = [Change(**c) for c in d.get("changes", [])]
        d["searched"] = [tuple(s) for s in d.get("searched", [])]
        return cls(**d, cached=cached)

    def format(self) -> str:
        """A readable summary, one block per change."""
        lines = [(f"accuracy search: {self.before_mean:.2f} -> {self.after_mean:.2f} mean bits, "
                  f"{self.before_max:.1f} -> {self.after_max:.1f} max bits on {self.validation} validation points "
                  f"({self.points} training; {self.seconds:.2f} s{', cached' if self.cached else ''})")]
        if not self.changes:
            lines.append("  no change: the default pipeline's form is kept")
        for i, c in enumerate(self.changes, 1):
            lines += [(f"  [{i}] {c.source}: bits mean {c.before_mean:.2f} -> {c.after_mean:.2f}, "
                       f"max {c.before_max:.1f} -> {c.after_max:.1f}"),
                      f"      was: {_clip(c.original)}", f"      now: {_clip(c.winner)}"]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)

    __str__ = format


def _clip(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# -- options --------------------------------------------------------------------------------------------------
def check_options(accuracy: Any, domain: Any, inputs: Sequence[Node]) -> tuple[Settings | None, tuple]:
    """Validate ``accuracy=`` and ``domain=``; returns the settings (None: default mode) and the domain as
    a hashable tuple ``((input position, lo, hi), ...)`` sorted by position."""
    if isinstance(accuracy, Settings):
        settings: Settings | None = accuracy
    elif accuracy == "default" or accuracy is None:
        settings = None
    elif accuracy == "search":
        settings = Settings()
    else:
        raise DomainError(f"accuracy: unknown mode {accuracy!r}; expected one of {', '.join(MODES)} "
                          "(or an exprc.search.Settings)")
    if domain is None:
        return settings, ()
    if settings is None:
        raise DomainError("domain= is only used by accuracy=\"search\"; pass accuracy=\"search\" as well")
    if not isinstance(domain, Mapping):
        raise DomainError(f"domain: expected a dict {{input variable: (lo, hi)}}, got {type(domain).__name__}")
    pos = {v: i for i, v in enumerate(inputs)}
    out = []
    for var, rng in domain.items():
        if not isinstance(var, Node) or var not in pos:
            raise DomainError(f"domain: {var!r} is not one of the function's inputs")
        if var.dtype not in ("float32", "float64"):
            raise DTypeError(f"domain: the input {var.arg('name') or '<unnamed>'} is {var.dtype}; the accuracy "
                             "search samples float inputs only")
        try:
            lo, hi = (float(v) for v in rng)
        except (TypeError, ValueError):
            raise DomainError(f"domain[{var.arg('name')}]: expected (lo, hi) numbers, got {rng!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DomainError(f"domain[{var.arg('name')}]: bounds must be finite, got ({lo}, {hi})")
        if lo >= hi:
            raise DomainError(f"domain[{var.arg('name')}]: expected lo < hi, got ({lo}, {hi})")
        out.append((pos[var], lo, hi))
    return settings, tuple(sorted(out))


# -- entry point ----------------------------------------------------------------------------------------------
def search(inputs: Sequence[Node], outputs: Sequence[Node], default: FunctionGraph, domain: tuple,
           settings: Settings, cfg: Config) -> tuple[FunctionGraph, AccuracyReport]:
    """The graph ``accuracy="search"`` compiles (inputs and outputs of ``default``, outputs possibly
    replaced), and its report.  ``outputs`` are the user's formulas, ``default`` what
    :func:`exprc.optimize` made of them; ``domain`` as :func:`check_options` returns it."""
    from exprc import cache
    from exprc.serialize import dumps, loads

    for v in inputs:
        if v.dtype not in ("float32", "float64"):
            raise DTypeError(f"accuracy=\"search\": the input {v.arg('name') or '<unnamed>'} is {v.dtype}; the "
                             "search samples float inputs only")
    if len(default.inputs) != len(inputs):
        raise DomainError("accuracy=\"search\" does not support shared variables; pass them as inputs")
    source = dumps(FunctionGraph(tuple(inputs), tuple(outputs)))
    from exprc.rewrite.core import REGISTRY  # the rule set decides the default and every candidate's form

    rules = hashlib.sha256(",".join(sorted(REGISTRY)).encode()).hexdigest()[:16]
    parts = {"domain": json.dumps([list(d) for d in domain]), "settings": settings.key(), "algorithm": ALGORITHM,
             "exclude": ",".join(sorted(cfg.exclude)), "rules": rules, "kind": "accuracy-search"}
    found: dict[str, Any] = {}

    def build(folder: Path) -> Path:
        graph, report = _search(list(inputs), list(outputs), default, {d[0]: d[1:] for d in domain},
                                settings, cfg)
        found["result"] = (graph, report)
        if report.timeouts:
            raise _Uncached  # a time-boxed choice: another (faster) process must not inherit it
        (folder / "search.in.json").write_text(source)
        path = folder / "search.json"
        path.write_text(json.dumps({"graph": json.loads(dumps(list(graph.outputs) + list(inputs))),
                                    "report": report.to_dict()}, allow_nan=True))
        return path

    def loader(path: Path) -> tuple[list[Node], AccuracyReport]:
        doc = json.loads(path.read_text())
        nodes = loads(json.dumps(doc["graph"]))
        return nodes, AccuracyReport.from_dict(doc["report"])

    from exprc.printing import pprint

    try:
        (nodes, report), _ = cache.load("search", source, parts, build, loader, cfg,
                                        meta={"backend": "search", "summary": pprint(list(outputs))[:200]})
    except _Uncached:
        return found["result"]
    if "result" in found:
        return found["result"]
    STATS["cache_hits"] += 1
    fresh = nodes[len(nodes) - len(inputs):]  # loaded inputs are new variables: put the caller's back
    outs = substitute(nodes[: len(nodes) - len(inputs)], dict(zip(fresh, inputs)))
    report.cached = True
    return FunctionGraph(default.inputs, tuple(outs), default.trace), report


# -- 1. sampling ---------------------------------------------------------------------------------------------
def sample_domain(lo: float, hi: float, n: int, rng: np.random.Generator, dtype: str = "float64") -> np.ndarray:
    """``n`` points of ``[lo, hi]``.  A range within three orders of magnitude (and not touching 0) is
    sampled uniformly.  Otherwise a quarter of the points is uniform, a quarter log-uniform in magnitude
    down to the format's tiny numbers (1e-300), and half log-uniform over the 20 decades below the
    bound, where cancellation turns into underflow (either sign when ``lo < 0 < hi``)."""
    tiny = _TINY[dtype]

    def logu(a: float, b: float, k: int) -> np.ndarray:
        return np.exp(rng.uniform(math.log(a), math.log(b), k))

    def mags(a: float, b: float, k: int) -> np.ndarray:  # magnitudes in [a, b], a = 0 allowed
        k_wide = k // 3
        wide = logu(max(a, tiny), b, k_wide)
        near = logu(max(a, b * 1e-20, tiny), b, k - k_wide)
        return np.concatenate([wide, near])

    if lo >= 0 and (lo == 0 or hi / lo > 1e3):
        n_lin = n // 4
        rest = mags(lo, hi, n - n_lin)
    elif hi <= 0 and (hi == 0 or lo / hi > 1e3):
        n_lin = n // 4
        rest = -mags(-hi, -lo, n - n_lin)
    elif lo < 0 < hi:
        n_lin = n // 4
        k = n - n_lin
        neg = np.arange(k) % 2 == 1
        rest = np.where(neg, -mags(0.0, -lo, k), mags(0.0, hi, k))
    else:
        n_lin, rest = n, np.zeros(0)
    pts = np.clip(np.concatenate([rng.uniform(lo, hi, n_lin), rest]), lo, hi)
    return pts.astype(dtype).astype(np.float64)


def _special(lo: float, hi: float, dtype: str) -> list[float]:
    tiny = _TINY[dtype]
    cand = [lo, hi, 0.0, tiny, -tiny, 1.0, -1.0, 0.5 * (lo + hi)]
    out: list[float] = []
    for c in cand:
        c = float(np.asarray(c, dtype=dtype))
        if lo <= c <= hi and c not in out:
            out.append(c)
    return out


def _points(inputs: Sequence[Node], domain: dict, n: int, seed: int) -> np.ndarray:
    """(len(inputs), k) points: the special points of every input (cycled), then ``n`` random ones."""
    rng = np.random.default_rng(seed)
    ranges = [domain.get(i, DEFAULT_RANGE[v.dtype]) for i, v in enumerate(inputs)]
    specials = [_special(lo, hi, v.dtype) for (lo, hi), v in zip(ranges, inputs)]
    k = max(len(s) for s in specials)
    cols = []
    for (lo, hi), v, sp in zip(ranges, inputs, specials):
        rand = sample_domain(lo, hi, n, rng, v.dtype)
        cols.append(np.concatenate([np.array([sp[j % len(sp)] for j in range(k)]), rand]))
    return np.array(cols)


# -- 2. exact and float values ----------------------------------------------------------------------------------
def _mp() -> Any:
    import mpmath

    return mpmath


_BIG = 1e5  # beyond |x| > 1e5, exp-like results are 0 or inf in every float format: skip mpmath's huge numbers


def _mp_table() -> dict[str, Callable[..., Any]]:
    mp = _mp()
    inf, nan = mp.inf, mp.nan

    def big(x: Any) -> bool:
        return mp.isfinite(x) and abs(x) > _BIG

    def exp(x: Any) -> Any:
        return (inf if x > 0 else mp.mpf(0)) if big(x) else mp.exp(x)

    def div(a: Any, b: Any) -> Any:
        if b == 0:
            return nan if a == 0 or mp.isnan(a) else (inf if a > 0 else -inf)
        return a / b

    def log(x: Any) -> Any:
        return -inf if x == 0 else (nan if x < 0 else mp.log(x))

    def power(a: Any, b: Any) -> Any:
        if a != 0 and mp.isfinite(a) and mp.isfinite(b) and abs(b * mp.log(abs(a), 2)) > _BIG:
            if b * mp.log(abs(a), 2) < 0:
                return mp.mpf(0)
            odd = a < 0 and b == mp.floor(b) and int(b) % 2
            return -inf if odd else inf
        if a < 0 and b != mp.floor(b):
            return nan
        if a == 0 and b < 0:
            return inf
        return mp.power(a, b)

    def sigmoid(x: Any) -> Any:
        return (mp.mpf(1) if x > 0 else exp(x)) if big(x) else 1 / (1 + mp.exp(-x))

    def softplus(x: Any) -> Any:
        return (x if x > 0 else exp(x)) if big(x) else mp.log1p(mp.exp(x))

    def logaddexp(a: Any, b: Any) -> Any:
        m = max(a, b)
        if not mp.isfinite(m):
            return m if not mp.isnan(m) else nan
        return m + softplus(min(a, b) - m)

    def sqrt(x: Any) -> Any:
        return nan if x < 0 else mp.sqrt(x)

    def cbrt(x: Any) -> Any:
        return mp.sign(x) * mp.cbrt(abs(x)) if x != 0 else x

    def fb(fn: Callable[..., bool]) -> Callable[..., Any]:
        return lambda *a: bool(fn(*a))

    return {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "truediv": div,
        "neg": lambda a: -a, "square": lambda a: a * a, "reciprocal": lambda a: div(mp.mpf(1), a),
        "abs": abs, "sign": lambda a: mp.sign(a), "floor": mp.floor, "ceil": mp.ceil, "round": mp.nint,
        "exp": exp, "exp2": lambda x: exp(x * mp.ln2), "expm1": lambda x: exp(x) - 1 if big(x) else mp.expm1(x),
        "log": log, "log2": lambda x: div(log(x), mp.ln2), "log10": lambda x: div(log(x), mp.ln10),
        "log1p": lambda x: log(1 + x) if x <= -1 else mp.log1p(x), "sqrt": sqrt, "cbrt": cbrt,
        "sin": mp.sin, "cos": mp.cos, "tan": mp.tan,
        "arcsin": lambda x: nan if abs(x) > 1 else mp.asin(x), "arccos": lambda x: nan if abs(x) > 1 else mp.acos(x),
        "arctan": mp.atan, "arctan2": mp.atan2,
        "sinh": lambda x: (inf if x > 0 else -inf) if big(x) else mp.sinh(x),
        "cosh": lambda x: inf if big(x) else mp.cosh(x), "tanh": mp.tanh, "arcsinh": mp.asinh,
        "arccosh": lambda x: nan if x < 1 else mp.acosh(x),
        "arctanh": lambda x: nan if abs(x) > 1 else (inf * mp.sign(x) if abs(x) == 1 else mp.atanh(x)),
        "sigmoid": sigmoid, "softplus": softplus,
        "log1mexp": lambda x: nan if x > 0 else log(-(exp(x) - 1) if not big(x) else mp.mpf(1) - exp(x)),
        "erf": mp.erf, "erfc": mp.erfc, "pow": power, "hypot": lambda a, b: mp.sqrt(a * a + b * b),
        "logaddexp": logaddexp,
        "maximum": lambda a, b: nan if mp.isnan(a) or mp.isnan(b) else max(a, b),
        "minimum": lambda a, b: nan if mp.isnan(a) or mp.isnan(b) else min(a, b),
        "floordiv": lambda a, b: mp.floor(div(a, b)), "mod": lambda a, b: a - mp.floor(div(a, b)) * b,
        "lt": fb(lambda a, b: a < b), "le": fb(lambda a, b: a <= b), "gt": fb(lambda a, b: a > b),
        "ge": fb(lambda a, b: a >= b), "eq": fb(lambda a, b: a == b), "ne": fb(lambda a, b: a != b),
        "and": lambda a, b: a and b, "or": lambda a, b: a or b, "xor": lambda a, b: a != b,
        "isnan": fb(mp.isnan), "isinf": fb(mp.isinf), "isfinite": fb(mp.isfinite),
        "where": lambda c, a, b: a if c else b, "fill": lambda m, v: v,
    }


#: Exact (mpmath) evaluation of each elementwise op, by op name; filled on first use.
MP_OPS: dict[str, Callable[..., Any]] = {}


def _mp_ops() -> dict[str, Callable[..., Any]]:
    if not MP_OPS:
        MP_OPS.update(_mp_table())
    return MP_OPS


def searchable(output: Node) -> str | None:
    """None when the search can evaluate ``output`` exactly, else why not."""
    table = _mp_ops()
    for n in toposort([output]):
        if n.op == "input":
            if n.dtype not in ("float32", "float64"):
                return f"the input {n.arg('name')} is {n.dtype}"
        elif n.op == "constant":
            if n.value.ndim:
                return "it holds an array constant"
        elif OPS[n.op].kind != "elemwise":
            return f"it holds a {OPS[n.op].kind} op ({n.op})"
        elif n.op != "cast" and n.op not in table:
            return f"the op {n.op} has no exact (mpmath) evaluation"
    return None


def _mp_value(n: Node, args: list, table: dict) -> Any:
    mp = _mp()
    if n.op == "cast":  # a float cast is the identity on real numbers; bool -> 0/1
        a = args[0]
        return mp.mpf(int(a)) if isinstance(a, bool) else a
    try:
        v = table[n.op](*args)
    except (ZeroDivisionError, ValueError, OverflowError, TypeError):
        return mp.nan
    if isinstance(v, mp.mpc):
        return v.real if v.imag == 0 else mp.nan
    return v


def exact_values(order: Sequence[Node], inputs: Sequence[Node], points: np.ndarray, prec: int = 160,
                 max_prec: int = 1 << 13) -> dict[Node, np.ndarray]:
    """Every node of ``order`` at each point (columns of ``points``), exactly rounded to float64 (bools as
    0/1): each point is evaluated at ``prec`` bits (plus four times the largest binary exponent of its
    coordinates) and twice that, doubling until all nodes agree and no addition cancelled more bits than
    the precision holds (an exact 0 from nonzero terms is pursued up to ``max_prec``)."""
    mp = _mp()
    table = _mp_ops()
    pos = {v: i for i, v in enumerate(inputs)}
    k = points.shape[1]
    out = np.empty((len(order), k))

    def run(j: int, p: int) -> tuple[np.ndarray, bool]:
        """The values at precision p, and whether an addition cancelled more bits than p holds (then
        a higher precision could still agree on a wrong result, typically 0: 1 + erf(-15))."""
        short = False
        with mp.workprec(p):
            vals: dict[Node, Any] = {}
            for n in order:
                if n.op == "input":
                    vals[n] = mp.mpf(float(points[pos[n], j]))
                elif n.op == "constant":
                    c = n.value.item()
                    vals[n] = c if isinstance(c, bool) else mp.mpf(float(c))
                else:
                    args = [vals[i] for i in n.inputs]
                    v = vals[n] = _mp_value(n, args, table)
                    if n.op in ("add", "sub") and not short:
                        a, b = args
                        if a != 0 and b != 0 and mp.isfinite(a) and mp.isfinite(b) and mp.isfinite(v):
                            short = v == 0 or mp.mag(v) < max(mp.mag(a), mp.mag(b)) - (p - 64)
            return np.array([float(vals[n]) for n in order]), short

    # Cancellation of f(x) - T(x) at a tiny x (or of sqrt(x + 1) - sqrt(x) at a huge one) loses a few
    # times the exponent of x in bits: start above that.
    expo = np.abs(np.frexp(np.where(np.isfinite(points) & (points != 0), points, 1.0))[1]).max(axis=0)
    for j in range(k):
        p = prec + 4 * int(expo[j])
        v, short = run(j, p)
        while p < max_prec:
            p *= 2
            w, short_w = run(j, p)
            if not short and np.array_equal(v, w, equal_nan=True):
                break
            v, short = w, short_w
        out[:, j] = v
    return {n: out[i] for i, n in enumerate(order)}


def float_values(outputs: Sequence[Node], inputs: Sequence[Node], points: np.ndarray,
                 memo: dict[Node, np.ndarray]) -> list[np.ndarray]:
    """The outputs at each point, computed op by op with the NumPy references in each node's dtype
    (``memo``: node -> values; nodes are interned, so equal subexpressions are computed once)."""
    pos = {v: i for i, v in enumerate(inputs)}
    k = points.shape[1]
    with np.errstate(all="ignore"):
        for n in toposort(outputs):
            if n in memo:
                continue
            if n.op == "input":
                memo[n] = points[pos[n]].astype(n.dtype)
            elif n.op == "constant":
                memo[n] = np.broadcast_to(n.value, (k,))
            else:
                memo[n] = np.broadcast_to(np.asarray(OPS[n.op].impl(*[memo[i] for i in n.inputs],
                                                                    **dict(n.attrs))), (k,))
    return [memo[o] for o in outputs]


# -- the search --------------------------------------------------------------------------------------------------
@dataclass
class _Scored:
    outputs: tuple[Node, ...]
    errors: np.ndarray  # bits per point, averaged over the outputs, on train + validation points
    size: int
    text: str
    source: str = ""
    place: Node | None = None
    replacement: Node | None = None

    def key(self, sl: slice) -> tuple:
        return (float(np.mean(self.errors[sl])), self.size, self.text)


class _Uncached(Exception):
    """The search's result must not be stored (see :attr:`AccuracyReport.timeouts`)."""


class _Timeout(Exception):
    pass


class _Context:
    """What one search shares: points, the exact reference, memoized float values, the SymPy budget."""

    def __init__(self, inputs: list[Node], user: list[Node], reference: list[np.ndarray], points: np.ndarray,
                 n_train: int, settings: Settings, cfg: Config):
        self.inputs = inputs
        self.user = user  # the user's formulas: the exact reference at new points
        self.reference = reference
        self.points = points
        self.train = slice(0, n_train)
        self.valid = slice(n_train, points.shape[1])
        self.settings = settings
        self.cfg = cfg
        self.memo: dict[Node, np.ndarray] = {}
        self.scores: dict[tuple[Node, ...], _Scored] = {}
        self.sympy_left = settings.sympy_calls
        self.timeouts = 0
        self.sympy_cache: dict[tuple[str, str], Any] = {}

    def score(self, outputs: Sequence[Node], source: str = "") -> _Scored:
        from exprc.printing import pprint

        outputs = tuple(outputs)
        hit = self.scores.get(outputs)
        if hit is not None:
            return hit
        got = float_values(outputs, self.inputs, self.points, self.memo)
        errs = np.mean([bits_lost(g, r) for g, r in zip(got, self.reference)], axis=0)
        s = _Scored(outputs, errs, len(toposort(outputs)), pprint(list(outputs)), source)
        self.scores[outputs] = s
        return s

    @contextlib.contextmanager
    def sympy_time(self) -> Iterator[None]:
        """Charge one SymPy call to the budget (a count), and time-box it as a safety net (SIGALRM,
        so only in the main thread; a cut call is counted in ``timeouts``)."""
        if self.sympy_left <= 0:
            raise _Timeout
        self.sympy_left -= 1
        limit = self.settings.sympy_seconds
        main = threading.current_thread() is threading.main_thread()
        if main:
            def on_alarm(signum: int, frame: Any) -> None:
                self.timeouts += 1
                raise _Timeout

            old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            if main:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)


def _search(inputs: list[Node], outputs: list[Node], default: FunctionGraph, domain: dict, settings: Settings,
            cfg: Config) -> tuple[FunctionGraph, AccuracyReport]:
    """The search itself (no cache): see the module docstring."""
    from exprc.printing import pprint

    STATS["searches"] += 1
    t0 = time.perf_counter()
    report = AccuracyReport(points=settings.points, validation=settings.validation)
    final = list(default.outputs)
    todo = []
    for i, o in enumerate(outputs):
        why = searchable(o) or searchable(default.outputs[i])
        if why:
            report.skipped.append(f"output {i} ({_clip(pprint(o), 60)}): {why}")
        else:
            todo.append(i)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return default, report
    # 1. points, 2. the exact reference of the user's formulas (computed once)
    train = _points(inputs, domain, settings.points, settings.seed)
    valid = _points(inputs, domain, settings.validation, settings.seed + 1)
    points = np.concatenate([train, valid], axis=1)
    user = [outputs[i] for i in todo]
    exact = exact_values(toposort(user), inputs, points)
    ctx = _Context(inputs, user, [exact[o] for o in user], points, train.shape[1], settings, cfg)
    base = ctx.score([default.outputs[i] for i in todo], "default")
    report.before_mean, report.before_max = _stats(base.errors[ctx.valid])
    current = base
    if np.max(base.errors) > SLACK_BITS:  # a formula the default already gets right is not searched
        for _ in range(settings.rounds):
            change = _round_once(ctx, current, base, user, report)
            if change is None:
                break
            current = change
            if np.max(current.errors[ctx.train]) <= 1.0:  # nothing left to win
                break
    for i, o in zip(todo, current.outputs):
        final[i] = o
    report.after_mean, report.after_max = _stats(current.errors[ctx.valid])
    report.seconds = round(time.perf_counter() - t0, 3)
    report.sympy_calls = settings.sympy_calls - ctx.sympy_left
    report.timeouts = ctx.timeouts
    return FunctionGraph(default.inputs, tuple(final), default.trace), report


def _stats(errs: np.ndarray) -> tuple[float, float]:
    return round(float(np.mean(errs)), 3), round(float(np.max(errs)), 3)


def _round_once(ctx: _Context, current: _Scored, base: _Scored, user: list[Node],
                report: AccuracyReport) -> _Scored | None:
    """One localize -> candidates -> regimes -> accept round; the accepted candidate or None."""
    from exprc.printing import pprint

    places = _localize(ctx, current, report)
    # The user's own formula is always a place too: SymPy works best on what the user wrote.
    places += [(o, cur) for o, cur in zip(user, current.outputs) if (o, cur) not in places]
    pool: list[_Scored] = [current]
    for form_of, place in places:
        for source, new in _candidates(ctx, form_of, place, current):
            cand = _replace(ctx, current, place, new, source)
            if cand is not None:
                pool.append(cand)
    pool += _regimes(ctx, pool)
    ranked = sorted(pool, key=lambda s: s.key(ctx.train))
    cur_mean = float(np.mean(current.errors[ctx.valid]))
    cur_max = float(np.max(current.errors[ctx.valid]))
    for cand in ranked[:8]:
        if cand is current or cand.key(ctx.train) >= current.key(ctx.train):
            break
        v = cand.errors[ctx.valid]
        if float(np.mean(v)) < cur_mean - 0.01 and float(np.max(v)) <= cur_max + 1e-9 \
                and np.all(cand.errors <= np.maximum(base.errors + 1.0, SLACK_BITS)):
            place = cand.place
            old = pprint(place) if place is not None else current.text
            new = pprint(optimize([cand.replacement], ctx.cfg).outputs[0]) if cand.replacement is not None \
                else cand.text
            report.changes.append(Change(old, new, cand.source, *_stats(current.errors[ctx.valid]),
                                         *_stats(cand.errors[ctx.valid])))
            return cand
    return None


def _localize(ctx: _Context, current: _Scored, report: AccuracyReport) -> list[tuple[Node, Node]]:
    """(subexpression, subexpression) pairs to rewrite: the worst nodes by local error and their parents."""
    from exprc.printing import pprint

    order = toposort(current.outputs)
    pts = ctx.points[:, ctx.train]
    exact = exact_values(order, ctx.inputs, pts)
    local: list[tuple[float, float, str, Node]] = []
    with np.errstate(all="ignore"):
        for n in order:
            if not n.inputs or n.dtype not in ("float32", "float64"):
                continue
            args = [exact[i].astype(i.dtype) for i in n.inputs]
            got = np.broadcast_to(OPS[n.op].impl(*args, **dict(n.attrs)), exact[n].shape)
            b = bits_lost(np.asarray(got, dtype=n.dtype), exact[n])
            mean, mx = float(np.mean(b)), float(np.max(b))
            if mean > 1.0 or mx > 8.0:
                local.append((-mean, -mx, pprint(n), n))
    local.sort(key=lambda t: t[:3])
    parents: dict[Node, list[Node]] = {}
    for n in order:
        for i in n.inputs:
            parents.setdefault(i, []).append(n)
    places: list[tuple[Node, Node]] = []
    for m, mx, text, n in local[: ctx.settings.locations]:
        if len(report.searched) < 12:
            report.searched.append((_clip(text, 200), round(-m, 3), round(-mx, 3)))
        chain = [n]
        for _ in range(2):  # the parents see the cancellation's context (x - sin x inside (...)/x**3)
            ps = parents.get(chain[-1])
            if not ps:
                break
            chain.append(ps[0])
        places += [(c, c) for c in chain if (c, c) not in places]
    return places


def _replace(ctx: _Context, current: _Scored, place: Node, new: Node, source: str) -> _Scored | None:
    try:
        outs = substitute(list(current.outputs), {place: new})
        outs = optimize(outs, ctx.cfg).outputs
        if any(o.type.shape != c.type.shape or o.dtype != c.dtype for o, c in zip(outs, current.outputs)):
            return None
        s = ctx.score(outs, source)
    except Exception:  # noqa: BLE001 - a candidate that cannot be built or evaluated is skipped
        return None
    if not s.source:
        s.source = source
    if s.place is None and s is not current:
        s.place, s.replacement = place, new
    return s


# -- 4. candidates --------------------------------------------------------------------------------------------
def _transforms() -> list[tuple[str, Callable[[Any], Any]]]:
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


def _candidates(ctx: _Context, form_of: Node, place: Node, current: _Scored) -> Iterator[tuple[str, Node]]:
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
    for name, fn in _transforms():
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


def _series(ctx: _Context, e: Any, place: Node, current: _Scored, mapping: dict) -> Iterator[tuple[str, Node]]:
    """Taylor (or asymptotic) polynomials of ``e`` in one variable, behind a branch on that variable whose
    radius is chosen on the training points."""
    import sympy as sp

    from exprc import api
    from exprc.sympy_bridge import from_sympy

    for s in sorted(e.free_symbols, key=lambda s: s.name):
        var = mapping[s.name]
        x = ctx.points[ctx.inputs.index(var)]
        for x0 in (0, sp.oo, -sp.oo):
            if x0 == 0 and not np.any(np.abs(x) < 1):
                continue
            if x0 != 0 and not np.any(x * (1 if x0 == sp.oo else -1) > 1e3):
                continue
            try:  # one expansion, truncated to fewer terms below (SymPy's series is the slow part)
                with ctx.sympy_time():
                    full = sp.series(e, s, x0, SERIES_ORDERS[-1]).removeO()
                terms = [(t.as_coeff_exponent(s)[1], t) for t in sp.Add.make_args(sp.expand(full))]
            except Exception:  # noqa: BLE001 - no series there, or out of time
                terms = []
            polys: list[tuple[str, Node]] = []
            for order in SERIES_ORDERS:
                try:
                    keep = [t for k, t in terms if k.is_number and (k < order if x0 == 0 else k > -order)]
                    poly = sp.Add(*keep)
                    if not keep or poly.has(sp.O) or poly.has(sp.zoo) or poly.has(sp.nan) or poly == 0 \
                            or (order != SERIES_ORDERS[-1] and len(keep) == len(terms)):
                        continue
                    polys.append((f"series at {x0}, order {order}", from_sympy(poly, mapping)))
                except Exception:  # noqa: BLE001, S112 - a coefficient with no exprc form
                    continue
            if x0 == 0 and len(e.free_symbols) == 1:
                # Long Taylor polynomials from numeric coefficients: the cancellation of f(x) - x
                # forms (atan, asin, tanh(x)/x) reaches far from 0, past what 14 terms cover.
                for degree in TAYLOR_DEGREES:
                    coeffs = _taylor_coefficients(ctx, e, s, degree)
                    if coeffs is not None:
                        polys.append((f"taylor at 0, degree {degree}", horner(var, coeffs, var)))
            for where, node in polys:
                sign = -1.0 if x0 == -sp.oo else 1.0
                with np.errstate(all="ignore"):  # distance to x0: |x|, or 1/x on the side of the infinity
                    near = np.abs(x) if x0 == 0 else np.where(x * sign > 0, 1.0 / (x * sign), np.inf)
                cand = _replace(ctx, current, place, node, "series")
                if cand is None:
                    continue
                gap = _split(near, cand.errors[ctx.train], current.errors[ctx.train], ctx.train)
                if gap is None:
                    continue
                r = _refine(ctx, gap, cand.outputs, current.outputs,
                            lambda d, x0=x0, sign=sign: d if x0 == 0 else sign / d)
                if x0 == 0:
                    yield where, api.where(api.abs(var) < r, node, place)
                    # At x = 0 itself the formula may be undefined (1/x - 1/tan x): keep its NaN there.
                    yield where + ", 0 excluded", api.where((api.abs(var) < r) & api.not_equal(var, 0.0), node,
                                                            place)
                else:
                    yield where, api.where(var * sign > 1.0 / r, node, place)


def _taylor_coefficients(ctx: _Context, e: Any, s: Any, degree: int) -> list[float] | None:
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


def _refine(ctx: _Context, gap: tuple[float, float], below: tuple[Node, ...], above: tuple[Node, ...],
            to_x: Callable[[float], float], steps: int = 10) -> float:
    """Herbie's binary search of a regime boundary inside ``gap`` (two neighbouring sample values of a
    coordinate whose value d gives the input ``to_x(d)``): at each midpoint, the exact result decides
    whether ``below`` or ``above`` is the better form there.  Only for one-input functions (elsewhere the
    other inputs have no value at the midpoint): the midpoint of the gap."""
    lo, hi = gap

    def mid(a: float, b: float) -> float:
        return math.sqrt(a * b) if a > 0 and b > 4 * a else (a + b) / 2  # geometric across magnitudes

    if len(ctx.inputs) != 1:
        return mid(lo, hi)
    for _ in range(steps):
        m = mid(lo, hi)
        if not lo < m < hi:
            break
        pts = np.array([[to_x(m)]])
        exact = exact_values(toposort(ctx.user), ctx.inputs, pts)
        errs = []
        for outs in (below, above):
            got = float_values(outs, ctx.inputs, pts, {})
            errs.append(float(np.mean([bits_lost(g, exact[u]) for g, u in zip(got, ctx.user)])))
        if errs[0] <= errs[1]:
            lo = m
        else:
            hi = m
    return mid(lo, hi)


def _regimes(ctx: _Context, pool: list[_Scored]) -> list[_Scored]:
    """``where(x < t, a, b)`` for the best candidate and each of the next few, one variable at a time."""
    from exprc import api

    ranked = sorted({id(s): s for s in pool}.values(), key=lambda s: s.key(ctx.train))
    if len(ranked) < 2:
        return []
    best = ranked[0]
    out = []
    for other in ranked[1:6]:
        for vi, var in enumerate(ctx.inputs):
            x = ctx.points[vi, ctx.train]
            for left, right in ((best, other), (other, best)):
                gap = _threshold(x, left.errors[ctx.train], right.errors[ctx.train])
                if gap is None:
                    continue
                t = _refine(ctx, gap, left.outputs, right.outputs, float)
                outs = [api.where(var < t, a, b) for a, b in zip(left.outputs, right.outputs)]
                out.append(ctx.score(outs, f"regime on {var.arg('name') or f'input {vi}'} < {t:.6g}"))
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


__all__ = ["DEFAULT_RANGE", "MODES", "STATS", "AccuracyReport", "Change", "Settings", "check_options",
           "exact_values", "float_values", "sample_domain", "search", "searchable"]
