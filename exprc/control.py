"""Loops and conditions: :func:`scan` (Theano's names and semantics), :func:`fori_loop` /
:func:`while_loop` (JAX's), :func:`ifelse` (lazy) and :func:`switch` (elementwise).

``scan`` calls the user's function once, on placeholders standing for one step's values, and
keeps what it returns as the loop's body graph (:class:`~exprc.ops.control.Loop`).  Everything
the body reads from outside that does not change between steps (weights, shared variables, the
``non_sequences``, any outer expression) is hoisted: computed once before the loop and handed to
every step, as Theano's scan does with the variables its function closes over.  The body is
optimized and compiled as a function of its own when the outer function is (stability and fusion
rules apply inside it), and the loop runs over that kernel without Python per step on the C
backend (:mod:`exprc.backends.loops`).

Gradients flow through loops as a reverse loop (backpropagation through time, below) and through
``ifelse`` as an ``ifelse`` of the branches' gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from exprc import api
from exprc.errors import ControlFlowError, DTypeError, ShapeError
from exprc.graph import Node, constant_node, input_node, rebuild, substitute, toposort
from exprc.ops import OPS, grad_rule
from exprc.ops.control import Branches, Loop
from exprc.types import shape_str

__all__ = ["fori_loop", "ifelse", "scan", "switch", "until", "while_loop"]

#: ``n_steps`` of a loop bounded only by its ``until`` condition.
UNBOUNDED = 2**62


class until:
    """Returned by a :func:`scan` function (with its outputs): stop after the step where
    ``condition`` holds.  The stacked outputs then have as many rows as steps ran."""

    def __init__(self, condition: Any):
        c = _condition(condition, "until")
        self.condition = c if c.dtype == "bool" else api.not_equal(c, 0)


def _condition(c: Any, what: str) -> Node:
    c = api.as_node(c)
    if c.ndim != 0:
        raise ShapeError(f"{what}: expected a scalar condition, got shape {shape_str(c.type.shape)}")
    if c.dtype.startswith("float"):
        raise DTypeError(f"{what}: expected a bool (or integer) condition, got {c.dtype}; compare it first "
                         "(e.g. x > 0)")
    return c


def switch(condition: Any, x: Any, y: Any) -> Node:
    """Theano's ``switch``: elementwise ``x`` where ``condition`` holds, else ``y`` (both are
    computed; :func:`ifelse` computes one)."""
    return api.where(condition, x, y)


# -- closure conversion ---------------------------------------------------------------------------
def _hoist(outputs: list[Node], placeholders: Sequence[Node]) -> tuple[list[Node], list[Node], list[Node]]:
    """Split a body into what changes per step and what does not.

    Returns ``(outputs, invariant placeholders, invariant values)``: every maximal subexpression
    that reads no placeholder but some graph input becomes a new placeholder, and its outer
    expression an operand of the loop (computed once).  Constants stay in the body."""
    values = _invariant_parts(outputs, set(placeholders), lambda n: n.op == "input")
    holders = [input_node(f"invariant{j}", v.dtype, v.type.shape) for j, v in enumerate(values)]
    new = substitute(outputs, dict(zip(values, holders))) if values else list(outputs)
    return new, holders, values


# -- scan ------------------------------------------------------------------------------------------
def _taps(entry: Any, key: str, default: list[int], what: str) -> tuple[Any, tuple[int, ...]]:
    if isinstance(entry, Mapping):
        unknown = set(entry) - {key, "taps"}
        if unknown:
            raise ControlFlowError(f"{what}: unknown keys {sorted(unknown)}; expected {key!r} and 'taps'")
        if key not in entry:
            raise ControlFlowError(f"{what}: a dict entry needs {key!r}")
        taps = entry.get("taps", default)
        taps = [taps] if isinstance(taps, (int, np.integer)) else taps
        if taps is None:
            return entry[key], ()
        if not taps or not all(isinstance(t, (int, np.integer)) for t in taps) or len(set(taps)) != len(taps):
            raise ControlFlowError(f"{what}: taps must be distinct ints, got {taps!r}")
        return entry[key], tuple(sorted(int(t) for t in taps))
    return entry, tuple(default)


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _split_return(ret: Any) -> tuple[list[Any], dict, Node | None, bool]:
    """A scan function's return: outputs, updates and an ``until``, in any order (Theano)."""
    updates: dict = {}
    cond = None
    if isinstance(ret, until):
        return [], {}, ret.condition, False
    if isinstance(ret, tuple) and any(isinstance(r, (until, Mapping)) for r in ret):
        outs: list[Any] = []
        single = False
        for r in ret:
            if isinstance(r, until):
                cond = r.condition
            elif isinstance(r, Mapping):
                updates = dict(r)
            else:
                single = not isinstance(r, (list, tuple))
                outs = _as_list(r)
        return outs, updates, cond, single
    if isinstance(ret, Mapping):
        return [], dict(ret), None, False
    return _as_list(ret), {}, None, not isinstance(ret, (list, tuple))


