"""Random draws: Philox4x32-10 rows, their NumPy reference, and the C helpers both must agree with.

A draw is an elementwise node whose value at element ``idx`` (its C-order position in the draw's
shape) is a pure function of (seed, ctr, draw, idx): Philox4x32-10 (Random123's counter-based
generator) run on the counter built from ``idx``, ``draw`` and ``ctr`` under the key ``seed``
(the layout is in ``backends/c/templates/random.h``).  So a draw needs no state inside a kernel,
fuses into its consumer's loop (a dropout mask is never stored), and gives the same bits on the
NumPy reference, C with any thread count, and CUDA.

Operands: ``model`` (whose *shape* is the draw's; its values are never read, so the renderers do
not load it), ``seed`` and ``ctr`` (0-d int64: the stream's key), then parameters.  Attributes:
``draw`` (the draw's number in its stream, 0 <= draw < 2**20) and the rest below.

* ``random_uniform(model, seed, ctr; draw, dtype)``: [0, 1), 52 random bits (23 for float32); two
  float64 (four float32) elements per Philox block.
* ``random_normal(model, seed, ctr; draw, dtype)``: standard normal by Box-Muller, a pair of elements
  per block (cos for the even one, sin for the odd one), with a log and a cos/sin of our own
  (polynomials in + - * / only, so NumPy, gcc and NVRTC round every step the same way; within a
  few ulps of the true values); float32 is the float64 value rounded.
* ``random_integers(model, seed, ctr; draw, low, high, dtype)``: [low, high) by multiply-shift on 64
  bits, two elements per block.
* ``random_binomial(model, seed, ctr, p; draw, n, dtype)``: successes in ``n`` trials, one block
  per trial (``n`` < 2**16).
* ``random_permutation(n, seed, ctr; draw)``: a NumPy step, the stable argsort of ``n`` uniform keys.
* ``random_model(*sizes)``: a read-only zero-strided array of shape ``sizes`` known at call time,
  the model of a draw whose size is symbolic (a stage of its own, as ``alloc``, but no memory).

Gradients are zero (draws are constants for ``grad``); ``mu + sigma * normal`` differentiates in
``mu`` and ``sigma`` through the ordinary ops around the draw.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from exprc.errors import DTypeError, ShapeError
from exprc.graph import Node
from exprc.ops.table import Op, register
from exprc.types import TensorType, shape_str

#: Philox4x32 multipliers and Weyl key increments (Salmon et al., SC'11).
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MAX_DRAWS = 1 << 20
MAX_TRIALS = 1 << 16
_U32 = np.uint64(0xFFFFFFFF)

#: Series coefficients of the log (1/(2k+1)), cos ((-1)^k/(2k)!) and sin ((-1)^k/(2k+1)!), highest
#: first: the C helpers are generated from these lists, so NumPy and C evaluate the same numbers.
LOG_COEFFS = [float(Fraction(1, 2 * k + 1)) for k in range(11, 0, -1)]
COS_COEFFS = [float(Fraction((-1) ** k, math.factorial(2 * k))) for k in range(10, 0, -1)]
SIN_COEFFS = [float(Fraction((-1) ** k, math.factorial(2 * k + 1))) for k in range(9, 0, -1)]
SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # ln 2 with 32 significant bits: e * LN2_HI is exact
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
TWO_PI = 2 * math.pi


# -- the NumPy reference ---------------------------------------------------------------------------
def philox_words(c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, k0: int, k1: int
                 ) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 of the counters (c0, c1, c2, c3) under the key (k0, k1): 32-bit values held in
    uint64 arrays (the products of two 32-bit words fit)."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in (c0, c1, c2, c3))
    m0, m1 = np.uint64(M0), np.uint64(M1)
    for _ in range(10):
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _U32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _U32)
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def philox(seed: int, ctr: int, blk: np.ndarray, draw: int, sub: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks ``blk`` of a draw as ``exprc_philox``: the 64-bit halves (a, b) = (w1:w0, w3:w2) of
    Philox4x32-10 with counter (blk bits 0-31, blk bits 32-47 | sub << 16, draw | ctr bits 32-43 << 20,
    ctr bits 0-31) and key (seed bits 0-31, seed bits 32-63)."""
    i = blk.astype(np.uint64)
    c, s = int(ctr) & (2**64 - 1), int(seed) & (2**64 - 1)
    c1 = ((i >> np.uint64(32)) & np.uint64(0xFFFF)) | np.uint64((sub << 16) & 0xFFFFFFFF)
    c2 = np.full_like(i, (draw & 0xFFFFF) | (((c >> 32) << 20) & 0xFFFFFFFF))
    w = philox_words(i & _U32, c1, c2, np.full_like(i, c & 0xFFFFFFFF), s & 0xFFFFFFFF, s >> 32)
    return (w[1] << np.uint64(32)) | w[0], (w[3] << np.uint64(32)) | w[2]


