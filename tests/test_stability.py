"""Stability rules, one by one: structure (the rule fires on every spelling and the graph holds the
stable op) and numbers (bits lost against mpmath over a range where the naive formula fails: within a
few bits, never more than one bit worse than the naive formula at any point, NaN/Inf kept).

A formula is ``fn(m, *args)``, evaluated with m = exprc (the graph), NumPy (naive) and mpmath (exact).
"""

from __future__ import annotations

import itertools
import math
import re
import types
import warnings

import mpmath
import numpy as np
import pytest

import exprc
from exprc.accuracy import bits_lost, reference, sample
from exprc.graph import toposort
from exprc.rewrite import REGISTRY

NP = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
NP.erf = np.vectorize(math.erf, otypes=[np.float64])
NP.erfc = np.vectorize(math.erfc, otypes=[np.float64])
NP.erfcx = lambda x: np.exp(x * x) * NP.erfc(x)  # (the definition, as written: inf * 0 from x = 26.6)
NP.sigmoid = lambda x: 1 / (1 + np.exp(-x))
NP.softmax = lambda x, axis=-1: np.exp(x) / np.sum(np.exp(x), axis=axis, keepdims=True)

#: Rounding noise: a point within this many bits counts as exact when comparing with the naive form.
NOISE = 2.0
#: Finite domain edges (where the exact result may be NaN or infinite) and the non-finite inputs.
EDGES = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 5e-324])
NONFINITE = np.array([np.inf, -np.inf, np.nan])

L, G, N, S = "lin", "log", "nlog", "slog"


def sig(m, x):
    return 1 / (1 + m.exp(-x))


class R:
    """One rule under test: its name, the spellings, ops the result must hold, input ranges."""

    def __init__(self, rule, spellings, ops, ranges, rows=0, tol=4.0, naive_fails=True, edges=True, absent=()):
        self.rule, self.spellings, self.ops, self.ranges = rule, spellings, set(ops), ranges
        self.rows, self.tol, self.naive_fails, self.edges, self.absent = rows, tol, naive_fails, edges, set(absent)

    def __repr__(self):
        return self.rule


