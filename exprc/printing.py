"""Printing: infix ``pprint``, an indented ``debugprint`` tree, DOT output and reprs.

All printers walk the graph iteratively.  A subexpression used several times
whose text is long is printed once as a named binding (``t3 = …``) so shared
DAGs do not blow up exponentially.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from exprc.graph import Node, clients, toposort
from exprc.ops import OPS

_ATOM = 100
_COMPARISONS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
_REF = re.compile("\x00(\\d+)\x00")  # placeholder for operand k while rendering one node
_MAX_INDENT = 64  # debugprint: deeper levels print their depth instead of the bars


def _leaf_text(node: Node) -> tuple[str, int]:
    if node.op == "input":
        name = node.arg("name")
        return (name if name else f"<input{node.arg('uid')}>"), _ATOM
    arr = node.value
    if arr.ndim == 0:
        v = arr.item()
        text = repr(v)
        if isinstance(v, float) and not np.isfinite(v):
            text = f"float('{v}')" if not np.isnan(v) else "nan"
        return text, (11 if text.startswith("-") else _ATOM)
    return f"constant({node.dtype}{list(arr.shape)})" if arr.size > 6 else np.array2string(
        arr, separator=", "), _ATOM


def _index_text(index: tuple, texts: Sequence[str] = ()) -> str:
    """NumPy's spelling of an index; operand items (exprc.ops.index) print their operand's text."""
    parts = []
    for item in index:
        kind = item[0]
        if kind == "i":
            parts.append(str(item[1]))
        elif kind == "n":
            parts.append("None")
        elif kind in ("I", "A", "M"):
            parts.append(texts[item[1]])
        elif kind == "S":
            a, b, c = (None if j is None else texts[j] for j in item[1:])
            s = f"{'' if a is None else a}:{'' if b is None else b}"
            parts.append(s + (f":{c}" if c is not None else ""))
        else:
            a, b, c = item[1:]
            s = f"{'' if a is None else a}:{'' if b is None else b}"
            parts.append(s + (f":{c}" if c != 1 else ""))
    return ", ".join(parts)


def node_text(node: Node, args: Sequence[tuple[str, int]]) -> tuple[str, int]:
    """Render one node given its operands' (text, precedence)."""
    op = OPS[node.op]
    texts = [t for t, _ in args]
    if op.infix and len(args) == 2:
        (lt, lp), (rt, rp) = args
        right_assoc = node.op == "pow"
        chained = node.op in _COMPARISONS  # Python chains a < b < c: never leave a comparison bare
        if lp < op.prec or (lp == op.prec and (right_assoc or chained)):
            lt = f"({lt})"
        # Commutative is not associative: a * (b / c) must not print as a * b / c.
        if rp < op.prec or (not right_assoc and rp == op.prec):
            rt = f"({rt})"
        return f"{lt} {op.infix} {rt}", op.prec
    if op.infix and len(args) == 1:
        (t, p) = args[0]
        return f"{op.infix}{t if p >= op.prec else f'({t})'}", op.prec
    if node.op == "cast":
        return f"{texts[0] if args[0][1] >= _ATOM else f'({texts[0]})'}.astype({node.arg('dtype')})", _ATOM
    if node.op in ("getitem", "subtensor"):
        t = texts[0] if args[0][1] >= _ATOM else f"({texts[0]})"
        return f"{t}[{_index_text(node.arg('index'), texts)}]", _ATOM
    if node.op == "scatter":  # Theano's spelling: inc_subtensor(x[idx], v)
        t = texts[0] if args[0][1] >= _ATOM else f"({texts[0]})"
        return f"{node.arg('mode')}_subtensor({t}[{_index_text(node.arg('index'), texts)}], {texts[1]})", _ATOM
    if op.kind == "reduce":
        extra = f", axis={node.arg('axis')}" if node.arg("axis") != tuple(range(node.inputs[0].ndim)) else ""
        extra += ", keepdims=True" if node.arg("keepdims") else ""
        extra += ", identity=True" if node.arg("identity") else ""
        return f"{node.op}({texts[0]}{extra})", _ATOM
    if node.op == "rare":  # (as keepdims: the default, False, goes unsaid)
        return f"rare({texts[0]}{', everywhere=True' if node.arg('everywhere') else ''})", _ATOM
    extras = [f"{k}={v!r}" for k, v in node.attrs]
    return f"{node.op}({', '.join(texts + extras)})", _ATOM


