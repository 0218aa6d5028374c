"""The accuracy search (exprc.search): numbers against mpmath, determinism, the disk cache, the report, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc import search
from exprc.accuracy import bits_lost, candidates, reference, sample, scoring
from exprc.errors import DomainError, DTypeError
from exprc.graph import toposort

ROOT = Path(__file__).resolve().parent.parent
#: Few points keep the tests fast; the bench uses the defaults (256 + 256).
FEW = search.Settings(points=48, validation=48)


def _bits(f: exprc.Function, formula, pts: list[np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"):
        got = f(*pts)
    return bits_lost(got, reference(formula, pts))


def _points(spec: tuple, n: int = 150, seed: int = 1234) -> np.ndarray:
    """Test points drawn independently of the search's own samples."""
    return sample(spec, n, np.random.default_rng(seed))


# Formulas the default rules leave inaccurate and the search fixes: (formula, search domain, test range).
# (tan(x) - sin(x) was the first example, then 1 - x/sin(x), 1/x - 1/tan(x), tanh(x)/x - 1, arctan(x) - x and
# 1/sqrt(x) - 1/sqrt(x + 1), and the Bernoulli KL divergence from 1/2: the default rules series_difference,
# series_quotient, the long series branch of taylor_cancellation, power_difference and bernoulli_kl fix
# those now.)
FIXED_BY_SEARCH = {
    "x_cos_minus_sin": (lambda m, x: x * m.cos(x) - m.sin(x), (-1.0, 1.0), ("slog", 1e-9, 1.0)),
    "one_minus_x_exp": (lambda m, x: (1 - x) * m.exp(x) - 1, (-1.0, 1.0), ("slog", 1e-9, 1.0)),
    "sin_cos_minus_x": (lambda m, x: m.sin(x) * m.cos(x) - x, (-1.0, 1.0), ("slog", 1e-9, 1.0)),
    # 0/0 at x = 0: NaN there, as the formula gives
    "x_cos_minus_sin_over_x3": (lambda m, x: (x * m.cos(x) - m.sin(x)) / (x * x * x), (-1.0, 1.0),
                                ("slog", 1e-9, 1.0)),
}


@pytest.mark.parametrize("name", sorted(FIXED_BY_SEARCH))
def test_search_fixes_what_the_default_misses(name: str) -> None:
    formula, dom, spec = FIXED_BY_SEARCH[name]
    x = exprc.vector("x")
    default = exprc.function([x], formula(exprc, x), backend="numpy")
    found = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: dom})
    pts = [_points(spec)]
    before, after = _bits(default, formula, pts), _bits(found, formula, pts)
    assert before.max() > 10, f"the default already fixes {name}: pick another formula"
    assert after.max() <= 4.0, (name, after.max(), exprc.pprint(found.graph.outputs[0]))
    assert np.all(after <= np.maximum(before + 1.0, search.SLACK_BITS))  # never worse than the default
    assert found.accuracy_report.changes


def test_search_result_compiles_to_c_with_the_same_accuracy() -> None:
    formula, dom, spec = FIXED_BY_SEARCH["x_cos_minus_sin"]
    x = exprc.vector("x")
    f = exprc.function([x], formula(exprc, x), accuracy=FEW, domain={x: dom})
    assert _bits(f, formula, [_points(spec)]).max() <= 4.0


def test_series_branch_keeps_nan_where_the_formula_is_undefined() -> None:
    # (x cos(x) - sin(x)) / x**3 at x = 0 is 0/0: NaN exactly, and the search must not replace it by the limit.
    formula, dom, _ = FIXED_BY_SEARCH["x_cos_minus_sin_over_x3"]
    x = exprc.vector("x")
    f = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: dom})
    pts = np.array([0.0, 1e-300, 1e-8, 0.3])
    ref = reference(formula, [pts])
    with np.errstate(all="ignore"):
        got = f(pts)
    assert np.isnan(ref[0]) and np.isnan(got[0])
    assert bits_lost(got, ref).max() <= 4.0