def element_bits(seed: int, ctr: int, idx: np.ndarray, draw: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The bits (a, b) of elements ``idx``: their block ``idx >> shift`` (as ``exprc_rbits_at``)."""
    return philox(seed, ctr, idx >> np.uint64(shift), draw)


def unit52(x: np.ndarray) -> np.ndarray:
    """Doubles in [0, 1) from the top 52 of 64 bits, as ``exprc_unit52``."""
    return ((x >> np.uint64(12)) | np.uint64(0x3FF0000000000000)).view(np.float64) - 1.0


def unit23(w: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from 23 bits, as ``exprc_unit23``."""
    return ((w.astype(np.uint32) >> np.uint32(9)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)


def rlog(u: np.ndarray) -> np.ndarray:
    """log(u) for u in (0, 1], as ``exprc_rlog``."""
    b = np.asarray(u, np.float64).view(np.uint64)
    e = ((b >> np.uint64(52)).astype(np.int64) - 1023).astype(np.float64)
    m = ((b & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)).view(np.float64)
    big = m > SQRT2
    m = np.where(big, m * 0.5, m)
    e = np.where(big, e + 1.0, e)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = np.full_like(z, LOG_COEFFS[0])
    for c in LOG_COEFFS[1:]:
        r = c + z * r
    hs = 2.0 * s
    return e * LN2_HI + (hs + hs * (z * r) + e * LN2_LO)


def rsincos2pi(u: np.ndarray, odd: np.ndarray | int = 0) -> np.ndarray:
    """cos(2 pi u) (sin where ``odd``) for u in [0, 1), as ``exprc_rcossin2pi``: u = q/4 + f with
    |f| <= 1/8 (exact), a = 2 pi f, then the Taylor series of cos or sin on [-pi/4, pi/4] by the
    quadrant (q + 3 odd) mod 4 (sin x = cos(x - pi/2))."""
    q = np.floor(4.0 * u + 0.5)
    a = (u - q * 0.25) * TWO_PI
    z = a * a
    c = np.full_like(z, COS_COEFFS[0])
    for k in COS_COEFFS[1:]:
        c = k + z * c
    s = np.full_like(z, SIN_COEFFS[0])
    for k in SIN_COEFFS[1:]:
        s = k + z * s
    cv, sv = 1.0 + z * c, a + a * (z * s)
    q = np.where(q == 4.0, 0.0, q) + 3.0 * np.asarray(odd, np.float64)
    q = np.where(q >= 4.0, q - 4.0, q)
    return np.where(q == 0.0, cv, np.where(q == 1.0, -sv, np.where(q == 2.0, -cv, sv)))


def _mulhi64(x: np.ndarray, r: int) -> np.ndarray:
    rl, rh = np.uint64(r & 0xFFFFFFFF), np.uint64(r >> 32)
    xl, xh = x & _U32, x >> np.uint64(32)
    ll, lh, hl, hh = xl * rl, xl * rh, xh * rl, xh * rh
    mid = (ll >> np.uint64(32)) + (lh & _U32) + (hl & _U32)
    return hh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32))


