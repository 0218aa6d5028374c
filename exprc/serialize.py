"""Saving and loading graphs: ``exprc.save`` / ``exprc.load`` (and ``dumps`` / ``loads``).

The format is JSON, versioned, and loading it never runs code: every node is
rebuilt through the op table (so types are re-inferred and checked, never
trusted), constants are decoded from base64 into arrays of the declared dtype
and shape, and anything unexpected raises :class:`exprc.errors.SerializationError`
naming the offending node.  No pickle is involved.

Format version 1::

    {"format": "exprc-graph", "version": 1, "exprc": "0.1.0",
     "kind": "expression" | "function",
     "nodes": [ ...one object per node, operands before their users... ],
     "outputs": [node indices],
     "single": true,                      # expression: one node (else a list) / function: one output
     # kind "function" only:
     "inputs": [node indices of the declared inputs, in order],
     "updates": [[shared node index, expression node index], ...],
     "options": {"backend": "c", "allow_downcast": false, "exclude": [], "precise_math": false,
                 "fast_math": false}}

Nodes::

    {"op": "input", "name": "x" | null, "dtype": "float64", "shape": [null, 3]}
    {"op": "shared", "name": "w" | null, "dtype": "float32", "shape": [null, null],
     "value": {"shape": [4, 3], "data": "<base64, little-endian>"}}
    {"op": "constant", "dtype": "int64", "shape": [2], "data": "<base64, little-endian>"}
    {"op": "add", "inputs": [0, 1]}
    {"op": "sum", "inputs": [2], "attrs": {"axis": [0], "keepdims": false}}

``dtype`` is one of ``bool int32 int64 float32 float64``; a ``shape`` entry is a
size or ``null`` (known at call time).  ``op`` is the name of a registered op
(built-in or made with :func:`exprc.custom_op` in the loading process: a file
cannot define ops).  Attributes by op (each op row declares its names, ``Op.attr_names``, and
loading checks them): reductions ``axis`` (sorted distinct axes)
and ``keepdims``; ``cast`` ``dtype``; ``dimshuffle`` ``order`` (axes and ``"x"``);
``reshape`` / ``broadcast_to`` ``shape``; ``arange`` ``dtype`` (not bool); ``concatenate`` ``axis``; ``getitem`` /
``inc_subtensor`` ``index`` (items ``["i", k]``, ``["n"]``, ``["s", start, stop,
step]``); ``split_part`` ``axis`` and ``which``; ``scan_output`` ``k`` (a result of its
loop); other ops take none.  Inputs get fresh identities when loaded; shared variables
become new shared variables holding the saved values (one per saved variable).

Loops and conditions (:mod:`exprc.ops.control`): the attribute of a ``scan`` or ``ifelse``
node holds its body as a graph document of its own, in the same node-table encoding, whose
``inputs`` are its placeholders (``input`` nodes, fresh when loaded: never the outer graph's)::

    {"op": "scan", "inputs": [n_steps, *sequences, *initial states, *invariants],
     "attrs": {"loop": {"body": {"nodes": [...], "inputs": [placeholders], "outputs": [results, (until)]},
                        "seq_taps": [[-1, 0]], "state_taps": [[-1], null], "keep": ["all", "last"],
                        "n_invariants": 1, "until": false, "go_backwards": false,
                        "from_sequences": true, "labels": ["outputs_info[0]", ...], "name": "scan"}}}
    {"op": "ifelse", "inputs": [cond, *captured],
     "attrs": {"branches": {"body": {"nodes": [...], "inputs": [placeholders], "outputs": [then, else]}}}}

Loading checks a loop against its body and its node: taps are ascending distinct integers
(state taps negative), ``keep`` is ``"all"`` or ``"last"`` (only for a result fed back), the
counts of placeholders, results and operands agree, each placeholder stands for its operand's
dtype and shape, a fed-back result keeps its state's type, the ``until`` condition and an
``ifelse`` condition are 0-d bool or integer, both branches have one dtype and rank, a body's
only inputs are its placeholders and it holds no shared variable (loops and conditions take
what they read as operands), and only ``scan_output`` nodes read a ``scan`` node.  Documents
written before loops could be saved hold none and load as before (same format version).

Limits that keep a hostile file harmless: the text is at most ``max_bytes``
(default 1 GiB) with JSON nesting at most 64 deep (checked before parsing, so no
recursion), at most ``max_nodes`` nodes, sizes at most 2**40 per axis and 2**48
elements per array, names of at most 1024 characters, and constants whose data
length must match their shape; loops and conditions nest at most ``MAX_NESTING`` (10)
deep, ``max_nodes`` counts the nodes of every body, a tap is at most 2**20 steps away, a
loop's name and labels are at most 2048 characters, and a constant ``n_steps`` is at most
2**40 unless an ``until`` condition stops the loop (loading never runs a loop; a loop whose
``until`` never holds runs until stopped, as when built with exprc.while_loop).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exprc import backends
from exprc._version import __version__
from exprc.config import current
from exprc.errors import ExprcError, SerializationError
from exprc.function import Function, function
from exprc.graph import Node, constant_node, input_node, toposort
from exprc.ops import OPS
from exprc.ops.control import Branches, Loop
from exprc.pipeline import FunctionGraph
from exprc.shared import shared
from exprc.types import DTYPES, TensorType

FORMAT = "exprc-graph"
VERSION = 1
MAX_DEPTH = 64
MAX_DIM = 1 << 40
MAX_ELEMENTS = 1 << 48
MAX_NAME = 1024
MAX_NESTING = 10  # loops and conditions inside loop bodies and branches
MAX_TAP = 1 << 20  # |tap| of a loop's sequence or state
MAX_LABEL = 2048  # a loop's name and result labels
MAX_CONTROL_OPERANDS = 4096  # a scan's or ifelse's operands (other nodes: 64)
MAX_STEPS = 1 << 62  # a constant n_steps (exprc.control.UNBOUNDED: a loop its until condition stops)


# -- writing ----------------------------------------------------------------------------------------
def _encode_array(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()).decode()


def _encode_attr(value: Any, depth: int = 0) -> Any:
    if isinstance(value, tuple):
        return [_encode_attr(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Loop):
        return _encode_loop(value, depth)
    if isinstance(value, Branches):
        return {"body": _encode_body(value.inputs, (value.then, value.orelse), depth, "ifelse")}
    raise SerializationError(f"cannot save the attribute value {value!r}")


def _encode_graph(roots: Sequence[Node], shared_refs: list | None, depth: int) -> tuple[list[dict], dict[Node, int]]:
    """The node table of everything ``roots`` reach (operands before users)."""
    index: dict[Node, int] = {}
    nodes: list[dict] = []
    for n in toposort(roots):
        index[n] = len(nodes)
        nodes.append(_node_entry(n, index, shared_refs, depth))
    return nodes, index


def _encode_body(inputs: Sequence[Node], outputs: Sequence[Node], depth: int, what: str) -> dict:
    """A loop body or the branches of a condition: a graph document of its own (placeholders
    ``inputs``, results ``outputs``) in the same node-table encoding."""
    if depth + 1 > MAX_NESTING:
        raise SerializationError(f"cannot save loops and conditions nested more than {MAX_NESTING} deep ({what})")
    nodes, index = _encode_graph(list(outputs) + list(inputs), None, depth + 1)
    declared = set(inputs)
    for n in index:
        if n.op == "input" and n not in declared:
            raise SerializationError(f"cannot save {what}: its body reads {n.arg('name') or 'an input'!r}, which is "
                                     "not one of its placeholders")
    return {"nodes": nodes, "inputs": [index[i] for i in inputs], "outputs": [index[o] for o in outputs]}


def _encode_loop(loop: Loop, depth: int) -> dict:
    return {"body": _encode_body(loop.inputs, loop.outputs, depth, f"loop {loop.name!r}"),
            "seq_taps": [list(t) for t in loop.seq_taps],
            "state_taps": [None if t is None else list(t) for t in loop.state_taps],
            "keep": list(loop.keep), "n_invariants": loop.n_invariants, "until": bool(loop.until),
            "go_backwards": bool(loop.go_backwards), "from_sequences": bool(loop.from_sequences),
            "labels": list(loop.labels), "name": loop.name}


def to_dict(obj: Any, shared_refs: list | None = None) -> dict:
    """The JSON document (a dict) of an expression, a list of expressions, a
    :class:`~exprc.pipeline.FunctionGraph` or a compiled :class:`~exprc.Function`.

    ``shared_refs``: when a list, shared variables are written as ``{"op": "shared",
    "ref": k}`` and appended to it instead of embedding their values (pickling uses
    this to keep one variable shared between several pickled functions)."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "exprc": __version__}
    inputs: Sequence[Node] = ()
    updates: Sequence[tuple[Node, Node]] = ()
    if isinstance(obj, Function):
        doc["kind"] = "function"
        inputs, outputs, single = obj.inputs, list(obj.outputs), obj._single
        updates = getattr(obj, "updates", ())
        cfg = obj.config
        doc["options"] = {"backend": obj.backend, "allow_downcast": bool(getattr(obj, "allow_downcast", False)),
                          "exclude": sorted(cfg.exclude), "precise_math": cfg.precise_math,
                          "fast_math": cfg.fast_math}
    elif isinstance(obj, FunctionGraph):
        doc["kind"] = "function"
        inputs, outputs, single = obj.inputs, list(obj.outputs), False
        doc["options"] = {}
    elif isinstance(obj, Node):
        doc["kind"], outputs, single = "expression", [obj], True
    elif isinstance(obj, (list, tuple)) and all(isinstance(o, Node) for o in obj):
        doc["kind"], outputs, single = "expression", list(obj), False
    else:
        raise TypeError(f"exprc.save: expected an expression, a list of expressions or a compiled function, got "
                        f"{type(obj).__name__}")
    roots = list(outputs) + [e for _, e in updates] + [v for v, _ in updates] + list(inputs)
    nodes, index = _encode_graph(roots, shared_refs, 0)
    doc["nodes"] = nodes
    doc["outputs"] = [index[o] for o in outputs]
    doc["single"] = single
    if doc["kind"] == "function":
        doc["inputs"] = [index[i] for i in inputs]
        doc["updates"] = [[index[v], index[e]] for v, e in updates]
    return doc