def test_a_searched_form_keeps_the_defaults_values_outside_the_domain() -> None:
    # Inside (-1, 1) the search once preferred (tanh(x) - x)/x to the default's tanh(x)/x - 1: NaN at
    # +-inf (inf/inf) where the formula's limit is -1.  No score sees outside the domain, so a candidate
    # must keep the default's values there: not NaN where it is not, finite where it is finite, the
    # very value at an infinite input.
    x = exprc.vector("x")
    expr = exprc.tanh(x) / x - 1
    default = exprc.function([x], expr)
    f = exprc.function([x], expr, accuracy="search", domain={x: (-1.0, 1.0)})
    pts = np.array([-np.inf, np.inf, -1e300, 1e300, -1.7976931348623157e308, 5.0, -7.5, 0.3])
    with np.errstate(all="ignore"):
        got, want = f(pts), default(pts)
    np.testing.assert_array_equal(got[:5], want[:5])
    assert np.isfinite(got).all()
    assert bits_lost(got, reference(lambda m, x: m.tanh(x) / x - 1, [pts])).max() <= 4.0
    # two inputs off their domains at once: a = -inf with d = -1e-300 (d's domain is positive), where a
    # series in d the search once kept was NaN and the default is -inf
    a, d = exprc.vector("a"), exprc.vector("d")
    expr = exprc.log(exprc.exp(a) - exprc.exp(a - d))
    f = exprc.function([a, d], expr, accuracy="search", domain={a: (-800.0, 800.0), d: (1e-10, 50.0)})
    pa, pd = np.array([-np.inf, -np.inf, -1e300]), np.array([-3.853853147929089e-257, -1e-300, -1e-300])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(f(pa, pd), exprc.function([a, d], expr)(pa, pd))


def test_keeps_specials() -> None:
    x, y = exprc.vector("x"), exprc.vector("y")
    pts = scoring.outside_points([x, y], {0: (-1.0, 1.0), 1: (2.0, 3.0)})
    assert pts.shape == (2, 20 + 100)  # (each input alone, then every pair of special values)
    assert np.isinf(pts[:, :20]).sum() == 4
    assert np.all(pts[1, :10] == 2.5) and np.all(pts[0, 10:20] == 0.0)  # (the other input at its middle)
    assert np.isinf(pts[:, 20:]).all(axis=0).sum() == 4  # (+-inf with +-inf)
    one = np.ones(pts.shape[1])
    assert scoring.keeps_specials([one], [one], pts)
    nan_at_inf, inf_at_big, other_at_inf = one.copy(), one.copy(), one.copy()
    nan_at_inf[0], inf_at_big[2], other_at_inf[1] = np.nan, np.inf, 2.0
    for bad in (nan_at_inf, inf_at_big, other_at_inf):
        assert not scoring.keeps_specials([bad], [one], pts)
    assert scoring.keeps_specials([one], [nan_at_inf], pts)  # (a NaN the default gives binds nothing)


def test_rounding_errors_are_no_place_to_rewrite() -> None:
    # two_sum_err is 0 in exact arithmetic by design: localization must not rank it (it took one of
    # the three places per round at ~60 bits)
    a, b = exprc.vector("a"), exprc.vector("b")
    f = exprc.function([a, b], exprc.exp(a) / exprc.exp(b) - 1, backend="numpy",
                       accuracy=search.Settings(points=64, validation=64, rounds=1, sympy_calls=5),
                       config=exprc.Config(cache=False))
    assert not any(text.startswith("two_sum_err(") for text, _, _ in f.accuracy_report.searched)
    x = exprc.vector("x")
    pts = scoring.outside_points([x], {0: (1e308, 1.7e308)})  # (lo + hi overflows)
    assert np.isinf(pts).sum() == 2