def _indices(model: np.ndarray) -> np.ndarray:
    return np.arange(math.prod(np.shape(model)), dtype=np.uint64)


def _key(seed: np.ndarray, ctr: np.ndarray) -> tuple[int, int]:
    return int(np.asarray(seed)), int(np.asarray(ctr))


def _bits(model, seed, ctr, draw, shift):
    idx = _indices(model)
    return idx, *element_bits(*_key(seed, ctr), idx, draw, shift)


def _uniform(model, seed, ctr, draw, dtype):
    if dtype == "float32":
        idx, a, b = _bits(model, seed, ctr, draw, 2)
        x = np.where(idx & np.uint64(2), b, a)
        u = unit23(np.where(idx & np.uint64(1), x >> np.uint64(32), x & _U32))
    else:
        idx, a, b = _bits(model, seed, ctr, draw, 1)
        u = unit52(np.where(idx & np.uint64(1), b, a))
    return u.reshape(np.shape(model))


def _normal(model, seed, ctr, draw, dtype):
    idx, a, b = _bits(model, seed, ctr, draw, 1)
    u1, u2 = 1.0 - unit52(a), unit52(b)
    z = np.sqrt(-2.0 * rlog(u1)) * rsincos2pi(u2, (idx & np.uint64(1)).astype(np.int64))
    return z.astype(dtype).reshape(np.shape(model))


def _integers(model, seed, ctr, draw, low, high, dtype):
    idx, a, b = _bits(model, seed, ctr, draw, 1)
    x = np.where(idx & np.uint64(1), b, a)
    v = (np.uint64(low & (2**64 - 1)) + _mulhi64(x, (high - low) & (2**64 - 1))).view(np.int64)
    return v.astype(dtype).reshape(np.shape(model))


def _binomial(model, seed, ctr, p, draw, n, dtype):
    idx = _indices(model)
    p = np.broadcast_to(np.asarray(p, np.float64), np.shape(model)).reshape(-1)
    count = np.zeros(idx.shape, np.int64)
    for k in range(n):
        count += unit52(philox(*_key(seed, ctr), idx, draw, k)[0]) < p
    return count.astype(dtype).reshape(np.shape(model))


def _permutation(n, seed, ctr, draw):
    size = int(np.asarray(n))
    if size < 0:
        raise ShapeError(f"permutation: n is {size}: sizes must be >= 0")
    a, _ = philox(*_key(seed, ctr), np.arange(size, dtype=np.uint64), draw)
    return np.argsort(a, kind="stable").astype(np.int64)


def _model(*sizes):
    shape = tuple(int(np.asarray(n)) for n in sizes)
    for d, n in enumerate(shape):
        if n < 0:
            raise ShapeError(f"random: size {d} is {n}: sizes must be >= 0")
    return np.broadcast_to(np.zeros((), bool), shape)


# -- type rules ----------------------------------------------------------------------------------
def _check_key(name: str, seed: Node, ctr: Node) -> None:
    for what, x in (("seed", seed), ("ctr", ctr)):
        if x.ndim != 0 or x.dtype != "int64":
            raise DTypeError(f"{name}: the key's {what} must be a 0-d int64 expression, got {x.type}")