RULES = [
    R("log1p_from_log", [lambda m, x: m.log(1 + x), lambda m, x: m.log(x + 1), lambda m, x: m.log(-(-1 - x)),
                         lambda m, x: m.log(x - (-1)), lambda m, x: m.log((x + 0.5) + 0.5),
                         lambda m, x: m.log(1 - (-x))], {"log1p"}, [(S, 1e-18, 0.5)], absent={"log"}),
    R("log1p_from_log", [lambda m, x: m.log(1 - x), lambda m, x: m.log(-x + 1), lambda m, x: m.log(-(x - 1)),
                         lambda m, x: m.log(1 + (-x))], {"log1p"}, [(G, 1e-18, 0.5)], absent={"log"}),
    R("expm1_from_exp", [lambda m, x: m.exp(x) - 1, lambda m, x: -1 + m.exp(x), lambda m, x: -(1 - m.exp(x)),
                         lambda m, x: m.exp(x) + (-1)], {"expm1"}, [(S, 1e-18, 1.0)], absent={"exp"}),
    R("expm1_from_exp", [lambda m, x: (m.exp(x) - 1) / x], {"expm1"}, [(S, 1e-18, 1.0)]),
    R("log_exp", [lambda m, x: m.log(m.exp(x))], set(), [(L, -800, 800)], absent={"log", "exp"}),
    R("exp_log", [lambda m, x: m.exp(m.log(x))], set(), [(G, 1e-300, 1e300)], absent={"log", "exp"},
      naive_fails=False),
    R("log_sqrt", [lambda m, x: m.log(m.sqrt(x))], {"log"}, [(L, 1 - 1e-9, 1 + 1e-9)], absent={"sqrt"}),
    R("log_square", [lambda m, x: m.log(x * x), lambda m, x: m.log(x ** 2), lambda m, x: m.log(m.square(x))],
      {"log", "abs"}, [(S, 1e-300, 1e300)], absent={"square"}),
    R("log_pow", [lambda m, x: m.log(x ** 3.5)], {"log"}, [(G, 1e-300, 1e300)], absent={"pow"}),
    R("log_mul", [lambda m, x, y: m.log(x * y), lambda m, x, y: m.log(y * x)], {"where"},
      [(G, 1e-300, 1e300), (G, 1e-300, 1e300)]),
    R("log_div", [lambda m, x, y: m.log(x / y)], {"where"}, [(G, 1e-300, 1e300), (G, 1e-300, 1e300)]),
    # near 1: the logit near p = 1/2, log returns, log((x + 1)/x) (x - y from the sum views, exact)
    R("log_div", [lambda m, p: m.log(p / (1 - p)), lambda m, p: -m.log((1 - p) / p)], {"log1p"}, [(L, 0.499, 0.501)]),
    R("log_div", [lambda m, x: m.log((x + 1) / x), lambda m, x: -m.log(x / (x + 1))], {"log1p"}, [(G, 1.0, 1e15)]),
    R("log_div", [lambda m, x, y: m.log(x / (x + y))], {"log1p"}, [(G, 1.0, 1e10), (G, 1e-10, 1e-3)]),
    # sin(u) cos(u) -> sin(2u)/2: not a naive failure (the product loses 1-2 bits), but one rounding and a form
    # the series rules read (test_gradient_of_one_minus_cos_over_x_squared)
    R("sin_cos_product", [lambda m, x: m.sin(x) * m.cos(x), lambda m, x: 3 * m.cos(x) * (x * m.sin(x)),
                          lambda m, x: m.sin(x) / x * m.cos(x)], {"sin", "rare"}, [(S, 1e-300, 1e300)],
      naive_fails=False),
    # sigmoid(z) sigmoid(-z) -> e/(1 + e)**2, e = exp(-|z|): not a naive failure, one exp where there were
    # two (sigmoid's and tanh's derivatives); no less accurate
    R("sigmoid_pair_product", [lambda m, x: sig(m, x) * sig(m, -x), lambda m, x: 3 * sig(m, -x) * (sig(m, x) * 2),
                               lambda m, x: sig(m, 2 * x) * 2 * (sig(m, -(2 * x)) * 2) / x],
      {"exp"}, [(L, -800.0, 800.0)], naive_fails=False, absent={"sigmoid"}),
    # the Bernoulli KL divergence near p = q: q constant (1/2, 0.3 with 0.7 = 1 - 0.3 + 2**-54) or a variable
    R("bernoulli_kl", [lambda m, p: p * m.log(2 * p) + (1 - p) * m.log(2 * (1 - p)),
                       lambda m, p: (1 - p) * m.log((1 - p) / 0.5) + m.log(p / 0.5) * p,
                       lambda m, p: 3 * p * m.log(2 * p) + 3 * (1 - p) * m.log(2 * (1 - p)) - p],
      {"square"}, [(L, 0.49, 0.51)]),
    R("bernoulli_kl", [lambda m, p: p * m.log(p / 0.3) + (1 - p) * m.log((1 - p) / 0.7)], {"square"}, [(L, 0.299, 0.301)]),
    R("bernoulli_kl", [lambda m, p, e: p * m.log(p / (p + e)) + (1 - p) * m.log((1 - p) / (1 - (p + e)))],
      {"square"}, [(L, 0.01, 0.9), (S, 1e-12, 1e-3)]),
    R("sigmoid_from_exp", [lambda m, x: 1 / (1 + m.exp(-x)), lambda m, x: m.exp(x) / (1 + m.exp(x)),
                           lambda m, x: m.exp(x) / (m.exp(x) + 1), lambda m, x: (1 + m.exp(-x)) ** -1,
                           lambda m, x: 1 / (m.exp(-x) + 1), lambda m, x: 2 / (2 + 2 * m.exp(-x)) * 1.0],
      {"sigmoid"}, [(L, -800, 800)], absent={"exp"}),
    R("sigmoid_from_exp", [lambda m, x: (m.exp(2 * x) - 1) / (m.exp(2 * x) + 1)], {"tanh"}, [(S, 1e-10, 800)]),
    R("sqrt_product", [lambda m, x, y: m.sqrt(x * y), lambda m, x, y: m.sqrt(y * x)], {"sqrt", "abs"},
      [(G, 1e-300, 1e300), (G, 1e-300, 1e300)]),
    R("sqrt_product", [lambda m, x, y: m.sqrt(x * y)], {"sqrt", "abs"}, [(S, 1e-300, 1e300), (S, 1e-300, 1e300)]),
    R("exp_product", [lambda m, a, b: m.exp(a) / m.exp(b), lambda m, a, b: m.exp(a) * m.exp(b),
                      lambda m, a, b: m.exp(-a) / m.exp(-b) * 3.0, lambda m, a, b: 1 / (m.exp(a) * m.exp(b))],
      {"where", "exp"}, [(L, -800, 800), (L, -800, 800)]),
    R("softmax_pair", [lambda m, a, b: m.exp(a) / (m.exp(a) + m.exp(b)), lambda m, a, b: m.exp(b) / (m.exp(a) + m.exp(b)),
                       lambda m, a, b: 2 * m.exp(a) / (m.exp(b) + m.exp(a))],
      {"sigmoid", "where"}, [(L, -800, 800), (L, -800, 800)]),
    R("log1p_square", [lambda m, x: m.log(1 + x * x), lambda m, x: m.log(x ** 2 + 1), lambda m, x: m.log1p(x * x / 3)],
      {"log1p", "where"}, [(S, 1e-300, 1e300)]),
    # the Gaussian tail: the rounding of x*x costs x*x/2 ulps of exp(-x*x/2)
    R("exp_exact_square", [lambda m, x: m.exp(-x * x / 2), lambda m, x: m.exp(-(x ** 2) / 2) / math.sqrt(2 * math.pi),
                           lambda m, x: m.exp(-x * x), lambda m, x: m.exp(x * x / 4)], {"where", "exp"},
      [(L, 20.0, 37.0)]),
    # ... and where the squared argument is itself rounded (x / sqrt(2), x * 0.7): its rounding is taken in
    R("exp_exact_square", [lambda m, x: m.exp(-(x / math.sqrt(2)) ** 2), lambda m, x: m.exp(-m.square(x * 0.7)),
                           lambda m, x: m.exp(-m.square(-x / math.sqrt(2)))], {"where", "exp"}, [(L, 20.0, 37.0)]),
    # exp / sigmoid of an argument with products of variables: its roundings recovered where |p| > 8
    R("exp_exact_argument", [lambda m, x: 0.5 * x * (1 + m.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))),
                             lambda m, x: m.sigmoid(x - x * x * 0.3)], {"where", "sigmoid"}, [(L, -25.0, -8.0)]),
    R("exp_exact_argument", [lambda m, x, y: m.exp(-x * y * 1.7), lambda m, x, y: m.exp(x - x * y)], {"where", "exp"},
      [(L, 5.0, 25.0), (L, 5.0, 25.0)]),
    # the logistic density / the derivative of the sigmoid, as a user writes it (inf/inf for x < -710)
    # (the logistic density: sigmoid(x) sigmoid(-x), which sigmoid_pair_product makes e/(1 + e)**2)
    R("sigmoid_from_exp", [lambda m, x: m.exp(-x) / (1 + m.exp(-x)) ** 2, lambda m, x: m.exp(x) / (1 + m.exp(x)) ** 2,
                           lambda m, x: m.exp(-x) / ((1 + m.exp(-x)) * (1 + m.exp(-x))),
                           lambda m, x: (1 + m.exp(-x)) ** -2.0 * m.exp(-x), lambda m, x: sig(m, x) ** 2 * m.exp(-x)],
      {"exp", "abs"}, [(L, -800, 800)], absent={"sigmoid"}),
    R("sigmoid_from_exp", [lambda m, x: m.exp(2 * x) / (1 + m.exp(x)) ** 3], {"sigmoid"}, [(L, -800, 800)],
      absent={"exp"}),
    R("log_sigmoid", [lambda m, x: m.log(m.sigmoid(x)), lambda m, x: m.log(sig(m, x))], {"softplus"},
      [(L, -800, 800)], absent={"log", "sigmoid"}),
    R("log1p_neg_sigmoid", [lambda m, x: m.log1p(-m.sigmoid(x))], {"softplus"}, [(L, -800, 800)],
      absent={"log1p", "sigmoid"}),
    R("sigmoid_complement", [lambda m, x: 1 - m.sigmoid(x), lambda m, x: 1 - sig(m, x), lambda m, x: -(m.sigmoid(x) - 1)],
      {"sigmoid"}, [(L, -40, 800)]),
    R("sigmoid_complement", [lambda m, x: m.log(1 - m.sigmoid(x)), lambda m, x: m.log(1 - sig(m, x))],
      {"softplus"}, [(L, -800, 800)], absent={"log", "sigmoid"}),
    R("softplus_from_log1p_exp", [lambda m, x: m.log(1 + m.exp(x)), lambda m, x: m.log(m.exp(x) + 1),
                                  lambda m, x: m.log1p(m.exp(x))], {"softplus"}, [(L, -800, 800)],
      absent={"log", "exp"}),
    R("softplus_minus_identity", [lambda m, x: m.log(1 + m.exp(x)) - x, lambda m, x: -x + m.softplus(x)],
      {"softplus"}, [(L, -40, 800)]),
    R("exp_subnormal_product", [lambda m, x: x / (1 + m.exp(-x)), lambda m, x: x * m.sigmoid(x)], {"where"},
      [(L, -800, -700)]),
    # a polynomial in the exponent's variables times a subnormal exp (the Gaussian density's derivative)
    R("exp_subnormal_product", [lambda m, x: x * x * m.exp(-x * x / 2), lambda m, x: -(x * m.exp(-x * x / 2)) * 3.0,
                                lambda m, x: (x + 1) * m.exp(x) / 7.0], {"where"}, [(L, 37.75, 38.5)]),
    R("softplus_linear", [lambda m, x, y: m.log(1 + m.exp(x)) - x * y, lambda m, x, y: y * x - m.softplus(x),
                          lambda m, x, y: m.softplus(x) - x * y + 2 * y],  # (the loss written out, labels near 1)
      {"softplus"}, [(L, -700, 700), (L, 0.999, 1.0)]),
    R("softplus_linear", [lambda m, x, y: m.log(1 + m.exp(x)) - (0.75 * x + x * y)],  # two terms grow with x
      {"softplus", "where"}, [(L, -700, 700), (L, 0.2, 0.25)]),
    R("logaddexp_minus_argument", [lambda m, x, y: x - m.log(m.exp(x) + m.exp(y)),
                                   lambda m, x, y: m.log(m.exp(y) + m.exp(x)) - x,
                                   lambda m, x, y: 2 * x + y - m.log(m.exp(x) + m.exp(y)) - x],
      {"softplus"}, [(L, -700, 700), (L, -700, 700)], absent={"log"}),
    R("log_sigmoid", [lambda m, z, y: -(y * m.log(sig(m, z)) + (1 - y) * m.log(1 - sig(m, z)))],  # BCE on logits
      {"softplus"}, [(L, -50, 50), (L, 0, 1)], absent={"log", "sigmoid", "exp"}),
    R("logsumexp_from_log", [lambda m, x: m.log(m.sum(m.exp(x), axis=-1))], {"max", "log1p"},
      [(L, -1000, 1000)], rows=8, absent={"log"}),
    R("logsumexp_from_log", [lambda m, x: m.log(m.sum(m.exp(x), axis=-1, keepdims=True))], {"max", "log1p"},
      [(L, -1000, 1000)], rows=8, absent={"log"}),
    R("logsumexp_from_log", [lambda m, x: m.log(m.mean(m.exp(x), axis=-1))], {"max", "log1p"},
      [(L, -1000, 1000)], rows=8),
    R("logaddexp_from_log", [lambda m, a, b: m.log(m.exp(a) + m.exp(b)), lambda m, a, b: m.log(m.exp(b) + m.exp(a))],
      {"logaddexp"}, [(L, -1000, 1000), (L, -1000, 1000)], absent={"log", "exp"}),
    R("logaddexp_from_log", [lambda m, a, b: m.log(m.exp(a) + m.exp(b) + 2.0)], {"logaddexp"},
      [(L, -1000, 1000), (L, -1000, 1000)], absent={"log", "exp"}),
    R("log_softmax_from_log", [lambda m, x: m.log(m.softmax(x, axis=-1)),
                               lambda m, x: m.log(m.exp(x) / m.sum(m.exp(x), axis=-1, keepdims=True))],
      {"log1p"}, [(L, -50, 50)], rows=8, absent={"log"}),
    R("softmax_from_exp", [lambda m, x: m.exp(x) / m.sum(m.exp(x), axis=-1, keepdims=True)], {"max"},
      [(L, -1000, 1000)], rows=8),
    R("softmax_of_product", [lambda m, x, u: u * m.exp(x) / m.sum(m.exp(x), axis=-1, keepdims=True),
                             lambda m, x, u: m.exp(x) * (u / 3) / m.sum(m.exp(x), axis=-1, keepdims=True),
                             lambda m, x, u: -(m.exp(x) * u) / m.sum(m.exp(x), axis=-1, keepdims=True),
                             lambda m, x, u: m.exp(x) * (1 / m.sum(m.exp(x), axis=-1, keepdims=True)) + 0 * u,
                             lambda m, x, u: 2 * m.exp(x) / (2 * m.sum(m.exp(x), axis=-1, keepdims=True)) + 0 * u],
      {"max"}, [(L, -1000, 1000), (L, 0.5, 2.0)], rows=8),
    R("log_div", [lambda m, x: m.log(m.sum(m.exp(x), axis=-1) / 3), lambda m, x: -m.log(1 / m.sum(m.exp(x), axis=-1))],
      {"max"}, [(L, -1000, 1000)], rows=8),
    R("log_mul", [lambda m, x: m.log(m.sum(m.exp(x), axis=-1) * 2)], {"max"}, [(L, -1000, 1000)], rows=8),
    R("softmax_weighted_sum", [lambda m, x, u: m.sum(u * m.exp(x), axis=-1) / m.sum(m.exp(x), axis=-1),
                               lambda m, x, u: m.mean(m.exp(x) * u, axis=-1) / m.mean(m.exp(x), axis=-1),
                               lambda m, x, u: m.sum(m.exp(x) * u * u / 2, axis=-1, keepdims=True)
                               / m.sum(m.exp(x), axis=-1, keepdims=True)],
      {"max"}, [(L, -1000, 1000), (L, 0.5, 2.0)], rows=8),
    R("softmax_weighted_sum_of_views",  # (the first spelling also evaluates row by row in mpmath)
      [lambda m, x, u: m.sum(u * m.exp(x), axis=-1, keepdims=True).T / m.sum(m.exp(x), axis=-1, keepdims=True).T,
       lambda m, x, u: m.sum(u * m.exp(x), axis=-1)[:, None] / m.sum(m.exp(x), axis=-1)[:, None],
       lambda m, x, u: m.mean(u * m.exp(x), axis=-1)[None] / m.mean(m.exp(x), axis=-1)[None]],
      {"max"}, [(L, -1000, 1000), (L, 0.5, 2.0)], rows=8),
    R("log1mexp_from_log", [lambda m, x: m.log(1 - m.exp(x)), lambda m, x: m.log(-m.expm1(x)),
                            lambda m, x: m.log(-(m.exp(x) - 1))], {"log1mexp"}, [(N, 1e-20, 700)],
      absent={"log", "exp"}),
    R("log1mexp_from_log1p", [lambda m, x: m.log1p(-m.exp(x))], {"log1mexp"}, [(N, 1e-20, 700)]),
    R("log_exp_difference", [lambda m, a, b: m.log(m.exp(a) - m.exp(b))], {"log1mexp"},
      [(L, 0, 800), (L, -800, -1e-3)], absent={"log", "exp"}),
    R("log_expm1", [lambda m, x: m.log(m.exp(x) - 1), lambda m, x: m.log(m.expm1(x))], {"log1mexp"},
      [(G, 1e-10, 800)], tol=6.0),  # log(expm1 x) has a root at ln 2: ~6 bits are lost there by any form
    R("tan_arctan", [lambda m, x: m.tan(m.arctan(x))], set(), [(S, 1e3, 1e300)], absent={"tan", "arctan"}),
    R("sinh_arcsinh", [lambda m, x: m.sinh(m.arcsinh(x))], set(), [(S, 1e10, 1e300)], absent={"sinh", "arcsinh"}),
    R("cosh_arccosh", [lambda m, x: m.cosh(m.arccosh(x))], {"where"}, [(G, 1e10, 1e300)], absent={"cosh", "arccosh"}),
    R("log1p_expm1", [lambda m, x: m.log1p(m.expm1(x))], set(), [(L, -800, 800)], absent={"log1p", "expm1"}),
    R("exp_log1p", [lambda m, x: m.exp(m.log1p(x))], set(), [(G, 1e10, 1e300)], absent={"exp", "log1p"},
      naive_fails=False),  # (see test_inverse_pairs_improve_on_the_naive_composition)
    R("cos_arccos", [lambda m, x: m.cos(m.arccos(x))], set(), [(S, 1e-300, 1.0)], absent={"cos", "arccos"}),
    R("expm1_log1p", [lambda m, x: m.expm1(m.log1p(x))], set(), [(G, 1e-300, 1e300)], absent={"log1p", "expm1"},
      naive_fails=False),
    R("sqrt_conjugate", [lambda m, x: m.sqrt(x + 1) - m.sqrt(x), lambda m, x: -m.sqrt(x) + m.sqrt(1 + x),
                         lambda m, x: -(m.sqrt(x) - m.sqrt(x + 1))], {"truediv"}, [(G, 1, 1e15)]),
    R("sqrt_conjugate", [lambda m, x: m.sqrt(1 + x) - 1, lambda m, x: -(1 - m.sqrt(x + 1))], {"truediv"},
      [(S, 1e-18, 0.9)]),
    # (not sqrt(x + 1) - (x/2 + 1): no rule takes that grouping, sqrt_conjugate included)
    R("sqrt_taylor_remainder", [lambda m, x: m.sqrt(1 + x) - 1 - x / 2, lambda m, x: -x / 2 + (m.sqrt(1 + x) - 1)],
      {"truediv", "where"}, [(S, 1e-18, 0.9)]),
    R("sqrt_conjugate", [lambda m, x: m.sqrt(x * x + 1) - x, lambda m, x: m.sqrt(1 + x ** 2) - x],
      {"truediv"}, [(G, 1, 1e8)]),
    R("sqrt_conjugate", [lambda m, x: x - m.sqrt(x * x - 1)], {"truediv"}, [(G, 1.5, 1e8)]),
    R("sqrt_conjugate", [lambda m, a, b, c: (-b + m.sqrt(b * b - 4 * a * c)) / (2 * a),
                         lambda m, a, b, c: (m.sqrt(b ** 2 - 4 * a * c) - b) / (2 * a)],
      {"truediv"}, [(L, 0.5, 2), (G, 1e2, 1e8), (L, 0.5, 2)]),
    R("sqrt_conjugate", [lambda m, a, b, c: (-b - m.sqrt(b * b - 4 * a * c)) / (2 * a)],
      {"truediv"}, [(L, 0.5, 2), (N, 1e2, 1e8), (L, 0.5, 2)]),
    # (the stable branch -(4ac / t) / (2a) becomes -2c / t: its gradient in a keeps its bits)
    R("quotient_into_branches", [lambda m, a, b, c: (-b + m.sqrt(b * b - 4 * a * c)) / (2 * a),
                                 lambda m, a, b, c: (-b - m.sqrt(b * b - 4 * a * c)) / (a * 2)],
      {"where", "truediv"}, [(L, 0.5, 2), (S, 1e2, 1e8), (L, 0.5, 2)]),
    R("cbrt_conjugate", [lambda m, x: m.cbrt(x + 1) - m.cbrt(x)], {"truediv"}, [(G, 1, 1e15)]),
    R("common_denominator", [lambda m, x: 1 / (x + 1) - 1 / x, lambda m, x: -(1 / x) + 1 / (1 + x)],
      {"truediv"}, [(G, 1, 1e15)]),
    R("common_denominator", [lambda m, x: 1 / (1 - x) - 1 / (1 + x)], {"truediv"}, [(S, 1e-12, 0.5)]),
    R("common_denominator", [lambda m, x: x / (x + 1) - 1], {"truediv"}, [(G, 1e8, 1e15)]),
    R("cos_minus_one", [lambda m, x: 1 - m.cos(x), lambda m, x: -(m.cos(x) - 1), lambda m, x: -m.cos(x) + 1],
      {"sin"}, [(S, 1e-9, 3.0)], absent={"cos"}),
    R("cos_minus_one", [lambda m, x: (1 - m.cos(x)) / (x * x)], {"sin"}, [(S, 1e-9, 3.0)]),
    R("one_plus_cos", [lambda m, x: 1 + m.cos(x)], {"cos"}, [(L, math.pi - 1e-4, math.pi + 1e-4)]),
    R("cosh_minus_one", [lambda m, x: m.cosh(x) - 1], {"sinh"}, [(S, 1e-9, 10.0)]),
    R("tanh_from_sigmoid", [lambda m, x: m.sigmoid(x) - 0.5, lambda m, x: 2 * m.sigmoid(2 * x) - 1,
                            lambda m, x: 2 / (1 + m.exp(-2 * x)) - 1], {"tanh"}, [(S, 1e-10, 30)]),
    R("tanh_plus_one", [lambda m, x: 1 + m.tanh(x)], {"sigmoid"}, [(L, -300, 0)]),
    R("tanh_minus_one", [lambda m, x: 1 - m.tanh(x)], {"sigmoid"}, [(L, 0, 300)]),
    R("erfc_from_erf", [lambda m, x: 1 - m.erf(x)], {"erfc"}, [(L, 0, 26)], absent={"erf"}),
    R("erfc_from_one_plus_erf", [lambda m, x: 1 + m.erf(x), lambda m, x: 0.5 * (1 + m.erf(x / math.sqrt(2)))],
      {"erfc"}, [(L, -26, 0)], absent={"erf"}),
    # the normal CDF's tail: the rounding of x / sqrt(2) costs 2 u**2 ulps of erfc(u) (10 bits at x = -37)
    R("erfc_exact_argument", [lambda m, x: 0.5 * (1 + m.erf(x / math.sqrt(2))), lambda m, x: m.erfc(-x / math.sqrt(2)),
                              lambda m, x: m.erfc(x * -0.7071067811865476) / 2, lambda m, x: m.erfc(x / -3.0)],
      {"erfc", "where"}, [(L, -37.5, -10.0)]),
    R("erfc_exact_argument", [lambda m, x: m.erfcx(x / math.sqrt(2)), lambda m, x: m.erfcx(x * -0.7071067811865476)],
      {"erfcx", "where"}, [(L, -37.5, -20.0)]),
    # log(erfc): 0 * inf from x = 26.6, the rounding of erfc near 1 for small x; the log normal CDF's tails
    R("log_erfc", [lambda m, x: m.log(m.erfc(x)), lambda m, x: m.log(1 - m.erf(x))], {"erfcx", "log1p"},
      [(S, 1e-12, 1e150)]),
    # (the erf spelling last: mpmath cannot give 1 + erf(x) where it is exp(-1e10), the exact tests' first)
    R("log_erfc", [lambda m, x: m.log(0.5 * m.erfc(x * -0.7071067811865476)), lambda m, x: m.log(m.erfc(-x / 3.0) / 2),
                   lambda m, x: m.log(0.5 * (1 + m.erf(x / math.sqrt(2))))], {"erfcx", "log1p"}, [(S, 1e-12, 1e150)]),
    # log(c exp(u)): the Gaussian log-density; near u = -log(c) (x = log 3) no worse than the naive form
    R("log_exp_scaled", [lambda m, x: m.log(m.exp(-(x * x) / 2) / math.sqrt(2 * math.pi)),
                         lambda m, x: m.log(m.exp(x) / 3.0), lambda m, x: m.log(0.5 * m.exp(-x))],
      {"where"}, [(L, -1000, 1000)]),
    R("log_exp_scaled", [lambda m, x: m.log(m.exp(x) / 3.0)], set(), [(L, 1.0, 1.2)], naive_fails=False, tol=60),
    # the Mills ratio (the gradient of log(erfc)): 0/0 from x = 26.6
    R("erfc_exp_ratio", [lambda m, x: m.exp(-x * x) / m.erfc(x), lambda m, x: 3.0 * m.exp(-m.square(x)) / m.erfc(x),
                         lambda m, x: m.exp(-(x / 3.0) ** 2) / m.erfc(-x / -3.0) * x],
      {"erfcx"}, [(L, -20.0, 1e4)]),
    R("erf_from_erfc", [lambda m, x: 1 - m.erfc(x)], {"erf"}, [(S, 1e-300, 1e-3)], absent={"erfc"}),
    R("pow_compensated_base", [lambda m, r, n: (1 + r / n) ** n], {"exp"}, [(L, 0.01, 0.2), (G, 1e3, 1e15)]),
    R("pow1p_minus_one", [lambda m, x, y: (1 + x) ** y - 1], {"expm1"}, [(S, 1e-12, 1e-3), (L, 1, 100)]),
    # log1p(x) - x/(1 + x) (the Bennett function's form, the derivative of log1p(x)/x): x**2/2 of terms ~x
    R("log1p_minus_quotient", [lambda m, x: m.log1p(x) - x / (1 + x), lambda m, x: (1 + x) * m.log(1 + x) - x,
                               lambda m, x: -(x / (x + 1)) + m.log(1 + x), lambda m, x: 3 * m.log1p(x) - 3 * x / (1 + x),
                               lambda m, x: (m.log1p(x) * x - x * x / (1 + x)) / (x * x)],
      {"where"}, [(S, 1e-12, 0.6)]),
    R("log1p_minus_quotient", [lambda m, x: m.log1p(x) - x / (1 + x)], {"where"}, [(G, 0.3, 1e300)],
      naive_fails=False),
    R("sinh_from_exp", [lambda m, x: (m.exp(x) - m.exp(-x)) / 2, lambda m, x: 0.5 * (m.exp(x) - m.exp(-x)),
                        lambda m, x: (-m.exp(-x) + m.exp(x)) * 0.5], {"sinh"}, [(S, 1e-10, 710)], absent={"exp"}),
    R("cosh_from_exp", [lambda m, x: (m.exp(x) + m.exp(-x)) / 2, lambda m, x: 0.5 * (m.exp(-x) + m.exp(x))],
      {"cosh"}, [(L, 709.8, 710.4)], absent={"exp"}),
    R("tanh_from_sinh_cosh", [lambda m, x: m.sinh(x) / m.cosh(x),
                              lambda m, x: (m.exp(x) - m.exp(-x)) / (m.exp(x) + m.exp(-x))],
      {"tanh"}, [(S, 1e-10, 800)], absent={"exp", "sinh", "cosh"}),
    R("arcsinh_from_log", [lambda m, x: m.log(x + m.sqrt(x * x + 1)), lambda m, x: m.log(x + m.sqrt(1 + x ** 2)),
                           lambda m, x: m.log(m.sqrt(x * x + 1) + x), lambda m, x: m.log(x + m.hypot(x, 1.0))],
      {"arcsinh"}, [(S, 1e-10, 1e150)], absent={"log"}),
    R("arccosh_from_log", [lambda m, x: m.log(x + m.sqrt(x * x - 1)), lambda m, x: m.log(x + m.sqrt(x ** 2 - 1))],
      {"arccosh"}, [(G, 1.0001, 1e160)], absent={"log"}),
    R("arctanh_from_log", [lambda m, x: 0.5 * m.log((1 + x) / (1 - x)), lambda m, x: m.log((x + 1) / (1 - x)) / 2],
      {"arctanh"}, [(S, 1e-12, 0.999)], absent={"log"}),
    R("arctanh_from_log1p", [lambda m, x: 0.5 * (m.log(1 + x) - m.log(1 - x)),
                             lambda m, x: (m.log1p(x) - m.log1p(-x)) / 2], {"arctanh"}, [(S, 1e-12, 0.999)]),
    R("log_cosh", [lambda m, x: m.log(m.cosh(x)), lambda m, x: m.log((m.exp(x) + m.exp(-x)) / 2)],
      {"log1p"}, [(S, 1e-9, 1000)], absent={"log"}),
    R("log_sinh", [lambda m, x: m.log(m.sinh(x))], {"log1mexp"}, [(G, 1, 800)]),
    R("hypot_from_sqrt", [lambda m, x, y: m.sqrt(x * x + y * y), lambda m, x, y: m.sqrt(x ** 2 + y ** 2),
                          lambda m, x, y: m.sqrt(y * y + x * x)], {"hypot"}, [(S, 1e-200, 1e200), (S, 1e-200, 1e200)],
      absent={"sqrt"}),
    R("sqrt_square", [lambda m, x: m.sqrt(x * x), lambda m, x: m.sqrt(x ** 2)], {"abs"}, [(S, 1e-300, 1e300)],
      absent={"sqrt"}),
    R("difference_of_squares", [lambda m, x, y: x * x - y * y, lambda m, x, y: x ** 2 - y ** 2,
                                lambda m, x, y: -(y * y) + x * x], {"mul"}, [(L, 1, 1 + 1e-6), (L, 1, 1 + 1e-6)],
      absent={"square"}),
    R("difference_of_squares", [lambda m, x: x * x - 1, lambda m, x: 1 - x ** 2], {"mul"}, [(L, 1 - 1e-6, 1 + 1e-6)],
      absent={"square"}),
    R("cos_double_angle", [lambda m, x: m.cos(x) ** 2 - m.sin(x) ** 2], {"cos", "where"}, [(L, 0.7, 0.87)]),
    R("sin_difference", [lambda m, x, e: m.sin(x + e) - m.sin(x), lambda m, x, e: -m.sin(x) + m.sin(e + x)],
      {"sin", "cos"}, [(L, -10, 10), (S, 1e-15, 1e-3)]),
    R("cos_difference", [lambda m, x, e: m.cos(x + e) - m.cos(x)], {"sin"}, [(L, -10, 10), (S, 1e-15, 1e-3)]),
    R("tan_difference", [lambda m, x, e: m.tan(x + e) - m.tan(x)], {"sin"}, [(L, -1.2, 1.2), (S, 1e-15, 1e-3)],
      absent={"tan"}),
    R("arctan_difference", [lambda m, x: m.arctan(x + 1) - m.arctan(x)], {"arctan"}, [(G, 1, 1e8)]),
    R("exp_difference", [lambda m, x, e: m.exp(x + e) - m.exp(x)], {"expm1"}, [(L, -5, 5), (S, 1e-15, 1e-3)]),
    R("log_difference", [lambda m, p: m.log(p) - m.log(1 - p), lambda m, p: -(m.log(1 - p) - m.log(p))], {"log1p"},
      [(L, 0.499, 0.501)]),  # nothing cancels symbolically: the near-one branch
    R("log_difference", [lambda m, x: m.log(x + 1) - m.log(x), lambda m, x: m.log1p(x) - m.log(x)], {"log1p"},
      [(G, 1, 1e15)]),
    R("exp_over_expm1", [lambda m, x: m.exp(x) / (m.exp(x) - 1), lambda m, x: m.exp(x) / m.expm1(x)], {"expm1"},
      [(S, 1e-10, 800)]),
    R("variance_two_pass", [lambda m, x: m.mean(x * x, axis=-1) - m.mean(x, axis=-1) ** 2], {"mean"},
      [(L, 1e6, 1e6 + 1)], rows=8),
    R("taylor_cancellation", [lambda m, x: x - m.sin(x), lambda m, x: -(m.sin(x) - x), lambda m, x: (x - m.sin(x)) / 1.0],
      {"where"}, [(S, 1e-8, 4.0)]),
    R("taylor_cancellation", [lambda m, x: (x - m.sin(x)) / (x * x * x)], {"where"}, [(S, 1e-8, 4.0)]),
    R("taylor_cancellation", [lambda m, x: m.tan(x) - x], {"where"}, [(S, 1e-8, 1.5)]),
    R("taylor_cancellation", [lambda m, x: m.sinh(x) - x, lambda m, x: x - m.sinh(x)], {"where"}, [(S, 1e-8, 4.0)]),
    R("taylor_cancellation", [lambda m, x: m.log1p(x) - x, lambda m, x: m.log(1 + x) - x], {"where"},
      [(S, 1e-8, 0.9)]),
    R("taylor_cancellation", [lambda m, x: m.exp(x) - 1 - x, lambda m, x: m.expm1(x) - x, lambda m, x: m.exp(x) - (1 + x)],
      {"where"}, [(S, 1e-8, 3.0)]),
    R("taylor_cancellation", [lambda m, x: m.cos(x) - (1 - x * x / 2),
                              lambda m, x: m.cos(x) - 1 + x * x / 2],  # (cos - 1 rewritten first: sin(x/2)**2)
      {"where"}, [(S, 1e-6, 4.0)]),
    # f(u)/u**k minus a polynomial (u = 0 keeps the formula's NaN), and a polynomial in x against f(-x)
    R("taylor_cancellation", [lambda m, x: m.sin(x) / x - 1, lambda m, x: (m.exp(x) - 1) / x - 1,
                              lambda m, x: m.expm1(x) / x - 1, lambda m, x: (m.sinh(x) - x) / (x * x) - x / 6],
      {"where"}, [(S, 1e-8, 4.0)]),
    R("taylor_cancellation", [lambda m, x: m.exp(-x) - 1 + x, lambda m, x: x - (1 - m.exp(-x)),
                              lambda m, x: m.sin(-x) + x], {"where"}, [(S, 1e-8, 4.0)]),
    # series with a radius of convergence of 1 or pi/2: the long branch (exprc.rewrite.series.LONG_TERMS)
    R("taylor_cancellation", [lambda m, x: m.arctan(x) - x, lambda m, x: x - m.arctan(x),
                              lambda m, x: m.arctanh(x) - x], {"where"}, [(S, 1e-8, 0.95)]),
    R("taylor_cancellation", [lambda m, x: m.tanh(x) / x - 1, lambda m, x: m.tanh(x) - x,
                              lambda m, x: m.tan(x) - x - x * x * x / 3], {"where"}, [(S, 1e-8, 1.5)]),
    # a quotient by a series function whose numerator over the common denominator cancels
    R("series_quotient", [lambda m, x: 1 - x / m.sin(x), lambda m, x: 1 / x - 1 / m.tan(x),
                          lambda m, x: x / m.tanh(x) - 1, lambda m, x: 1 - x / m.expm1(x),
                          lambda m, x: 2 * (x / m.sinh(x)) - 2], {"where"}, [(S, 1e-8, 1.5)]),
    # a**p - b**p with b - a exact (roots of any order, inverse roots, fractional powers), a log a - b log b
    R("power_difference", [lambda m, x: (x + 1) ** 0.2 - x ** 0.2, lambda m, x: 1 / m.sqrt(x) - 1 / m.sqrt(x + 1),
                           lambda m, x: x ** -0.5 - (x + 1) ** -0.5, lambda m, x: (x + 2) ** 2.5 - x ** 2.5,
                           lambda m, x: 1 / m.cbrt(x) - 1 / m.cbrt(x + 1), lambda m, x: (x + 1) ** (1 / 7) - x ** (1 / 7)],
      {"expm1", "log1p"}, [(G, 1.0, 1e15)]),
    R("power_difference", [lambda m, x: 1 / m.sqrt(1 + x) - 1, lambda m, x: (1 + x) ** -0.3 - 1,
                           lambda m, x: 0.5 / m.sqrt(x + 1) - 0.5], {"expm1", "log1p"}, [(S, 1e-18, 0.99)]),
    R("xlogx_difference", [lambda m, x: (x + 1) * m.log(x + 1) - x * m.log(x) - 1,
                           lambda m, x: x * m.log(x) - m.log(x + 1) * (x + 1)], {"log1p"}, [(G, 1.0, 1e15)]),
    # two or more functions of one argument whose leading Taylor terms cancel: the combined series near 0
    R("series_difference", [lambda m, x: m.tan(x) - m.sin(x), lambda m, x: -(m.sin(x) - m.tan(x)),
                            lambda m, x: -m.sin(x) + m.tan(x), lambda m, x: (m.tan(x) - m.sin(x)) / 1.0],
      {"where"}, [(S, 1e-8, 1.5)]),
    R("series_difference", [lambda m, x: m.sinh(x) - m.sin(x), lambda m, x: m.sin(x) - m.sinh(x)], {"where"},
      [(S, 1e-8, 4.0)]),
    R("series_difference", [lambda m, x: m.exp(x) - m.cos(x), lambda m, x: m.cos(x) - m.exp(x)], {"where"},
      [(S, 1e-8, 3.0)]),
    R("series_difference", [lambda m, x: m.cosh(x) + m.cos(x) - 2, lambda m, x: (m.cos(x) - 2) + m.cosh(x)],
      {"where"}, [(S, 1e-8, 4.0)]),
    # ... also functions divided by powers of the argument, with negative powers (gradients of quotients)
    R("series_difference", [lambda m, x: m.exp(x) / x - m.expm1(x) / (x * x),
                            lambda m, x: 1 / x * m.exp(x) - m.expm1(x) / x / x,
                            lambda m, x: m.sinh(x) / x - m.sin(x) / x,
                            lambda m, x: m.sinh(x) / (x * x * x) - 1 / (x * x) - m.sin(x) / (x * x * x) + 1 / (x * x)],
      {"where"}, [(S, 1e-8, 3.0)]),
    R("product_cancel", [lambda m, x, y: (x * y) / y, lambda m, x, y: (x / y) * y, lambda m, x, y: y * x / y],
      set(), [(G, 1e100, 1e200), (G, 1e150, 1e300)], absent={"truediv"}),
    # swish: x sigmoid(x) below x = -708 (exp_subnormal_product's rare branch), the quotient above
    R("sigmoid_from_exp", [lambda m, x: x / (1 + m.exp(-x)), lambda m, x: x * (1 / (1 + m.exp(-x)))],
      {"sigmoid", "rare"}, [(L, -700, 800)], naive_fails=False),
    R("sum_cancel", [lambda m, x: (x + 1e16) - 1e16, lambda m, x: -1e16 + (1e16 + x)], set(), [(L, -1, 1)],
      absent={"add", "sub"}),
    R("sum_cancel", [lambda m, x, y: (x + y) - x, lambda m, x, y: -x + (y + x)], set(),
      [(G, 1e10, 1e20), (G, 1e-5, 1)], absent={"sub"}),
    R("constant_factors", [lambda m, x: (m.sinh(x) * 2) / 2, lambda m, x: 0.5 * (2 * m.sinh(x))], {"sinh"},
      [(L, 710, 710.4)], absent={"mul", "truediv"}),
]