def test_formula_without_error_keeps_the_default_graph() -> None:
    x, y = exprc.vector("x"), exprc.vector("y")
    expr = x * y + 2.0
    default = exprc.function([x, y], expr, backend="numpy")
    before = search.STATS["searches"]
    f = exprc.function([x, y], expr, backend="numpy", accuracy=FEW, domain={x: (-10.0, 10.0), y: (1.0, 2.0)},
                       config=exprc.Config(cache=False))
    assert search.STATS["searches"] == before + 1
    assert f.graph.outputs == default.graph.outputs
    assert f.accuracy_report is not None and not f.accuracy_report.changes
    assert f.accuracy_report.after_max <= search.SLACK_BITS  # two roundings: within 3 ulps


def test_never_worse_on_a_formula_the_rules_already_fix() -> None:
    formula = (lambda m, x: m.log(1 + x))
    x = exprc.vector("x")
    default = exprc.function([x], formula(exprc, x), backend="numpy")
    f = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: (-0.5, 0.5)})
    pts = [_points(("slog", 1e-18, 0.5))]
    before, after = _bits(default, formula, pts), _bits(f, formula, pts)
    assert np.all(after <= before + 1.0)
    assert after.max() <= 4.0
    assert f.graph.outputs == default.graph.outputs  # log1p is already the best form: nothing to change


def test_default_mode_has_no_report() -> None:
    x = exprc.vector("x")
    assert exprc.function([x], exprc.sin(x), backend="numpy").accuracy_report is None


def test_report_contents() -> None:
    formula, dom, _ = FIXED_BY_SEARCH["x_cos_minus_sin"]
    x = exprc.vector("x")
    f = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: dom})
    r = f.accuracy_report
    assert r.points == FEW.points and r.validation == FEW.validation
    assert r.before_mean > r.after_mean + 10 and r.after_max < r.before_max
    first = r.changes[0]
    assert first.original == "x * cos(x) - sin(x)"
    assert first.winner != first.original
    assert first.source.startswith(("sympy.", "series", "taylor", "regime"))
    assert first.after_mean < first.before_mean and first.after_max <= first.before_max
    for a, b in zip(r.changes, r.changes[1:]):  # each change starts where the previous one ended
        assert (b.before_mean, b.before_max) == (a.after_mean, a.after_max)
    assert r.changes[-1].after_mean == r.after_mean
    text = str(r)
    assert "accuracy search" in text and "was: x * cos(x) - sin(x)" in text and first.source in text
    assert r.searched and r.searched[0][1] > 1.0  # the localized subexpression lost more than a bit
    # The report's "after" numbers are the compiled graph's: check them on the report's own terms.
    assert json.loads(json.dumps(r.to_dict()))["changes"][0]["winner"] == first.winner


def test_a_reduction_whose_operand_is_already_right_keeps_the_default() -> None:
    x = exprc.vector("x")
    expr = exprc.log(exprc.sum(exprc.exp(x)))
    default = exprc.function([x], expr, backend="numpy")
    f = exprc.function([x], expr, backend="numpy", accuracy=FEW, config=exprc.Config(cache=False))
    assert f.graph.outputs == default.graph.outputs
    assert "reduce" in f.accuracy_report.skipped[0] and not f.accuracy_report.changes


def test_the_operand_of_a_reduction_is_searched() -> None:
    """sum(x cos(x) - sin(x)) over rows: the summed formula is one the default misses (x ~ 1e-9: all of
    its bits) and the search fixes; the reduction then adds fixed values.  Rows of one magnitude, so
    that no large term hides a small one's error.  (sqrt(1 + x) - 1 - x/2, used here before, the
    default fixes now: sqrt_taylor_remainder.)"""
    formula = lambda m, x: m.sum(x * m.cos(x) - m.sin(x), axis=-1)
    x = exprc.matrix("x")
    default = exprc.function([x], formula(exprc, x), backend="numpy")
    found = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: (-1.0, 1.0)})
    rng = np.random.default_rng(9)
    scale = 10 ** rng.uniform(-9, np.log10(0.8), 60)
    pts = scale[:, None] * rng.uniform(0.5, 1.0, (60, 7)) * rng.choice([-1.0, 1.0], (60, 1))
    ref = reference(formula, [pts], rows=True)
    before, after = bits_lost(default(pts), ref), bits_lost(found(pts), ref)
    assert before.max() > 20 and after.max() <= 4, (before.max(), after.max())
    report = found.accuracy_report
    assert report.changes and "operand of a reduction" in report.changes[0].source
    assert report.after_max <= 4 < report.before_max