def pprint(expr: Node | Sequence[Node], max_inline: int = 60, max_nodes: int | None = None) -> str:
    """Infix text of an expression, e.g. ``log1p(x) * y``.

    Long subexpressions used more than once become bindings listed first.  ``max_nodes``: print
    at most that many nodes, those nearest the outputs; deeper operands print as ``…``, shared
    subexpressions longer than 60 characters become bindings and the text stops at
    ``40 * max_nodes`` characters (the work is then bounded too: a summary of a huge graph, as in
    a generated kernel's comment, costs O(max_nodes), not the whole graph).  A graph of at most
    ``max_nodes`` nodes prints as without it, up to that length.
    """
    outputs = [expr] if isinstance(expr, Node) else list(expr)
    if max_nodes is not None:
        return _pprint_bounded(outputs, max_inline, max_nodes)
    return _pprint_all(outputs, max_inline)


def _pprint_all(outputs: list[Node], max_inline: int, limit: int | None = None) -> str:
    order = toposort(outputs)
    uses = clients(order)
    # Each node's text is kept as pieces (strings and operand nodes) and joined once at the
    # end: building nested strings node by node would be quadratic on deep chains.
    parts: dict[Node, tuple[list, int, int]] = {}  # node -> (pieces, precedence, length)
    bindings: list[str] = []
    for n in order:
        if not n.inputs:
            text, prec = _leaf_text(n)
            pieces: list = [text]
            length = len(text)
        else:
            text, prec = node_text(n, [(f"\x00{k}\x00", parts[i][1]) for k, i in enumerate(n.inputs)])
            pieces = [n.inputs[int(p)] if j % 2 else p for j, p in enumerate(_REF.split(text))]
            length = builtins.sum(len(p) if isinstance(p, str) else parts[p][2] for p in pieces)
        if n.inputs and uses.get(n, 0) > 1 and length > max_inline:
            name = f"t{len(bindings)}"
            bindings.append(f"{name} = {_join(pieces, parts, limit)}")
            pieces, prec, length = [name], _ATOM, len(name)
        parts[n] = (pieces, prec, length)
    texts: list[str] = []
    size = builtins.sum(len(b) + 1 for b in bindings)
    for o in outputs:  # (with a limit, outputs past it are not expanded)
        if limit is not None and size > limit:
            break
        texts.append(_join(parts[o][0], parts, None if limit is None else limit - size))
        size += len(texts[-1]) + 2
    return "\n".join(bindings + [", ".join(texts)])


def _pprint_bounded(outputs: list[Node], max_inline: int, max_nodes: int) -> str:
    """pprint of the ``max_nodes`` nodes nearest the outputs (breadth first); the rest is ``…``."""
    kept: dict[Node, None] = dict.fromkeys(outputs)
    queue, head = list(kept), 0
    while head < len(queue) and len(kept) < max_nodes:
        for i in queue[head].inputs:
            if i not in kept and len(kept) < max_nodes:
                kept[i] = None
                queue.append(i)
        head += 1
    cap = 40 * max_nodes
    if all(i in kept for n in kept for i in n.inputs):  # the whole graph fits: the plain text (capped)
        text = _pprint_all(outputs, max_inline, cap)
        return text if len(text) <= cap else text[:cap - 1] + "…"
    # Elided operands become placeholder inputs named "…" (of their type: a reduction prints its
    # axes by its operand's ndim), then the plain printer runs.
    elided: dict = {}

    def placeholder(i: Node) -> Node:
        if i.type not in elided:
            elided[i.type] = Node("input", (), {"name": "…", "uid": -1}, i.type)
        return elided[i.type]

    memo: dict[Node, Node] = {}
    for n in toposort_within(outputs, kept):
        memo[n] = n if not n.inputs else Node(
            n.op, tuple(memo[i] if i in memo else placeholder(i) for i in n.inputs), n.attrs, n.type)
    # Shared operands inline up to max_inline characters each: a DAG of max_nodes nodes could
    # still print exponentially long, so bindings start at 60 characters and the text is capped.
    text = _pprint_all([memo[o] for o in outputs], min(max_inline, 60), cap)
    return text if len(text) <= cap else text[:cap - 1] + "…"


