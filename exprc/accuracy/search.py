"""Accuracy search (``exprc.function(..., accuracy="search", domain=...)``): Herbie's loop on exprc graphs.

The default pipeline applies fixed stability rules.  The search *measures*: it samples the domain,
finds the subexpressions that lose bits, tries equivalent forms of them, and keeps a form only when
the whole output gets measurably closer to the exact result.  Read :func:`search` top-down:

1. **Sample** the domain deterministically (:func:`~exprc.accuracy.scoring.sample_domain`): a fixed seed, log-uniform
   magnitudes for ranges spanning orders of magnitude (both signs when ``lo < 0 < hi``), a quarter of
   the points uniform, and special points (0, ±tiny, ±1, the bounds).  A training set chooses forms, a
   separate validation set decides whether a change is accepted (Herbie's train/test split).
2. **Exact values** of every node with mpmath (:mod:`exprc.accuracy.exact`, one table keyed by the
   op names of :mod:`exprc.ops`), each point at doubling precision until every node's value rounded to float64
   agrees between two precisions; **float values** with the NumPy reference of each op
   (``exprc.ops.OPS[name].impl``) in the node's dtype.
3. **Localize**: the local error of a node is the bits lost when its op is applied to the correctly
   rounded exact values of its operands (Herbie).  The worst nodes, their parents and the user's whole
   formula are the places to rewrite.
4. **Candidates** for each place: SymPy transforms (``together``, ``cancel``, ``expand``, ``factor``,
   ``radsimp``, ``trigsimp``, ``expand_trig``, ``expand_log(force=True)``, ``simplify``, rewrites
   with ``exp``, erf/erfc reflections) and Taylor series around 0, ±∞ and a dyadic zero of the formula
   near its worst point (in h = x - x0: the Bernoulli KL divergence at p = 1/2) behind a branch
   ``where(|x - x0| < r, series, expr)`` with ``r`` chosen on the samples.  Every candidate goes
   through :func:`exprc.optimize`, so the stability rules apply to the new form too.
5. **Score** each candidate by the bits lost of the whole output against the exact reference of the
   user's formula (computed once); keep the best (ties: fewer nodes, then the printed text).
6. **Regimes**: two candidates joined by ``where(x < t, a, b)`` for one variable, ``t`` between two
   sorted sample points, chosen to minimise the training error; then the best such split with one
   side split again on any variable (``where(x < t, a, where(y < s, b, c))``: regimes over two
   variables, or a third segment of one).
7. **Never worse**: a change is accepted only when it lowers the mean bits on the validation points,
   does not raise their maximum, and no sampled point is more than 1 bit worse than the default
   pipeline (a NaN or Inf the default got right counts 64 bits, so those are kept).  Outside the
   domain, where no score looks, a candidate must keep what the default gets right: no NaN where
   it has none, finite where it is finite, its very values where an input is infinite
   (:func:`~exprc.accuracy.scoring.keeps_specials`).

The result (the chosen graph as :mod:`exprc.serialize` JSON, and the :class:`AccuracyReport`) is
cached on disk through :func:`exprc.cache.load`, keyed by the serialized input graph, the domain, the
:class:`Settings`, the excluded rules, the names of the registered rules, :data:`ALGORITHM` and the exprc
version: another process gets it without
searching.  Everything iterates in sorted or graph order with a fixed seed, so the same graph and
domain give the same result in every process.  SymPy work is bounded by a count of calls
(:attr:`Settings.sympy_calls`); a time box per call (:attr:`Settings.sympy_seconds`, generous) only
guards against a runaway call, and a search where it fired is reported (``timeouts``) and not cached.

Scope: elementwise float graphs with scalar constants.  An output that holds reductions has the
elementwise formulas its reductions take searched, each as an output of its own (``sum(f(x))``: f's
search), and is then optimized as a whole; one that holds a shape operation or an op without an
mpmath row is left as the default pipeline made it (and listed under ``skipped`` in the report).
Shared variables and ``updates`` are not supported with the search.

This module is the driver (the entry point with its cache, rounds, localization, acceptance);
:mod:`exprc.accuracy.scoring` samples and scores, :mod:`exprc.accuracy.candidates` proposes forms,
:mod:`exprc.accuracy.exact` holds the exact evaluation.  ``exprc.search`` is this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exprc.accuracy.candidates import candidates, regimes
from exprc.accuracy.exact import exact_values
from exprc.accuracy.measure import bits_lost
from exprc.accuracy.scoring import (
    DEFAULT_RANGE,
    Context,
    Scored,
    Settings,
    draw_points,
    float_values,
    keeps_specials,
    outside_points,
    sample_domain,
    searchable,
    try_replacement,
)
from exprc.config import Config
from exprc.errors import DomainError, DTypeError
from exprc.graph import Node, substitute, toposort
from exprc.ops import OPS
from exprc.pipeline import FunctionGraph, optimize

MODES = ("default", "search")

#: Version of the search algorithm, part of the cache key: bump it when a change alters what it chooses.
ALGORITHM = "16"  # (16: pairs of special values outside the domain; 15: rounding errors (two_sum_err) are not localized; 14: forms keep the default's values outside the domain; 13: nested regimes; 12: reductions' operands; 11: series at a dyadic cancellation point; rare guards (invert) are searchable)

#: Never worse: no sampled point may lose more than 1 bit against the default pipeline, except that a
#: point may go up to this many bits (3 ulps): a default that is exact at x = 1 by luck must not veto a
#: form that fixes 50 bits elsewhere.
SLACK_BITS = 2.0

#: Per-process counters (tests read them): searches run, cache hits.
STATS = {"searches": 0, "cache_hits": 0}


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
    from exprc.rewrite.core import REGISTRY, load_rules  # the rule set decides the default and every form

    load_rules()

    rules = hashlib.sha256(",".join(sorted(REGISTRY)).encode()).hexdigest()[:16]
    # (the default graph too: a rule that changes what it makes under the same name — a new radius, a new
    # form — changes the search's starting point, and a stored result could be worse than the new default)
    start = hashlib.sha256(dumps(FunctionGraph(tuple(inputs), tuple(default.outputs))).encode()).hexdigest()[:16]
    parts = {"domain": json.dumps([list(d) for d in domain]), "settings": settings.key(), "algorithm": ALGORITHM,
             "exclude": ",".join(sorted(cfg.exclude)), "rules": rules, "default": start, "kind": "accuracy-search"}
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


class _Uncached(Exception):
    """The search's result must not be stored (see :attr:`AccuracyReport.timeouts`)."""


