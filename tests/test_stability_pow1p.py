"""``(1 + u)**v`` and ``(1 + u)**v - 1`` after pow_compensated_base / pow1p_minus_one, where the power
under- or overflows (issue 13: NaN where the answer is -1 or inf).

pow_compensated_base multiplies fl(1 + u)**v by exp(v * err / s), the rounding error of the base
carried through the power; where fl(1 + u)**v is already 0 or inf, 0 * inf made NaN.  The
references are mpmath's (exprc.accuracy.reference), rounded to the dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

import exprc
from exprc.accuracy import bits_lost, reference

#: (dtype, u, v): powers that underflow to 0 or overflow to inf, some with a large correction
#: exp(v * err / s) of the opposite direction, and ordinary points around them.
POINTS = [
    ("float64", -8e-4, 1e20), ("float64", 1.000001, 1e300), ("float64", 1e-3, 1e6),
    ("float64", -0.5, 2000.0), ("float64", 3e-16, 1e18), ("float64", -3e-16, 1e18),
    ("float64", 0.1, -1e5), ("float64", -0.1, -1e5), ("float64", 1e-10, 1e12),
    ("float64", 1e-3, 5e5), ("float64", 2.0 ** -30, 1e11), ("float64", 1e-8, -7.0),
    ("float32", 1e-3, 1e30), ("float32", -1e-3, 1e30), ("float32", 1e-3, 5e4),
    ("float32", 3e-4, 1e6), ("float32", -3e-4, -1e6), ("float32", 1e-4, 1e3),
]


def _pow1p(m, u, v):
    return (1 + u) ** v


def _pow1p_minus_one(m, u, v):
    return (1 + u) ** v - 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spell,rule", [(_pow1p, "pow_compensated_base"), (_pow1p_minus_one, "pow1p_minus_one")])
def test_pow1p_where_the_power_over_or_underflows(dtype, spell, rule):
    pts = [(u, v) for d, u, v in POINTS if d == dtype]
    u, v = (np.array(c, dtype=dtype) for c in zip(*pts))
    xu, xv = exprc.vector("u", dtype), exprc.vector("v", dtype)
    f = exprc.function([xu, xv], spell(exprc, xu, xv), backend="numpy")
    assert rule in f.rewrites, f.rewrites
    with np.errstate(all="ignore"):
        got = np.asarray(f(u, v))
        naive = spell(np, u, v)
    ref = reference(spell, [u.astype(np.float64), v.astype(np.float64)]).astype(dtype)
    assert not np.isnan(got).any(), [(a, b, g, r) for a, b, g, r in zip(u, v, got, ref) if np.isnan(g)]
    lost = bits_lost(got, ref)
    bad = lost > np.maximum(bits_lost(naive, ref), 4.0)
    assert not bad.any(), [(float(a), float(b), float(g), float(r)) for a, b, g, r in zip(u[bad], v[bad], got[bad], ref[bad])]
    inf_or_minus_one = np.isinf(ref) | (ref == -1)
    assert (got[inf_or_minus_one] == ref[inf_or_minus_one]).all()