def scan(fn: Callable[..., Any], sequences: Any = None, outputs_info: Any = None, non_sequences: Any = None,
         n_steps: Any = None, go_backwards: bool = False, name: str | None = None,
         return_list: bool = False, keep: str | Sequence[str] = "all", truncate_gradient: int = -1,
         strict: bool = False, mode: Any = None, profile: bool = False, allow_gc: Any = None) -> tuple[Any, dict]:
    """Theano's ``scan``: ``fn`` applied step by step along the sequences' first axis.

    ``fn`` receives, in order: one slice per tap of each sequence, one value per tap of each
    recurrent output (the entries of ``outputs_info`` that are not None), then the
    ``non_sequences``.  It returns the step's outputs (one per ``outputs_info`` entry), and
    optionally a dict of shared-variable updates and an :class:`until` condition.

    * ``sequences``: expressions, or dicts ``{"input": x, "taps": [-1, 0]}``: tap ``k`` at step
      ``t`` reads ``x[t + k - min(taps)]``.
    * ``outputs_info``: per output, None (not fed back), an initial value (tap ``-1``), or
      ``{"initial": x0, "taps": [-2, -1]}`` where ``x0`` has one row per step back.
    * ``n_steps``: an int or a 0-d integer expression; by default the sequences' common length
      (sequences of different lengths raise).
    * ``go_backwards``: iterate the sequences from their end.
    * ``keep="last"``: return each output's final value instead of the stacked values of every
      step (the loop then keeps two buffers per state, whatever ``n_steps``; after zero steps a
      recurrent output's final value is its initial value).

    * Theano's ``strict=True``: the function may read only its arguments (and constants); an
      outer variable it closes over raises.  ``truncate_gradient`` must be -1 (the whole
      history); ``mode``, ``profile`` and ``allow_gc`` are accepted and have no effect.

    Returns ``(outputs, updates)``: the stacked outputs (one array of ``n_steps`` rows per
    output; a single expression when there is one output, unless ``return_list``) and the
    updates to pass to :func:`exprc.function` (shared variables the body updated get their value
    after the last step)."""
    label = name or "scan"
    if truncate_gradient != -1:
        raise NotImplementedError(f"{label}: truncate_gradient={truncate_gradient!r}: only -1 (backpropagation "
                                  "through every step) is implemented")
    seq_entries = _as_list(sequences)
    out_entries = _as_list(outputs_info)
    nonseqs = [api.as_node(x) for x in _as_list(non_sequences)]

    seqs, seq_taps, args = [], [], []
    for j, entry in enumerate(seq_entries):
        x, taps = _taps(entry, "input", [0], f"{label}: sequences[{j}]")
        x = api.as_node(x)
        if x.ndim == 0:
            raise ShapeError(f"{label}: sequences[{j}] must have at least one axis, got a scalar")
        if not taps:
            raise ControlFlowError(f"{label}: sequences[{j}] needs at least one tap")
        seqs.append(x)
        seq_taps.append(taps)
        args.extend(input_node(f"{label}.sequences[{j}][t{t:+d}]", x.dtype, x.type.shape[1:]) for t in taps)
    n_seq_args = len(args)

    inits, state_taps = [], []
    for k, entry in enumerate(out_entries):
        if entry is None:
            state_taps.append(None)
            continue
        x, taps = _taps(entry, "initial", [-1], f"{label}: outputs_info[{k}]")
        if x is None or not taps:
            state_taps.append(None)
            continue
        if any(t >= 0 for t in taps):
            raise ControlFlowError(f"{label}: outputs_info[{k}]: output taps must be negative, got {list(taps)}")
        x = api.as_node(x)
        shape = x.type.shape if taps == (-1,) else x.type.shape[1:]
        if taps != (-1,) and x.ndim == 0:
            raise ShapeError(f"{label}: outputs_info[{k}] has taps {list(taps)}: its initial value needs one row "
                             f"per step back, got a scalar")
        inits.append(x)
        state_taps.append(taps)
        args.extend(input_node(f"{label}.outputs_info[{k}][t{t:+d}]", x.dtype, shape) for t in taps)
    n_state_args = len(args) - n_seq_args

    ret = fn(*args, *nonseqs)
    outs, updates, cond, _ = _split_return(ret)
    outs = [api.as_node(o) for o in outs]
    if out_entries and len(outs) != len(out_entries):
        raise ControlFlowError(f"{label}: the function returned {len(outs)} outputs but outputs_info has "
                               f"{len(out_entries)} entries")
    while len(state_taps) < len(outs):
        state_taps.append(None)
    labels = [f"outputs_info[{k}]" for k in range(len(outs))]
    keeps = [keep] * len(outs) if isinstance(keep, str) else list(keep)
    if len(keeps) != len(outs) or any(k not in ("all", "last") for k in keeps):
        raise ControlFlowError(f"{label}: keep must be 'all', 'last' or a list of them, one per output; got {keep!r}")
    if any(k == "last" and t is None for k, t in zip(keeps, state_taps)):
        raise ControlFlowError(f"{label}: keep='last' needs the output fed back (an initial value in outputs_info)")

    # Shared variables the body updates are states: their value after the last step is the update.
    from exprc.shared import is_shared

    upd_vars = []
    for v, e in updates.items():
        if not is_shared(v):
            raise ControlFlowError(f"{label}: updates may only name shared variables, got {v!r}")
        e = api.as_node(e)
        if e.dtype != v.dtype:
            e = api.astype(e, v.dtype)
        upd_vars.append(v)
        outs.append(e)
        state_taps.append((-1,))
        keeps.append("last")
        inits.append(v)
        labels.append(f"updates[{v.arg('name') or 'shared'}]")
    upd_holders = [input_node(f"{label}.{lb}", v.dtype, v.type.shape) for v, lb in
                   zip(upd_vars, labels[len(labels) - len(upd_vars):])]
    if upd_vars:
        outs = substitute(outs + ([cond] if cond is not None else []), dict(zip(upd_vars, upd_holders)))
        if cond is not None:
            cond = outs.pop()

    # The states' placeholders in the order: recurrent outputs' taps, then updated shared variables.
    state_args = args[n_seq_args:n_seq_args + n_state_args] + upd_holders
    _check_results(label, outs, state_taps, inits, labels)

    body_outs = outs + ([cond] if cond is not None else [])
    if any(n.op.startswith("random_") for n in toposort(body_outs)):
        # A draw's key does not change from step to step: every step would draw the same numbers.
        raise ControlFlowError(f"{label}: random draws inside a loop body are not supported (each step would "
                               "draw the same numbers); draw them for all steps before the loop (size=(n_steps, "
                               "...)) and pass them in sequences")
    body_outs, inv_holders, inv_values = _hoist(body_outs, args[:n_seq_args] + state_args)
    if strict:
        allowed = {id(v) for v in nonseqs} | {id(v) for v in upd_vars}
        free = [v for v in inv_values if id(v) not in allowed]
        if free:
            names = ", ".join(str(v.arg("name") or v.op) if v.op == "input" else f"an expression ({v.type})"
                              for v in free[:5])
            raise ControlFlowError(f"{label}: strict=True but the function reads {names} from outside; pass "
                                   "it in non_sequences")

    from_seqs = n_steps is None
    if n_steps is None:
        if not seqs:
            if cond is None:
                raise ControlFlowError(f"{label}: n_steps is needed when there are no sequences")
            n_node = constant_node(UNBOUNDED)
            from_seqs = False
        else:
            n_node = constant_node(-1)
            static = {s.type.shape[0] - (t[-1] - t[0]) for s, t in zip(seqs, seq_taps) if s.type.shape[0] is not None}
            if len(static) > 1:
                desc = ", ".join(f"sequences[{j}] gives {s.type.shape[0] - (t[-1] - t[0])}"
                                 for j, (s, t) in enumerate(zip(seqs, seq_taps)) if s.type.shape[0] is not None)
                raise ControlFlowError(f"{label}: the sequences have different lengths ({desc} steps)")
    else:
        n_node = _steps_node(n_steps, label)

    loop = Loop(inputs=tuple(args[:n_seq_args] + state_args + inv_holders), outputs=tuple(body_outs),
                seq_taps=tuple(seq_taps), state_taps=tuple(state_taps), keep=tuple(keeps),
                n_invariants=len(inv_holders), until=cond is not None, go_backwards=bool(go_backwards),
                from_sequences=from_seqs, labels=tuple(labels), name=label)
    node = OPS["scan"].make((n_node, *seqs, *inits, *inv_values), {"loop": loop})
    results = [OPS["scan_output"].make((node,), {"k": k}) for k in range(len(outs))]
    n_user = len(outs) - len(upd_vars)
    user, upd = results[:n_user], dict(zip(upd_vars, results[n_user:]))
    if return_list or n_user != 1:
        return user, upd
    return user[0], upd