def _infer_draw(dtypes: tuple[str, ...]):
    def infer(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
        name = f"random draw {attrs.get('draw')}"
        model, seed, ctr, *params = inputs
        _check_key(name, seed, ctr)
        draw = attrs["draw"]
        if not isinstance(draw, int) or not 0 <= draw < MAX_DRAWS:
            raise ValueError(f"{name}: draw must be an int in [0, {MAX_DRAWS}), got {draw!r}")
        if attrs["dtype"] not in dtypes:
            raise DTypeError(f"{name}: dtype must be one of {', '.join(dtypes)}, got {attrs['dtype']!r}")
        for p in params:
            if p.ndim > model.ndim or any(a not in (1, b) and a is not None and b is not None
                                          for a, b in zip(p.type.shape[::-1], model.type.shape[::-1])):
                raise ShapeError(f"{name}: a parameter of shape {shape_str(p.type.shape)} does not broadcast to the "
                                 f"draw's shape {shape_str(model.type.shape)}")
        return inputs, TensorType(attrs["dtype"], model.type.shape)

    return infer


def _infer_permutation(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    n, seed, ctr = inputs
    if n.ndim != 0 or not n.dtype.startswith("int"):
        raise DTypeError(f"permutation: n must be a 0-d integer expression, got {n.type}")
    _check_key("permutation", seed, ctr)
    size = int(n.value) if n.op == "constant" else None
    if size is not None and size < 0:
        raise ShapeError(f"permutation: n is {size}: sizes must be >= 0")
    return inputs, TensorType("int64", (size,))


def _infer_model(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    for d, n in enumerate(inputs):
        if n.ndim != 0 or not n.dtype.startswith("int"):
            raise DTypeError(f"random: size {d} must be a 0-d integer expression, got {n.type}")
    shape = tuple(int(n.value) if n.op == "constant" else None for n in inputs)
    for d, n in enumerate(shape):
        if n is not None and n < 0:
            raise ShapeError(f"random: size {d} is {n}: sizes must be >= 0")
    return inputs, TensorType("bool", shape)


# -- C expressions -------------------------------------------------------------------------------
def shift(node: Node) -> int:
    """Elements per block of a draw, as a power of 2 (binomials use one block per trial: 0)."""
    if node.op == "random_binomial":
        return 0
    return 2 if node.op == "random_uniform" and node.dtype == "float32" else 1


def batch_kind(node: Node) -> tuple[int, str] | None:
    """(kind, member) of ``exprc_rbatch`` for a draw, None for draws computed per element (binomials)."""
    if node.op == "random_normal":
        return 3, "z"
    if node.op == "random_uniform" and node.dtype == "float32":
        return 2, "w"
    return (1, "x") if node.op in ("random_uniform", "random_integers") else None


def _bits_expr(node: Node, args: list[str], idx: str) -> str:
    return f"exprc_rbits_at({args[1]}, {args[2]}, {idx}, {node.arg('draw')}u, {shift(node)})"


def _c_uniform(node: Node, args: list[str], idx: str, batch: str | None = None) -> str:
    if node.dtype == "float32":
        return f"exprc_unit23({batch.format('w')})" if batch else f"exprc_runiformf({_bits_expr(node, args, idx)}, {idx})"
    return f"exprc_unit52({batch.format('x')})" if batch else f"exprc_runiform({_bits_expr(node, args, idx)}, {idx})"


def _c_normal(node: Node, args: list[str], idx: str, batch: str | None = None) -> str:
    z = batch.format("z") if batch else f"exprc_rnormal({_bits_expr(node, args, idx)}, {idx})"
    return f"((float){z})" if node.dtype == "float32" else z


def _c_integers(node: Node, args: list[str], idx: str, batch: str | None = None) -> str:
    low, high = node.arg("low"), node.arg("high")
    x = batch.format("x") if batch else f"exprc_rbits_at({args[1]}, {args[2]}, {idx}, {node.arg('draw')}u, 1)"
    fn = "exprc_rinteger_x" if batch else "exprc_rinteger"
    tail = "" if batch else f", {idx}"
    v = f"{fn}({x}{tail}, (int64_t){low & (2**64 - 1)}ull, {(high - low) & (2**64 - 1)}ull)"
    return f"((int32_t){v})" if node.dtype == "int32" else v


def _c_binomial(node: Node, args: list[str], idx: str, batch: str | None = None) -> str:
    v = f"exprc_rbinomial({args[1]}, {args[2]}, {idx}, {node.arg('draw')}u, INT64_C({node.arg('n')}), (double){args[3]})"
    return f"((int32_t){v})" if node.dtype == "int32" else v


def _zero_grad(node: Node, g: Node) -> list[None]:
    return [None] * len(node.inputs)


def c_helpers() -> str:
    """The C definitions of ``exprc_rlog`` and ``exprc_rcossin2pi`` from the coefficient lists above."""

    def horner(var: str, coeffs: list[float], indent: str = "    ") -> list[str]:
        lines = [f"{indent}double {var} = {coeffs[0].hex()};"]
        lines += [f"{indent}{var} = {c.hex()} + z * {var};" for c in coeffs[1:]]
        return lines

    return "\n".join([
        "EXPRC_INLINE double exprc_rlog(double u)",
        "{",
        "    const uint64_t b = exprc_d2u(u);",
        "    double e = (double)((int)(b >> 52) - 1023);",
        "    double m = exprc_u2d((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);",
        f"    const int big = m > {SQRT2.hex()};",
        "    m = big ? m * 0.5 : m;",
        "    e = big ? e + 1.0 : e;",
        "    const double f = m - 1.0, s = f / (2.0 + f), z = s * s;",
        *horner("r", LOG_COEFFS),
        "    const double hs = 2.0 * s;",
        f"    return e * {LN2_HI.hex()} + (hs + hs * (z * r) + e * {LN2_LO.hex()});",
        "}",
        "",
        "EXPRC_INLINE void exprc_rcossin2pi(double u, double *cos_out, double *sin_out)",
        "{",
        "    double q = floor(4.0 * u + 0.5);",
        f"    const double a = (u - q * 0.25) * {TWO_PI.hex()}, z = a * a;",
        *horner("c", COS_COEFFS),
        *horner("s", SIN_COEFFS),
        "    const double cv = 1.0 + z * c, sv = a + a * (z * s);",
        "    q = q == 4.0 ? 0.0 : q;",
        "    *cos_out = q == 0.0 ? cv : (q == 1.0 ? -sv : (q == 2.0 ? -cv : sv));",
        "    *sin_out = q == 0.0 ? sv : (q == 1.0 ? cv : (q == 2.0 ? -sv : -cv));",
        "}",
        "",
    ])


_DRAW_ATTRS = ("draw", "dtype")
register(Op("random_uniform", "elemwise", _uniform, _infer_draw(("float32", "float64")), c_call=_c_uniform,
            attr_names=_DRAW_ATTRS, nin=(3, 3), grad=_zero_grad))
register(Op("random_normal", "elemwise", _normal, _infer_draw(("float32", "float64")), c_call=_c_normal,
            attr_names=_DRAW_ATTRS, nin=(3, 3), grad=_zero_grad))
register(Op("random_integers", "elemwise", _integers, _infer_draw(("int32", "int64")), c_call=_c_integers,
            attr_names=("draw", "low", "high", "dtype"), nin=(3, 3), grad=_zero_grad))
register(Op("random_binomial", "elemwise", _binomial, _infer_draw(("int32", "int64")), c_call=_c_binomial,
            attr_names=("draw", "n", "dtype"), nin=(4, 4), grad=_zero_grad))
register(Op("random_permutation", "shape", _permutation, _infer_permutation, attr_names=("draw",), nin=(3, 3),
            value_shape=lambda node: node.inputs[0].op != "constant", grad=_zero_grad))
register(Op("random_model", "shape", _model, _infer_model, nin=(1, 32), value_shape=True, grad=_zero_grad))

__all__ = [
    "MAX_DRAWS",
    "MAX_TRIALS",
    "batch_kind",
    "c_helpers",
    "element_bits",
    "philox",
    "philox_words",
    "rlog",
    "rsincos2pi",
    "shift",
    "unit23",
    "unit52",
]