def _node_entry(n: Node, index: dict[Node, int], shared_refs: list | None, depth: int = 0) -> dict:
    if n.op == "input":
        entry: dict[str, Any] = {"op": "input", "name": n.arg("name"), "dtype": n.dtype, "shape": list(n.type.shape)}
        if hasattr(n, "get_value"):
            if depth:  # (exprc.scan and exprc.ifelse hoist them: the loop node's operands)
                raise SerializationError(f"cannot save a loop or condition whose body reads the shared variable "
                                         f"{n.arg('name') or '<unnamed>'!r} directly")
            entry["op"] = "shared"
            if shared_refs is not None:
                if n not in shared_refs:
                    shared_refs.append(n)
                entry["ref"] = shared_refs.index(n)
            else:
                value = n.get_value(borrow=True)
                entry["value"] = {"shape": list(value.shape), "data": _encode_array(value)}
        return entry
    if n.op == "constant":
        return {"op": "constant", "dtype": n.dtype, "shape": list(n.type.shape), "data": _encode_array(n.value)}
    entry = {"op": n.op, "inputs": [index[i] for i in n.inputs]}
    if n.attrs:
        entry["attrs"] = {k: _encode_attr(v, depth) for k, v in n.attrs}
    return entry


def dumps(obj: Any, indent: int | None = None) -> str:
    """The JSON text of ``obj`` (see :func:`to_dict`)."""
    return json.dumps(to_dict(obj), indent=indent, allow_nan=False, separators=(",", ":") if indent is None else None)


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (an expression, a list of them, or a compiled function's graph) to ``path``
    as JSON; written to a temporary file and renamed, so readers never see half a file."""
    text = dumps(obj)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- reading ------------------------------------------------------------------------------------------
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _check_depth(text: bytes) -> None:
    """Reject JSON nested deeper than MAX_DEPTH without parsing it (no recursion, linear time)."""
    bare = _STRINGS.sub(b'""', text)
    arr = np.frombuffer(bare, dtype=np.uint8)
    step = np.zeros(arr.shape, dtype=np.int8)
    step[(arr == ord("[")) | (arr == ord("{"))] = 1
    step[(arr == ord("]")) | (arr == ord("}"))] = -1
    if step.size and int(np.cumsum(step, dtype=np.int64).max()) > MAX_DEPTH:
        raise SerializationError(f"not an exprc graph: JSON nested more than {MAX_DEPTH} levels deep")


def _reject_constant(name: str) -> Any:
    raise SerializationError(f"not an exprc graph: the JSON contains {name}")


def loads(text: str | bytes, max_bytes: int = 1 << 30, max_nodes: int = 10_000_000,
          shared_refs: Sequence[Node] | None = None) -> Any:
    """Rebuild what :func:`dumps` wrote: an expression, a list of them, or a compiled function."""
    doc = parse(text, max_bytes)
    return from_dict(doc, max_nodes=max_nodes, shared_refs=shared_refs)


def parse(text: str | bytes, max_bytes: int = 1 << 30) -> dict:
    """Parse and minimally check the JSON text of a saved graph."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if len(raw) > max_bytes:
        raise SerializationError(f"not loaded: the file has {len(raw)} bytes, more than max_bytes={max_bytes}")
    _check_depth(raw)
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except SerializationError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SerializationError(f"not an exprc graph: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SerializationError(f"not an exprc graph: expected a JSON object with \"format\": \"{FORMAT}\"")
    version = doc.get("version")
    if version != VERSION:
        raise SerializationError(f"unsupported exprc graph format version {version!r}: this exprc reads version "
                                 f"{VERSION}" + (" (the file was written by a newer exprc)"
                                                 if isinstance(version, int) and version > VERSION else ""))
    return doc


def _field(obj: dict, key: str, types: type | tuple, where: str, optional: bool = False) -> Any:
    if key not in obj:
        if optional:
            return None
        raise SerializationError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SerializationError(f"{where}: field {key!r} has the wrong type (bool)")
    if not isinstance(value, types):
        raise SerializationError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SerializationError(f"{where}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


def _dtype(obj: dict, where: str) -> str:
    dt = _field(obj, "dtype", str, where)
    if dt not in DTYPES:
        raise SerializationError(f"{where}: unknown dtype {dt!r}; expected one of {', '.join(DTYPES)}")
    return dt


def _shape(value: Any, where: str, allow_none: bool) -> tuple:
    if not isinstance(value, list) or len(value) > 32:
        raise SerializationError(f"{where}: a shape must be a list of at most 32 sizes")
    out = []
    for s in value:
        if s is None and allow_none:
            out.append(None)
        else:
            out.append(_int(s, f"{where}: shape", 0, MAX_DIM))
    known = [s for s in out if s is not None]
    if math.prod(known) > MAX_ELEMENTS:
        raise SerializationError(f"{where}: shape {value} has more than 2**48 elements")
    return tuple(out)


def _array(data: Any, dtype: str, shape: tuple, where: str) -> np.ndarray:
    if not isinstance(data, str):
        raise SerializationError(f"{where}: array data must be a base64 string")
    dt = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * dt.itemsize
    if len(data) > 4 * (expected // 3 + 2) + 4:
        raise SerializationError(f"{where}: the data is longer than shape {list(shape)} of {dtype} needs")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SerializationError(f"{where}: array data is not valid base64") from None
    if len(raw) != expected:
        raise SerializationError(f"{where}: {len(raw)} bytes of data for shape {list(shape)} of {dtype} "
                                 f"({expected} bytes expected)")
    if dtype == "bool":  # any non-zero byte is True: never hand the kernels a bool that is not 0 or 1
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype)).reshape(shape)


def _name(obj: dict, where: str) -> str | None:
    name = _field(obj, "name", (str, type(None)), where, optional=True)
    if name is not None and len(name) > MAX_NAME:
        raise SerializationError(f"{where}: name longer than {MAX_NAME} characters")
    return name


def _decode_attr(value: Any, where: str, depth: int = 0) -> Any:
    if depth > 4:
        raise SerializationError(f"{where}: attribute nested too deeply")
    if isinstance(value, list):
        return tuple(_decode_attr(v, where, depth + 1) for v in value)
    if value is None or isinstance(value, (bool, int)) or (isinstance(value, str) and len(value) <= 16):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ELEMENTS:
            raise SerializationError(f"{where}: attribute value {value} is out of range")
        return value
    raise SerializationError(f"{where}: unexpected attribute value {value!r}")


def _index_attrs_problem(op: str, attrs: dict, nin: int) -> str | None:
    """What is wrong with a subtensor/scatter node's attributes (see exprc.ops.index), or None."""
    first = 1 if op == "subtensor" else 2
    index, labels = attrs["index"], attrs["labels"]
    if op == "scatter" and attrs["mode"] not in ("set", "inc"):
        return "mode must be 'set' or 'inc'"
    if not isinstance(labels, tuple) or len(labels) > nin or not all(isinstance(t, str) for t in labels):
        return "labels must be a list of short strings, at most one per operand"
    if not isinstance(index, tuple) or len(index) > 64:
        return "index must be a list of items"

    def static(p: Any) -> bool:
        return p is None or (isinstance(p, int) and not isinstance(p, bool))

    def ref(p: Any) -> bool:
        return isinstance(p, int) and not isinstance(p, bool) and first <= p < nin

    for item in index:
        kind = item[0] if isinstance(item, tuple) and item else None
        ok = (kind == "n" and len(item) == 1
              or kind == "i" and len(item) == 2 and static(item[1]) and item[1] is not None
              or kind == "s" and len(item) == 4 and all(static(p) for p in item[1:]) and item[3] not in (None, 0)
              or kind in ("I", "A", "M") and len(item) == 2 and ref(item[1])
              or kind == "S" and len(item) == 4 and all(p is None or ref(p) for p in item[1:]))
        if not ok:
            return ("index must be a list of ['n'], ['i', k], ['s', start, stop, step], ['I', j], ['A', j], ['M', j] "
                    "and ['S', j, j, j] items (j: an operand position)")
    return None


def _check_attrs(op: str, attrs: dict, inputs: list[Node], where: str) -> None:
    """Attributes the op's type rule relies on being canonical (as exprc's API builds them)."""
    allowed = OPS[op].attr_names  # the op row's attribute schema
    extra = set(attrs) - set(allowed) - set(OPS[op].optional_attrs)
    if extra or set(allowed) - set(attrs):
        optional = f" (and optionally {list(OPS[op].optional_attrs)})" if OPS[op].optional_attrs else ""
        raise SerializationError(f"{where}: op {op!r} takes the attributes {list(allowed)}{optional}, "
                                 f"got {sorted(attrs)}")
    nd = inputs[0].ndim if inputs else 0

    def axes_ok(axes: Any, n: int) -> bool:
        return (isinstance(axes, tuple) and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < n
                                                for a in axes) and list(axes) == sorted(set(axes)))

    bad = None
    if OPS[op].kind == "reduce":
        if not axes_ok(attrs["axis"], nd) or not isinstance(attrs["keepdims"], bool):
            bad = "axis must be sorted distinct axes of the operand, keepdims a bool"
        elif op in ("argmax", "argmin") and len(attrs["axis"]) != 1 and len(attrs["axis"]) != nd:
            bad = "argmax/argmin reduce one axis or all of them"
        elif attrs.get("identity", True) is not True:  # (absent, or True: one node for each meaning)
            bad = "identity must be True where it is given"
    elif op == "rare":
        if not isinstance(attrs["everywhere"], bool):
            bad = "everywhere must be a bool"
    elif op == "cast":
        if attrs["dtype"] not in DTYPES:
            bad = f"dtype must be one of {', '.join(DTYPES)}"
    elif op == "arange":
        if attrs["dtype"] not in DTYPES or attrs["dtype"] == "bool":
            bad = f"dtype must be one of {', '.join(DTYPES[1:])}"
    elif op == "dimshuffle":
        order = attrs["order"]
        kept = [o for o in order if o != "x"] if isinstance(order, tuple) else None
        if kept is None or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < nd for o in kept) \
                or len(set(kept)) != len(kept) or len(order) > 32:
            bad = "order must list distinct axes of the operand and 'x'"
    elif op in ("reshape", "broadcast_to"):
        shp = attrs["shape"]
        lo = -1 if op == "reshape" else 0
        if not isinstance(shp, tuple) or len(shp) > 32 or not all(
                isinstance(s, int) and not isinstance(s, bool) and lo <= s <= MAX_DIM for s in shp):
            bad = "shape must be a list of sizes"
        elif math.prod(abs(s) for s in shp) > MAX_ELEMENTS:
            bad = "shape has more than 2**48 elements"
    elif op == "concatenate":
        if not isinstance(attrs["axis"], int) or isinstance(attrs["axis"], bool) or not 0 <= attrs["axis"] < nd:
            bad = "axis must be an axis of the operands"
    elif op in ("getitem", "inc_subtensor"):
        index = attrs["index"]
        ok = isinstance(index, tuple) and len(index) <= 64
        used = 0
        for item in index if ok else ():
            if not isinstance(item, tuple) or not item or item[0] not in ("i", "n", "s"):
                ok = False
            elif item[0] == "n":
                ok = ok and len(item) == 1
            elif item[0] == "i":
                ok = ok and len(item) == 2 and isinstance(item[1], int) and not isinstance(item[1], bool)
                used += 1
            else:
                ok = ok and len(item) == 4 and all(p is None or (isinstance(p, int) and not isinstance(p, bool))
                                                   for p in item[1:3]) \
                    and isinstance(item[3], int) and not isinstance(item[3], bool) and item[3] != 0
                used += 1
        if not ok or used > nd:
            bad = "index must be a list of ['i', k], ['n'] and ['s', start, stop, step] items"
    elif op in ("subtensor", "scatter"):
        bad = _index_attrs_problem(op, attrs, len(inputs))
    elif op == "scan_output":
        k, scan = attrs["k"], inputs[0]
        if scan.op != "scan":
            bad = "the operand must be a loop (a scan node)"
        elif not (isinstance(k, int) and not isinstance(k, bool) and 0 <= k < scan.arg("loop").n_results):
            bad = f"k must be one of the loop's {scan.arg('loop').n_results} results (0 up), got {k!r}"
    elif op == "split_part":
        axis, which = attrs["axis"], attrs["which"]
        if not (isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < nd
                and isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(inputs) - 1):
            bad = "axis must be an axis of the operand and which an index of the parts"
    if bad:
        raise SerializationError(f"{where}: bad attributes for {op!r}: {bad}")


