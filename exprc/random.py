"""Random numbers inside compiled functions: Theano-style streams and JAX-style explicit keys.

``rng = exprc.random.Stream(seed)`` is Theano's ``RandomStreams``: ``rng.uniform(size, low, high)``,
``rng.normal(size, avg, std)``, ``rng.binomial(size, n, p)``, ``rng.bernoulli``, ``rng.integers``,
``rng.choice``, ``rng.permutation`` build draws, and every function compiled from them advances the
stream's state (a shared variable, ``rng.state``) by itself, so two calls give different numbers;
``rng.seed(s)`` starts over.  The state update is a shared-variable update: calls from several threads
are serialized on it and draw distinct numbers.  ``.eval()`` does not advance the stream.

The module-level functions take the key explicitly (JAX style, for pure functions): ``key`` is an int64
vector ``[seed, counter]`` (an input, a shared variable or :func:`key`'s value) and ``draw`` numbers the
draws made with one key (draws with the same key, draw number and size are the same numbers).

Every draw is Philox4x32-10 evaluated inside the fused loop that consumes it (see
:mod:`exprc.ops.random`): the same key gives bit-identical numbers on the NumPy, C (any thread count)
and CUDA backends.  Draws are constants for :func:`exprc.grad`.

Sizes are ints, 0-d integer expressions, or ``x.shape``; ``size=x.shape`` draws in ``x``'s own loop
(no size computation at all), other symbolic sizes cost a host step computing the shape.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

from exprc import api
from exprc.config import current
from exprc.creation import _shape
from exprc.errors import DTypeError, ParameterError, ShapeError
from exprc.graph import Node, constant_node
from exprc.ops import OPS, cast
from exprc.ops.random import MAX_DRAWS, MAX_TRIALS
from exprc.types import as_dtype, broadcast_shapes, shape_str

__all__ = ["RandomStreams", "Stream", "bernoulli", "binomial", "choice", "integers", "key", "normal",
           "permutation", "uniform"]


def _seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise DTypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ParameterError(f"seed: expected an int in [-2**63, 2**64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def key(seed: int) -> np.ndarray:
    """A key for the module-level draws: ``[seed, 0]`` as int64."""
    return np.array([_seed(seed), 0], np.int64)


def _key(k: Any) -> tuple[Node, Node]:
    """The (seed, counter) 0-d int64 nodes of a key."""
    if not isinstance(k, Node):
        k = np.asarray(k)
        if k.shape != (2,) or k.dtype.kind not in "iu":
            raise DTypeError(f"key: expected an integer vector [seed, counter], got an array of shape "
                             f"{shape_str(k.shape)} and dtype {k.dtype}")
        k = constant_node(np.array([_seed(int(v)) for v in k.tolist()], np.int64), "int64")
    if k.dtype != "int64" or k.ndim != 1 or k.type.shape[0] not in (2, None):
        raise DTypeError(f"key: expected an int64 vector [seed, counter] of length 2, got {k.type}")
    return api.getitem(k, 0), api.getitem(k, 1)


def _draw(draw: Any) -> int:
    if isinstance(draw, (bool, np.bool_)) or not isinstance(draw, (numbers.Integral, np.integer)) or not (
            0 <= int(draw) < MAX_DRAWS):
        raise ParameterError(f"draw: expected an int in [0, {MAX_DRAWS}), got {draw!r}")
    return int(draw)


def _const(x: Any) -> float | None:
    """The value of a scalar parameter known now (a number or a 0-d constant), else None."""
    if isinstance(x, Node):
        return float(x.value) if x.op == "constant" and x.value.size == 1 else None
    if isinstance(x, (numbers.Real, np.number)) and not isinstance(x, (bool, np.bool_)):
        return float(x)
    return None


def _param(x: Any, dtype: str, what: str) -> Node:
    if isinstance(x, (bool, np.bool_)):
        raise DTypeError(f"{what}: expected a number or a numeric expression, got {x!r}")
    n = api.as_node(x)
    if n.dtype == "bool":
        raise DTypeError(f"{what}: expected a number or a numeric expression, got {n.type}")
    return cast(n, dtype)


def _shape_of_sizes(sizes: list) -> Node:
    """A model node of shape ``sizes``: ``x`` itself for ``x.shape``, a broadcast constant for static
    sizes, a ``random_model`` host step otherwise."""
    if sizes and all(isinstance(s, Node) and s.op == "getitem" and s.inputs[0].op == "shape" for s in sizes):
        x = sizes[0].inputs[0].inputs[0]
        if x.ndim == len(sizes) and all(s.inputs[0].inputs[0] is x and s.arg("index") == (("i", d),)
                                        for d, s in enumerate(sizes)):
            return x
    if all(isinstance(s, int) for s in sizes):
        z = constant_node(False, "bool")
        return api.broadcast_to(z, tuple(sizes)) if sizes else z
    ints = [s if isinstance(s, Node) else constant_node(s, "int64") for s in sizes]
    return OPS["random_model"].make(tuple(cast(s, "int64") for s in ints), {})


def _model(size: Any, params: list[Node], what: str) -> Node:
    """The shape model of a draw of ``size`` (None: the parameters' broadcast shape)."""
    if size is None:
        big = [p for p in params if p.ndim]
        if not big:
            return constant_node(False, "bool")
        model = big[0]
        for p in big[1:]:
            model = OPS["fill"].make((model, p), {})  # the broadcast shape; values never read
        return model
    if isinstance(size, Node) and size.op == "shape" and size.ndim == 1:
        model = size.inputs[0]
    else:
        model = _shape_of_sizes(_shape(size, f"{what}: size"))
    for p in params:
        try:
            out = broadcast_shapes([p.type.shape, model.type.shape], what)
        except ShapeError:
            out = None
        if out is None or len(out) != model.ndim or any(
                a is not None and b is not None and a != b for a, b in zip(out, model.type.shape)):
            raise ShapeError(f"{what}: a parameter of shape {shape_str(p.type.shape)} does not broadcast to size "
                             f"{shape_str(model.type.shape)}")
    return model


def _float_dtype(dtype: Any, what: str) -> str:
    dt = current().float_dtype if dtype is None else as_dtype(dtype)
    if dt not in ("float32", "float64"):
        raise DTypeError(f"{what}: dtype must be float32 or float64, got {dt}")
    return dt


def _raw(op: str, k: Any, model: Node, draw: int, params: tuple = (), **attrs: Any) -> Node:
    seed, ctr = _key(k)
    return OPS[op].make((model, seed, ctr, *params), {"draw": _draw(draw), **attrs})


def uniform(key: Any, size: Any = None, low: Any = 0.0, high: Any = 1.0, dtype: Any = None, draw: int = 0) -> Node:
    """Uniform numbers in [low, high) (``dtype``: ``Config.float_dtype`` by default)."""
    dt = _float_dtype(dtype, "uniform")
    lo, hi = _const(low), _const(high)
    for name, v in (("low", lo), ("high", hi)):
        if v is not None and not np.isfinite(v):
            raise ParameterError(f"uniform: {name} must be finite, got {v}")
    if lo is not None and hi is not None and not lo < hi:
        raise ParameterError(f"uniform: low must be < high, got low={lo}, high={hi}")
    low_n, high_n = _param(low, dt, "uniform: low"), _param(high, dt, "uniform: high")
    u = _raw("random_uniform", key, _model(size, [low_n, high_n], "uniform"), draw, dtype=dt)
    if lo == 0.0 and hi == 1.0:
        return u
    return low_n + (high_n - low_n) * u


def normal(key: Any, size: Any = None, avg: Any = 0.0, std: Any = 1.0, dtype: Any = None, draw: int = 0) -> Node:
    """Normal numbers with mean ``avg`` and standard deviation ``std`` (Theano's names)."""
    dt = _float_dtype(dtype, "normal")
    mu, sd = _const(avg), _const(std)
    if sd is not None and not (sd >= 0 and np.isfinite(sd)):
        raise ParameterError(f"normal: std must be finite and >= 0, got {sd}")
    if mu is not None and not np.isfinite(mu):
        raise ParameterError(f"normal: avg must be finite, got {mu}")
    avg_n, std_n = _param(avg, dt, "normal: avg"), _param(std, dt, "normal: std")
    z = _raw("random_normal", key, _model(size, [avg_n, std_n], "normal"), draw, dtype=dt)
    if mu == 0.0 and sd == 1.0:
        return z
    return avg_n + std_n * z


def _prob(p: Any, what: str) -> Node:
    v = _const(p)
    if v is not None and not 0.0 <= v <= 1.0:
        raise ParameterError(f"{what}: p must be in [0, 1], got {v}")
    return _param(p, "float64", f"{what}: p")


def binomial(key: Any, size: Any = None, n: int = 1, p: Any = 0.5, dtype: Any = "int64", draw: int = 0) -> Node:
    """Successes in ``n`` trials of probability ``p`` (``n`` an int below 2**16; Theano's ``binomial``).
    ``dtype`` may be a float type (a dropout mask in ``floatX``)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Integral, np.integer)) or not (
            0 <= int(n) < MAX_TRIALS):
        raise ParameterError(f"binomial: n must be an int in [0, {MAX_TRIALS}), got {n!r}")
    dt = as_dtype(dtype)
    if dt == "bool" and n > 1:
        raise DTypeError("binomial: dtype bool holds only n <= 1")
    p_n = _prob(p, "binomial")
    model = _model(size, [p_n], "binomial")
    if n == 1:  # a uniform draw (two elements per block, batched in C loops) compared with p
        out = _raw("random_uniform", key, model, draw, dtype="float64") < p_n
    else:
        out = _raw("random_binomial", key, model, draw, (p_n,), n=int(n), dtype="int64")
    return out if out.dtype == dt else cast(out, dt)


def bernoulli(key: Any, size: Any = None, p: Any = 0.5, dtype: Any = "bool", draw: int = 0) -> Node:
    """True with probability ``p`` (a dropout mask); ``dtype`` converts (``"float32"`` gives 0/1 floats)."""
    return binomial(key, size, 1, p, dtype, draw)


def integers(key: Any, size: Any = None, low: int = 0, high: int | None = None, dtype: Any = "int64",
             draw: int = 0) -> Node:
    """Integers in [low, high) (``high`` None: [0, low)); the bounds are Python ints."""
    if high is None:
        low, high = 0, low
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise ParameterError(f"integers: {name} must be an int, got {v!r}")
    low, high = int(low), int(high)
    dt = as_dtype(dtype)
    if dt not in ("int32", "int64"):
        raise DTypeError(f"integers: dtype must be int32 or int64, got {dt}")
    info = np.iinfo(dt)
    if not info.min <= low < high <= info.max + 1:
        raise ParameterError(f"integers: expected {info.min} <= low < high <= {info.max + 1} for {dt}, got "
                             f"low={low}, high={high}")
    return _raw("random_integers", key, _model(size, [], "integers"), draw, low=low, high=high, dtype=dt)


def permutation(key: Any, x: Any, draw: int = 0) -> Node:
    """A random permutation of ``arange(x)`` (``x`` an int or a 0-d integer expression), or of the
    rows of the array ``x``.  Runs as a host step (a sort of random keys)."""
    if isinstance(x, Node) and x.ndim >= 1:
        return api.getitem(x, permutation(key, api.shape(x)[0], draw))
    if isinstance(x, Node):
        if x.ndim != 0 or not x.dtype.startswith("int"):
            raise DTypeError(f"permutation: x must be an int, an integer expression or an array, got {x.type}")
        n = cast(x, "int64")
    else:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)):
            raise DTypeError(f"permutation: x must be an int, an integer expression or an array, got {x!r}")
        if int(x) < 0:
            raise ShapeError(f"permutation: n must be >= 0, got {int(x)}")
        n = constant_node(int(x), "int64")
    seed, ctr = _key(key)
    return OPS["random_permutation"].make((n, seed, ctr), {"draw": _draw(draw)})


def choice(key: Any, a: Any, size: Any = None, replace: bool = True, draw: int = 0) -> Node:
    """Elements of ``a`` (a 1-d array, or an int: ``arange(a)``) drawn uniformly, with or without
    replacement.  Without replacement ``size`` is a static int or shape (at most ``len(a)``
    elements); it takes a permutation of ``a``, so it is meant for small ``a``."""
    pool = None
    if isinstance(a, Node):
        if a.ndim != 1:
            raise ShapeError(f"choice: a must be 1-d (or an int), got {a.type}")
        pool, n = a, api.shape(a)[0]
    else:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (numbers.Integral, np.integer)) or int(a) < 0:
            raise ParameterError(f"choice: a must be a 1-d array or an int >= 0, got {a!r}")
        n = constant_node(int(a), "int64")
    if replace:
        u = _raw("random_uniform", key, _model(size, [], "choice"), draw, dtype="float64")
        idx = api.minimum(cast(api.floor(u * cast(n, "float64")), "int64"), n - 1)
    else:
        sizes = [1] if size is None else _shape(size, "choice: size")
        if not all(isinstance(s, int) for s in sizes):
            raise ShapeError("choice: without replacement, size must be static ints")
        k = int(np.prod(sizes))
        if n.op == "constant" and k > int(n.value):
            raise ParameterError(f"choice: cannot take {k} elements from {int(n.value)} without replacement")
        idx = api.getitem(permutation(key, n, draw), slice(0, k))
        idx = api.reshape(idx, tuple(sizes)) if size is not None else api.getitem(idx, 0)
    return idx if pool is None else api.getitem(pool, idx)


class Stream:
    """A stream of random numbers whose state lives in a shared variable (Theano's ``RandomStreams``).

    Every draw method takes the size first, as Theano's.  Each draw gets its own number in the stream,
    so two draws of one function are independent; each call of a function that draws advances the
    state's counter by one, so calls draw new numbers.  ``seed(s)`` resets the stream (the same
    functions then give the same numbers again)."""

    def __init__(self, seed: int = 0, name: str | None = None):
        from exprc.shared import shared

        self.state = shared(key(seed), name=name or "random_state", shape=(2,))
        self.state.default_update = self.state + constant_node(np.array([0, 1], np.int64), "int64")
        self._draws = 0
        self._lock = threading.Lock()

    def seed(self, seed: int) -> None:
        """Start the stream over from ``seed``."""
        self.state.set_value(key(seed))

    def _next(self) -> int:
        with self._lock:
            d = self._draws
            if d >= MAX_DRAWS:
                raise ParameterError(f"this stream has made {MAX_DRAWS} draws, its limit: use another Stream")
            self._draws += 1
        return d

    def uniform(self, size: Any = None, low: Any = 0.0, high: Any = 1.0, dtype: Any = None) -> Node:
        """Uniform numbers in [low, high)."""
        return uniform(self.state, size, low, high, dtype, self._next())

    def normal(self, size: Any = None, avg: Any = 0.0, std: Any = 1.0, dtype: Any = None) -> Node:
        """Normal numbers of mean ``avg`` and standard deviation ``std``."""
        return normal(self.state, size, avg, std, dtype, self._next())

    def binomial(self, size: Any = None, n: int = 1, p: Any = 0.5, dtype: Any = "int64") -> Node:
        """Successes in ``n`` trials of probability ``p``."""
        return binomial(self.state, size, n, p, dtype, self._next())

    def bernoulli(self, size: Any = None, p: Any = 0.5, dtype: Any = "bool") -> Node:
        """True with probability ``p``."""
        return bernoulli(self.state, size, p, dtype, self._next())

    def integers(self, size: Any = None, low: int = 0, high: int | None = None, dtype: Any = "int64") -> Node:
        """Integers in [low, high)."""
        return integers(self.state, size, low, high, dtype, self._next())

    def choice(self, a: Any, size: Any = None, replace: bool = True) -> Node:
        """Elements of ``a`` drawn uniformly."""
        return choice(self.state, a, size, replace, self._next())

    def permutation(self, x: Any) -> Node:
        """A random permutation of ``arange(x)`` or of the rows of ``x``."""
        return permutation(self.state, x, self._next())


#: Theano's and PyTensor's names.
RandomStreams = Stream