def _search(inputs: list[Node], outputs: list[Node], default: FunctionGraph, domain: dict, settings: Settings,
            cfg: Config) -> tuple[FunctionGraph, AccuracyReport]:
    """The search itself (no cache): see the module docstring."""
    from exprc.printing import pprint

    STATS["searches"] += 1
    t0 = time.perf_counter()
    report = AccuracyReport(points=settings.points, validation=settings.validation)
    final = list(default.outputs)
    todo = []
    summed: dict[int, list[Node]] = {}  # output -> the elementwise formulas its reductions take
    for i, o in enumerate(outputs):
        why = searchable(o) or searchable(default.outputs[i])
        producers = _reduced_producers(o) if why else []
        if producers:
            summed[i] = producers
        elif why:
            report.skipped.append(f"output {i} ({_clip(pprint(o), 60)}): {why}")
        else:
            todo.append(i)
    for i, producers in summed.items():
        final[i] = _search_producers(inputs, outputs[i], default.outputs[i], producers, domain, settings, cfg,
                                     report)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return (FunctionGraph(default.inputs, tuple(final), default.trace) if summed else default), report
    # 1. points, 2. the exact reference of the user's formulas (computed once)
    train = draw_points(inputs, domain, settings.points, settings.seed)
    valid = draw_points(inputs, domain, settings.validation, settings.seed + 1)
    points = np.concatenate([train, valid], axis=1)
    user = [outputs[i] for i in todo]
    exact = exact_values(toposort(user), inputs, points)
    ctx = Context(inputs, user, [exact[o] for o in user], points, train.shape[1], settings, cfg)
    base = ctx.score([default.outputs[i] for i in todo], "default")
    outside = outside_points(inputs, domain)
    outside_memo: dict[Node, np.ndarray] = {}
    outside_default = float_values(base.outputs, inputs, outside, outside_memo)

    def keeps(cand: Scored) -> bool:
        return keeps_specials(float_values(cand.outputs, inputs, outside, outside_memo), outside_default, outside)

    before = (report.before_mean, report.before_max)  # (a reduction's operands searched above: the worst)
    report.before_mean, report.before_max = (max(a, b) for a, b in zip(before, _stats(base.errors[ctx.valid])))
    current = base
    if np.max(base.errors) > SLACK_BITS:  # a formula the default already gets right is not searched
        for _ in range(settings.rounds):
            change = _round_once(ctx, current, base, user, report, keeps)
            if change is None:
                break
            current = change
            if np.max(current.errors[ctx.train]) <= 1.0:  # nothing left to win
                break
    for i, o in zip(todo, current.outputs):
        final[i] = o
    after = (report.after_mean, report.after_max)
    report.after_mean, report.after_max = (max(a, b) for a, b in zip(after, _stats(current.errors[ctx.valid])))
    report.seconds = round(time.perf_counter() - t0, 3)
    report.sympy_calls = settings.sympy_calls - ctx.sympy_left
    report.timeouts = ctx.timeouts
    return FunctionGraph(default.inputs, tuple(final), default.trace), report


#: At most this many reductions' operands of one output are searched (each is a search of its own).
MAX_PRODUCERS = 4


