"""What the accuracy search measures with: settings, sample points, float values, scores.

A search samples each input's domain once (:func:`draw_points`: special points, then a seeded
draw from :func:`sample_domain`), computes the exact reference of the user's formulas once, and
then scores every candidate graph by the bits it loses on those points (:class:`Context`,
:meth:`Context.score`; equal subexpressions are evaluated once, nodes being interned).
:func:`refine_boundary` moves a regime boundary between two sample points with fresh exact values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exprc.accuracy.exact import exact_values, table
from exprc.accuracy.measure import bits_lost
from exprc.config import Config
from exprc.graph import Node, substitute, toposort
from exprc.ops import OPS
from exprc.pipeline import optimize

#: Domain of an input the caller did not bound: every magnitude from 1e-300 to 1e300, both signs
#: (1e-37 .. 1e37 for float32), as Herbie samples all of the floats.
DEFAULT_RANGE = {"float64": (-1e300, 1e300), "float32": (-1e37, 1e37)}
_TINY = {"float64": 1e-300, "float32": 1e-37}


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


# -- sampling ------------------------------------------------------------------------------------------
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


def draw_points(inputs: Sequence[Node], domain: dict, n: int, seed: int) -> np.ndarray:
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


#: Inputs up to this many get every pair of special values in :func:`outside_points` too.
PAIRED_INPUTS = 3


def outside_points(inputs: Sequence[Node], domain: dict) -> np.ndarray:
    """Points where an input takes a value the domain may not hold (±inf, ±1e300, ±1e-300, ±0,
    the float's own extremes) and the others their domain's middle, and, for up to
    :data:`PAIRED_INPUTS` inputs, every pair of inputs both at such values (log(exp(a) - exp(a - d))
    at a = -inf, d = -1e-300: a searched series in d was NaN where the default is -inf): what a
    searched form must still get right although no score sees it (see :func:`keeps_specials`)."""
    ranges = [domain.get(i, DEFAULT_RANGE[v.dtype]) for i, v in enumerate(inputs)]
    mids = [0.5 * lo + 0.5 * hi for lo, hi in ranges]  # (lo + hi overflows for (1e308, 1.7e308))
    specials = []
    for v in inputs:
        big = float(np.finfo(v.dtype).max)
        values = (-math.inf, math.inf, -big, big, -1e300, 1e300, -1e-300, 1e-300, 0.0, -0.0)
        # (1e300 does not exist in float32)
        specials.append([float(np.asarray(x, dtype=v.dtype)) for x in values if not math.isfinite(x) or abs(x) <= big])
    cols = []
    for i, sp in enumerate(specials):
        for value in sp:
            col = list(mids)
            col[i] = value
            cols.append(col)
    if len(inputs) <= PAIRED_INPUTS:
        for i in range(len(inputs)):
            for j in range(i + 1, len(inputs)):
                for vi in specials[i]:
                    for vj in specials[j]:
                        col = list(mids)
                        col[i], col[j] = vi, vj
                        cols.append(col)
    return np.array(cols).T


def keeps_specials(got: Sequence[np.ndarray], default: Sequence[np.ndarray], points: np.ndarray) -> bool:
    """Whether a candidate's values ``got`` at :func:`outside_points` keep what the default
    pipeline's values ``default`` get right: not NaN where the default is not, finite where the
    default is finite, and equal to the default where an input is infinite (a limit: tanh(x)/x - 1
    is -1 at -inf, and the search's (tanh(x) - x)/x is NaN there)."""
    at_inf = np.isinf(points).any(axis=0)
    for g, d in zip(got, default):
        g, d = np.asarray(g, dtype=np.float64), np.asarray(d, dtype=np.float64)
        known = ~np.isnan(d)
        if np.any(known & np.isnan(g)) or np.any(np.isfinite(d) & ~np.isfinite(g)):
            return False
        if np.any(known & at_inf & (g != d)):
            return False
    return True


# -- values and scores --------------------------------------------------------------------------------
def searchable(output: Node) -> str | None:
    """None when the search can evaluate ``output`` exactly, else why not."""
    ops = table(saturate=True)
    for n in toposort([output]):
        if n.op == "input":
            if n.dtype not in ("float32", "float64"):
                return f"the input {n.arg('name')} is {n.dtype}"
        elif n.op == "constant":
            if n.value.ndim:
                return "it holds an array constant"
        elif OPS[n.op].kind != "elemwise":
            return f"it holds a {OPS[n.op].kind} op ({n.op})"
        elif n.op not in ops:
            return f"the op {n.op} has no exact (mpmath) evaluation"
    return None


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


@dataclass
class Scored:
    outputs: tuple[Node, ...]
    errors: np.ndarray  # bits per point, averaged over the outputs, on train + validation points
    size: int
    text: str
    source: str = ""
    place: Node | None = None
    replacement: Node | None = None

    def key(self, sl: slice) -> tuple:
        return (float(np.mean(self.errors[sl])), self.size, self.text)


class Timeout(Exception):
    pass


class Context:
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
        self.scores: dict[tuple[Node, ...], Scored] = {}
        self.sympy_left = settings.sympy_calls
        self.timeouts = 0
        self.sympy_cache: dict[tuple[str, str], Any] = {}

    def score(self, outputs: Sequence[Node], source: str = "") -> Scored:
        from exprc.printing import pprint

        outputs = tuple(outputs)
        hit = self.scores.get(outputs)
        if hit is not None:
            return hit
        got = float_values(outputs, self.inputs, self.points, self.memo)
        errs = np.mean([bits_lost(g, r) for g, r in zip(got, self.reference)], axis=0)
        s = Scored(outputs, errs, len(toposort(outputs)), pprint(list(outputs)), source)
        self.scores[outputs] = s
        return s

    @contextlib.contextmanager
    def sympy_time(self) -> Iterator[None]:
        """Charge one SymPy call to the budget (a count), and time-box it as a safety net (SIGALRM,
        so only in the main thread; a cut call is counted in ``timeouts``)."""
        if self.sympy_left <= 0:
            raise Timeout
        self.sympy_left -= 1
        limit = self.settings.sympy_seconds
        main = threading.current_thread() is threading.main_thread()
        if main:
            def on_alarm(signum: int, frame: Any) -> None:
                self.timeouts += 1
                raise Timeout

            old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            if main:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)


def try_replacement(ctx: Context, current: Scored, place: Node, new: Node, source: str) -> Scored | None:
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


def refine_boundary(ctx: Context, gap: tuple[float, float], below: tuple[Node, ...], above: tuple[Node, ...],
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