def _steps_node(n_steps: Any, label: str) -> Node:
    if isinstance(n_steps, (bool, np.bool_)) or (not isinstance(n_steps, (Node, int, np.integer))):
        raise DTypeError(f"{label}: n_steps must be an int or a 0-d integer expression, got {n_steps!r}")
    n = api.as_node(n_steps)
    if n.ndim != 0 or n.dtype not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        raise DTypeError(f"{label}: n_steps must be a 0-d integer, got {n.type}")
    if n.op == "constant" and int(n.value) < 0:
        raise ControlFlowError(f"{label}: n_steps must be >= 0, got {int(n.value)}")
    return api.astype(n, "int64")


def _check_results(label: str, outs: list[Node], state_taps: list, inits: list[Node], labels: list[str]) -> None:
    """A recurrent result must have its initial value's dtype and shape (static parts now, the
    rest when the loop runs)."""
    i = 0
    for k, (o, taps) in enumerate(zip(outs, state_taps)):
        if taps is None:
            continue
        init = inits[i]
        i += 1
        shape = init.type.shape if taps == (-1,) else init.type.shape[1:]
        if o.dtype != init.dtype:
            raise DTypeError(f"{label}: the function's result for {labels[k]} is {o.dtype} but its initial value is "
                             f"{init.dtype}; give both the same dtype (astype)")
        if o.ndim != len(shape) or any(a is not None and b is not None and a != b for a, b in zip(o.type.shape, shape)):
            raise ShapeError(f"{label}: the function's result for {labels[k]} has shape {shape_str(o.type.shape)} but "
                             f"its initial value gives {shape_str(shape)}")


# -- fori_loop / while_loop ------------------------------------------------------------------------
def _flatten(val: Any) -> tuple[list[Node], Callable[[list], Any]]:
    if isinstance(val, (list, tuple)):
        kind = type(val)
        return [api.as_node(v) for v in val], lambda xs: kind(xs)
    return [api.as_node(val)], lambda xs: xs[0]