def test_default_domain_is_documented_range() -> None:
    # No domain: the input is sampled over DEFAULT_RANGE, all magnitudes 1e-300 .. 1e300, both signs.
    rng = np.random.default_rng(0)
    pts = search.sample_domain(*search.DEFAULT_RANGE["float64"], 400, rng)
    assert pts.min() < -1e200 and pts.max() > 1e200 and np.abs(pts).min() < 1e-200
    assert np.any(pts < 0) and np.any(pts > 0)
    narrow = search.sample_domain(2.0, 3.0, 100, rng)  # a narrow range: uniform, inside the bounds
    assert narrow.min() >= 2.0 and narrow.max() <= 3.0


def test_exact_values_match_mpmath_reference() -> None:
    x = exprc.vector("x")
    expr = (1 - exprc.cos(x)) / (x * x)
    pts = np.array([[1e-9, -3e-5, 0.5, 2.0, 1e-200]])
    exact = search.exact_values(toposort([expr]), [x], pts)
    ref = reference(lambda m, x: (1 - m.cos(x)) / (x * x), [pts[0]])
    assert bits_lost(exact[expr], ref).max() == 0.0


def test_search_float32() -> None:
    formula, dom, spec = FIXED_BY_SEARCH["x_cos_minus_sin"]
    x = exprc.vector("x", dtype="float32")
    default = exprc.function([x], formula(exprc, x), backend="numpy")
    f = exprc.function([x], formula(exprc, x), backend="numpy", accuracy=FEW, domain={x: dom})
    pts = _points(spec).astype(np.float32)
    ref = reference(formula, [pts.astype(np.float64)]).astype(np.float32)
    with np.errstate(all="ignore"):
        before = bits_lost(default(pts), ref)
        after = bits_lost(f(pts), ref)
    assert f(pts).dtype == np.float32
    assert before.max() > 10 and after.max() <= 4.0


# -- errors -----------------------------------------------------------------------------------------------------
def test_errors() -> None:
    x, y = exprc.vector("x"), exprc.vector("y")
    n = exprc.vector("n", dtype="int64")
    with pytest.raises(DomainError, match="accuracy: unknown mode 'fast'"):
        exprc.function([x], x + 1, accuracy="fast")
    with pytest.raises(DomainError, match="domain: .*'y'.* is not one of the function's inputs"):
        exprc.function([x], x + 1, accuracy="search", domain={y: (0.0, 1.0)})
    with pytest.raises(DomainError, match=r"domain\[x\]: expected lo < hi"):
        exprc.function([x], x + 1, accuracy="search", domain={x: (1.0, 1.0)})
    with pytest.raises(DomainError, match=r"domain\[x\]: bounds must be finite"):
        exprc.function([x], x + 1, accuracy="search", domain={x: (0.0, math.inf)})
    with pytest.raises(DomainError, match="only used by accuracy"):
        exprc.function([x], x + 1, domain={x: (0.0, 1.0)})
    with pytest.raises(DTypeError, match="domain: the input n is int64"):
        exprc.function([n], n + 1, accuracy="search", domain={n: (0.0, 9.0)})
    with pytest.raises(DTypeError, match="the input n is int64"):
        exprc.function([x, n], x + n, accuracy="search")
    with pytest.raises(ValueError):  # DomainError is a ValueError too
        exprc.function([x], x + 1, accuracy="search", domain={x: (2.0, 1.0)})


