"""Every op carries its facts: an exact (mpmath) evaluation, a SymPy form, a gradient rule.

Adding an op is one row in exprc.ops plus whatever this test lists as missing: an entry in the
exact table (exprc.accuracy.exact) or in its NO_MPMATH with the reason; an entry in
exprc.sympy_bridge's table or in its NO_SYMPY; a gradient rule (the Op row's ``grad``) or an entry
in NON_DIFFERENTIABLE below.  The gradient fact is read through the public op table only, so it
does not matter which module the rules live in.
"""

from __future__ import annotations

import exprc  # (imports every module that registers ops and gradient rules)
import exprc.custom
from exprc import sympy_bridge
from exprc.accuracy import exact
from exprc.ops import OPS

LEAVES = {"input", "constant"}

#: Ops with no gradient rule, and why.  (Today every op has one: ops whose derivative is zero almost
#: everywhere, such as floor or the comparisons, have a rule that returns no gradient.)
NON_DIFFERENTIABLE: dict[str, str] = {}


def _ops() -> list[str]:
    """The built-in ops (ops other tests made with exprc.custom_op in this process are the user's)."""
    custom = set(exprc.custom.custom_ops())
    return sorted(n for n in OPS if n not in LEAVES and n not in custom)


def test_every_op_has_an_exact_evaluation_or_says_why_not() -> None:
    table = exact.table()
    missing = [n for n in _ops() if n not in table and n not in exact.NO_MPMATH]
    assert not missing, f"ops without an mpmath entry in exprc/accuracy/exact.py (add one, or list it in NO_MPMATH " \
                        f"with the reason): {missing}"
    both = sorted(set(table) & set(exact.NO_MPMATH))
    assert not both, f"ops both in the exact table and in NO_MPMATH: {both}"


def test_every_op_has_a_sympy_form_or_says_why_not() -> None:
    supported = sympy_bridge.sympy_ops()
    missing = [n for n in _ops() if n not in supported and n not in sympy_bridge.NO_SYMPY]
    assert not missing, f"ops without a SymPy entry in exprc/sympy_bridge.py (add one to _to_table, or list it in " \
                        f"NO_SYMPY with the reason): {missing}"
    both = sorted(supported & set(sympy_bridge.NO_SYMPY))
    assert not both, f"ops both mapped to SymPy and in NO_SYMPY: {both}"


def test_every_op_has_a_gradient_rule_or_says_why_not() -> None:
    missing = [n for n in _ops() if OPS[n].grad is None and n not in NON_DIFFERENTIABLE]
    assert not missing, f"ops without a gradient rule (add one, or list it in NON_DIFFERENTIABLE in " \
                        f"tests/test_op_facts.py with the reason): {missing}"
    both = sorted(n for n in NON_DIFFERENTIABLE if n in OPS and OPS[n].grad is not None)
    assert not both, f"ops with a gradient rule listed as non-differentiable: {both}"


def test_the_exception_lists_name_real_ops() -> None:
    # A stale entry (an op renamed or removed) would silently excuse its successor.
    for name, listing in (("NO_MPMATH", exact.NO_MPMATH), ("NO_SYMPY", sympy_bridge.NO_SYMPY),
                          ("NON_DIFFERENTIABLE", NON_DIFFERENTIABLE)):
        stale = sorted(set(listing) - set(OPS))
        assert not stale, f"{name} names ops that do not exist: {stale}"
    stale = sorted(set(exact.table()) - set(OPS))
    assert not stale, f"the exact table has entries for ops that do not exist: {stale}"


def test_the_facts_test_fails_for_an_op_without_facts(monkeypatch) -> None:
    # A new row with no mpmath, SymPy or gradient entry is reported by each test above.
    import dataclasses

    import pytest

    monkeypatch.setitem(OPS, "brand_new_op", dataclasses.replace(OPS["exp"], name="brand_new_op", grad=None))
    for check in (test_every_op_has_an_exact_evaluation_or_says_why_not,
                  test_every_op_has_a_sympy_form_or_says_why_not,
                  test_every_op_has_a_gradient_rule_or_says_why_not):
        with pytest.raises(AssertionError, match="brand_new_op"):
            check()