def fori_loop(lower: Any, upper: Any, body_fun: Callable[[Node, Any], Any], init_val: Any) -> Any:
    """JAX's ``fori_loop``: ``val = body_fun(i, val)`` for ``i`` in ``range(lower, upper)``;
    returns the final ``val`` (a node, or a list/tuple of nodes, as ``init_val``).  Only the
    last value is kept (two buffers per state, whatever the number of steps)."""
    vals, back = _flatten(init_val)
    lo = api.astype(api.as_node(lower), "int64") if not isinstance(lower, int) else constant_node(lower)
    hi = api.astype(api.as_node(upper), "int64") if not isinstance(upper, int) else constant_node(upper)
    n = api.maximum(hi - lo, 0)

    def step(i: Node, *xs: Node) -> list[Node]:
        new, _ = _flatten(body_fun(i, back(list(xs))))
        if len(new) != len(xs):
            raise ControlFlowError(f"fori_loop: body_fun returned {len(new)} values for {len(xs)} in init_val")
        return [i + 1, *new]

    # A body that ignores the index needs no counter state (one pointer less to move per step).
    probe = input_node("fori_loop.i", "int64", ())
    uses_i = any(n is probe for n in toposort(step(probe, *vals)[1:]))
    if not uses_i:
        outs, _ = scan(lambda *xs: step(probe, *xs)[1:], outputs_info=vals, n_steps=n, name="fori_loop",
                       return_list=True, keep="last")
        return back(outs)
    outs, _ = scan(step, outputs_info=[lo, *vals], n_steps=n, name="fori_loop", return_list=True, keep="last")
    return back(outs[1:])


def while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any,
               max_steps: int | Node | None = None) -> Any:
    """JAX's ``while_loop``: ``while cond_fun(val): val = body_fun(val)``; returns the final
    ``val``.  ``max_steps`` bounds the iterations (default: none).

    One loop step tests the condition on its state and then keeps the state or applies the body:
    the loop stops after the step that kept it, so a state whose condition is false at once comes
    back unchanged.  A body of arithmetic only is computed in that last step too and its result
    dropped (``where``: the step stays one native call); a body that can raise at call time (an
    index, a nested loop, a size) is an :func:`ifelse` branch, never run on a false condition."""
    vals, back = _flatten(init_val)

    def step(*xs: Node) -> tuple:
        go = _condition(cond_fun(back(list(xs))), "while_loop: cond_fun")
        go = go if go.dtype == "bool" else api.not_equal(go, 0)
        new, _ = _flatten(body_fun(back(list(xs))))
        if len(new) != len(xs):
            raise ControlFlowError(f"while_loop: body_fun returned {len(new)} values for {len(xs)} in init_val")
        new = [api.as_node(b) for b in new]
        pick = ifelse if _may_raise(new, xs) else api.where
        return [pick(go, b, x) for b, x in zip(new, xs)], until(api.logical_not(go))

    outs, _ = scan(step, outputs_info=vals, n_steps=UNBOUNDED if max_steps is None else max_steps,
                   name="while_loop", return_list=True, keep="last")
    return back(outs)


#: Ops that cannot raise at call time, whatever the values (NaN and inf are values).
_TOTAL_OPS = frozenset({"matmul", "getitem", "dimshuffle", "broadcast_to", "cast", "stop_gradient"})


def _may_raise(outputs: list[Node], stop: Sequence[Node]) -> bool:
    """Whether computing ``outputs`` from ``stop`` may raise at call time (index, size, loop)."""
    seen = {id(s) for s in stop}
    for n in toposort(outputs):
        if id(n) in seen or n.op in ("input", "constant") or n.op in _TOTAL_OPS:
            continue
        if OPS[n.op].kind not in ("elemwise", "reduce"):
            return True
    return False


# -- ifelse ----------------------------------------------------------------------------------------
def _capture(outputs: list[Node], boundary: Sequence[Node] = ()) -> tuple[list[Node], list[Node], list[Node]]:
    """Closure conversion for a branch: the graph inputs it reads (and the ``boundary`` nodes)
    become placeholders; everything else stays inside the branch (computed only if taken)."""
    stop = {id(b) for b in boundary}
    found: dict[Node, None] = {}
    seen: set[int] = set()
    todo = list(outputs)
    while todo:  # from the outputs down, not past a boundary node
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if id(n) in stop or n.op == "input":
            found[n] = None
        else:
            todo.extend(n.inputs)
    values = sorted(found, key=[*toposort(outputs)].index)  # a deterministic order
    holders = [input_node(f"captured{j}", v.dtype, v.type.shape) for j, v in enumerate(values)]
    return substitute(outputs, dict(zip(values, holders))), holders, values


def ifelse(condition: Any, then_branch: Any, else_branch: Any, name: str | None = None,
           boundary: Sequence[Node] = ()) -> Any:
    """``then_branch`` if the scalar ``condition`` holds, else ``else_branch``: lazily, only the
    chosen branch is computed (each is compiled on its own).  Branches are expressions or lists
    of them (pairwise of one dtype and ndim; shapes may differ).  ``boundary``: outer nodes the
    branches read that should be computed before the choice (by default only the graph inputs
    the branches read are)."""
    what = name or "ifelse"
    cond = _condition(condition, f"{what}: condition")
    a_list, back = _flatten(then_branch)
    b_list, _ = _flatten(else_branch)
    if len(a_list) != len(b_list):
        raise ControlFlowError(f"{what}: then_branch has {len(a_list)} outputs, else_branch {len(b_list)}")
    out = []
    for k, (a, b) in enumerate(zip(a_list, b_list)):
        if a.ndim != b.ndim:
            raise ShapeError(f"{what}: output {k}: then_branch has {a.ndim} dimensions, else_branch {b.ndim}")
        if a.dtype != b.dtype:
            common = np.promote_types(a.dtype, b.dtype).name
            a, b = api.astype(a, common), api.astype(b, common)
        (ta, tb), holders, values = _capture([a, b], boundary)
        out.append(OPS["ifelse"].make((cond, *values), {"branches": Branches(tuple(holders), ta, tb)}))
    return back(out)