# -- determinism and the disk cache, across processes --------------------------------------------------------
_SCRIPT = textwrap.dedent("""
    import json, sys
    import exprc
    from exprc import search
    x = exprc.vector("x")
    f = exprc.function([x], x * exprc.cos(x) - exprc.sin(x), backend="numpy",
                       accuracy=search.Settings(points=48, validation=48), domain={x: (-1.0, 1.0)})
    print(json.dumps({"graph": exprc.pprint(f.graph.outputs[0]), "stats": search.STATS,
                      "cached": f.accuracy_report.cached, "changes": len(f.accuracy_report.changes)}))
""")


def _run(cache_dir: Path, hashseed: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), EXPRC_CACHE_DIR=str(cache_dir), PYTHONHASHSEED=hashseed)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deterministic_across_processes_and_cached_on_disk(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", "1")
    again = _run(tmp_path / "a", "3")  # the same cache, another hash seed: loaded, not searched
    assert first["stats"]["searches"] == 1
    assert first["changes"] >= 1
    assert again["stats"] == {"searches": 0, "cache_hits": 1} and again["cached"]
    assert again["graph"] == first["graph"]
    entries = [p for p in (tmp_path / "a").glob("*/search-*") if p.is_dir()]
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} >= {"meta.json", "search.json",
                                                                             "search.in.json"}
    # Searched again in this process (cache off; pytest's own hash seed differs from "1"): the same graph.
    x = exprc.vector("x")
    before = search.STATS["searches"]
    f = exprc.function([x], x * exprc.cos(x) - exprc.sin(x), backend="numpy", accuracy=FEW, domain={x: (-1.0, 1.0)},
                       config=exprc.Config(cache=False))
    assert search.STATS["searches"] == before + 1
    assert exprc.pprint(f.graph.outputs[0]) == first["graph"]


def test_memo_key_includes_accuracy_and_domain() -> None:
    x = exprc.vector("x")
    expr = x * exprc.cos(x) - exprc.sin(x)
    plain = exprc.function([x], expr, backend="numpy")
    s1 = exprc.function([x], expr, backend="numpy", accuracy=FEW, domain={x: (-1.0, 1.0)})
    s2 = exprc.function([x], expr, backend="numpy", accuracy=FEW, domain={x: (-1.0, 1.0)})
    assert plain.accuracy_report is None and s1.accuracy_report is not None
    assert s2.graph.outputs == s1.graph.outputs and s2.accuracy_report is s1.accuracy_report
    assert s1.graph.outputs != plain.graph.outputs


def test_sympy_work_is_a_count_and_time_boxed_searches_are_not_cached() -> None:
    from exprc.function import clear_memo

    x = exprc.vector("x")
    expr = x * exprc.cos(x) - exprc.sin(x)
    dom = {x: (-1.0, 1.0)}
    full = exprc.function([x], expr, backend="numpy", accuracy=FEW, domain=dom)
    assert 0 < full.accuracy_report.sympy_calls <= FEW.sympy_calls and full.accuracy_report.timeouts == 0
    none = exprc.function([x], expr, backend="numpy", domain=dom,
                          accuracy=search.Settings(points=48, validation=48, sympy_calls=0))
    assert none.accuracy_report.sympy_calls == 0  # the budget is a count: the same on any machine
    assert not any(c.source.startswith(("series", "taylor", "sympy")) for c in none.accuracy_report.changes)
    boxed = search.Settings(points=48, validation=48, sympy_seconds=1e-6)  # every SymPy call is cut
    for _ in range(2):
        clear_memo()
        before = search.STATS["searches"]
        g = exprc.function([x], expr, backend="numpy", accuracy=boxed, domain=dom)
        assert g.accuracy_report.timeouts > 0 and not g.accuracy_report.cached
        assert search.STATS["searches"] == before + 1  # searched again: a time-boxed result is not stored