_TEMPLATE_OPERAND = re.compile(r"\{(\d+)\}")


def arity(row: Any) -> tuple[int, int | None]:
    """(fewest, most) operands of an op row (most None: no bound): the row's ``nin``, or derived:
    an elementwise row uses operands ``{0}`` … ``{n-1}`` of its C template (custom ops' templates
    must use every operand), a reduction takes one."""
    if row.nin is not None:
        return row.nin
    if row.kind == "reduce":
        return 1, 1
    if row.kind == "elemwise":
        used = [int(k) for t in (row.c, row.c_int, row.cuda) if t for k in _TEMPLATE_OPERAND.findall(t)]
        if used:
            return max(used) + 1, max(used) + 1
    return 1, None  # a row that says nothing: the 1 to 64 operands every node may have


class _Loader:
    """What loading one document shares across its node tables (the top-level graph and the
    loop bodies and branches nested in it): the node budget, shared variables by reference and
    the caches of operand counts and types."""

    def __init__(self, max_nodes: int, shared_refs: Sequence[Node] | None):
        self.max_nodes, self.shared_refs, self.total = max_nodes, shared_refs, 0
        self.arities: dict[str, tuple[int, int | None]] = {}
        self.known: dict[tuple, Any] = {}  # (op, attributes, operand types) -> the node type its rule gave

    def count(self, n: int, where: str) -> None:
        self.total += n
        if self.total > self.max_nodes:
            raise SerializationError(f"not loaded: {where}{self.total} nodes (counting loop bodies and branches), "
                                     f"more than max_nodes={self.max_nodes}")

    def nodes(self, entries: list, depth: int, prefix: str) -> list[Node]:
        """Build one node table (operands come first: one pass, no recursion but into the
        bodies of loops and conditions, at most MAX_NESTING deep)."""
        built: list[Node] = []
        arities, known = self.arities, self.known
        for i, entry in enumerate(entries):
            where = f"{prefix}node {i}"
            if not isinstance(entry, dict):
                raise SerializationError(f"{where}: expected a JSON object")
            op = _field(entry, "op", str, where)
            where = f"{prefix}node {i} ({op[:40]})"
            if op == "input":
                built.append(input_node(_name(entry, where), _dtype(entry, where),
                                        _shape(_field(entry, "shape", list, where), where, True)))
            elif op == "shared":
                if depth:
                    raise SerializationError(f"{where}: a loop body or branch cannot hold a shared variable (the "
                                             "loop's or condition's operands carry the values it reads)")
                if "ref" in entry:
                    if self.shared_refs is None:
                        raise SerializationError(f"{where}: a shared variable by reference is only valid inside a "
                                                 "pickle")
                    built.append(self.shared_refs[_int(entry["ref"], where, 0, len(self.shared_refs) - 1)])
                    continue
                dtype = _dtype(entry, where)
                static = _shape(_field(entry, "shape", list, where), where, True)
                value = _field(entry, "value", dict, where)
                vshape = _shape(_field(value, "shape", list, where), where, False)
                if len(vshape) != len(static) or any(s is not None and s != v for s, v in zip(static, vshape)):
                    raise SerializationError(f"{where}: value of shape {list(vshape)} does not fit shape "
                                             f"{list(static)}")
                arr = _array(value.get("data"), dtype, vshape, where)
                built.append(shared(arr, _name(entry, where), borrow=True, shape=static))
            elif op == "constant":
                dtype = _dtype(entry, where)
                shp = _shape(_field(entry, "shape", list, where), where, False)
                built.append(constant_node(_array(entry.get("data"), dtype, shp, where), dtype))
            else:
                row = OPS.get(op)
                if row is None or row.kind == "leaf" or row.infer is None:
                    raise SerializationError(f"{where}: unknown op {op!r} (ops made with exprc.custom_op must be "
                                             "registered before loading)")
                control = row.kind == "control"
                refs = _field(entry, "inputs", list, where)
                cap = MAX_CONTROL_OPERANDS if control else 64
                if not refs or len(refs) > cap:
                    raise SerializationError(f"{where}: expected 1 to {cap} operands")
                lo, hi = arities[op] if op in arities else arities.setdefault(op, arity(row))
                if not lo <= len(refs) <= (cap if hi is None else hi):
                    want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
                    raise SerializationError(f"{prefix}node {i}: op {op!r} takes {want} "
                                             f"operand{'s' if want != '1' else ''}, got {len(refs)}")
                inputs = tuple(built[r] if type(r) is int and 0 <= r < i
                               else built[_int(r, f"{where}: operand", 0, i - 1)] for r in refs)
                if op != "scan_output":
                    for r, x in zip(refs, inputs):
                        if x.op == "scan":
                            raise SerializationError(f"{where}: reads the loop node {r} directly (only scan_output "
                                                     "nodes may)")
                raw_attrs = _field(entry, "attrs", dict, where, optional=True) or {}
                if op in ("scan", "ifelse"):
                    attrs = self.control_attrs(op, raw_attrs, inputs, depth, where)
                else:
                    attrs = {k: _decode_attr(v, where) for k, v in raw_attrs.items()} if raw_attrs else {}
                if op == "rare" and not attrs:  # (saved before rare had the attribute: a guard of one branch)
                    attrs = {"everywhere": False}
                # A type rule (and the attribute check) depends only on the operands' types and the
                # attributes: a signature seen before, whose rule inserted no cast, gives the same
                # type without running them again (a saved chain repeats a few signatures).  Not
                # for control nodes: a loop result's type is its loop's (behind an operand typed
                # 0-d bool), a loop's or condition's attribute is new for every node.
                key, typ = None, None
                if not control:
                    try:
                        key = (op, tuple(sorted(attrs.items())), tuple((n.type.dtype, n.type.shape) for n in inputs))
                        typ = known.get(key)
                    except TypeError:  # an unhashable attribute value: checked (and refused) the slow way
                        key, typ = None, None
                if typ is not None:
                    built.append(Node(op, inputs, key[1], typ))
                    continue
                _check_attrs(op, attrs, list(inputs), where)
                try:
                    node = row.make(inputs, attrs)
                except ExprcError as exc:
                    raise SerializationError(f"{where}: {exc}") from None
                except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
                    raise SerializationError(f"{where}: invalid operands or attributes ({type(exc).__name__}: "
                                             f"{exc})") from None
                for dim in node.type.shape:
                    if dim is not None and dim > MAX_DIM:
                        raise SerializationError(f"{where}: result shape is too large")
                if key is not None and node.inputs == inputs:
                    known[key] = node.type
                built.append(node)
        return built

    # -- loops and conditions ---------------------------------------------------------------------
    def control_attrs(self, op: str, raw: dict, operands: tuple, depth: int, where: str) -> dict:
        name = "loop" if op == "scan" else "branches"
        if set(raw) != {name}:
            raise SerializationError(f"{where}: op {op!r} takes the attributes [{name!r}], got {sorted(raw)}")
        if not isinstance(raw[name], dict):
            raise SerializationError(f"{where}: attribute {name!r} must be a JSON object")
        if op == "scan":
            return {"loop": self.loop(raw["loop"], operands, depth, where)}
        return {"branches": self.branches(raw["branches"], operands, depth, where)}

    def body(self, raw: Any, depth: int, where: str) -> tuple[list[Node], list[Node]]:
        """A nested graph document: (placeholders, outputs)."""
        if depth + 1 > MAX_NESTING:
            raise SerializationError(f"{where}: loops and conditions nested more than {MAX_NESTING} deep")
        if not isinstance(raw, dict) or set(raw) != {"nodes", "inputs", "outputs"}:
            raise SerializationError(f"{where}: the body must be an object with 'nodes', 'inputs' and 'outputs'")
        entries = _field(raw, "nodes", list, where)
        self.count(len(entries), f"{where}: ")
        built = self.nodes(entries, depth + 1, f"{where} body: ")
        n = len(built)
        ins = [_int(r, f"{where}: body inputs", 0, n - 1) for r in _field(raw, "inputs", list, where)]
        outs = [_int(r, f"{where}: body outputs", 0, n - 1) for r in _field(raw, "outputs", list, where)]
        if len(set(ins)) != len(ins):
            raise SerializationError(f"{where}: the body's inputs repeat a node")
        for r in ins:
            if built[r].op != "input":
                raise SerializationError(f"{where}: body input {r} is not an input node (a {built[r].op!r} node)")
        declared = set(ins)
        for j, node in enumerate(built):
            if node.op == "input" and j not in declared:
                raise SerializationError(f"{where}: body node {j} is an input that is not one of the body's inputs")
        for r in outs:
            if built[r].op == "scan":
                raise SerializationError(f"{where}: body output {r} is a loop node (only its scan_output nodes are "
                                         "values)")
        return [built[r] for r in ins], [built[r] for r in outs]

    def loop(self, raw: dict, operands: tuple, depth: int, where: str) -> Loop:
        fields = ("body", "seq_taps", "state_taps", "keep", "n_invariants", "until", "go_backwards",
                  "from_sequences", "labels", "name")
        if set(raw) != set(fields):
            raise SerializationError(f"{where}: a loop has the fields {list(fields)}, got {sorted(raw)}")

        def bad(what: str) -> SerializationError:
            return SerializationError(f"{where}: bad loop: {what}")

        def taps(v: Any, what: str, negative: bool) -> tuple[int, ...]:
            lo, hi = -MAX_TAP, (-1 if negative else MAX_TAP)
            if not isinstance(v, list) or not v or len(v) > MAX_CONTROL_OPERANDS or not all(
                    type(t) is int and lo <= t <= hi for t in v) or v != sorted(set(v)):
                raise bad(f"{what} must be a non-empty ascending list of distinct integers in [{lo}, {hi}], "
                          f"got {str(v)[:80]}")
            return tuple(v)

        seq_raw = _field(raw, "seq_taps", list, where)
        state_raw = _field(raw, "state_taps", list, where)
        if len(seq_raw) > len(operands) or len(state_raw) > MAX_CONTROL_OPERANDS:
            raise bad("more sequences or results than operands allow")
        seq_taps = tuple(taps(t, f"seq_taps[{j}]", False) for j, t in enumerate(seq_raw))
        state_taps = tuple(None if t is None else taps(t, f"state_taps[{k}]", True) for k, t in enumerate(state_raw))
        nres = len(state_taps)
        keep = _field(raw, "keep", list, where)
        if len(keep) != nres or not all(isinstance(k, str) and k in ("all", "last") for k in keep):
            raise bad(f"keep must list 'all' or 'last' for each of the {nres} results")
        if any(k == "last" and t is None for k, t in zip(keep, state_taps)):
            raise bad("keep 'last' is only for a result that is fed back (state_taps not null)")
        n_inv = _int(_field(raw, "n_invariants", int, where), f"{where}: bad loop: n_invariants", 0,
                     MAX_CONTROL_OPERANDS)
        flags = {k: _field(raw, k, bool, where) for k in ("until", "go_backwards", "from_sequences")}
        labels = _field(raw, "labels", list, where)
        if len(labels) > nres or not all(isinstance(t, str) and len(t) <= MAX_LABEL for t in labels):
            raise bad(f"labels must be at most one string (of at most {MAX_LABEL} characters) per result")
        name = _field(raw, "name", str, where)
        if len(name) > MAX_LABEL:
            raise bad(f"name longer than {MAX_LABEL} characters")
        ns, recurrent = len(seq_taps), [k for k, t in enumerate(state_taps) if t is not None]
        want = 1 + ns + len(recurrent) + n_inv
        if len(operands) != want:
            raise bad(f"{ns} sequences, {len(recurrent)} fed-back results and {n_inv} invariants need "
                      f"{want} operands (n_steps first), got {len(operands)}")
        if flags["from_sequences"] and not ns:
            raise bad("from_sequences needs at least one sequence")
        n_op = operands[0]
        if n_op.ndim != 0 or n_op.dtype not in ("int32", "int64"):
            raise bad(f"n_steps (operand 0) must be a 0-d integer, got {n_op.type}")
        if not flags["from_sequences"] and n_op.op == "constant" and not (
                0 <= int(n_op.value) <= (MAX_STEPS if flags["until"] else MAX_DIM)):
            raise bad(f"n_steps (operand 0) is the constant {int(n_op.value)}"
                      + ("" if flags["until"] or int(n_op.value) < 0 else
                         f": more than {MAX_DIM} steps is only for a loop that an until condition stops"))

        ins, outs = self.body(raw["body"], depth, where)
        n_taps = sum(map(len, seq_taps)) + sum(len(state_taps[k]) for k in recurrent)  # type: ignore[arg-type]
        if len(ins) != n_taps + n_inv:
            raise bad(f"the body has {len(ins)} inputs; the taps and invariants need {n_taps + n_inv}")
        if len(outs) != nres + flags["until"]:
            raise bad(f"the body has {len(outs)} outputs; {nres} results" + (" and the until condition"
                                                                             if flags["until"] else "")
                      + f" need {nres + flags['until']}")
        it = iter(ins)
        for j, taps_j in enumerate(seq_taps):
            seq = operands[1 + j]
            if seq.ndim == 0:
                raise bad(f"sequence {j} (operand {1 + j}) is 0-d")
            for tap in taps_j:
                _fits(next(it), seq.dtype, seq.type.shape[1:], f"{where}: bad loop: the placeholder of sequence {j} "
                      f"tap {tap}")
        for q, k in enumerate(recurrent):
            init, taps_k = operands[1 + ns + q], state_taps[k]
            if taps_k != (-1,) and init.ndim == 0:
                raise bad(f"result {k} has taps {list(taps_k)}: its initial value (operand {1 + ns + q}) needs an "  # type: ignore[arg-type]
                          "axis of past values")
            shape = init.type.shape if taps_k == (-1,) else init.type.shape[1:]
            for tap in taps_k:  # type: ignore[union-attr]
                _fits(next(it), init.dtype, shape, f"{where}: bad loop: the placeholder of result {k} tap {tap}")
            o = outs[k]
            if o.dtype != init.dtype or o.ndim != len(shape) or any(
                    a is not None and b is not None and a != b for a, b in zip(o.type.shape, shape)):
                raise bad(f"the body's result {k} is {o.type} but its state (initial value {init.type}) needs "
                          f"{init.dtype} of shape {list(shape)}")
        for q in range(n_inv):
            w = operands[1 + ns + len(recurrent) + q]
            _fits(next(it), w.dtype, w.type.shape, f"{where}: bad loop: the placeholder of invariant {q}")
        if flags["until"]:
            c = outs[-1]
            if c.ndim != 0 or c.dtype.startswith("float"):
                raise bad(f"the until condition must be a 0-d bool or integer, got {c.type}")
        return Loop(inputs=tuple(ins), outputs=tuple(outs), seq_taps=seq_taps, state_taps=state_taps,
                    keep=tuple(keep), n_invariants=n_inv, until=flags["until"], go_backwards=flags["go_backwards"],
                    from_sequences=flags["from_sequences"], labels=tuple(labels), name=name)

    def branches(self, raw: dict, operands: tuple, depth: int, where: str) -> Branches:
        if set(raw) != {"body"}:
            raise SerializationError(f"{where}: a condition's branches have the field ['body'], got {sorted(raw)}")
        cond = operands[0]
        if cond.ndim != 0 or cond.dtype.startswith("float"):
            raise SerializationError(f"{where}: bad branches: the condition (operand 0) must be a 0-d bool or "
                                     f"integer, got {cond.type}")
        ins, outs = self.body(raw["body"], depth, where)
        if len(outs) != 2:
            raise SerializationError(f"{where}: bad branches: the body needs 2 outputs (then, else), got {len(outs)}")
        if len(ins) != len(operands) - 1:
            raise SerializationError(f"{where}: bad branches: {len(ins)} placeholders for {len(operands) - 1} "
                                     "captured operands")
        for j, (h, v) in enumerate(zip(ins, operands[1:])):
            _fits(h, v.dtype, v.type.shape, f"{where}: bad branches: the placeholder of operand {j + 1}")
        a, b = outs
        if a.dtype != b.dtype or a.ndim != b.ndim:
            raise SerializationError(f"{where}: bad branches: then is {a.type} but else is {b.type} (one dtype and "
                                     "number of dimensions)")
        return Branches(tuple(ins), a, b)


