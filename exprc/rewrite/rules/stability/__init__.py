"""Stability rewrites: the textbook formula in, what a numerical analyst would write out.

Every rule is tagged ``stability`` and has its own name (``exclude=`` takes either).
Rules match on meaning, not spelling: a sum is read through
:func:`~exprc.rewrite.forms.sum_view` (so ``1 - x``, ``-x + 1``, ``-(x - 1)`` and
``1 + (-x)`` are one pattern), and they run after canonicalization (``neg`` is
never hidden in ``mul(-1, …)``).

The contract (tests/test_stability.py checks it rule by rule against mpmath):

* never worse: at no sampled point of the valid domain may the rewritten form lose
  more than one bit more than the naive form;
* NaN stays NaN and ±Inf stays ±Inf where the true result is NaN or ±Inf.  Where a
  stable form has a spurious failure of its own (``0/0``, ``inf/inf``), the rule
  emits ``where(safe, stable, naive)`` and freezes the naive branch.

One module per family, imported here in a fixed order: at a node, the first rule
in registration order that matches fires, so this order is part of what the
optimizer does (tests/test_optimized_golden.py pins its result).

* :mod:`.cancellation`: sums that cancel against constants or identical terms, special
  constants (``exp(u) - 1``), a function minus its Taylor head;
* :mod:`.differences`: two related terms (conjugates, common denominators, squares,
  trigonometric and hyperbolic differences, log differences, variance);
* :mod:`.quotients`: sigmoid, softmax and overflow in products and quotients;
* :mod:`.logs`: log/exp forms, log-sum-exp, inverse hyperbolics, overflow under a log;
* :mod:`.exp_log1p`: log1p, exp and expm1 of each other;
* :mod:`.powers`: sqrt and pow (hypot, a compensated base).

Shared helpers (the registering decorator, builders, guards) live in :mod:`._common`.
"""

# The order below is the registration order: keep it.
# isort: off
from exprc.rewrite.rules.stability import cancellation  # noqa: F401
from exprc.rewrite.rules.stability import differences  # noqa: F401
from exprc.rewrite.rules.stability import quotients  # noqa: F401
from exprc.rewrite.rules.stability import logs  # noqa: F401
from exprc.rewrite.rules.stability import exp_log1p  # noqa: F401
from exprc.rewrite.rules.stability import powers  # noqa: F401
# isort: on
from exprc.rewrite.rules.stability._common import guarded, stability_rule, unguard
from exprc.rewrite.rules.stability.cancellation import SPECIAL_CONSTANTS

__all__ = ["SPECIAL_CONSTANTS", "guarded", "stability_rule", "unguard"]
