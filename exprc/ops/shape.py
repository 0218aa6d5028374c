"""Shape rows: dimshuffle, reshape, broadcast_to, concatenate, getitem, shape, and the shape ops
gradients build (inc_subtensor, sum_to, reshape_like, split_part).

Each row declares its attribute schema (``attr_names``): the attributes every node of the op
carries, which :mod:`exprc.serialize` checks saved nodes against.  Attribute values are
canonical (sorted axes, static ints, index items ``("i", k)``, ``("n",)``, ``("s", start, stop,
step)``) so that equal nodes intern to one.  The native backends run these ops as views or NumPy
steps; none has a C expression.
"""

from __future__ import annotations

import math

import numpy as np

from exprc.errors import ShapeError
from exprc.graph import Node
from exprc.ops.table import Op, _errstate, cast, register
from exprc.types import TensorType, broadcast_shapes, promote, shape_str


def _infer_dimshuffle(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    order = attrs["order"]
    kept = [o for o in order if o != "x"]
    for d in range(x.ndim):
        if d not in kept and x.type.shape[d] not in (1, None):  # None: checked at call time
            raise ShapeError(f"dimshuffle: cannot drop axis {d} of shape {shape_str(x.type.shape)}: "
                             "its size is not 1")
    shape = tuple(1 if o == "x" else x.type.shape[o] for o in order)
    return inputs, TensorType(x.dtype, shape)


def _np_dimshuffle(x: np.ndarray, order: tuple) -> np.ndarray:
    x = np.asarray(x)
    kept = [o for o in order if o != "x"]
    dropped = tuple(d for d in range(x.ndim) if d not in kept)
    if any(x.shape[d] != 1 for d in dropped):
        raise ShapeError(f"dimshuffle: cannot drop axes {dropped} of shape {shape_str(x.shape)}: size is not 1")
    y = x.reshape([s for d, s in enumerate(x.shape) if d not in dropped]) if dropped else x
    rank = {d: i for i, d in enumerate(sorted(kept))}
    y = y.transpose([rank[o] for o in kept])
    return y.reshape(tuple(1 if o == "x" else x.shape[o] for o in order))


def _infer_reshape(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape = attrs["shape"]
    size = math.prod(x.type.shape) if None not in x.type.shape else None
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: can only specify one unknown dimension, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if size is not None:
        if -1 in shape:
            if known == 0 or size % known:
                raise ShapeError(f"reshape: cannot reshape {shape_str(x.type.shape)} into {shape}")
            shape = tuple(size // known if s == -1 else s for s in shape)
        elif size != known:
            raise ShapeError(f"reshape: cannot reshape {shape_str(x.type.shape)} into {shape}")
    out = tuple(None if s == -1 else s for s in shape)
    return inputs, TensorType(x.dtype, out)


def _infer_broadcast_to(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape = attrs["shape"]
    if len(shape) < x.ndim:
        raise ShapeError(f"broadcast_to: cannot broadcast {shape_str(x.type.shape)} to {shape_str(shape)}")
    for s, t in zip(reversed(x.type.shape), reversed(shape)):
        if s is not None and s != 1 and s != t:
            raise ShapeError(f"broadcast_to: cannot broadcast {shape_str(x.type.shape)} to {shape_str(shape)}")
    return inputs, TensorType(x.dtype, tuple(shape))


def _infer_concatenate(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    axis = attrs["axis"]
    dt = promote(*[i.dtype for i in inputs])
    inputs = tuple(cast(i, dt) for i in inputs)
    nd = inputs[0].ndim
    shape: list = list(inputs[0].type.shape)
    for i in inputs[1:]:
        if i.ndim != nd:
            raise ShapeError(f"concatenate: all inputs need the same ndim, got {shape_str(inputs[0].type.shape)} "
                             f"and {shape_str(i.type.shape)}")
        for d in range(nd):
            a, b = shape[d], i.type.shape[d]
            if d == axis:
                shape[d] = None if a is None or b is None else a + b
            elif a is not None and b is not None and a != b:
                raise ShapeError(f"concatenate: shapes {shape_str(inputs[0].type.shape)} and "
                                 f"{shape_str(i.type.shape)} differ outside axis {axis}")
            elif a is None:
                shape[d] = b
    return inputs, TensorType(dt, tuple(shape))


def _slice_len(n: int | None, start: int | None, stop: int | None, step: int) -> int | None:
    if n is None:
        return None
    return len(range(*slice(start, stop, step).indices(n)))


def _infer_getitem(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    shape: list = []
    d = 0
    for item in attrs["index"]:
        kind = item[0]
        if kind == "n":
            shape.append(1)
            continue
        n = x.type.shape[d]
        if kind == "i":
            k = item[1]
            if n is not None and not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {d} with size {n}")
        else:
            shape.append(_slice_len(n, item[1], item[2], item[3]))
        d += 1
    shape.extend(x.type.shape[d:])
    return inputs, TensorType(x.dtype, tuple(shape))


def _np_getitem(x: np.ndarray, index: tuple) -> np.ndarray:
    key = tuple(item[1] if item[0] == "i" else (None if item[0] == "n" else slice(*item[1:]))
                for item in index)
    return np.asarray(x)[key]


def _infer_shape(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    (x,) = inputs
    return inputs, TensorType("int64", (x.ndim,))


register(Op("dimshuffle", "shape", _np_dimshuffle, _infer_dimshuffle, attr_names=("order",), nin=(1, 1)))
register(Op("reshape", "shape", lambda x, shape: np.reshape(x, shape), _infer_reshape, attr_names=("shape",),
            nin=(1, 1)))
register(Op("broadcast_to", "shape", lambda x, shape: np.broadcast_to(x, shape), _infer_broadcast_to,
            attr_names=("shape",), nin=(1, 1)))
register(Op("concatenate", "shape", lambda *xs, axis: np.concatenate(xs, axis=axis), _infer_concatenate,
            attr_names=("axis",), nin=(1, None)))
register(Op("getitem", "shape", _np_getitem, _infer_getitem, attr_names=("index",), nin=(1, 1)))
register(Op("shape", "shape", lambda x: np.array(np.shape(x), dtype=np.int64), _infer_shape, nin=(1, 1)))


def getitem_order(node: Node) -> tuple | None:
    """The dimshuffle order of ``x[:, None]``-like getitem ``node`` (full slices and new axes only:
    the same view), or None (any other index)."""
    x, order, axis = node.inputs[0], [], 0
    for item in node.arg("index"):
        if item == ("n",):
            order.append("x")
        elif item[0] == "s" and item[1] is None and item[2] is None and item[3] in (1, None) and axis < x.ndim:
            order.append(axis)
            axis += 1
        else:
            return None
    return (*order, *range(axis, x.ndim))


# -- ops that gradients need (NumPy steps on every native backend; the C planner makes them views where it can) --
def basic_key(index: tuple) -> tuple:
    """NumPy's key for a static basic index (the encoding of ``getitem`` and ``inc_subtensor``)."""
    return tuple(item[1] if item[0] == "i" else (None if item[0] == "n" else slice(*item[1:])) for item in index)


def _infer_inc_subtensor(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    x, y = inputs
    part = _infer_getitem((x,), attrs)[1].shape
    if y.ndim > len(part) or broadcast_shapes([part, y.type.shape], "inc_subtensor") != part:
        raise ShapeError(f"inc_subtensor: cannot add shape {shape_str(y.type.shape)} into a part of shape "
                         f"{shape_str(part)}")
    return (x, cast(y, x.dtype)), x.type


def _inc_subtensor(x: np.ndarray, y: np.ndarray, index: tuple) -> np.ndarray:
    out = np.array(x, copy=True)
    out[basic_key(index)] += y
    return out


def _infer_like(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    x, model = inputs
    return inputs, TensorType(x.dtype, model.type.shape)


def _sum_to(x: np.ndarray, model: np.ndarray) -> np.ndarray:
    shape, x = np.shape(model), np.asarray(x)
    if x.ndim > len(shape):
        x = np.sum(x, axis=tuple(range(x.ndim - len(shape))))
    x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    axes = tuple(d for d, s in enumerate(shape) if s == 1 and x.shape[d] != 1)
    if any(a not in (1, s) for a, s in zip(x.shape, shape) if s != 1):
        # (a gradient reaching an operand of another shape than the forward pass would have
        # accepted: the gradient graph of inc_subtensor(x[idx], v) need not run the scatter that
        # checks v's shape, and NumPy's broadcast_to raised a bare ValueError here)
        raise ShapeError(f"gradient: an array of shape {shape_str(np.shape(x))} cannot be summed to shape "
                         f"{shape_str(shape)}, the operand's it is the gradient of: the operands' shapes do not "
                         "fit where they meet in the expression")
    return np.broadcast_to(np.sum(x, axis=axes, keepdims=True) if axes else x, shape)


def _infer_split_part(inputs: tuple, attrs: dict) -> tuple[tuple, TensorType]:
    return inputs, TensorType(inputs[0].dtype, inputs[1 + attrs["which"]].type.shape)


def _split_part(x: np.ndarray, *models: np.ndarray, axis: int, which: int) -> np.ndarray:
    start = sum(np.shape(m)[axis] for m in models[:which])
    key = (slice(None),) * axis + (slice(start, start + np.shape(models[which])[axis]),)
    return np.asarray(x)[key]


# inc_subtensor(x, y, index): x with y added into x[index] (the gradient of getitem scatters into zeros).
register(Op("inc_subtensor", "shape", _inc_subtensor, _infer_inc_subtensor, attr_names=("index",), nin=(2, 2)))
# sum_to(x, model): x summed over the axes along which ``model`` was broadcast to x's shape (and
# broadcast over those where x is smaller: gradients may be): the result has ``model``'s shape.
register(Op("sum_to", "shape", _errstate(_sum_to), _infer_like, nin=(2, 2)))
# reshape_like(x, model): x reshaped to the shape of ``model`` (sizes known at call time).
register(Op("reshape_like", "shape", lambda x, model: np.reshape(x, np.shape(model)), _infer_like, nin=(2, 2)))
# split_part(x, *models, axis, which): the part of x that concatenate(models, axis) took from models[which].
register(Op("split_part", "shape", _split_part, _infer_split_part, attr_names=("axis", "which"), nin=(2, None)))