# -- gradients -------------------------------------------------------------------------------------
def _zeros_like(x: Node) -> Node:
    from exprc.creation import zeros_like

    return zeros_like(x)


def _is_float(n: Node) -> bool:
    return n.dtype in ("float32", "float64")


@grad_rule("scan_output")
def _scan_output_grad(node: Node, g: Node) -> list:
    """A loop result's gradient goes to the loop node keyed by the result (autodiff merges them)."""
    from exprc.ops.gradshape import full

    return [{node.arg("k"): full(g, node)}]


@grad_rule("ifelse")
def _ifelse_grad(node: Node, g: Node) -> list:
    """The gradient of each captured operand is the ``ifelse`` of the branches' gradients (each
    branch differentiated on its own, so the untaken one's backward pass does not run either)."""
    from exprc.autodiff import _vjp

    b: Branches = node.arg("branches")
    cond, captured = node.inputs[0], list(node.inputs[1:])
    # Differentiated over the branches' own placeholders, independent leaves, then put back: captured
    # operands may read one another (the gradient's ifelse captures the cotangent, which reads the
    # inputs), and total derivatives counted such paths twice (a hessian through ifelse was 2.8 off)
    at = [j for j, c in enumerate(captured) if _is_float(c)]
    holders = [b.inputs[j] for j in at]
    back = dict(zip(b.inputs, captured))
    ga = substitute(_vjp([b.then], [g], holders, "zero", "grad"), back)
    gb = substitute(_vjp([b.orelse], [g], holders, "zero", "grad"), back)
    found = dict(zip(at, zip(ga, gb)))
    out: list = [None]
    for j in range(len(captured)):
        pair = found.get(j)
        out.append(None if pair is None else ifelse(cond, pair[0], pair[1], boundary=[*captured, g]))
    return out