IDS = [f"{r.rule}-{i}" for i, r in enumerate(RULES)]


def _vars(case, dtype="float64"):
    nd = 2 if case.rows else 1
    return [exprc.tensor(f"x{i}", dtype, ndim=nd) for i in range(len(case.ranges))]


def _graph_ops(f):
    return {n.op for n in toposort(list(f.graph.outputs))}


def test_every_stability_rule_is_tested_and_documented():
    # (sum_to_terms rewrites what only gradients hold: tests/test_autodiff.py::test_sum_to_terms_*)
    tested = {r.rule for r in RULES} | {"sum_to_terms"}
    stab = {name for name, r in REGISTRY.items() if "stability" in r.tags}
    assert stab - tested == set(), f"untested stability rules: {sorted(stab - tested)}"
    for name in stab:
        assert REGISTRY[name].doc, name


@pytest.mark.parametrize("case", RULES, ids=IDS)
def test_structure_every_spelling(case):
    for spell in case.spellings:
        vs = _vars(case)
        f = exprc.function(vs, spell(exprc, *vs), backend="numpy")
        ops = _graph_ops(f)
        assert case.rule in f.rewrites, (exprc.pprint(f.graph.outputs[0]), f.rewrites)
        assert case.ops <= ops, (case.ops - ops, exprc.pprint(f.graph.outputs[0]))
        assert not (case.absent & ops), (case.absent & ops, exprc.pprint(f.graph.outputs[0]))
        g = exprc.function(vs, spell(exprc, *vs), backend="numpy", exclude=(case.rule,))
        assert case.rule not in g.rewrites


def _check_numbers(case, spell, backend, n=160, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, case.rows) if case.rows else (n,)
    args = [sample(r, int(np.prod(shape)), rng).reshape(shape) for r in case.ranges]
    ref = reference(spell, args, rows=bool(case.rows))
    vs = _vars(case)
    f = exprc.function(vs, spell(exprc, *vs), backend=backend)
    with np.errstate(all="ignore"):
        naive = np.asarray(spell(NP, *args), dtype=np.float64)
        got = np.asarray(f(*args))
    ref, naive = ref.reshape(got.shape), naive.reshape(got.shape)
    b_naive, b_got = bits_lost(naive, ref), bits_lost(got, ref)
    worst = np.unravel_index(int(np.argmax(b_got)), b_got.shape)[0]
    where = [a[worst] for a in args]
    assert b_got.max() <= case.tol, f"{case.rule}: {b_got.max():.1f} bits lost at {where}"
    if case.naive_fails:
        assert b_naive.max() > 8, f"{case.rule}: the range does not make the naive formula fail"
    worse = b_got > np.maximum(b_naive, NOISE) + 1
    assert not worse.any(), f"{case.rule}: worse than naive by more than 1 bit at {np.flatnonzero(worse)[:5]}"
    return f


@pytest.mark.parametrize("case", RULES, ids=IDS)
def test_numbers_against_mpmath(case):
    _check_numbers(case, case.spellings[0], "numpy")


@pytest.mark.parametrize("case", [r for r in RULES if not r.rows and len(r.ranges) <= 2], ids=lambda r: r.rule)
def test_nan_and_inf_are_kept(case):
    """At finite domain edges where the exact result is NaN or ±inf, the rewritten formula gives NaN
    or the same infinity, and it is finite wherever the naive formula and the exact result are.  For
    non-finite inputs: NaN in gives NaN out, and a result the naive formula gets is kept (where the
    naive formula gives NaN for an infinite input, e.g. inf/inf, the limit is allowed instead)."""
    spell = case.spellings[0]
    vs = _vars(case)
    f = exprc.function(vs, spell(exprc, *vs), backend="numpy")
    nargs = len(case.ranges)
    pts = np.concatenate([EDGES, NONFINITE])
    args = [np.array(p) for p in zip(*itertools.product(pts, repeat=nargs))]
    with np.errstate(all="ignore"):
        got, naive = np.asarray(f(*args)), np.asarray(spell(NP, *args), dtype=np.float64)
    poles: list = []
    ref = reference(spell, args, undefined=poles)
    defined = np.ones(len(got), bool)
    defined[poles] = False  # division by zero: IEEE has a signed infinity, mpmath nothing to compare
    finite_in = np.all([np.isfinite(a) for a in args], axis=0)
    nan_in = np.any([np.isnan(a) for a in args], axis=0)
    special = defined & finite_in & (np.isnan(ref) | np.isinf(ref))
    naive_right = (np.isnan(naive) & np.isnan(ref)) | (naive == ref)  # (C's pow(-inf, 0.5) is +inf …)
    bad = special & naive_right & ~((np.isnan(got) & np.isnan(ref)) | (got == ref))
    assert not bad.any(), f"{case.rule}: at {[a[bad][:4] for a in args]} got {got[bad][:4]}, exact {ref[bad][:4]}"
    finite = defined & finite_in & np.isfinite(naive) & np.isfinite(ref)
    assert np.isfinite(got[finite]).all(), f"{case.rule}: non-finite where naive and exact are finite"
    if case.rule == "hypot_from_sqrt":  # IEEE 754: hypot(±inf, NaN) is +inf
        nan_in &= ~np.any([np.isinf(a) for a in args], axis=0)
    assert np.isnan(got[nan_in & np.isnan(naive)]).all(), f"{case.rule}: NaN input lost"
    inf_in = defined & ~finite_in & ~nan_in & ~np.isnan(ref)
    worse = bits_lost(got[inf_in], ref[inf_in]) > bits_lost(naive[inf_in], ref[inf_in]) + 1
    assert not worse.any(), f"{case.rule}: infinite inputs {[a[inf_in][worse] for a in args]}: {got[inf_in][worse]}"


C_SUBSET = ["log1p_from_log", "sigmoid_from_exp", "log1mexp_from_log", "logsumexp_from_log", "sqrt_conjugate",
            "hypot_from_sqrt", "softplus_from_log1p_exp", "cos_minus_one", "pow_compensated_base"]


@pytest.mark.parametrize("case", [r for r in RULES if r.rule in C_SUBSET][:len(C_SUBSET)], ids=lambda r: r.rule)
def test_numbers_on_the_c_backend(case):
    f = _check_numbers(case, case.spellings[0], None, n=120)
    assert f.backend == "c" or f.backend == "numpy"


def test_log1mexp_op_matches_its_definition():
    x = exprc.vector("x")
    d = -np.concatenate([np.geomspace(1e-20, 700, 200), [0.0, np.inf]])
    ref = reference(lambda m, x: m.log(1 - m.exp(x)), [d])
    for backend in ("numpy", None):
        f = exprc.function([x], exprc.log1mexp(x), backend=backend)
        assert bits_lost(f(d), ref).max() <= 2
    with np.errstate(all="ignore"):
        assert np.isnan(exprc.function([x], exprc.log1mexp(x), backend="numpy")(np.array([0.5, np.nan]))).all()


def test_stability_can_be_switched_off_by_tag_and_name():
    x = exprc.vector("x")
    e = exprc.log(1 + x)
    assert exprc.function([x], e, backend="numpy", exclude=("stability",)).rewrites.count("log1p_from_log") == 0
    assert "log" in _graph_ops(exprc.function([x], e, backend="numpy", exclude=("log1p_from_log",)))
    f = exprc.function([x], e, backend="numpy")
    assert [t.pass_name for t in f.graph.trace if t.rule == "log1p_from_log"] == ["stabilize"]