def _fits(placeholder: Node, dtype: str, shape: tuple, what: str) -> None:
    """A placeholder must stand for values of ``dtype`` and ``shape`` (a size it fixes, the value fixes too)."""
    t = placeholder.type
    if t.dtype != dtype or len(t.shape) != len(shape) or any(p is not None and p != s for p, s in zip(t.shape, shape)):
        raise SerializationError(f"{what} is {t} but its operand gives {TensorType(dtype, tuple(shape))}")


def _not_a_loop(nodes: list[Node], what: str) -> None:
    for n in nodes:
        if n.op == "scan":
            raise SerializationError(f"graph: {what} is a loop node (only its scan_output nodes are values)")


def from_dict(doc: dict, max_nodes: int = 10_000_000, shared_refs: Sequence[Node] | None = None) -> Any:
    """Rebuild an expression, a list of them or a compiled function from a parsed document."""
    if not isinstance(doc, dict):
        raise SerializationError("not an exprc graph: expected a JSON object")
    kind = doc.get("kind")
    if kind not in ("expression", "function"):
        raise SerializationError(f"not an exprc graph: \"kind\" must be \"expression\" or \"function\", got {kind!r}")
    entries = _field(doc, "nodes", list, "graph")
    if len(entries) > max_nodes:
        raise SerializationError(f"not loaded: {len(entries)} nodes, more than max_nodes={max_nodes}")
    loader = _Loader(max_nodes, shared_refs)
    loader.count(len(entries), "")
    built = loader.nodes(entries, 0, "")
    n = len(built)

    def refs_of(key: str) -> list[Node]:
        return [built[_int(r, f"graph: {key}", 0, n - 1)] for r in _field(doc, key, list, "graph")]

    outputs = refs_of("outputs")
    _not_a_loop(outputs, "an output")
    single = _field(doc, "single", bool, "graph")
    if kind == "expression":
        if single:
            if len(outputs) != 1:
                raise SerializationError("graph: \"single\" is true but there is not exactly one output")
            return outputs[0]
        return outputs
    inputs = refs_of("inputs")
    for v in inputs:
        if v.op != "input":
            raise SerializationError("graph: a function input is not an input node")
    updates = []
    for pair in _field(doc, "updates", list, "graph"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise SerializationError("graph: each update is a [shared, expression] pair")
        var, expr = (built[_int(r, "graph: updates", 0, n - 1)] for r in pair)
        _not_a_loop([expr], "an update")
        updates.append((var, expr))
    options = _field(doc, "options", dict, "graph")
    return _compile(inputs, outputs[0] if single else outputs, updates, options)


def _compile(inputs: list[Node], outputs: Any, updates: list, options: dict) -> Any:
    cfg = current()
    changes: dict[str, Any] = {}
    for key in ("precise_math", "fast_math"):
        if isinstance(options.get(key), bool):
            changes[key] = options[key]
    exclude = options.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) and len(e) <= 200 for e in exclude):
        raise SerializationError("graph: options.exclude must be a list of rewrite names or tags")
    if exclude:
        changes["exclude"] = tuple(sorted(set(cfg.exclude) | set(exclude)))
    cfg = cfg.replace(**changes) if changes else cfg
    backend = options.get("backend")
    if not isinstance(backend, str) or backends.unavailable_reason(backend, cfg) is not None:
        backend = None  # the saved backend is not available here: the default one
    try:
        return function(inputs, outputs, backend=backend, config=cfg, updates=updates or None,
                        allow_downcast=options.get("allow_downcast") is True)
    except ExprcError as exc:
        raise SerializationError(f"graph: cannot compile the saved function: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"graph: invalid function: {exc}") from exc


def load(path: str | os.PathLike, max_bytes: int = 1 << 30, max_nodes: int = 10_000_000) -> Any:
    """Read what :func:`save` wrote: an expression, a list of expressions, or a compiled function
    (compiled with the configuration in force; the saved backend when it is available here)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SerializationError(f"not loaded: {path} has {size} bytes, more than max_bytes={max_bytes}")
        raw = path.read_bytes()
    except OSError as exc:
        raise SerializationError(f"cannot read {path}: {exc}") from exc
    try:
        return loads(raw, max_bytes=max_bytes, max_nodes=max_nodes)
    except SerializationError as exc:
        raise SerializationError(f"{path}: {exc}") from None


# -- pickling ------------------------------------------------------------------------------------------
def reduce_function(fn: Any) -> tuple:
    """``Function.__reduce__``: the JSON text with shared variables by reference, plus the
    shared variables themselves (pickled by value, once per pickle, so two functions pickled
    together keep sharing them)."""
    refs: list = []
    text = json.dumps(to_dict(fn, shared_refs=refs), allow_nan=False, separators=(",", ":"))
    return _unpickle_function, (text, tuple(refs))


def _unpickle_function(text: str, shared_refs: tuple) -> Any:
    return from_dict(parse(text), shared_refs=list(shared_refs))


__all__ = ["FORMAT", "VERSION", "arity", "dumps", "from_dict", "load", "loads", "parse", "save", "to_dict"]