@grad_rule("scan")
def _scan_grad(node: Node, cts: dict[int, Node]) -> list:
    """Backpropagation through time: a reverse loop over the forward loop's steps.

    Step ``t`` of the reverse loop recomputes step ``t`` of the body from the states it read
    (the forward results shifted by one, with the initial value in front) and the sequence rows,
    and takes the body's vector-Jacobian product with the gradient reaching its results (the
    gradient of the stacked output's row ``t`` plus what step ``t + 1`` sent back through the
    state).  It sends back the gradient of the states it read, emits the gradients of its
    sequence rows (stacked) and adds those of the loop invariants into accumulators (only their
    final value kept).  A forward loop that kept only final values runs once more keeping every
    step (the reverse loop needs the states of every step)."""
    import dataclasses

    from exprc.autodiff import _vjp

    loop: Loop = node.arg("loop")
    if loop.until:
        raise NotImplementedError(f"{loop.name}: no gradient through a loop stopped by until (a while_loop); "
                                  "bound it with n_steps instead")
    ns, nr = loop.n_seqs, len(loop.recurrent)
    if any(loop.state_taps[k] != (-1,) for k in loop.recurrent):
        raise NotImplementedError(f"{loop.name}: the gradient through outputs with taps other than [-1] is not "
                                  "implemented")
    n_node, seqs = node.inputs[0], list(node.inputs[1:1 + ns])
    inits, invs = list(node.inputs[1 + ns:1 + ns + nr]), list(node.inputs[1 + ns + nr:])
    if loop.from_sequences:
        s0, t0 = seqs[0], loop.seq_taps[0]
        n_node = api.astype(api.shape(s0)[0], "int64") - (t0[-1] - t0[0])
    if loop.go_backwards:
        seqs = [s[::-1] for s in seqs]
    # The stacked states of every step and the forward products the reverse step would compute
    # again (``h @ U``: kept, as JAX's dots_saveable policy keeps them): a loop that is the
    # forward one with these results added (the optimizer runs one loop for both, see
    # exprc.rewrite.loops), or a rerun keeping every state when the forward kept final values.
    n_res = loop.n_results
    saved = _saved_products(loop)
    if all(loop.keep[k] == "all" for k in loop.recurrent) and not saved:
        history = node
    else:
        more = len(saved)
        history = OPS["scan"].make(node.inputs, {"loop": dataclasses.replace(
            loop, outputs=loop.outputs[:n_res] + tuple(saved), state_taps=loop.state_taps + (None,) * more,
            keep=tuple("all" if loop.keep[k] == "last" and k in loop.recurrent else loop.keep[k]
                       for k in range(n_res)) + ("all",) * more,
            labels=loop.labels[:n_res] + tuple(f"saved[{i}]" for i in range(more)) if loop.labels else ())})
    stacked = {k: OPS["scan_output"].make((history,), {"k": k}) for k in loop.recurrent}

    # The reverse loop's sequences (read from the last step to the first).
    rev_seqs: list[Node] = []
    g_all = [k for k in range(loop.n_results) if loop.keep[k] == "all" and k in cts]
    rev_seqs += [cts[k] for k in g_all]
    rows = []  # (sequence j, tap): the rows step t reads
    for j, s in enumerate(seqs):
        lo = loop.seq_taps[j][0]
        for tap in loop.seq_taps[j]:
            rows.append((j, tap))
            # (A loop of fewer steps than rows reads the first n rows, or with go_backwards the
            # last n: the reverse loop reads those, last first.  The whole sequence when its
            # length is the step count: no slice to make at call time.)
            whole = loop.seq_taps[j] == (0,) and loop.from_sequences
            rev_seqs.append(s if whole else s[tap - lo:tap - lo + n_node])
    prev = {k: api.concatenate([api.expand_dims(x0, 0), stacked[k][:-1]], 0) for k, x0 in zip(loop.recurrent, inits)}
    rev_seqs += [prev[k] for k in loop.recurrent]
    rev_seqs += [OPS["scan_output"].make((history,), {"k": n_res + i}) for i in range(len(saved))]
    carried = [k for k in loop.recurrent if _is_float(loop.outputs[k])]
    # The body, its slices pushed into what they slice (so the gates of an LSTM are four matmuls
    # of weight slices: no scatter of their gradients into one array inside the reverse loop),
    # and the loop-invariant subexpressions its varying part reads (weights, their slices): the
    # reverse loop accumulates *their* gradients; what they are made of is differentiated once,
    # after it.
    n_inv_from = len(rows) + nr
    fwd_outs = _push_slices(list(loop.outputs[:loop.n_results]))
    pieces = _pieces(saved, fwd_outs)
    inv_holders = set(loop.inputs[n_inv_from:])
    inv_sub = _invariant_parts(fwd_outs, set(loop.inputs[:n_inv_from]), inv_holders.__contains__)
    to_outer = dict(zip(loop.inputs[n_inv_from:], invs))
    inv_outer = substitute(inv_sub, to_outer) if inv_sub else []
    inv_wrt = [w for w in inv_outer if _is_float(w)]
    carry0 = [cts[k] if loop.keep[k] == "last" and k in cts else _zeros_like(x0)
              for k, x0 in zip(loop.recurrent, inits) if k in carried]
    # Invariants read only as ``state @ w`` (a weight matrix): their gradient, the sum over the
    # steps of state_t^T @ g_t, is one product after the loop instead of a small product and an
    # addition per step; the loop stacks g_t (see _product_grads).
    state_of = dict(zip(loop.inputs[len(rows):len(rows) + nr], loop.recurrent))
    inv_parts = [w for w in inv_sub if _is_float(w)]
    products = _product_grads(fwd_outs, inv_parts, state_of)
    summed = [i for i in range(len(inv_wrt)) if i not in products]
    # The reverse step differentiates with each invariant part a leaf of its own, so that its gradient
    # is along its own paths only: substituted by the loop's operands, one part may read another (the
    # operands w and 2 w of x w + 2 w; W and W[0]), and its total derivative took in the other's paths,
    # which the other's accumulator carries to it again after the loop (d/dw of x w + 2 w over 3 steps
    # came out 18.6 for 6.6).
    leaves = [input_node(f"{loop.name}.invariant[{i}]", w.dtype, w.type.shape) for i, w in enumerate(inv_parts)]
    acc0 = [_zeros_like(inv_wrt[i]) for i in summed]
    seq_wrt = [i for i, (j, _) in enumerate(rows) if _is_float(seqs[j])]

    def step(*args: Node) -> list[Node]:
        it = iter(args)
        g_rows = {k: next(it) for k in g_all}
        x_rows = [next(it) for _ in rows]
        s_prev = {k: next(it) for k in loop.recurrent}
        saved_rows = [next(it) for _ in saved]
        carry = {k: next(it) for k in carried}
        accs = [next(it) for _ in summed]
        # The forward step t, over this step's rows: placeholders -> values.
        mapping = dict(zip(loop.inputs[:len(rows)], x_rows))
        mapping.update(zip(loop.inputs[len(rows):len(rows) + nr], [s_prev[k] for k in loop.recurrent]))
        mapping.update(to_outer)
        cut = {**mapping, **dict(zip(inv_parts, leaves))}
        outs = substitute(fwd_outs, cut)
        prods = substitute([products[i][0] for i in sorted(products)], cut)
        cot: list[Node | None] = []
        for k in range(loop.n_results):
            parts = [p for p in (g_rows.get(k), carry.get(k)) if p is not None]
            cot.append(None if not parts or not _is_float(outs[k]) else (parts[0] + parts[1] if len(parts) == 2
                                                                          else parts[0]))
        wrt = [x_rows[i] for i in seq_wrt] + [s_prev[k] for k in carried] + [leaves[i] for i in summed] + prods
        grads = _vjp(outs, cot, wrt, "zero", "grad") if wrt else []
        grads = substitute(grads, dict(zip(leaves, inv_wrt)))  # (the leaves' values: the loop's invariants)
        gx = grads[:len(seq_wrt)]
        gs = grads[len(seq_wrt):len(seq_wrt) + len(carried)]
        gw = grads[len(seq_wrt) + len(carried):len(grads) - len(prods)]
        # (+ 0.0: a gradient that is a call-time ``sum_to`` alias would make the stacked result a
        # copy step, and the loop no longer one native call; a kernel writes this one.)
        g_prods = [g + 0.0 for g in grads[len(grads) - len(prods):]]
        if saved:  # what the gradients read of the saved products: the forward loop's values
            gx, gs, gw, g_prods = _regroup(substitute([*gx, *gs, *gw, *g_prods], _saved_values(
                pieces, mapping, saved_rows)), (len(gx), len(gs), len(gw)))
        return [*gx, *gs, *[a + b for a, b in zip(accs, gw)], *g_prods]

    n_gx, n_acc = len(seq_wrt), len(carry0) + len(acc0)
    res, _ = scan(step, sequences=rev_seqs, outputs_info=[None] * n_gx + carry0 + acc0 + [None] * len(products),
                  n_steps=n_node, go_backwards=True, name=f"{loop.name}.grad", return_list=True,
                  keep=["all"] * n_gx + ["last"] * n_acc + ["all"] * len(products))
    g_rowsets, g_carry = res[:n_gx], res[n_gx:n_gx + len(carried)]
    g_acc: list[Node] = [None] * len(inv_wrt)  # type: ignore[list-item]
    for i, g in zip(summed, res[n_gx + len(carried):n_gx + n_acc]):
        g_acc[i] = g
    for i, g in zip(sorted(products), res[n_gx + n_acc:]):
        # Row t of g (the reverse loop's step t) goes with the state of forward step n-1-t: the
        # states last step first, in one array (a concatenate: contiguous), make the sum one GEMM.
        k = products[i][1]
        x0 = inits[loop.recurrent.index(k)]
        back = api.concatenate([stacked[k][:-1][::-1], api.expand_dims(x0, 0)], 0)
        g_acc[i] = api.sum(api.matmul(api.dimshuffle(back, [0, 2, 1]), g), axis=0)

    from exprc.indexing import inc_subtensor

    out: list[Node | None] = [None] * len(node.inputs)
    g_seq: dict[int, Node] = {}
    for i, gr in zip(seq_wrt, g_rowsets):
        j, tap = rows[i]
        lo = loop.seq_taps[j][0]
        forward = gr[::-1]  # the reverse loop stacked them last step first
        if loop.seq_taps[j] == (0,) and j not in g_seq and loop.from_sequences:
            # Every row is a step's (the sequences' length is the step count): no zeros around
            # the rows' gradients.  (+ 0.0 as 0 + g gave: a -0.0 is +0.0; and a contiguous array.)
            g_seq[j] = forward + 0.0
        elif loop.seq_taps[j] == (0,) and j not in g_seq:
            base = _zeros_like(seqs[j])
            g_seq[j] = inc_subtensor(base[:n_node], forward)
        else:
            base = g_seq.get(j, _zeros_like(seqs[j]))
            g_seq[j] = inc_subtensor(base[tap - lo:tap - lo + n_node], forward)
    for j, g in g_seq.items():
        out[1 + j] = g[::-1] if loop.go_backwards else g
    for k, g in zip(carried, g_carry):
        out[1 + ns + loop.recurrent.index(k)] = g
    float_invs = [w for w in invs if _is_float(w)]
    if inv_wrt and float_invs:  # from the invariant parts' gradients to the loop's operands
        # (each operand a leaf of its own here too: the loop's operands w and 2 w, both hoisted out of
        # x w + 2 w, each get the gradient of their own paths, and the caller's backpropagation
        # carries 2 w's to w; a total derivative here counted it twice)
        own = [input_node(f"{loop.name}.operand[{i}]", w.dtype, w.type.shape) for i, w in enumerate(float_invs)]
        grads = _vjp(substitute(inv_wrt, dict(zip(float_invs, own))), g_acc, own, "zero", "grad")
        for w, g in zip(float_invs, substitute(grads, dict(zip(own, float_invs)))):
            out[1 + ns + nr + invs.index(w)] = g
    return out