def _reduced_producers(output: Node) -> list[Node]:
    """The operands of ``output``'s reductions that the search can take as formulas of their own: an
    elementwise graph over the inputs (``sum(x*cos(x) - sin(x))``, ``mean(x*cos(x) - sin(x))``),
    not an input or a constant; innermost first, at most MAX_PRODUCERS."""
    found: list[Node] = []
    for n in toposort([output]):
        if OPS[n.op].kind == "reduce" and n.inputs:
            p = n.inputs[0]
            if p.op not in ("input", "constant") and p not in found and searchable(p) is None:
                found.append(p)
    return found[:MAX_PRODUCERS]


def _search_producers(inputs: list[Node], output: Node, default: Node, producers: list[Node], domain: dict,
                      settings: Settings, cfg: Config, report: AccuracyReport) -> Node:
    """``output`` (whose default form is ``default``) with the formulas its reductions take searched one
    by one, each against its own default form on points drawn for the inputs (a reduction adds values
    that are each a function of the inputs at one point), then optimized as a whole.  The changes go
    to ``report`` marked with the reduction's operand; its bits before and after are the operands'
    (the worst of them), pointwise."""
    from exprc.printing import pprint

    mapping: dict[Node, Node] = {}
    for p in producers:
        own = optimize(FunctionGraph(tuple(inputs), (p,)), cfg)
        found, sub = _search(inputs, [p], own, domain, settings, cfg)
        report.sympy_calls += sub.sympy_calls
        report.timeouts += sub.timeouts
        report.searched += sub.searched
        for stat in ("before_mean", "before_max", "after_mean", "after_max"):
            setattr(report, stat, max(getattr(report, stat), getattr(sub, stat)))
        if sub.changes and found.outputs[0] is not own.outputs[0]:
            mapping[p] = found.outputs[0]
            for c in sub.changes:
                report.changes.append(dataclasses.replace(c, source=f"{c.source} (the operand of a reduction: "
                                                                     f"{_clip(pprint(p), 60)})"))
    if not mapping:
        report.skipped.append(f"({_clip(pprint(output), 60)}): it holds reduce ops; their operands were searched "
                              "as formulas of their own, and none changed")
        return default
    return optimize(FunctionGraph(tuple(inputs), tuple(substitute([output], mapping))), cfg).outputs[0]


def _stats(errs: np.ndarray) -> tuple[float, float]:
    return round(float(np.mean(errs)), 3), round(float(np.max(errs)), 3)


def _round_once(ctx: Context, current: Scored, base: Scored, user: list[Node],
                report: AccuracyReport, keeps: Callable[[Scored], bool]) -> Scored | None:
    """One localize -> candidates -> regimes -> accept round; the accepted candidate or None
    (``keeps``: whether a candidate keeps the default's values outside the domain)."""
    from exprc.printing import pprint

    places = _localize(ctx, current, report)
    # The user's own formula is always a place too: SymPy works best on what the user wrote.
    places += [(o, cur) for o, cur in zip(user, current.outputs) if (o, cur) not in places]
    pool: list[Scored] = [current]
    for form_of, place in places:
        for source, new in candidates(ctx, form_of, place, current):
            cand = try_replacement(ctx, current, place, new, source)
            if cand is not None:
                pool.append(cand)
    pool += regimes(ctx, pool)
    ranked = sorted(pool, key=lambda s: s.key(ctx.train))
    cur_mean = float(np.mean(current.errors[ctx.valid]))
    cur_max = float(np.max(current.errors[ctx.valid]))
    for cand in ranked[:8]:
        if cand is current or cand.key(ctx.train) >= current.key(ctx.train):
            break
        v = cand.errors[ctx.valid]
        if float(np.mean(v)) < cur_mean - 0.01 and float(np.max(v)) <= cur_max + 1e-9 \
                and np.all(cand.errors <= np.maximum(base.errors + 1.0, SLACK_BITS)) and keeps(cand):
            place = cand.place
            old = pprint(place) if place is not None else current.text
            new = pprint(optimize([cand.replacement], ctx.cfg).outputs[0]) if cand.replacement is not None \
                else cand.text
            report.changes.append(Change(old, new, cand.source, *_stats(current.errors[ctx.valid]),
                                         *_stats(cand.errors[ctx.valid])))
            return cand
    return None


def _localize(ctx: Context, current: Scored, report: AccuracyReport) -> list[tuple[Node, Node]]:
    """(subexpression, subexpression) pairs to rewrite: the worst nodes by local error and their parents."""
    from exprc.printing import pprint

    order = toposort(current.outputs)
    pts = ctx.points[:, ctx.train]
    exact = exact_values(order, ctx.inputs, pts)
    local: list[tuple[float, float, str, Node]] = []
    with np.errstate(all="ignore"):
        for n in order:
            if not n.inputs or n.dtype not in ("float32", "float64") or n.op in ("two_sum_err", "two_prod_err"):
                continue  # (a rounding error: 0 in exact arithmetic by design, nothing to rewrite)
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


__all__ = ["DEFAULT_RANGE", "MODES", "STATS", "AccuracyReport", "Change", "Settings", "check_options",
           "exact_values", "float_values", "sample_domain", "search", "searchable"]