def test_numeric_taylor_coefficients_match_the_series() -> None:
    import sympy as sp

    ctx = scoring.Context([], [], [], np.zeros((1, 2)), 1, search.Settings(), exprc.Config())
    v = sp.Symbol("v0", real=True)
    atan = candidates.taylor_coefficients(ctx, sp.atan(v) - v, v, 40)
    want = [0.0, 0.0] + [0.0 if k % 2 == 0 else (-1) ** ((k - 1) // 2) / k for k in range(2, 41)]
    assert atan == pytest.approx(want, rel=1e-15, abs=0.0)  # zeros exactly zero: no stray low-order terms
    # tanh(x)/x has a removable singularity at 0: the circle never touches it.
    th = candidates.taylor_coefficients(ctx, sp.tanh(v) / v, v, 12)
    exact = sp.Poly(sp.series(sp.tanh(v) / v, v, 0, 13).removeO(), v).all_coeffs()[::-1]
    assert th == pytest.approx([float(c) for c in exact] + [0.0] * (13 - len(exact)), rel=1e-15, abs=0.0)
    assert candidates.taylor_coefficients(ctx, sp.sqrt(v), v, 8) is None  # a branch point at 0: no Taylor series


def test_log_transforms_give_forms_the_rules_fix() -> None:
    # The SymPy candidates that hand the default rules a log of a quotient near 1.
    import sympy as sp

    v = sp.Symbol("v0", real=True)
    forms = dict(candidates.transforms())
    combined = forms["sympy.logcombine"](sp.log(v) - sp.log(1 - v))
    assert sp.simplify(combined - sp.log(v / (1 - v))) == 0 and combined.func == sp.log
    near = forms["sympy.log(u)->log1p(cancel(u-1))"](sp.log(v / (1 - v)))
    assert near.func.__name__ == "log1p" and sp.simplify(near.args[0] - (2 * v - 1) / (1 - v)) == 0
    p = exprc.vector("p")
    rebuilt = exprc.optimize(exprc.from_sympy(near, {v: p})).outputs[0]
    x = np.linspace(0.499, 0.501, 101)
    got = exprc.function([p], rebuilt, backend="numpy")(x)
    assert bits_lost(got, reference(lambda m, p: m.log(p / (1 - p)), [x])).max() <= 2.0


def test_plain_exact_table_saturates_an_exp_of_an_exp():
    """exp(exp(710)) has no float value; mpmath would need 2**1000 bits of ln 2 for the next exp (the
    fuzzer's NaN check hung there, seed ~100210).  The plain table saturates beyond 2**1100 and keeps
    what a float can bring back (log(exp(1e300)) is 1e300)."""
    import time

    from exprc.accuracy.exact import exact_values

    x = exprc.vector("x")
    e, back = exprc.softplus(exprc.exp(exprc.exp(x))), exprc.log(exprc.exp(x))
    order = exprc.graph.toposort([e, back])
    t = time.perf_counter()
    r = exact_values(order, [x], np.array([[710.0, 1.0, -800.0, 1e300]]), saturate=False)
    assert time.perf_counter() - t < 60  # (a hang, not a timing claim: it never returned)
    np.testing.assert_array_equal(r[e][[0, 3]], [np.inf, np.inf])
    np.testing.assert_allclose(r[e][1:3], np.log1p(np.exp(np.exp(np.exp([1.0, -800.0])))), rtol=1e-15)
    np.testing.assert_array_equal(r[back], [710.0, 1.0, -800.0, 1e300])


def test_stored_search_is_keyed_by_the_default_graph(tmp_path: Path) -> None:
    """A stored search starts from the default graph: when the rules make another default under the same
    rule names (a new radius, a new form), the stored result must not be loaded (it could be worse than
    the new default)."""
    from exprc.accuracy import search as searching
    from exprc.function import clear_memo

    x = exprc.vector("x")
    formula, dom, _ = FIXED_BY_SEARCH["x_cos_minus_sin"]
    expr = formula(exprc, x)
    from exprc.pipeline import FunctionGraph

    cfg = exprc.Config(cache_dir=str(tmp_path))
    _, domain = searching.check_options(FEW, {x: dom}, [x])
    default = exprc.optimize(FunctionGraph((x,), (expr,)), cfg)
    searching.search([x], [expr], default, domain, FEW, cfg)
    hits = search.STATS["cache_hits"]
    clear_memo()
    _, report = searching.search([x], [expr], default, domain, FEW, cfg)
    assert search.STATS["cache_hits"] == hits + 1 and report.cached
    other = exprc.optimize(FunctionGraph((x,), (expr * 1.0 + 0.0,)), cfg)  # the same formula, another graph
    assert other.outputs != default.outputs
    before = search.STATS["searches"]
    _, report = searching.search([x], [expr], other, domain, FEW, cfg)
    assert not report.cached and search.STATS["searches"] == before + 1


def test_series_at_a_cancellation_point_only_where_it_is_dyadic() -> None:
    """The search expands at a zero of the formula near its worst point (a double zero too: KL at
    p = 1/2), in h = x - x0, which is exact near x0 only when x0 is a float: log(3x) cancels at 1/3,
    which is not, and is left to the other candidates."""
    import sympy as sp

    s = sp.Symbol("v0", real=True)
    x = np.linspace(0.3, 0.7, 41)
    for e, errs, want in [(s * sp.log(2 * s) + (1 - s) * sp.log(2 - 2 * s), np.abs(x - 0.5) < 0.02, [sp.Rational(1, 2)]),
                          (sp.log(2 * s), np.abs(x - 0.5) < 0.02, [sp.Rational(1, 2)]),
                          (sp.log(3 * s), np.abs(x - 1 / 3) < 0.02, []),
                          (sp.exp(s), np.abs(x - 0.5) < 0.02, [])]:
        ctx = type("Ctx", (), {"train": slice(None), "sympy_time": lambda self: __import__("contextlib").nullcontext()})()
        current = type("Cur", (), {"errors": np.where(errs, 30.0, 0.0)})()
        assert candidates._cancellation_points(ctx, e, s, x, current) == want, e


def test_regimes_over_two_variables():
    """candidates.regimes splits a side of its best split again, on another variable: the exact result
    is 2 in the corner x >= 0, y >= 0.5 and 1 elsewhere, the candidates are the constants 1 and 2.  The
    best split on one variable (y < 0.5) is still wrong on the points with x < 0 above it; splitting
    that side on x leaves only those between y = 0.5 and the first threshold (which the mixed side
    pushed up: greedy, as Herbie's regimes are)."""
    x, y = exprc.vector("x"), exprc.vector("y")
    pts = np.random.default_rng(0).uniform(-1, 1, (2, 800))
    ref = np.where((pts[0] >= 0) & (pts[1] >= 0.5), 2.0, 1.0)
    ctx = scoring.Context([x, y], [x], [ref], pts, 400, search.Settings(), exprc.Config())
    one, two = ctx.score([x * 0.0 + 1.0]), ctx.score([y * 0.0 + 2.0])
    out = candidates.regimes(ctx, [one, two])
    single = [s for s in out if s.source.startswith("regime on")]
    assert single and all(s.source.startswith(("regime on", "regimes:")) for s in out)
    best_single = min(single, key=lambda s: s.key(ctx.train))
    best = min(out, key=lambda s: s.key(ctx.train))

    def wrong(s, sl):
        return float(np.mean(s.errors[sl] > 1))  # the share of points given the wrong constant

    assert best.source.startswith("regimes: x < ") and "where y >= " in best.source, best.source
    assert wrong(best_single, ctx.train) > 0.08 and wrong(best, ctx.train) < 0.03
    assert wrong(best, ctx.valid) < 0.04
    f = exprc.function([x, y], best.outputs[0], backend="numpy")
    np.testing.assert_array_equal(f(np.array([-0.5, -0.5, 0.5, 0.5]), np.array([0.0, 0.9, 0.0, 0.9])),
                                  [1.0, 1.0, 1.0, 2.0])