def _saved_products(loop: Loop) -> list[Node]:
    """The matrix products of a loop body that read a sequence or a state (``h @ U``): the reverse
    loop of its gradient reads their values from the forward loop rather than compute them again."""
    varying = set(loop.inputs[:len(loop.inputs) - loop.n_invariants])
    outs = loop.outputs[:loop.n_results]
    found, vary = [], set(varying)
    for n in toposort(list(outs)):
        if n.inputs and any(i in vary for i in n.inputs):
            vary.add(n)
            if n.op == "matmul" and _is_float(n) and n not in outs:
                found.append(n)
    return found


def _pieces(saved: list[Node], outputs: list[Node]) -> dict[Node, tuple[int, tuple | None]]:
    """``{node: (i, index)}``: the nodes of ``outputs`` that are ``saved[i]`` (index None) or a
    slice of it that _push_slices moved onto its operands, ``A[r] @ B[:, c]`` for ``(A @ B)[r, c]``."""
    whole = {m: i for i, m in enumerate(saved)}
    full = ("s", None, None, 1)
    found: dict[Node, tuple[int, tuple | None]] = {}
    for n in toposort(outputs):
        if n in whole:
            found[n] = (whole[n], None)
        elif n.op == "matmul" and n.ndim == 2:
            (a, r), (b, c) = ((x.inputs[0], x.arg("index")) if x.op == "getitem" else (x, None) for x in n.inputs)
            if r is not None and len(r) != 1 or c is not None and (len(c) != 2 or c[0] != full):
                continue
            m = OPS["matmul"].make((a, b), {}) if (r, c) != (None, None) else None
            if m in whole:
                found[n] = (whole[m], (r[0] if r else full, c[1] if c else full))
    return found


def _saved_values(pieces: dict[Node, tuple[int, tuple | None]], mapping: dict[Node, Node],
                  rows: list[Node]) -> dict[Node, Node]:
    """The reverse step's substitution: each saved product (or slice of one, see _pieces) over
    this step's values -> the forward loop's row of it."""
    nodes = list(pieces)
    return {new: rows[i] if idx is None else OPS["getitem"].make((rows[i],), {"index": idx})
            for new, (i, idx) in zip(substitute(nodes, mapping), (pieces[n] for n in nodes))}