def test_float32_rules_keep_float32():
    x = exprc.vector("x", "float32")
    for e in [exprc.log(1 + x), 1 / (1 + exprc.exp(-x)), exprc.sqrt(x + 1) - exprc.sqrt(x), exprc.exp(x) - 1]:
        f = exprc.function([x], e, backend="numpy")
        assert f.graph.outputs[0].dtype == "float32" and any(t.pass_name == "stabilize" for t in f.graph.trace)
    f = exprc.function([x], exprc.log(1 + x), backend="numpy")
    d = np.array([1e-10, 1e-3, 0.5], np.float32)
    np.testing.assert_allclose(f(d), np.log1p(d), rtol=1e-6)


def test_rewrites_are_deterministic_and_idempotent():
    x, y = exprc.vector("x"), exprc.vector("y")
    e = exprc.log(1 + exprc.exp(x)) - exprc.sqrt(x * x + y * y) + (1 - exprc.cos(y)) / (y * y)
    a, b = exprc.optimize([e]), exprc.optimize([e])
    assert a.outputs == b.outputs and a.rewrites == b.rewrites
    assert exprc.optimize(list(a.outputs)).outputs == a.outputs


def test_gradients_of_naive_formulas_come_out_stable():
    """grad graphs go through the same pipeline: d/dx log(1/(1 + exp(-x))) is sigmoid(-x), finite at -800."""
    x = exprc.vector("x")
    d = np.array([-800.0, -30.0, -1e-10, 0.5, 30.0, 800.0])
    for e, exact in [(exprc.log(1 / (1 + exprc.exp(-x))), lambda m, x: 1 / (1 + m.exp(x))),
                     (exprc.log(1 + exprc.exp(x)), lambda m, x: 1 / (1 + m.exp(-x))),
                     (exprc.sqrt(x * x + 1), lambda m, x: x / m.sqrt(x * x + 1))]:
        f = exprc.function([x], exprc.grad(exprc.sum(e), x), backend="numpy")
        with np.errstate(all="ignore"):
            got = f(d)
        assert bits_lost(got, reference(exact, [d])).max() <= 4, (exprc.pprint(f.graph.outputs[0]), got)


def test_swish_gradient_in_the_subnormal_tail():
    """d/dx x sigmoid(x) below -708, where sigmoid(x) is subnormal: exp_subnormal_product's (x h) h, h = exp(x/2),
    for the value and for the derivative's x e / (1 + e)**2, e = exp(-|x|) (exp(x + log(-x)) lost 8 bits to
    the sum's rounding)."""
    x = exprc.vector("x")
    d = -np.exp(np.random.default_rng(3).uniform(np.log(708.0), np.log(716.0), 400))
    for backend in ("numpy", None):
        f = exprc.function([x], [x * exprc.sigmoid(x), exprc.grad(exprc.sum(x * exprc.sigmoid(x)), x)],
                           backend=backend)
        value, slope = f(d)
        assert bits_lost(value, reference(lambda m, x: x / (1 + m.exp(-x)), [d])).max() <= 3
        exact = reference(lambda m, x: 1 / (1 + m.exp(-x)) + x * m.exp(-x) / (1 + m.exp(-x)) ** 2, [d])
        assert bits_lost(slope, exact).max() <= 4, backend


def test_gradients_in_subnormal_tails_and_of_compensated_powers():
    """Derivatives as accurate as the values (bench/accuracy.py's gradient column): the Gaussian density's
    and GELU's where exp is subnormal and a factor p'(x) scales its rounding up (4.5 and 10 bits lost
    before exp_subnormal_product), and (1 + r/n)**n, whose d/dr had the base's correction applied twice
    (48 bits: 1.1688 for e**0.078 = 1.0811), and (1 + x)**y - 1's d/dy (through expm1(y log1p(x)))."""
    x, r, n = exprc.vector("x"), exprc.vector("r"), exprc.vector("n")
    rng = np.random.default_rng(5)
    xs = {"gauss": rng.uniform(36.0, 38.4, 300), "gelu": rng.uniform(-21.6, -15.0, 300)}
    cases = [("gauss", lambda m, x: m.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
             ("gelu", lambda m, x: 0.5 * x * (1 + m.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))))]
    for key, fn in cases:
        d = xs[key]
        exact = reference(lambda m, t, fn=fn: mpmath.diff(lambda u: fn(m, u), t), [d])
        assert (np.abs(exact) < 2.3e-308).any(), key  # (the range reaches the subnormals)
        for backend in ("numpy", None):
            f = exprc.function([x], exprc.grad(exprc.sum(fn(exprc, x)), x), backend=backend)
            assert bits_lost(f(d), exact).max() <= 4, (key, backend)
            naive = exprc.function([x], exprc.grad(exprc.sum(fn(exprc, x)), x), backend=backend,
                                   exclude=("exp_subnormal_product",))
            assert bits_lost(naive(d), exact).max() > 4, key  # (what the rule fixes)
    rv, nv = rng.uniform(0.01, 0.2, 100), np.exp(rng.uniform(np.log(1e3), np.log(1e15), 100))
    dr = exprc.function([r, n], exprc.grad(exprc.sum((1 + r / n) ** n), r))(rv, nv)
    assert bits_lost(dr, reference(lambda m, r, n: (1 + r / n) ** (n - 1), [rv, nv])).max() <= 4
    # d/dn = f (log1p(u) - u/(1 + u)), u = r/n: two paths of the chain rule, each reduced to n's shape
    # (sum_to_terms sums them first), whose terms cancel to u**2/2 (log1p_minus_quotient: its series)
    grad_n = exprc.grad(exprc.sum((1 + r / n) ** n), n)
    exact = reference(lambda m, r, n: mpmath.diff(lambda t: (1 + r / t) ** t, n), [rv, nv])
    for backend in ("numpy", None):
        f = exprc.function([r, n], grad_n, backend=backend)
        assert {"sum_to_terms", "log1p_minus_quotient"} <= set(f.rewrites), f.rewrites
        assert bits_lost(f(rv, nv), exact).max() <= 4, backend
        for rule in ("sum_to_terms", "log1p_minus_quotient"):
            without = exprc.function([r, n], grad_n, backend=backend, exclude=(rule,))
            assert bits_lost(without(rv, nv), exact).max() > 40, rule  # (n > 1e12: every bit lost)
    y = exprc.vector("y")
    xv, yv = rng.choice([-1.0, 1.0], 100) * np.exp(rng.uniform(np.log(1e-12), np.log(1e-3), 100)), rng.uniform(1, 100, 100)
    dy = exprc.function([x, y], exprc.grad(exprc.sum((1 + x) ** y - 1), y))(xv, yv)
    assert bits_lost(dy, reference(lambda m, x, y: (1 + x) ** y * m.log1p(x), [xv, yv])).max() <= 4


def test_total_derivative_of_a_power_at_special_points():
    """d/dn (1 + r/n)**n where r, n are 0, -0, +-1, 2, tiny, huge, +-inf or NaN: NaN wherever the formula
    as written is NaN (n = +-inf: the series alone would give 0), the same infinities, and otherwise
    no further from mpmath than the formula: the series' two wins are r = 5e-324, n = 1e-300 (u**2/2 =
    1.2e-47 where the formula gives 0) and r = -1, n = 1e300 (0, the true 1.8e-601 underflowed, where
    the formula's terms leave -4e-317)."""
    r, n = exprc.vector("r"), exprc.vector("n")
    grad_n = exprc.grad(exprc.sum((1 + r / n) ** n), n)
    pts = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 5e-324, 1e-300, 1e300, np.inf, -np.inf, np.nan]
    rv, nv = (np.array(v) for v in zip(*itertools.product(pts, repeat=2)))
    for backend in ("numpy", None):
        f = exprc.function([r, n], grad_n, backend=backend)
        formula = exprc.function([r, n], grad_n, backend=backend, exclude=("sum_to_terms", "log1p_minus_quotient"))
        with np.errstate(all="ignore"):
            got, want = f(rv, nv), formula(rv, nv)
        assert np.array_equal(np.isnan(got), np.isnan(want)), (rv[np.isnan(got) != np.isnan(want)], backend)
        assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)]), backend
        differ = np.isfinite(want) & ~np.isclose(got, want, rtol=1e-13, atol=0)  # (beyond rounding)
        pairs = {(a, b) for a, b in zip(rv[differ], nv[differ])}
        assert pairs <= {(5e-324, 1e-300), (-1.0, 1e300)}, (pairs, backend)
        i = np.flatnonzero((rv == 5e-324) & (nv == 1e-300))[0]
        assert abs(got[i] / (0.5 * (5e-324 / 1e-300) ** 2) - 1) < 1e-12, got[i]
        assert got[np.flatnonzero((rv == -1) & (nv == 1e300))[0]] == 0.0


def test_log1p_minus_quotient_reads_only_what_it_may():
    """Review of 15fb7cb: a where-form whose multiplier z is not the power's exponent y was read as
    y P / (1 + x) (0.0215 for -0.4227 at x = 0.1, y = 3.5, z = 7); and the other factors multiplied in
    another order underflowed where the formula's did not (a (b / c) with a = b = 1e-200, c = 1e-300:
    0 for 4.4e-103).  Both against the formula without the rule, which loses at most 5 bits there."""
    x, y, z, a, b, c = (exprc.vector(s) for s in "xyzabc")
    one = np.array
    e = y * (1 + x) ** y * exprc.log1p(x) - exprc.where(exprc.equal(z, 0), 0, z * (1 + x) ** (y - 1)) * x
    same = y * (1 + x) ** y * exprc.log1p(x) - exprc.where(exprc.equal(y, 0), 0, y * (1 + x) ** (y - 1)) * x
    for backend in ("numpy", None):
        f = exprc.function([x, y, z], e, backend=backend)
        assert "log1p_minus_quotient" not in f.rewrites
        assert "log1p_minus_quotient" in exprc.function([x, y], same, backend=backend).rewrites
        np.testing.assert_allclose(f(one([0.1]), one([3.5]), one([7.0])), 3.5 * 1.1 ** 3.5 * math.log1p(0.1)
                                   - 7 * 1.1 ** 2.5 * 0.1, rtol=1e-14)
        A = a * (b / c)
        g = exprc.function([x, a, b, c], exprc.log1p(x) * A - A * x / (1 + x), backend=backend)
        assert "log1p_minus_quotient" in g.rewrites
        for av in (1e-200, 1e-160):
            exact = reference(lambda m, x, a, b, c: m.log1p(x) * a * (b / c) - a * (b / c) * x / (1 + x),
                              [one([0.1]), one([av]), one([av]), one([1e-300])])
            got = g(one([0.1]), one([av]), one([av]), one([1e-300]))
            assert bits_lost(got, exact).max() <= 2, (av, got, exact)


def test_subnormal_products_keep_the_formula_where_the_other_factors_overflow():
    """The scaled branch multiplies the other factors first: where their product overflows (x y exp(x)
    at x = -710, y = 1e307 is -31.8) or meets an exp that underflowed (x exp(-x) x at 1e155 is 0), the
    formula as written is taken, NaN and inf included (review of e59c97f: -inf and NaN there)."""
    x, y = exprc.vector("x"), exprc.vector("y")
    xs, ys = np.array([-710.0, -720.0, -709.0, -1e10, -800.0, np.inf]), np.array([1e307, 1e307, 1e306, 1e307, -1e300, 2.0])
    for e in (x * (y * exprc.exp(x)), y * exprc.exp(-x * x) * x, x * exprc.exp(x) / (1 / y)):
        f = exprc.function([x, y], e)
        assert "exp_subnormal_product" in f.rewrites
        with np.errstate(all="ignore"):
            want = exprc.function([x, y], e, backend="numpy", exclude=("exp_subnormal_product",))(xs, ys)
        got = f(xs, ys)
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.allclose(got, want, rtol=1e-14, equal_nan=True)
    for dtype, big in (("float64", [1e155, 1e300]), ("float32", [2e19, 3e38])):
        v = exprc.vector("v", dtype)
        got = exprc.function([v], v * exprc.exp(-v) * v)(np.array(big, dtype))
        assert np.array_equal(got, np.zeros(2, dtype)), (dtype, got)


def test_subnormal_products_add_no_guard_where_nothing_grows_with_the_exponent():
    """hypot(a, b) / (1 + exp(-c)) (bench E3), exp(-a*a) sin(b) (E2) and a correction factor 1 + lo keep their
    one product: a guard there would cost every call its scan for a tail as rare as the exponent's."""
    a, b, c = exprc.vector("a"), exprc.vector("b"), exprc.vector("c")
    for e in (exprc.sqrt(a * a + b * b) / (1 + exprc.exp(-c)), exprc.exp(-a * a) * exprc.sin(b),
              exprc.exp(a) / exprc.exp(b), exprc.exp(-a) / (1 + exprc.exp(-a)) ** 2):
        assert "exp_subnormal_product" not in exprc.optimize([e]).rewrites


def test_log_softmax_and_softmax_of_a_confident_prediction():
    """The largest logit's log-probability is -1.9e-15, not 0; a 1e-270 probability keeps its digits."""
    x = exprc.vector("x")
    d = np.array([7.04313226, 15.30532184, -31.86122116, -3.03405639, 49.21678865, -48.41473608, -572.0])
    for e, exact in [(exprc.log(exprc.exp(x) / exprc.sum(exprc.exp(x))), lambda m, x: m.log_softmax(x)),
                     (exprc.log(exprc.softmax(x)), lambda m, x: m.log_softmax(x)),
                     (exprc.exp(x) / exprc.sum(exprc.exp(x)), lambda m, x: m.softmax(x))]:
        for backend in ("numpy", None):
            got = exprc.function([x], e, backend=backend)(d)
            ref = reference(exact, [d[None, :]], rows=True)[0]
            assert bits_lost(got, ref).max() <= 4, (backend, got, ref)


def test_softmax_rules_read_only_denominators_that_line_up_with_the_rows():
    """Found in review: sum_of_exp dropped any dimshuffle or reshape of the sum, so
    exp(x) / sum(exp(x), axis=1)[None, :] (column j divided by row j's sum) became a row softmax: off
    by 36 on the NumPy backend, and on C wherever the row guard took the stable branch.  A
    denominator that broadcasts as the sum with its axes kept is still a softmax (a 0-d sum, a sum
    over leading axes, a reshape or dimshuffle that puts the reduced axis back in place)."""
    x = exprc.matrix("x")
    e = exprc.exp(x)
    rng = np.random.default_rng(3)
    xv = rng.uniform(-3, 3, (4, 4))
    big = xv + 720.0  # (every sum overflows: the C row guard takes the stable branch)
    s1 = exprc.sum(e, axis=1)
    misaligned = [e / s1.dimshuffle("x", 0), e / exprc.reshape(s1, (1, -1)), e / s1,
                  exprc.log(e / s1.dimshuffle("x", 0)), e / s1[None, :]]
    aligned = [e / s1.dimshuffle(0, "x"), e / exprc.reshape(s1, (-1, 1)), e / exprc.sum(e, axis=0),
               e / exprc.sum(e), exprc.log(e / exprc.reshape(s1, (-1, 1))), e / s1[:, None]]
    for k, out in enumerate(misaligned + aligned):
        for backend in ("numpy", "c"):
            f = exprc.function([x], out, backend=backend)
            fired = {"softmax_from_exp", "log_softmax_from_log"} & set(f.rewrites)
            assert bool(fired) == (k >= len(misaligned)), (k, f.rewrites)
            naive = exprc.function([x], out, backend="numpy", exclude=("stability",))  # (the reference)
            np.testing.assert_allclose(f(xv), naive(xv), rtol=1e-13, atol=1e-300)
            if k >= len(misaligned):  # (a softmax: shifting every logit by 720 changes nothing)
                np.testing.assert_allclose(f(big), naive(xv), rtol=1e-12, atol=1e-300)


def test_softmax_weighted_sums_keep_nan_guards_and_tiny_weights():
    """Found in review of softmax_weighted_sum and softmax_of_product: (1) a factor that cancels
    (u w / w) leaves a NaN guard in the product's view, which the rules dropped: 2.58 where NumPy
    gives NaN at w = inf; (2) exp(x - m) without the TwoSum correction lost 107 ulps of
    sum(u exp(x)) / sum(exp(x)) at x = [0.1, -500.3], u = [0, 1] (mpmath), where the formula as
    written is exact."""
    x, u, w = exprc.vector("x"), exprc.vector("u"), exprc.vector("w")
    e = exprc.exp(x)
    xv, uv, wv = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, np.inf])
    for out in (exprc.sum(e * (u * w / w)) / exprc.sum(e), e * (u * w / w) / exprc.sum(e)):
        for backend in ("numpy", "c"):
            got = exprc.function([x, u, w], out, backend=backend)(xv, uv, wv)
            want = exprc.function([x, u, w], out, backend="numpy", exclude=("stability",))(xv, uv, wv)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert np.isnan(got).any()
    rng = np.random.default_rng(11)
    xs = rng.uniform(-700, 5, (200, 8))
    us = rng.uniform(0.5, 2.0, (200, 8))
    us[np.arange(200), xs.argmax(axis=1)] = 0.0  # (the far entries carry the numerator)
    xs[0, :2], us[0, :2] = [0.1, -500.3], [0.0, 1.0]
    X, U = exprc.matrix("X"), exprc.matrix("U")
    spell = lambda m, a, b: m.sum(b * m.exp(a), axis=-1) / m.sum(m.exp(a), axis=-1)
    ref = reference(spell, [xs, us], rows=True).reshape(-1)
    for backend in ("numpy", "c"):
        f = exprc.function([X, U], spell(exprc, X, U), backend=backend)
        assert "softmax_weighted_sum" in f.rewrites
        assert bits_lost(f(xs, us), ref).max() <= 4