def toposort_within(outputs: Sequence[Node], kept: dict[Node, None]) -> list[Node]:
    """Nodes of ``kept`` reachable from ``outputs`` through ``kept``, operands first (iterative)."""
    order: list[Node] = []
    seen: set[Node] = set()
    for root in outputs:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[Node, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i]
                if child in kept and child not in seen:
                    seen.add(child)
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def _join(pieces: list, parts: dict, limit: int | None = None) -> str:
    """Expand pieces (strings and nodes whose pieces are in ``parts``) iteratively; stop once the
    text is longer than ``limit`` (the caller cuts it: a bounded summary need not expand it all)."""
    out: list[str] = []
    size = 0
    stack = list(reversed(pieces))
    while stack:
        p = stack.pop()
        if isinstance(p, str):
            out.append(p)
            size += len(p)
            if limit is not None and size > limit:
                break
        else:
            stack.extend(reversed(parts[p][0]))
    return "".join(out)


def Print(x: Any, message: str = "", summary: bool = False) -> Any:
    """``x``, printing its value each time a compiled function evaluates it (Theano's ``Print``;
    also ``x.print(message)``): ``message`` then the value, or with ``summary=True`` its shape,
    dtype, min, max, mean and NaN/inf counts.  Only the value is materialized: the graph around
    it fuses as before.  The gradient passes through.  Theano's spelling
    ``Print("message")(x)`` works too."""
    if isinstance(x, str) and message == "":
        return lambda y: Print(y, x, summary)
    from exprc.api import as_node  # (on first use: this module is imported below the API, by graph reprs)

    if not isinstance(message, str):
        raise TypeError(f"Print: message must be a string, got {type(message).__name__}")
    return OPS["print"].make((as_node(x),), {"message": message, "summary": bool(summary)})


def debugprint(obj: Any, file: Any = None) -> str:
    """An indented tree with op, type and a short id per node; shared nodes are
    expanded once and referenced by id afterwards.  Accepts nodes or a Function."""
    outputs = getattr(obj, "outputs", None)
    if outputs is not None and not isinstance(obj, Node):
        outputs = list(obj.graph.outputs) if hasattr(obj, "graph") else list(outputs)
    else:
        outputs = [obj] if isinstance(obj, Node) else list(obj)
    ids: dict[Node, int] = {}
    lines: list[str] = []
    stack: list[tuple[Node, int]] = [(o, 0) for o in reversed(outputs)]
    while stack:
        node, depth = stack.pop()
        prefix = " |" * depth if depth <= _MAX_INDENT else f"{' |' * 4} ..{depth}.. |"
        if node in ids:
            lines.append(f"{prefix}*{ids[node]}")
            continue
        ids[node] = len(ids)
        if node.op == "input":
            label = f"{_leaf_text(node)[0]}"
        elif node.op == "constant":
            label = f"constant {_leaf_text(node)[0]}"
        else:
            attrs = " ".join(f"{k}={v!r}" for k, v in node.attrs)
            label = node.op + (f"{{{attrs}}}" if attrs else "")
        lines.append(f"{prefix}{label} {node.type} id={ids[node]}")
        for child in reversed(node.inputs):
            stack.append((child, depth + 1))
    out = "\n".join(lines)
    if file is not None:
        print(out, file=file)
    return out


def to_dot(outputs: Node | Sequence[Node]) -> str:
    """Graphviz DOT text of the graph (operand positions label the edges)."""
    outs = [outputs] if isinstance(outputs, Node) else list(outputs)
    order = toposort(outs)
    ids = {n: i for i, n in enumerate(order)}
    lines = ["digraph exprc {", "  rankdir=BT;"]
    for n in order:
        label = _leaf_text(n)[0] if not n.inputs else n.op
        label = label.replace("\\", "\\\\").replace('"', '\\"')
        shape = "box" if n.op == "input" else ("plaintext" if n.op == "constant" else "ellipse")
        lines.append(f'  n{ids[n]} [label="{label}\\n{n.type}", shape={shape}];')
    for n in order:
        for pos, i in enumerate(n.inputs):
            lines.append(f'  n{ids[i]} -> n{ids[n]} [label="{pos}"];')
    lines.append("}")
    return "\n".join(lines)


def short_repr(node: Node) -> str:
    """The ``repr`` of a node: its type and (for small graphs) its infix text."""
    if node.op == "input":
        return f"Tensor({node.type}, name={node.arg('name')!r})"
    text = "…"
    # Only print small graphs inline: repr must stay cheap on huge graphs.
    stack, seen = [node], {node}
    while stack and len(seen) <= 64:
        for i in stack.pop().inputs:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    if len(seen) <= 64:
        text = pprint(node)
        if len(text) > 120:
            text = text[:117] + "..."
    return f"Tensor({node.type}, {text!r})"


# The node class sits below this module: its repr is installed from here.
Node.__repr__ = short_repr  # type: ignore[method-assign]