def _regroup(items: list, sizes: tuple[int, ...]) -> list[list]:
    """``items`` cut into consecutive lists of ``sizes`` (and the rest)."""
    out, start = [], 0
    for n in sizes:
        out.append(items[start:start + n])
        start += n
    return [*out, items[start:]]


def _product_grads(outputs: list[Node], parts: list[Node], state_of: dict[Node, int]) -> dict[int, tuple[Node, int]]:
    """``{i: (state @ parts[i], state's result index)}`` for the invariant parts read only as the
    right operand of a product with a 2-d recurrent state's placeholder (an RNN's ``h @ U``).
    Their gradient over a loop is the sum over steps of ``h_t^T @ g_t``, ``g_t`` the gradient of
    the product: the reverse loop stacks ``g_t`` and one product after it does the sum."""
    readers: dict[Node, list[Node]] = {w: [] for w in parts}
    for n in toposort(outputs):
        for i in dict.fromkeys(n.inputs):
            if i in readers:
                readers[i].append(n)
    found = {}
    for i, w in enumerate(parts):
        (m, *more) = readers[w] or [None]
        if (m is not None and not more and m.op == "matmul" and m.inputs[1] is w and w.ndim == 2
                and m.inputs[0] in state_of and m.inputs[0].ndim == 2 and m not in outputs):
            found[i] = (m, state_of[m.inputs[0]])
    return found


def _invariant_parts(outputs: list[Node], varying: set[Node], source: Callable[[Node], bool]) -> list[Node]:
    """The maximal subexpressions of ``outputs`` that read a ``source`` leaf and no ``varying``
    node, as the varying nodes (or the outputs) read them, in a deterministic order."""
    vary: set[int] = {id(v) for v in varying}
    inv: set[int] = set()
    order = toposort(outputs)
    for n in order:
        if id(n) in vary:
            continue
        if not n.inputs:
            if source(n):
                inv.add(id(n))
        elif any(id(i) in vary for i in n.inputs):
            vary.add(id(n))
        elif any(id(i) in inv for i in n.inputs):
            inv.add(id(n))
    found: dict[Node, None] = {}
    for n in order:
        if id(n) in vary:
            for i in n.inputs:
                if id(i) in inv:
                    found[i] = None
    for o in outputs:
        if id(o) in inv:
            found[o] = None
    return list(found)


#: How far _push_slices follows one slice down a chain of ops.
_PUSH_DEPTH = 64


def _whole(item: tuple) -> bool:
    return item[0] == "s" and item[1] is None and item[2] is None and item[3] in (None, 1)


def _push_slices(outputs: list[Node]) -> list[Node]:
    """``op(a, b)[s]`` -> ``op(a[s'], b[s'])`` for static slices (no ints, no new axes) of
    elementwise results (each operand sliced along the axes it has, a broadcast axis of size 1
    kept whole), and ``(A @ B)[r, c]`` -> ``A[r] @ B[:, c]`` for 2-d ``A`` and ``B``.  The values
    are the same; the slices end up on the operands (loop invariants there: hoisted)."""
    memo: dict[Node, Node] = {}

    def push(n: Node, depth: int) -> Node:
        key = n
        if key in memo:
            return memo[key]
        res = n
        if depth < _PUSH_DEPTH and n.op == "getitem" and all(it[0] == "s" for it in n.arg("index")):
            z = n.inputs[0]
            idx = list(n.arg("index")) + [("s", None, None, 1)] * (z.ndim - len(n.arg("index")))
            row = OPS.get(z.op)
            if row is not None and row.kind == "elemwise" and z.inputs:
                parts = []
                for o in z.inputs:
                    off = z.ndim - o.ndim
                    items = []
                    for d in range(o.ndim):
                        od, zd = o.type.shape[d], z.type.shape[d + off]
                        if _whole(idx[d + off]):
                            items.append(idx[d + off])  # the whole axis, broadcast or not
                        elif od == 1 and zd != 1:
                            items.append(("s", None, None, None))  # broadcast: the whole axis
                        elif od is not None and od == zd:
                            items.append(idx[d + off])
                        else:
                            parts = None  # a size unknown here: is it broadcast? leave it
                            break
                    if parts is None:
                        break
                    parts.append(push(OPS["getitem"].make((o,), {"index": tuple(items)}), depth + 1)
                                 if o.ndim and not all(map(_whole, items)) else o)
                if parts is not None:
                    res = rebuild(z, parts)
            elif z.op == "matmul" and z.ndim == 2 and all(i.ndim == 2 for i in z.inputs):
                a, b = z.inputs
                full = ("s", None, None, 1)
                a2 = a if _whole(idx[0]) else push(OPS["getitem"].make((a,), {"index": (idx[0],)}), depth + 1)
                b2 = b if _whole(idx[1]) else push(OPS["getitem"].make((b,), {"index": (full, idx[1])}), depth + 1)
                res = rebuild(z, [a2, b2])
        memo[key] = res
        return res

    mapping: dict[Node, Node] = {}
    for n in toposort(outputs):
        if n.op == "getitem":
            new = push(n, 0)
            if new is not n:
                mapping[n] = new
    return substitute(outputs, mapping) if mapping else list(outputs)