def test_sqrt_conjugate_of_a_hypot_of_one_operand_twice():
    """Found by the fuzzer's row batches: sqrt_of read hypot(x, x) as the view x**2 + x**2 with the
    same term twice, which a view holds once, so x - hypot(x, x) became -(0 / (hypot(x, x) + x)):
    -0.0 for every x (exact: (1 - sqrt 2) x)."""
    x = exprc.vector("x")
    xv = np.array([2.9, 1.0, -3.0, 1e-300, 1e300, 0.0, np.inf, np.nan])
    for out, ref in [(x - exprc.hypot(x, x), xv - np.hypot(xv, xv)), (exprc.hypot(x, x) - x, np.hypot(xv, xv) - xv),
                     (2 * x - exprc.hypot(x, x), 2 * xv - np.hypot(xv, xv))]:
        for backend in ("numpy", "c"):
            with np.errstate(all="ignore"):
                got = exprc.function([x], out, backend=backend)(xv)
            np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    # Found in review: where the conjugate's numerator (a difference of squares) underflows, the
    # formula as written is used (hypot(x, y) - x at 1e-300, 3e-301 was 0 for 4.4e-302).
    y = exprc.vector("y")
    xv, yv = np.array([1e-300, 1e-170, 5e-324, 1.0, 1e8]), np.array([3e-301, 2e-171, 5e-324, 1e-5, 1.0])
    with mpmath.workdps(60):
        ref = [float(mpmath.sqrt(mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) - mpmath.mpf(a)) for a, b in zip(xv, yv)]
    for backend in ("numpy", "c"):
        got = exprc.function([x, y], exprc.hypot(x, y) - x, backend=backend)(xv, yv)
        assert bits_lost(got, np.array(ref))[:2].max() <= 8 and bits_lost(got, np.array(ref))[3:].max() <= 2


def test_log_of_softmax_finds_the_row_maximum_once():
    """log(softmax(z)): softmax already subtracted the row maximum, so the log-softmax form reads it
    (one max per row, not two) and gives what the twice-shifted form gives, non-finite rows included."""
    z = exprc.matrix("z")
    e = exprc.log(exprc.softmax(z, axis=1))
    fg = exprc.optimize([e])
    assert sum(n.op == "max" for n in exprc.graph.toposort(fg.outputs)) == 1
    rows = np.array([[7.0, 15.3, -31.8, 49.2, -572.0], [0.0, -40.0, -40.0, -745.0, -800.0],
                     [1.0, np.inf, 2.0, 3.0, 4.0], [-np.inf] * 5, [1.0, np.nan, 2.0, 3.0, 4.0],
                     [-np.inf, 0.0, -np.inf, 1.0, -0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    x = exprc.matrix("x")
    twice = exprc.log(exprc.exp(x) / exprc.sum(exprc.exp(x), axis=1, keepdims=True))  # its own max
    with np.errstate(invalid="ignore"):
        shifted_rows = rows - rows.max(axis=1, keepdims=True)
    for backend in ("numpy", "c"):
        got = exprc.function([z], e, backend=backend)(rows)
        want = exprc.function([x], twice, backend=backend)(shifted_rows)
        np.testing.assert_array_equal(got[:2], want[:2])
        np.testing.assert_array_equal(got[5:], want[5:])
        assert np.isnan(got[3:5]).all()  # as NumPy's log(exp(x) / sum(exp(x))): -inf and NaN rows are NaN
        # (and a row holding +inf: softmax shifts it by 0, the quotient as written, 0 for its finite
        # entries, NaN for the +inf one; and exprc.log_softmax likewise)
        np.testing.assert_array_equal(got[2], [-np.inf, np.nan, -np.inf, -np.inf, -np.inf])
        np.testing.assert_array_equal(exprc.function([z], exprc.log_softmax(z, axis=1), backend=backend)(rows[2:3])[0],
                                      got[2])
        shifted = rows[:2] - rows[:2].max(axis=1, keepdims=True)  # softmax's own (rounded) shift
        assert bits_lost(got[:2], reference(lambda m, x: m.log_softmax(x), [shifted], rows=True)).max() <= 4


def test_cancelled_factors_keep_nan_at_zero():
    """x/x and (x*y)/y are NaN at 0 in IEEE arithmetic and NumPy; only factors that are nonzero in
    exact arithmetic (sigmoid underflowing to 0) cancel to their limit."""
    x, y = exprc.vector("x"), exprc.vector("y")
    with np.errstate(all="ignore"):
        for backend in ("numpy", "c"):
            f = exprc.function([x, y], [x / x, (x * y) / y, 1 / exprc.sigmoid(x) * exprc.sigmoid(x) * y],
                               backend=backend)
            r = f(np.array([0.0, 2.0, -800.0]), np.array([0.0, 1e200, 3.0]))
            assert np.isnan(r[0][0]) and r[0][1] == 1.0
            assert np.isnan(r[1][0]) and r[1][1] == 2.0
            assert r[2][2] == 3.0  # sigmoid(-800) underflows to 0; the cancelled form stays exact


def test_series_prefixes_are_the_full_series_first_terms():
    """taylor_cancellation compares only the first terms (the full 72-term list of tanh is slow to
    build): a prefix must be exactly the start of the full list, and both match sympy's series."""
    import sympy as sp

    from exprc.rewrite import series

    v = sp.Symbol("v")
    for op, fn in (("tanh", sp.tanh), ("tan", sp.tan), ("log1p", lambda x: sp.log(1 + x)), ("arcsinh", sp.asinh)):
        full = series.coefficients(op)
        exact = sp.Poly(sp.series(fn(v), v, 0, 12).removeO(), v)
        for n in (1, 2, 5, 12):
            assert series.coefficients(op, n) == full[:n]
        assert [sp.Rational(c.numerator, c.denominator) for c in full[:12]] == [exact.coeff_monomial(v ** i)
                                                                                 for i in range(12)]


@pytest.mark.parametrize("c", [1.0, 1 / 3, 1e6])
def test_log1p_square_guard_fires_in_float32(c):
    """log(1 + c x*x) in float32: c x*x overflows at |x| ~ 1.8e19 / sqrt(c), so the guard's threshold is
    float32's own (a float64 threshold of 1e150 rounds to inf there and the guard never fires)."""
    x = exprc.vector("x", "float32")
    f = exprc.function([x], exprc.log(1 + c * (x * x)))
    v = np.array([1e20, -3e19, 1e30, 3.4e38, 1e15, 2.0, 1e-30, 0.0, np.inf, np.nan], np.float32)
    want = np.log1p(c * v.astype(np.float64) ** 2).astype(np.float32)  # float64 does not overflow here
    np.testing.assert_allclose(f(v), want, rtol=2e-6, equal_nan=True)


#: series_difference's cases: (formula, its function terms as exprc.rewrite.series.sum_branch reads them)
SERIES_DIFFERENCES = [
    (lambda m, x: m.tan(x) - m.sin(x), (("sin", -1), ("tan", 1))),
    (lambda m, x: m.sinh(x) - m.sin(x), (("sin", -1), ("sinh", 1))),
    (lambda m, x: m.exp(x) - m.cos(x), (("cos", -1), ("exp", 1))),
    (lambda m, x: m.tan(x) - m.tanh(x), (("tan", 1), ("tanh", -1))),
]


@pytest.mark.parametrize("backend", ["numpy", None])
@pytest.mark.parametrize("i", range(len(SERIES_DIFFERENCES)))
def test_series_difference_near_its_radius_and_at_special_values(i, backend):
    """Against mpmath over all magnitudes of both signs and on either side of the branch radius (where
    the series hands over to the formula), and NaN, ±inf, ±0 as the formula gives them."""
    from fractions import Fraction

    from exprc.rewrite import series

    formula, fns = SERIES_DIFFERENCES[i]
    r, _ = series.sum_branch(tuple((op, Fraction(c)) for op, c in fns), ())
    assert r < 0.9 * min(series.FUNCTIONS[op][0] for op, _ in fns)  # inside the series' convergence
    x = exprc.vector("x")
    f = exprc.function([x], formula(exprc, x), backend=backend)
    assert "series_difference" in f.rewrites
    rng = np.random.default_rng(7)
    near = r * (1 + np.ldexp(1.0, -np.arange(1, 53)))
    near = np.concatenate([near, r * (1 - np.ldexp(1.0, -np.arange(1, 53))), [r, np.nextafter(r, 0)]])
    pts = np.concatenate([sample((S, 1e-300, 2 * r), 400, rng), near, -near, np.geomspace(1e-30, 1.2, 200)])
    with np.errstate(all="ignore"):
        got = f(pts)
    lost = bits_lost(got, reference(formula, [pts]))
    assert lost.max() <= 4.0, (pts[np.argmax(lost)], lost.max())
    nonfinite, tiny = np.array([np.nan, np.inf, -np.inf]), np.array([0.0, -0.0, 5e-324, -5e-324])
    with np.errstate(all="ignore"):
        assert np.isnan(f(nonfinite)).all() and np.isnan(formula(NP, nonfinite)).all()  # as the formula
        # (exactly: exp(x) - cos(x) at 5e-324 is 5e-324, where the formula gives 1 - 1 = 0; -0.0 == 0.0)
        np.testing.assert_array_equal(f(tiny), reference(formula, [tiny]))


@pytest.mark.parametrize("backend", ["numpy", None])
def test_tan_minus_sin_beyond_the_radius_near_multiples_of_two_pi(backend):
    """tan(x) - sin(x) cancels again wherever x is near 2 pi k, not only near 0: beyond the series'
    radius it is tan(x) 2 sin(x/2)^2, so huge x near such a multiple (where the vector tan and sin's
    few ulps were amplified: 9 bits at -1.37e239) stays as accurate as each factor."""
    x = exprc.vector("x")
    f = exprc.function([x], exprc.tan(x) - exprc.sin(x), backend=backend)
    k = np.arange(1, 400)
    pts = np.concatenate([[-1.3703008834022176e+239], 2 * np.pi * k + 1e-3 * np.cos(k),
                          np.random.default_rng(3).choice([-1.0, 1.0], 400) * np.geomspace(1.0, 1e300, 400)])
    with np.errstate(all="ignore"):
        got, naive = f(pts), np.tan(pts) - np.sin(pts)
    ref = reference(lambda m, x: m.tan(x) - m.sin(x), [pts])
    lost, lost_naive = bits_lost(got, ref), bits_lost(naive, ref)
    assert lost.max() <= 4.0, (pts[np.argmax(lost)], lost.max())
    assert np.all(lost <= np.maximum(lost_naive, 2.0) + 1.0)


@pytest.mark.parametrize("backend", ["numpy", None])
def test_exp_pairs_carry_the_rounding_of_their_argument(backend):
    """exp(a)/exp(b) and exp(a)/(exp(a) + exp(b)) as exp(s)(1 + e) and sigmoid(s)(1 + e sigmoid(-s)),
    s + e = a - b exactly: within 2 bits of mpmath where a - b rounds (705.1 - 3.3: the rounding alone
    was 7 bits of exp(a - b)), and right where |a - b| >= 2**53, where e is not small (exp(-1) /
    exp(-3e204) is inf, not inf * (1 + (-1)) = NaN)."""
    a, b = exprc.vector("a"), exprc.vector("b")
    pa = np.array([705.123456789, 708.987654321, 750.3, -701.77, 1000.1, -1.0, 3e204, 1e300, -1e300])
    pb = np.array([3.31234567, 0.1111111, 49.777777, -9.12345678, 300.55555, -3.0985169634806457e+204, 1.0,
                   1e300, 7.0])
    for formula in (lambda m, u, v: m.exp(u) / m.exp(v), lambda m, u, v: m.exp(u) / (m.exp(u) + m.exp(v))):
        f = exprc.function([a, b], formula(exprc, a, b), backend=backend)
        with np.errstate(all="ignore"):
            got = f(pa, pb)
        ref = reference(formula, [pa, pb])
        assert np.array_equal(np.isnan(got), np.isnan(ref)), (got, ref)
        fin = np.isfinite(ref)
        assert bits_lost(got[fin], ref[fin]).max() <= 2.0
        np.testing.assert_array_equal(got[~fin], ref[~fin])


@pytest.mark.parametrize("backend", ["numpy", None])
@pytest.mark.parametrize("op", ["sin", "cos"])
def test_trig_differences_with_any_step(op, backend):
    """sin(x + e) - sin(x) and cos(x + e) - cos(x) as 2 cos/sin(x + e/2) sin(e/2), x + e/2 never
    rounded: within 4 bits of mpmath for steps from 1e-15 to 1e15 (where x + e lands near x modulo
    2 pi the former sum form cancelled: 4.2 bits at e = 5.5e13, worse than the naive formula), never
    more than 1 bit worse than the naive formula (beyond 2 bits of noise), and through the rare branch
    where x + e/2 is beyond 2**26 and its rounding error is not small."""
    rng = np.random.default_rng(4)
    n = 600
    px = np.concatenate([rng.uniform(-10, 10, n), [0.5], rng.uniform(-1e12, 1e12, 50)])
    pe = np.concatenate([rng.choice([-1.0, 1.0], n) * np.exp(rng.uniform(np.log(1e-15), np.log(1e15), n)),
                         [54894496530034.14], rng.uniform(-1e12, 1e12, 50)])
    formula = (lambda m, x, e: m.sin(x + e) - m.sin(x)) if op == "sin" else (lambda m, x, e: m.cos(x + e) - m.cos(x))
    x, e = exprc.vector("x"), exprc.vector("e")
    f = exprc.function([x, e], formula(exprc, x, e), backend=backend)
    assert f"{op}_difference" in f.rewrites
    ref = reference(formula, [px, pe])
    lost, naive = bits_lost(f(px, pe), ref), bits_lost(formula(NP, px, pe), ref)
    assert lost.max() <= 4.0, (px[np.argmax(lost)], pe[np.argmax(lost)], lost.max())
    assert np.all(lost <= np.maximum(naive, 2.0) + 1.0)


@pytest.mark.parametrize("backend", ["numpy", None])
def test_exp_pairs_in_float32(backend):
    """The carried TwoSum error in float32 (it reaches 2**-18 where exp(s) is finite, past float64's
    threshold of 2**-20: a first version dropped it there, 6 bits lost) against mpmath."""
    rng = np.random.default_rng(12)
    pa, pb = rng.uniform(-44, 44, 2000).astype(np.float32), rng.uniform(-44, 44, 2000).astype(np.float32)
    a, b = exprc.vector("a", "float32"), exprc.vector("b", "float32")
    for formula in (lambda m, u, v: m.exp(u) * m.exp(v), lambda m, u, v: m.exp(u) / (m.exp(u) + m.exp(v))):
        got = exprc.function([a, b], formula(exprc, a, b), backend=backend)(pa, pb)
        ref = reference(formula, [pa.astype(np.float64), pb.astype(np.float64)]).astype(np.float32)
        fin = np.isfinite(ref) & (np.abs(ref) >= np.finfo(np.float32).tiny)
        assert bits_lost(got[fin], ref[fin]).max() <= 2.0


@pytest.mark.parametrize("backend", ["numpy", None])
def test_quotient_and_product_rules_at_the_edges_of_the_floats(backend):
    """quotient_into_branches puts a power-of-two coefficient where it shrinks an operand (t * 2 below
    overflowed for 0.5) and declines coefficients no float holds (1e-600 became 0.0); exp_product and
    product_cancel likewise (product_cancel raised OverflowError for (a b 1e200)/(a 1e-200))."""
    a, b, t, y = (exprc.vector(n) for n in "abty")
    cases = [
        ([a, b, t], exprc.where(a > 0, (a * b) * 0.5, b) / (a * t), ([1.0], [1e308], [1e308]), [0.5]),
        ([a, b, y], exprc.where(a > 0, a * b * 1e-200, y) / (a * 1e200), ([1.0, 2.0], [1e300, 1e-300], [1.0, 1.0]),
         [1e-100, 0.0]),
        ([a, b], (exprc.exp(a) * 1e-300) / (exprc.exp(b) * 1e300), ([699.0, 690.0], [-10.0, -5.0]),
         [math.exp(709) * 1e-300 / 1e300, math.exp(695) * 1e-300 / 1e300]),
        ([a, b], (a * b * 1e200) / (a * 1e-200), ([1.0], [1e-300]), [1e100]),
    ]
    for ins, expr, args, want in cases:
        got = exprc.function(ins, expr, backend=backend)(*[np.array(v) for v in args])
        np.testing.assert_allclose(got, want, rtol=1e-13)


#: Formulas the long series branch or series_quotient fix, with the series function that sets the radius.
LONG_AND_QUOTIENT = [
    (lambda m, x: m.arctan(x) - x, "arctan", 1), (lambda m, x: m.tanh(x) / x - 1, "tanh", 1),
    (lambda m, x: m.arctanh(x) - x, "arctanh", 1), (lambda m, x: 1 - x / m.sin(x), "sin", 1),
    (lambda m, x: 1 / x - 1 / m.tan(x), "tan", 1), (lambda m, x: 1 - x / m.expm1(x), "expm1", 1),
]


@pytest.mark.parametrize("backend", ["numpy", None])
@pytest.mark.parametrize("i", range(len(LONG_AND_QUOTIENT)))
def test_long_series_and_quotients_near_the_radius_and_at_special_values(i, backend):
    """Against mpmath over all magnitudes of both signs and on either side of the radius where the
    series hands over to the formula; NaN, ±inf, ±0 and the poles as the formula gives them."""
    from exprc.rewrite import series

    formula, op, m = LONG_AND_QUOTIENT[i]
    r, n = series.branch(op, m)
    assert n <= series.LONG_TERMS and r < 0.9 * series.FUNCTIONS[op][0]
    x = exprc.vector("x")
    f = exprc.function([x], formula(exprc, x), backend=backend)
    assert {"taylor_cancellation", "series_quotient"} & set(f.rewrites), f.rewrites
    rng = np.random.default_rng(11)
    near = r * (1 + np.ldexp(1.0, -np.arange(1, 53)))
    near = np.concatenate([near, r * (1 - np.ldexp(1.0, -np.arange(1, 53))), [r, np.nextafter(r, 0)]])
    top = 0.999 if op == "arctanh" else 3 * r
    pts = np.concatenate([sample((S, 1e-300, top), 400, rng), near, -near, np.geomspace(1e-30, top, 200)])
    pts = pts[np.abs(pts) < top]
    with np.errstate(all="ignore"):
        got = f(pts)
    lost = bits_lost(got, reference(formula, [pts]))
    assert lost.max() <= 4.0, (pts[np.argmax(lost)], lost.max())
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.25 * r, -1.25 * r, 4.0, 800.0, -800.0])
    plain = exprc.function([x], formula(exprc, x), backend=backend, exclude=("taylor_cancellation", "series_quotient"))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(f(special), plain(special))  # beyond r: the formula itself
        tiny = np.array([5e-324, -5e-324, 1e-310])
        np.testing.assert_array_equal(f(tiny), reference(formula, [tiny]))


def test_series_difference_only_where_leading_terms_cancel():
    """Nothing cancels (sin + tan, exp + cos, tan - 2 sin, (tan + x) - sin), the arguments differ, or no radius works
    (tanh(x) - sin(x) = -x**3/6 + …: the formula is within 3 bits only past 1.1, too near tanh's pole
    at pi/2 i for the series): the rule leaves the sum alone."""
    x = exprc.vector("x")
    for expr in (exprc.sin(x) + exprc.tan(x), exprc.exp(x) + exprc.cos(x), exprc.tan(x) - 2 * exprc.sin(x),
                 exprc.tan(x) - exprc.sin(2 * x), exprc.tanh(x) - exprc.sin(x), exprc.tan(x) + x - exprc.sin(x)):
        f = exprc.function([x], expr, backend="numpy")
        assert "series_difference" not in f.rewrites, exprc.pprint(expr)


def test_series_difference_float32_and_gradient():
    x32 = exprc.vector("x", dtype="float32")
    f = exprc.function([x32], exprc.tan(x32) - exprc.sin(x32), backend="numpy")
    pts = np.geomspace(1e-20, 1.4, 300).astype(np.float32)
    pts = np.concatenate([pts, -pts])
    got = f(pts)
    assert got.dtype == np.float32 and "series_difference" in f.rewrites
    ref = reference(lambda m, x: m.tan(x) - m.sin(x), [pts.astype(np.float64)]).astype(np.float32)
    assert bits_lost(got, ref).max() <= 4.0
    x = exprc.vector("x")
    g = exprc.function([x], exprc.grad(exprc.sum(exprc.tan(x) - exprc.sin(x)), x), backend="numpy")
    d = np.geomspace(1e-8, 1.4, 200)
    d = np.concatenate([d, -d])
    exact = reference(lambda m, x: 1 / m.cos(x) ** 2 - m.cos(x), [d])
    assert bits_lost(g(d), exact).max() <= 4.0


def test_normal_cdf_gradient_in_the_far_tail():
    """d/dx of 0.5 (1 + erf(x / sqrt(2))) is the normal density; its exp(-u**2) reads u = fl(x / sqrt(2)),
    whose rounding cost 10 bits at x = -37 before exp_exact_square took it in."""
    import mpmath

    x = exprc.vector("x")
    g = exprc.function([x], exprc.grad(exprc.sum(0.5 * (1 + exprc.erf(x / math.sqrt(2)))), x))
    pts = np.concatenate([np.linspace(-37.5, -20.0, 150), np.linspace(-3.0, 3.0, 20)])
    with mpmath.workprec(120):
        ref = np.array([float(mpmath.exp(-(mpmath.mpf(float(t)) / mpmath.mpf(math.sqrt(2))) ** 2)
                              * 2 / mpmath.sqrt(mpmath.pi) * 0.5 / mpmath.mpf(math.sqrt(2))) for t in pts])
    assert bits_lost(g(pts), ref).max() <= 4



def test_exp_exact_square_keeps_the_sign_of_its_zeros_and_infinities():
    """The correction 1 + c lo of exp(c u**2) went negative where lo, an ulp of u**2, is large (|u| > 1e8)
    and the guard |u| < 1e150 still let it in: exp(-x*x/2) was -0.0 at x = 1e100 and exp(x*x) -inf at
    x = 1e120.  The guard is now |c u**2| < 746 (float32: 105), beyond which exp is 0 or inf anyway.
    Every float64 and float32 magnitude from 1e-30 to the largest, both signs, both backends, the
    spellings with a rounded argument (x / sqrt(2)) too."""
    for dtype in ("float64", "float32"):
        info = np.finfo(dtype)
        mags = np.concatenate([np.logspace(-30, np.log10(float(info.max)), 400), [float(info.max), 5e7, 1e8]])
        xs = np.concatenate([mags, -mags, [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
        x = exprc.vector("x", dtype)
        for spell in (lambda m, x: m.exp(-x * x / 2), lambda m, x: m.exp(x * x),
                      lambda m, x: m.exp(-(x / math.sqrt(2)) ** 2), lambda m, x: m.exp(m.square(x) * 0.25)):
            with np.errstate(all="ignore"):
                naive = spell(np, xs)
            for backend in ("numpy", "c"):
                f = exprc.function([x], spell(exprc, x), backend=backend)
                assert "exp_exact_square" in f.rewrites
                with np.errstate(all="ignore"):
                    got = f(xs)
                np.testing.assert_array_equal(np.isnan(got), np.isnan(naive))
                edge = ~np.isfinite(naive) | (naive == 0)
                np.testing.assert_array_equal(got[edge], naive[edge])
                num = ~np.isnan(naive)
                np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(naive[num]))
    # Found in review: exp_subnormal_product's slow branch (down to p = -1416) still multiplies the
    # correction in, so it must apply that far (x y exp(-x*x/2) at x = 51.8, y = 1e300 lost 995 ulps
    # under a bound of |c u**2| < 746); and a tiny c must not let u**2 overflow inside the bound.
    x, y = exprc.vector("x"), exprc.vector("y")
    xs = np.linspace(38.0, 53.0, 301)
    with mpmath.workdps(60):
        ref = np.array([float(mpmath.mpf(float(t)) * mpmath.mpf(1e300) * mpmath.exp(-mpmath.mpf(float(t)) ** 2 / 2))
                        for t in xs])
    for backend in ("numpy", "c"):
        f = exprc.function([x, y], x * y * exprc.exp(-x * x / 2), backend=backend)
        assert bits_lost(f(xs, np.full_like(xs, 1e300)), ref).max() <= 4
        big = np.array([2e154, -3e160, 1e300])
        for e, want in ((exprc.exp(x * x * 2.0**-1020), np.inf), (exprc.exp(-(x * x * 2.0**-1020)), 0.0)):
            got = exprc.function([x], e, backend=backend)(big)
            assert (got == want).all() and not np.signbit(got).any(), got



def test_exp_exact_square_reads_a_square_scaled_inside_the_product_in_float32():
    """float32 exp(0.25*x*x) parses as exp((0.25 * x) * x): no square node, so the rule did not fire, and
    float32 has no exp_exact_argument: 60 ulps lost at x = 16.9 (exp(-2*x*x): 55).  The product of x
    and a power-of-two multiple of x rounds only in x * x, so the exact-square correction applies.
    Against mpmath on the float32 inputs; float64 keeps exp_exact_argument's rare guard for it."""
    x = exprc.vector("x", "float32")
    cases = [(lambda m, x: m.exp(0.25 * x * x), 0.25, 18.0), (lambda m, x: m.exp(-2 * x * x), -2.0, 6.2),
             (lambda m, x: m.exp(-(x * 0.5 * x)), -0.5, 13.0)]
    for spell, c, top in cases:
        xs = np.linspace(0.5, top, 1500).astype(np.float32)
        with mpmath.workdps(40):
            ref = np.array([float(mpmath.exp(mpmath.mpf(c) * mpmath.mpf(float(t)) ** 2)) for t in xs])
        ok = np.isfinite(ref) & (ref > float(np.finfo(np.float32).tiny)) & (ref < float(np.finfo(np.float32).max))
        scale = np.spacing(ref[ok].astype(np.float32)).astype(np.float64)
        for backend in ("numpy", "c"):
            f = exprc.function([x], spell(exprc, x), backend=backend)
            assert "exp_exact_square" in f.rewrites
            assert (np.abs(f(xs)[ok].astype(np.float64) - ref[ok]) / scale).max() <= 4
        g = exprc.function([x], spell(exprc, x), exclude=("exp_exact_square",))
        assert (np.abs(g(xs)[ok].astype(np.float64) - ref[ok]) / scale).max() > 10  # (what the rule buys)
    x64 = exprc.vector("x")
    assert "exp_exact_square" not in exprc.function([x64], exprc.exp(0.25 * x64 * x64)).rewrites


def test_exp_exact_argument_leaves_sums_and_squares_alone():
    """No product of variables in the argument (softmax's exp(z - m), exp(x + y)): nothing to recover that
    costs more than a few ulps, and the rule stays out; exp(c * x**2) is exp_exact_square's; float32 and the
    gradient are left as written (value-only: the split's derivative cancels)."""
    x, y = exprc.vector("x"), exprc.vector("y")
    for expr in (exprc.exp(x - y), exprc.exp(x + 2.5 * y), exprc.sigmoid(x * 3.1 - y), exprc.exp(-x * x / 2)):
        f = exprc.function([x, y], expr, backend="numpy")
        assert "exp_exact_argument" not in f.rewrites, exprc.pprint(expr)
    assert "exp_exact_square" in exprc.function([x], exprc.exp(-x * x / 2), backend="numpy").rewrites
    x32 = exprc.vector("x", "float32")
    assert "exp_exact_argument" not in exprc.function([x32], exprc.exp(x32 * x32 * 0.3), backend="numpy").rewrites
    g = exprc.function([x, y], exprc.grad(exprc.sum(exprc.exp(-x * y * 1.7)), x), backend="numpy")
    pts = np.array([6.0, 11.0, 20.0])
    np.testing.assert_allclose(g(pts, pts), -1.7 * pts * np.exp(-1.7 * pts * pts), rtol=1e-12)


def test_wrong_answers_the_contract_mode_found():
    """bench/accuracy.py --contract found these: exp(x)·expm1(e) is 0·inf = NaN where exp(x) underflows
    and expm1(e) overflows (exact: 0), and cos(2x) is NaN where 2x overflows (cos(x)**2 - sin(x)**2 is not)."""
    x, e = exprc.vector("x"), exprc.vector("e")
    for backend in ("numpy", "c"):
        f = exprc.function([x, e], exprc.exp(x + e) - exprc.exp(x), backend=backend)
        with np.errstate(all="ignore"):
            got = f(np.array([-1.3351413603307875e246, -800.0, 1.0]), np.array([5.327437148808278e114, 1e-10, 1e-12]))
        assert got[0] == 0.0 and got[1] == 0.0
        assert bits_lost(got[2:], reference(lambda m, x, e: m.exp(x + e) - m.exp(x), [np.array([1.0]),
                                                                                     np.array([1e-12])])).max() <= 2
        g = exprc.function([x], exprc.cos(x) ** 2 - exprc.sin(x) ** 2, backend=backend)
        big = np.array([1.7976931348623157e308, -1e308, 9e307])
        want = np.cos(big) ** 2 - np.sin(big) ** 2
        assert np.isfinite(g(big)).all()
        np.testing.assert_allclose(g(big), want, rtol=1e-12)


def test_log_exp_difference_where_its_arguments_are_equal_only_by_rounding():
    """log(exp(a) - exp(a - d)) with |d| << |a|: a - d rounds to a, and the rule's x == y branch gave
    log(0) = -inf.  The sum views know y - x = -d exactly: NaN for d < 0 (exp(a) < exp(a - d), found by
    bench/accuracy.py --contract at a = 4.6e264, d = -2.7e105) and a + log1mexp(-d) for d > 0 (log(d) to
    first order: 109.2 at a = 800, d = 1e-300, where the naive form is inf - inf)."""
    import mpmath

    a, d, b = exprc.vector("a"), exprc.vector("d"), exprc.vector("b")
    for backend in ("numpy", "c"):
        f = exprc.function([a, d], exprc.log(exprc.exp(a) - exprc.exp(a - d)), backend=backend)
        with np.errstate(all="ignore"):
            got = f(np.array([4.57e264, 5.0, 5.0, 800.0, 30.0]), np.array([-2.68e105, 0.0, -1.0, 1e-300, 1e-17]))
        assert np.isnan(got[0]) and got[1] == -np.inf and np.isnan(got[2])
        want = [float(mpmath.mpf(800) + mpmath.log(-mpmath.expm1(mpmath.mpf(-1e-300)))),
                float(mpmath.mpf(30) + mpmath.log(-mpmath.expm1(mpmath.mpf(-1e-17))))]
        np.testing.assert_allclose(got[3:], want, rtol=1e-15)
        g = exprc.function([a, b], exprc.log(exprc.exp(a) - exprc.exp(b)), backend=backend)
        with np.errstate(all="ignore"):
            got = g(np.array([-np.inf, 3.0, np.inf]), np.array([-np.inf, 3.0, np.inf]))
        assert got[0] == -np.inf and got[1] == -np.inf and np.isnan(got[2])


def test_exp_exact_argument_only_where_the_correction_is_small():
    """Where |p| is beyond 746, exp(p) is 0 or inf and p's rounding error is an ulp of p or more: the
    first-order correction exp(p) (1 + lo) would flip inf to -inf ((1 + x/n)**n at x = 2e25, n = -1e300,
    whose compensated base gives exp(2e25); found by bench/accuracy.py --contract)."""
    x, n = exprc.vector("x"), exprc.vector("n")
    f = exprc.function([x, n], (1 + x / n) ** n)
    with np.errstate(all="ignore"):
        got = f(np.array([2.0542364656561257e25, 1.0, 3.0]), np.array([-1e300, 1e6, 1e300]))
    assert got[0] == np.inf
    np.testing.assert_allclose(got[1:], [np.exp(1e6 * np.log1p(1e-6)), np.exp(3.0)], rtol=1e-14)
    y = exprc.vector("y")
    g = exprc.function([x, y], [exprc.exp(x * y * 1.5), exprc.exp(-x * y * 1.5)])
    big = np.array([1e10, 3e200])
    up, down = g(big, big)
    assert (up == np.inf).all() and (down == 0.0).all()


def test_log_erfc_and_log_normal_cdf_gradients_in_the_tails():
    """d/dx log(erfc(x)) = -2/sqrt(pi) exp(-x**2)/erfc(x) is 0/0 from x = 26.6; erfc_exp_ratio makes it
    -2/sqrt(pi)/erfcx(x).  The log normal CDF's gradient likewise, to |x| = 1e150 either way: where the
    CDF is near 1 the gradient underflows to 0 (it was NaN: erfcx's argument correction met inf - inf)."""
    import mpmath

    from exprc.accuracy.exact import _build

    exact = _build(False)
    x = exprc.vector("x")
    c = mpmath.mpf(math.sqrt(2))
    pts = np.concatenate([np.linspace(-40, 40, 161), np.geomspace(40, 1e150, 40), -np.geomspace(40, 1e150, 40)])
    for e, ref in [(exprc.log(exprc.erfc(x)), lambda v: -2 / mpmath.sqrt(mpmath.pi) / exact["erfcx"](v)),
                   (exprc.log(0.5 * exprc.erfc(-x / math.sqrt(2))),
                    lambda v: 2 / mpmath.sqrt(mpmath.pi) / c / exact["erfcx"](-v / c)),
                   (exprc.log(0.5 * (1 + exprc.erf(x / math.sqrt(2)))),
                    lambda v: 2 / mpmath.sqrt(mpmath.pi) / c / exact["erfcx"](-v / c))]:
        for backend in ("numpy", "c"):
            g = exprc.function([x], exprc.grad(exprc.sum(e), x), backend=backend)
            assert "erfc_exp_ratio" in g.rewrites
            with mpmath.workprec(300):
                want = np.array([float(ref(mpmath.mpf(float(v)))) for v in pts])
            got = g(pts)
            assert np.isfinite(got).all()
            assert bits_lost(got, want).max() <= 3, (exprc.pprint(e), pts[np.argmax(bits_lost(got, want))])


def test_inverse_pairs_improve_on_the_naive_composition():
    """exp(log1p(x)) at large x carries log1p's rounding (up to half an ulp of 690) into the result:
    hundreds of ulps; cos(arccos(x)) near 0 gives cos at a rounding of pi/2.  The rewrites are exact, and
    keep the inner function's domain (NaN outside it, as the composition gives)."""
    x = exprc.vector("x")
    big = np.geomspace(1e10, 1e300, 400)
    small = np.concatenate([np.geomspace(1e-300, 1e-3, 300), -np.geomspace(1e-300, 1e-3, 300)])
    for e, naive, pts, exact, outside in [
            (exprc.exp(exprc.log1p(x)), lambda v: np.exp(np.log1p(v)), big, lambda v: 1 + v, np.array([-1.5, -np.inf])),
            (exprc.cos(exprc.arccos(x)), lambda v: np.cos(np.arccos(v)), small, lambda v: v, np.array([1.5, -2.0]))]:
        for backend in ("numpy", "c"):
            f = exprc.function([x], e, backend=backend)
            assert bits_lost(f(pts), exact(pts)).max() == 0
            assert bits_lost(naive(pts), exact(pts)).max() > 6
            with np.errstate(all="ignore"):
                assert np.isnan(f(outside)).all() and np.isnan(naive(outside)).all()
    assert exprc.function([x], exprc.exp(exprc.log1p(x)))(np.array([-1.0]))[0] == 0.0
    # (late: 2 exp(log1p(x)) - 2 is still exactly 2x, not (1 + x) * 2 - 2)
    tiny = np.geomspace(1e-300, 1e-3, 50)
    np.testing.assert_array_equal(exprc.function([x], 2 * exprc.exp(exprc.log1p(x)) - 2)(tiny), 2 * tiny)


def test_tan_difference_never_rounds_x_plus_e():
    """tan(x + e) - tan(x) where rounding x + e moves the angle (|x + e| huge) or x + e is near a pole:
    within 4 bits of mpmath and never worse than the naive formula by more than a bit (the never-worse
    contract's violations of bench/accuracy.py --contract, 331 of 5000 before)."""
    spell = lambda m, x, e: m.tan(x + e) - m.tan(x)
    x = np.array([22866713843.746525, 1.1536834846104865e-80, 0.5337885466112082, 1e15, -3e9, 0.3, 1.2])
    e = np.array([3.2826380774930557e+149, -4.505933923008479e+243, 1.0, 1e-3, 7e20, 1e-12, 1e-15])
    ref = reference(spell, [x, e])
    xv, ev = exprc.vector("x"), exprc.vector("e")
    f = exprc.function([xv, ev], spell(exprc, xv, ev))
    assert "tan_difference" in f.rewrites
    with np.errstate(all="ignore"):
        naive = spell(NP, x, e)
    b_got, b_naive = bits_lost(f(x, e), ref), bits_lost(naive, ref)
    assert b_got.max() <= 4, b_got
    assert not (b_got > np.maximum(b_naive, NOISE) + 1).any(), (b_got, b_naive)


def test_sqrt_taylor_remainder_has_nothing_left_to_cancel():
    """sqrt(1 + x) - 1 - x/2 = -(sqrt(1 + x) - 1)**2 / 2: within 4 bits of mpmath from x = 1e-300 to the
    largest double (the formula returns 0 below |x| = 1e-8, and t*t would overflow at 1.8e308), never
    worse than naive, NaN where the formula gives NaN."""
    spell = lambda m, x: m.sqrt(1 + x) - 1 - x / 2
    rng = np.random.default_rng(4)
    x = np.concatenate([np.copysign(10.0 ** rng.uniform(-300, 308, 400), rng.uniform(-1, 1, 400)),
                        rng.uniform(-1, 3, 200), [-2.0263845803062323e-16, 1.7976931348623157e308, -1.0]])
    x = x[x >= -1]
    xv = exprc.vector("x")
    f = exprc.function([xv], spell(exprc, xv))
    assert "sqrt_taylor_remainder" in f.rewrites
    ref = reference(spell, [x])
    with np.errstate(all="ignore"):
        naive = spell(NP, x)
    b_got, b_naive = bits_lost(f(x), ref), bits_lost(naive, ref)
    assert b_got.max() <= 4, (b_got.max(), x[np.argmax(b_got)])
    assert not (b_got > np.maximum(b_naive, NOISE) + 1).any()
    special = np.array([np.inf, -np.inf, np.nan, -2.0])
    with np.errstate(all="ignore"):
        assert np.array_equal(np.isnan(f(special)), np.isnan(spell(NP, special)))


@pytest.mark.parametrize("backend", ["numpy", None])
def test_sigmoid_pair_product_in_gradients(backend):
    """tanh's gradient 1 - tanh(x)**2 becomes 4 e/(1 + e)**2 (one exp, where 4 sigmoid(2x) sigmoid(-2x)
    took two), within 2.5 bits of mpmath on +-[1e-8, 400].  The gradient *of* the logistic density
    exp(-x)/(1 + exp(-x))**2 (bench/accuracy.py's logistic_deriv) differentiates the two sigmoids it
    becomes (sigmoid_pair_product is a value-only rule: the bench's 200 points lost 4.3 bits through
    e/(1 + e)**2, 1.6 through the sigmoids, near the root at 0), within 2.5 bits for |x| >= 1."""
    x = exprc.vector("x")
    pts = 10 ** np.random.default_rng(8).uniform(-8, np.log10(400), 2000)
    pts = np.concatenate([pts, -pts, [0.0]])
    g = exprc.function([x], exprc.grad(exprc.sum(exprc.tanh(x)), x), backend=backend)
    assert "sigmoid_pair_product" in g.rewrites and "sigmoid" not in _graph_ops(g)
    assert bits_lost(g(pts), reference(lambda m, x: 1 / m.cosh(x) ** 2, [pts])).max() <= 2.5

    def density(m, x):
        return m.exp(-x) / (1 + m.exp(-x)) ** 2

    assert "sigmoid_pair_product" in exprc.function([x], density(exprc, x), backend=backend).rewrites
    h = exprc.function([x], exprc.grad(exprc.sum(density(exprc, x)), x), backend=backend)
    far = 10 ** np.random.default_rng(9).uniform(0, np.log10(700), 2000)  # (|x| >= 1: the root at 0
    far = np.concatenate([far, -far])  # makes every formula's bits there a matter of rounding luck)
    ref = reference(lambda m, x: density(m, x) * (2 * sig(m, -x) - 1), [far])
    assert bits_lost(h(far), ref).max() <= 2.5


@pytest.mark.parametrize("backend", ["numpy", None])
def test_gradient_of_one_minus_cos_over_x_squared(backend):
    """(1 - cos x)/x**2 is 2 sin(x/2)**2/x**2 by default; its gradient sin(x/2) cos(x/2)/x**2 * 4 - 4
    sin(x/2)**2/x**3 cancels to -x/12 near 0 (62 bits lost).  sin_cos_product makes the first term
    sin(x)/x**2, and series_difference reads both terms (sin(x/2)**2 as (1 - cos x)/2): within 4 bits
    over +-[1e-9, 4] (see below beyond); sin(x) cos(x) itself within 2 bits and no worse than the product at 1e5 points
    up to 1e300, and the product as written where 2x overflows."""
    x = exprc.vector("x")
    e = (1 - exprc.cos(x)) / (x * x)
    g = exprc.function([x], exprc.grad(exprc.sum(e), x), backend=backend)
    assert {"sin_cos_product", "series_difference"} <= set(g.rewrites)
    pts = 10 ** np.random.default_rng(5).uniform(-9, 2, 3000)
    pts = np.concatenate([pts, -pts])
    ref = reference(lambda m, x: (x * m.sin(x) - 2 * (1 - m.cos(x))) / x**3, [pts])
    before = exprc.function([x], exprc.grad(exprc.sum(e), x), backend=backend, exclude=("sin_cos_product",))
    b_got, b_before = bits_lost(g(pts), ref), bits_lost(before(pts), ref)
    # (beyond |x| = 4 the gradient has roots, near x = 8.97 and 15.45, where every formula cancels and
    # rounding luck decides: 5.0 bits against 0.0 at x = 8.9678, 3.6 against 2.0 at 40.7)
    near = np.abs(pts) < 4
    assert b_got[near].max() <= 4 and b_before[near].max() > 20
    assert np.all(b_got[near] <= np.maximum(b_before[near], NOISE) + 1)
    assert np.all(b_got <= np.maximum(b_before, NOISE) + 4)
    f = exprc.function([x], exprc.sin(x) * exprc.cos(x), backend=backend)
    wide = np.concatenate([10 ** np.random.default_rng(6).uniform(-300, 300, 4000), [1e308, -1.7e308, 8.99e307]])
    ref = reference(lambda m, x: m.sin(x) * m.cos(x), [wide])
    got, naive = f(wide), np.sin(wide) * np.cos(wide)
    assert bits_lost(got[-3:], ref[-3:]).max() <= 2 and np.isfinite(got[-3:]).all()
    assert np.all(bits_lost(got, ref) <= np.maximum(bits_lost(naive, ref), NOISE) + 1)


def test_bernoulli_kl_declines_what_it_cannot_do_exactly():
    """Found in review: with 0.1 (0.3) paired with 1 - p, the views fold 1 - 0.1 into a rounded
    constant and the stable form lost 30 bits near p = 0.9; the rule declines there now (the naive
    form, as without the rule).  A constant whose reciprocal is no float (log(5e-324 p)) raised
    OverflowError during compile."""
    p = exprc.vector("p")
    rng = np.random.default_rng(8)
    for q1, q2 in ((0.9, 0.1), (0.7, 0.3), (0.3, 0.7), (0.25, 0.75)):
        def fm(m, p, q1=q1, q2=q2):
            return p * m.log(p / q1) + (1 - p) * m.log((1 - p) / q2)
        f = exprc.function([p], fm(exprc, p))
        plain = exprc.function([p], fm(exprc, p), exclude=("bernoulli_kl",))
        pts = q1 * (1 + 10 ** rng.uniform(-12, -1, 1000) * rng.choice([-1.0, 1.0], 1000))
        ref = reference(fm, [pts])
        b, b_plain = bits_lost(f(pts), ref), bits_lost(plain(pts), ref)
        assert np.all(b <= np.maximum(b_plain, NOISE) + 1), (q1, q2)
        assert ("bernoulli_kl" in f.rewrites) == (q1 < 0.5) and (q1 > 0.5 or b.max() <= 4), (q1, q2, b.max())
    for c, dtype in ((5e-324, "float64"), (1e-310, "float64"), (1e-40, "float32")):
        x = exprc.vector("x", dtype)
        f = exprc.function([x], x * exprc.log(c * x) + (1 - x) * exprc.log(c * (1 - x)))
        assert "bernoulli_kl" not in f.rewrites


@pytest.mark.parametrize("backend", ["numpy", None])
def test_bernoulli_kl_with_a_variable_q_near_one(backend):
    """p, q near 1 (1 - p, 1 - q exact there): a first version built (1 - p) + (1 - q) from the sum views
    as 2 - p - q, which cancels: 8.8 bits lost at p = 0.99927968, q = 0.99927945.  Within 4 bits now (2.6),
    also with p and q far apart (the naive form there)."""
    p, q = exprc.vector("p"), exprc.vector("q")

    def kl(m, p, q):
        return p * m.log(p / q) + (1 - p) * m.log((1 - p) / (1 - q))

    f = exprc.function([p, q], kl(exprc, p, q), backend=backend)
    assert "bernoulli_kl" in f.rewrites
    rng = np.random.default_rng(9)
    qs = np.concatenate([rng.uniform(0.5, 1.0, 1500), 10 ** rng.uniform(-8, 0, 1500)])
    ps = np.clip(qs * (1 + 10 ** rng.uniform(-9, 0.3, 3000) * rng.choice([-1.0, 1.0], 3000)), 1e-300, 1 - 2**-53)
    ref = reference(kl, [ps, qs])
    with np.errstate(all="ignore"):
        naive = kl(NP, ps, qs)
    b = bits_lost(f(ps, qs), ref)
    assert b.max() <= 4 and np.all(b <= np.maximum(bits_lost(naive, ref), NOISE) + 1), b.max()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bernoulli_kl_where_p_and_q_are_tiny(dtype):
    """Found in review: product_cancel turned the stable form's (p + q) square((p - q)/(p + q)) into
    square(p - q)/(p + q), which underflows: 0 at p = 1e-200, q = p/1.5 (60.5 bits lost; float32 at p =
    1e-30).  It is (p - q) (p - q)/(p + q) ..., frozen, now: within 2 bits from 1e-300 (1e-38) up."""
    p, q = exprc.vector("p", dtype), exprc.vector("q", dtype)

    def kl(m, p, q):
        return p * m.log(p / q) + (1 - p) * m.log((1 - p) / (1 - q))

    f = exprc.function([p, q], kl(exprc, p, q))
    assert "bernoulli_kl" in f.rewrites
    rng = np.random.default_rng(10)
    low = -300 if dtype == "float64" else -37
    qs = (10 ** rng.uniform(low, -1, 3000)).astype(dtype)
    ps = (qs * rng.uniform(0.5, 2.0, 3000)).astype(dtype)
    ref = reference(kl, [ps.astype(np.float64), qs.astype(np.float64)]).astype(dtype)
    assert bits_lost(f(ps, qs), ref).max() <= 2.5


@pytest.mark.parametrize("dtype,bound", [("float64", -708.0), ("float32", -87.0)])
def test_swish_runs_the_quotient_as_written_where_its_guard_does_not_hold(dtype, bound):
    """x / (1 + exp(-x)) (swish) is x sigmoid(x) where x < -708 (float32: -87), exp(-x) overflows and
    exp_subnormal_product's rare branch rounds the tail in the normal range; elsewhere the kernel's fast
    loop is the quotient as written: no select between the stable sigmoid's two forms (15% of its time
    at 1e6), the bits of the formula compiled without stability rules; within 2.5 bits of mpmath's
    (float32: 4 ulps); and a product with another factor keeps its stable form (the quotient's
    numerator would overflow)."""
    x = exprc.vector("x", dtype)
    e = x / (1 + exprc.exp(-x))
    f, g = exprc.function([x], e), exprc.function([x], e, exclude=("stability",))
    fast = f.source[f.source.index("_flat_fast(char"):]
    fast = fast[:fast.index("\n}\n")]
    assert "sigmoid" not in fast and re.search(r"= \(a0 / t\d+\);", fast), fast
    above = np.linspace(bound, -bound, 20001).astype(dtype)
    assert np.array_equal(f(above).view(np.uint8), g(above).view(np.uint8))
    # below the bound: the rare branch (float32's results there are subnormal from -87.3: not compared)
    lo = -800.0 if dtype == "float64" else bound
    v = np.concatenate([np.linspace(lo, bound, 2001), above[::10], [np.inf, -np.inf, np.nan, -0.0, 0.0]]).astype(dtype)
    with np.errstate(all="ignore"):
        got = f(v).astype(np.float64)
    ref = reference(lambda m, t: t / (1 + m.exp(-t)), [v.astype(np.float64)], rows=False)
    fin = np.isfinite(v)
    if dtype == "float64":
        lost = bits_lost(got[fin], ref[fin])
        assert lost.max() <= 2.5, (v[fin][np.argmax(lost)], lost.max())  # (the tail's x h h: 2.3 at -709.4)
    else:
        np.testing.assert_allclose(got[fin], ref[fin], rtol=4 * 2.0**-24, atol=0)
    # (-inf: -inf / inf, NaN, as the formula as written and NumPy give it)
    assert np.isnan(got[-3]) and got[-5] == np.inf and np.isnan(got[-4]) and got[-2] == 0 and got[-1] == 0
    # Another factor keeps the product: x y / (1 + exp(-x)) would overflow in x y (review of 93645a9)
    y = exprc.vector("y", dtype)
    xv, yv = (np.array([-600.0, 2.0]), np.array([1e307, 3.0])) if dtype == "float64" else \
        (np.array([-80.0, 2.0], dtype), np.array([3e38, 3.0], dtype))
    for e2 in (x * exprc.sigmoid(x) * y, y * (x / (1 + exprc.exp(-x))), x / (1 + exprc.exp(-x)) * y):
        with np.errstate(all="ignore"):
            got = exprc.function([x, y], e2)(xv.astype(dtype), yv.astype(dtype)).astype(np.float64)
        x64, y64 = xv.astype(dtype).astype(np.float64), yv.astype(dtype).astype(np.float64)
        want = np.array([float(mpmath.mpf(a) / (1 + mpmath.exp(-mpmath.mpf(a))) * mpmath.mpf(b))
                         for a, b in zip(x64, y64)])
        np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps)


def _without_row_guard(monkeypatch, build):
    """What ``build()`` compiles with softmax_from_exp's row guard turned off (the stable form as it was
    before the guard), the memo and graph index bypassed so that nothing cached with the guard is reused."""
    from exprc.function import clear_memo
    from exprc.rewrite.rules.stability import quotients

    monkeypatch.setattr(quotients, "by_rows", lambda *_: False)
    monkeypatch.setenv("EXPRC_GRAPH_INDEX", "0")
    clear_memo()
    try:
        return build()
    finally:
        monkeypatch.undo()
        clear_memo()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_row_softmax_runs_the_quotient_as_written_where_it_is_as_accurate(dtype, monkeypatch):
    """softmax_from_exp over the rows of a matrix guards its stable form by the row sum S and minimum:
    the quotient as written where S is finite and S >= 1/2 or no exp(x) is subnormal, which the row
    kernel then runs alone.  Structure: the guard only over the last axis of a matrix (not a vector,
    axis 0 or a 3-d array).  Bits: a row where the guard fails is the formula compiled without
    stability rules; a row where it holds (NaN, +-inf, huge logits, very negative ones) the stable
    form as it was (the rule with the guard turned off).  Numbers: where the guard fails, within 5
    ulps of mpmath."""
    x = exprc.tensor("x", dtype, ndim=2)

    def softmax(m, v):
        return m.exp(v) / m.sum(m.exp(v), axis=-1, keepdims=True)

    assert "rare" in {n.op for n in toposort(exprc.function([x], softmax(exprc, x)).graph.outputs)}
    for v in (exprc.tensor("v", dtype, ndim=1), exprc.tensor("t", dtype, ndim=3)):
        assert "rare" not in {n.op for n in toposort(exprc.function([v], softmax(exprc, v)).graph.outputs)}
    col = exprc.exp(x) / exprc.sum(exprc.exp(x), axis=0, keepdims=True)
    assert "rare" not in {n.op for n in toposort(exprc.function([x], col).graph.outputs)}
    rng = np.random.default_rng(2)
    parts = [rng.uniform(-3, 3, (60, 8)), rng.uniform(-30, 30, (60, 8)), rng.uniform(-700, 700, (40, 8)),
             rng.uniform(-5, 0, (40, 8)), rng.uniform(-80, 80, (30, 8)), rng.uniform(-750, -700, (10, 8)),
             rng.uniform(-10, -2, (40, 8)), rng.uniform(-80, -60, (30, 8)), rng.uniform(705, 720, (20, 8)),
             rng.uniform(-800, -709, (20, 8))]
    xv = np.concatenate(parts).astype(dtype)
    xv[0, 0], xv[1, 3], xv[2, :], xv[3, 5], xv[4, :] = np.nan, np.inf, -np.inf, -np.inf, 1000.0
    new = exprc.function([x], softmax(exprc, x))
    naive = exprc.function([x], softmax(exprc, x), exclude=("stability",))
    rowless = exprc.Config(row_fusion=False)
    new_rowless = exprc.function([x], softmax(exprc, x), config=rowless)
    old, old_rowless = _without_row_guard(monkeypatch, lambda: (exprc.function([x], softmax(exprc, x)),
                                                                exprc.function([x], softmax(exprc, x), config=rowless)))
    # without row kernels the guard is its stable branch alone (fusion.stable_branches): the kernels as before
    assert [k["ops"] for k in new_rowless.kernels] == [k["ops"] for k in old_rowless.kernels]
    big, low = float(np.finfo(dtype).max), (-708.0 if dtype == "float64" else -87.0)
    with np.errstate(all="ignore"):
        s = np.sum(np.exp(xv), axis=1, dtype=dtype)  # (the kernel's sum in order: the same flags but at an edge)
        fine = (s <= big) & ((s >= 0.5) | (np.min(xv, axis=1) >= low))
        got, was, plain = new(xv), old(xv), naive(xv)
    assert fine.sum() > 250 and (~fine).sum() > 40  # (both kinds of rows, and sums below 1/2 on both sides)
    assert ((s < 0.5) & fine).sum() > 30 and ((s < 0.5) & ~fine).sum() > 5
    assert np.array_equal(got[fine], plain[fine], equal_nan=True)
    assert np.array_equal(got[~fine], was[~fine], equal_nan=True)
    with np.errstate(all="ignore"):
        assert np.array_equal(new_rowless(xv), old_rowless(xv), equal_nan=True)
    mpmath.mp.prec = 200
    errs = []
    for i in np.flatnonzero(fine)[::2]:  # (every other row: mpmath at 200 bits takes a while)
        es = [mpmath.exp(mpmath.mpf(float(t))) for t in xv[i]]
        total = mpmath.fsum(es)
        for j, e in enumerate(es):
            exact = e / total
            if abs(exact) > np.finfo(dtype).tiny:
                ulp = float(np.spacing(np.abs(np.array(float(exact), dtype))))
                errs.append(float(abs(mpmath.mpf(float(got[i, j])) - exact)) / ulp)
    assert max(errs) <= 5.0, max(errs)


def test_stable_forms_that_share_a_node_with_the_formula_as_written_are_all_stabilized():
    """A guard's fast branch is the user's own node, frozen for the stability rules: no node the rule
    builds anew and freezes may be one the graph has elsewhere (review: log(sum(exp(x), keepdims=True))
    as a logsumexp guard's fast branch was also the user's log-softmax, which then stayed as written
    and overflowed: -inf for a row with 800).  A softmax, its log-probabilities spelled out and the
    log-sum-exp of the same matrix, alone and together, on rows with huge logits."""
    x = exprc.matrix("x")
    e = exprc.exp(x)
    probs = e / exprc.sum(e, axis=1, keepdims=True)
    log_probs = x - exprc.log(exprc.sum(exprc.exp(x), axis=1, keepdims=True))
    lse = exprc.log(exprc.sum(exprc.exp(x), axis=1))
    xv = np.array([[800.0, 1.0, 2.0], [1.0, 2.0, 3.0], [-900.0, -901.0, -1000.0], [0.5, -np.inf, -np.inf]])
    with np.errstate(all="ignore"):  # (every x - m here is exact)
        m = xv.max(axis=1, keepdims=True)
        total = np.sum(np.exp(xv - m), axis=1, keepdims=True)
        want = [np.exp(xv - m) / total, (xv - m) - np.log(total), (m + np.log(total))[:, 0]]
    for outs in ([probs, log_probs, lse], [lse, log_probs], [log_probs, probs], [lse, probs]):
        for backend in ("numpy", None):
            got = exprc.function([x], outs, backend=backend)(xv)
            for g, o in zip(got, outs):
                w = want[[probs, log_probs, lse].index(o)]
                # (x - logsumexp(x) spelled out rounds the log-sum-exp first: -900 - lse is 70 ulps off)
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-300, equal_nan=False)
    # the log-probability of the top class never exceeds 0 (the stable log-sum-exp is >= the maximum)
    top = exprc.function([x], log_probs)(np.array([[0.9814894, -np.inf, -np.inf], [10.0, -30.0, -31.0]]))
    assert (top[:, 0] <= 0).all() and top[0, 0] == 0.0


@pytest.mark.parametrize("backend", ["numpy", None])
def test_row_softmax_gradients_are_the_stable_forms(backend, monkeypatch):
    """The row-wise softmax guard differentiates through its stable branch alone
    (ops.grad.everywhere_guard): no masked copy of the derivative of the quotient as written (a guard
    is left only as a sum_to's shape model), the same values as the stable form's gradient without
    the guard, bit for bit, and central differences of the forward function (rows with huge logits,
    very negative ones and ordinary ones)."""
    x, w = exprc.matrix("x"), exprc.matrix("w")
    loss = exprc.sum(w * (exprc.exp(x) / exprc.sum(exprc.exp(x), axis=1, keepdims=True)))
    grad = exprc.grad(loss, x)
    new = exprc.function([x, w], grad, backend=backend)
    valued, stack = set(), list(new.graph.outputs)  # (the nodes whose values are read: not a shape model)
    while stack:
        n = stack.pop()
        if n not in valued:
            valued.add(n)
            stack += n.inputs[:1] if n.op == "sum_to" else n.inputs
    assert not any(n.op == "rare" for n in valued)
    old = _without_row_guard(monkeypatch, lambda: exprc.function([x, w], grad, backend=backend))
    rng = np.random.default_rng(4)
    xv = np.concatenate([rng.uniform(-3, 3, (6, 5)), rng.uniform(-800, 800, (3, 5)), rng.uniform(-60, -40, (3, 5))])
    wv = rng.uniform(-1, 1, xv.shape)
    value = exprc.function([x, w], loss, backend=backend)
    got = new(xv, wv)
    assert np.array_equal(got, old(xv, wv))
    for i, j in [(0, 0), (2, 4), (6, 1), (7, 3), (9, 2), (11, 0)]:
        up, down = xv.copy(), xv.copy()
        step = 1e-6 * max(1.0, abs(xv[i, j]))
        up[i, j] += step
        down[i, j] -= step
        want = (value(up, wv) - value(down, wv)) / (2 * step)
        assert abs(got[i, j] - want) <= 1e-6 * max(1.0, abs(want)), (i, j, got[i, j], want)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stable_forms_over_an_empty_axis_give_what_the_formula_gives(backend, dtype):
    """The max shift of the stable forms (logsumexp, log-mean-exp, softmax, log-softmax, softmax-weighted
    sums, and exprc's own logsumexp/softmax/log_softmax) is -inf over a zero-size axis, so they give
    what NumPy gives for the formula as written (-inf, NaN, an empty array) where they raised
    ShapeError ("max: zero-size reduction") about a max the user never wrote; a max the user wrote
    still raises, as NumPy's."""
    from exprc.errors import ShapeError

    def forms(m, x, u, axis):
        e, se = m.exp(x), m.sum(m.exp(x), axis=axis, keepdims=True)
        return {"logsumexp": m.log(m.sum(m.exp(x), axis=axis)),
                "log_mean_exp": m.log(m.mean(m.exp(x), axis=axis)),
                "softmax": e / se, "log_softmax": m.log(e / se), "x_minus_lse": x - m.log(se),
                "weighted_sum": m.sum(u * e, axis=axis) / m.sum(e, axis=axis),
                "weighted_mean": m.mean(u * e, axis=axis) / m.mean(e, axis=axis)}

    for shape, axis in [((3, 0), 1), ((0, 0), 1), ((0,), 0), ((2, 0, 3), 1), ((2, 3, 0), (1, 2)), ((4, 0), None)]:
        xs = [exprc.tensor(n, dtype, len(shape)) for n in "xu"]
        X = np.zeros(shape, dtype)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (NumPy's "Mean of empty slice"; exprc's is silent)
            want = forms(NP, X, X, axis)
        ax = tuple(range(len(shape))) if axis is None else axis
        want |= {"exprc.logsumexp": want["logsumexp"], "exprc.softmax": want["softmax"],
                 "exprc.log_softmax": want["log_softmax"]}
        got = forms(exprc, *xs, axis)
        if isinstance(ax, int):
            got |= {"exprc.softmax": exprc.softmax(xs[0], axis=ax), "exprc.log_softmax": exprc.log_softmax(xs[0], axis=ax)}
        else:
            del want["exprc.softmax"], want["exprc.log_softmax"]
        got["exprc.logsumexp"] = exprc.logsumexp(xs[0], axis=axis)
        f = exprc.function(xs, list(got.values()), backend=backend)
        assert any(n.op == "max" for n in toposort(list(f.graph.outputs)))  # (stabilized: shifted forms)
        for name, g in zip(got, f(X, X)):
            w = np.asarray(want[name])
            assert g.shape == w.shape and g.dtype == np.dtype(dtype), (shape, axis, name, g.shape, w.shape)
            np.testing.assert_array_equal(g, w, err_msg=f"{shape} {axis} {name}")
        with pytest.raises(ShapeError, match="zero-size reduction"):
            exprc.function(xs[:1], exprc.max(xs[0], axis=axis), backend=backend)(X)
        # and their gradients: empty (the operand's shape), as the formula's
        grads = exprc.grad(exprc.sum(got["logsumexp"]) + exprc.sum(got["exprc.logsumexp"]), xs[:1])
        np.testing.assert_array_equal(exprc.function(xs[:1], grads, backend=backend)(X)[0], np.zeros(shape, dtype))


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_of_rows_with_infinities_is_the_quotient_as_written_there(backend, dtype):
    """A row holding +inf: exp(x) / sum(exp(x)) as written is 0 for its finite entries and NaN for the
    infinite ones (inf / inf); the stable form shifted by x's maximum, inf, made the whole row NaN
    (x - inf, and its compensation inf * 0).  It shifts by 0 there now (finite_max), keeps an
    infinite exp as it is (a finite logit that overflows beside the +inf: its compensation was
    inf * 0 too, found in review), and gives NumPy's values; rows of -inf, NaN rows and finite rows
    as before.  Row lengths 1, 3, 8, 40 and 300 (the C row kernels' batched, buffered and long
    paths), u * softmax and exprc.softmax too."""
    from conftest import assert_close

    rng = np.random.default_rng(3)
    x, u = exprc.matrix("x", dtype), exprc.matrix("u", dtype)
    forms = [lambda m, x, u: m.exp(x) / m.sum(m.exp(x), axis=1, keepdims=True),
             lambda m, x, u: u * m.exp(x) / m.sum(m.exp(x), axis=1, keepdims=True)]
    f = exprc.function([x, u], [fn(exprc, x, u) for fn in forms] + [exprc.softmax(x, axis=1)], backend=backend)
    assert "softmax_from_exp" in f.rewrites
    forms.append(forms[0])  # (exprc.softmax: the same values there, as exp(log_softmax) is)
    big = 710.0 if dtype == "float64" else 89.0  # (a finite logit whose exp overflows)
    for width in (1, 3, 8, 40, 300):
        X = rng.uniform(-5, 5, (64, width)).astype(dtype)
        for r in range(0, 64, 4):  # (+inf at 1-3 places, with -inf, an overflowing logit; some rows finite)
            cols = rng.choice(width, size=min(width, 1 + r % 3), replace=False)
            X[r, cols] = np.inf
            if r % 8 == 4 and width > 3:
                X[r, (cols[0] + 1) % width] = -np.inf
            if r % 12 == 0 and width > 3:
                X[r, (cols[0] + 2) % width] = big
        X[5, 0] = big  # (and alone: a row the stable form keeps finite)
        X[1, :] = -np.inf
        X[2, 0] = np.nan
        U = rng.uniform(0.5, 2, X.shape).astype(dtype)
        with np.errstate(all="ignore"):
            want = [fn(np, X, U) for fn in forms]
            p5 = np.exp(X[5].astype(np.float64) - X[5].max())
            want[0][5], want[2][5] = p5 / p5.sum(), p5 / p5.sum()  # (finite: the stable values)
            want[1][5] = U[5] * want[0][5]
        for g, w in zip(f(X, U), want):
            assert np.array_equal(np.isnan(g), np.isnan(w)), (width, np.argwhere(np.isnan(g) != np.isnan(w))[:4])
            fin = np.isfinite(w)
            assert np.array_equal(g[~fin & ~np.isnan(w)], w[~fin & ~np.isnan(w)])
            assert np.array_equal(g[w == 0], w[w == 0]), width  # (the finite entries of a +inf row)
            assert_close(np.where(fin, g, 0), np.where(fin, w, 0), ulps=64)
