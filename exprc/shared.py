"""Shared variables, ``updates=`` and ``givens=``: state that compiled functions keep
between calls, as Theano's ``shared``.

A :class:`SharedVariable` is a graph input (an ``input`` node, usable in any
expression) that also holds its current value.  ``exprc.function`` appends the
shared variables its outputs and updates read as hidden inputs of the compiled
kernel, so callers never pass them; update expressions become extra outputs of
the same native call.

Update semantics: a call computes every output and every update from the *old*
values, checks them all, then installs the new values — no update sees another's
result and a failed check writes nothing.  Installing costs no copy: the array the
kernel just produced becomes the variable's value (``exprc.function`` never hands
that array to anyone else).  Each variable keeps a spare buffer — its value before
the current one — and the kernel writes the new value straight into it when no one
else holds a reference to it; the two are then swapped, so a training step allocates
nothing.  From a function's second call on the C dispatcher does this for every
update (``Dispatcher.update`` in ``backends/c/templates/dispatch.c``); the Python path (first
call, ``out=``, arguments the dispatcher refuses) does it for values of
:data:`SWAP_BYTES` or more, whose fresh blocks would come from mmap and page-fault on
first touch, and takes fresh arrays for smaller ones.  Calls that
update a variable hold its lock, so two threads updating the same variable are
serialized; reading never locks.

``borrow``: ``get_value()`` / ``set_value()`` copy by default, so the caller and the
variable never share memory.  ``borrow=True`` skips the copy: ``set_value(a,
borrow=True)`` keeps ``a`` itself (while its dtype and ndim fit), and
``get_value(borrow=True)`` returns the internal array.  exprc never writes into an
array that someone else holds, so a borrowed array keeps the value it had when
borrowed (memory reached only through a raw pointer is not tracked).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from exprc import graph as _graph
from exprc.errors import DTypeError, InputTypeError, ShapeError, UpdateError
from exprc.function import Function
from exprc.graph import Node, substitute
from exprc.types import TensorType, as_dtype, shape_str

#: Whether any shared variable was ever given a default update (until then function() skips the search).
_WITH_DEFAULT_UPDATE = [False]


class _Container:
    """Where a shared variable's value lives (nodes are immutable; this is not)."""

    __slots__ = ("default_update", "in_place", "lock", "spare", "value")

    def __init__(self, value: np.ndarray):
        self.value = value
        #: Theano's ``default_update``: the update every function reading the variable applies when
        #: its ``updates=`` does not name it (a random stream's counter).
        self.default_update: Node | None = None
        self.spare: np.ndarray | None = None  # a buffer the next big update may be written into
        self.lock = threading.Lock()  # held by calls that update the value, and by set_value
        #: Some function updates the value where it lies (``SharedFunction``): readers in other
        #: threads then take ``lock`` to read it, so none sees an update half done.
        self.in_place = False


class SharedVariable(Node):
    """A graph input whose value lives in the variable (make one with :func:`shared`)."""

    __slots__ = ("_c",)

    _c: _Container

    def get_value(self, borrow: bool = False) -> np.ndarray:
        """The current value (a copy unless ``borrow=True``)."""
        c = self._c
        if borrow:
            return c.value
        if c.in_place:
            with c.lock:
                return c.value.copy()
        return c.value.copy()

    def set_value(self, value: Any, borrow: bool = False) -> None:
        """Replace the value.  The dtype and ndim are fixed when the variable is made; data
        are cast when that is safe (ints into a float variable), as for function arguments."""
        arr = _convert(value, self, borrow)
        c = self._c
        with c.lock:
            c.value, c.spare = arr, None

    @property
    def value(self) -> np.ndarray:
        """A copy of the current value (``get_value()``)."""
        return self.get_value()

    @property
    def default_update(self) -> Node | None:
        """Theano's ``default_update``: the new value every function that reads the variable installs
        when its ``updates=`` does not name the variable (a random stream's counter), or None."""
        return self._c.default_update

    @default_update.setter
    def default_update(self, expr: Node | None) -> None:
        if expr is not None:  # checked as an update (dtype, ndim); an update to itself is no update
            checked = check_updates([(self, expr)], {})
            expr = checked[0][1] if checked else None
        if expr is not None:
            _WITH_DEFAULT_UPDATE[0] = True
        self._c.default_update = expr

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "default_update":  # the one settable attribute (nodes are immutable otherwise)
            SharedVariable.default_update.fset(self, value)  # type: ignore[attr-defined]
            return
        super().__setattr__(name, value)

    def __reduce__(self) -> Any:
        """Pickled by value: unpickling makes a new shared variable holding a copy of the value
        (pickle's memo keeps one variable per pickle, however many functions use it)."""
        return _unpickle_shared, (self.get_value(borrow=True), self.arg("name"), self.dtype, self.type.shape)


def _unpickle_shared(value: np.ndarray, name: str | None, dtype: str, shape: tuple) -> SharedVariable:
    return shared(value, name, borrow=True, dtype=dtype, shape=shape)


def _convert(value: Any, var: Node, borrow: bool, what: str | None = None) -> np.ndarray:
    what = what or f"shared variable {var.arg('name') or '<unnamed>'!r}"
    if isinstance(value, Node):
        raise TypeError(f"{what}: expected an array, got a symbolic expression")
    weak = not isinstance(value, (np.ndarray, np.generic))
    arr = np.asarray(value)
    dt = np.dtype(var.dtype)
    if arr.dtype != dt:
        ok = (np.can_cast(arr.dtype, dt, "safe") or (arr.dtype.kind in "biu" and dt.kind == "f")
              or (weak and np.can_cast(arr.dtype, dt, "same_kind")))
        if not ok:
            raise DTypeError(f"{what}: expected {dt} data, got {arr.dtype} (casting would lose information; "
                             f"convert it with .astype({dt.name!r}) first)")
        arr = arr.astype(dt)
        borrow = True  # already a fresh array
    if arr.ndim != var.ndim:
        raise ShapeError(f"{what}: expected ndim {var.ndim}, got an array of shape {shape_str(arr.shape)}")
    for want, got in zip(var.type.shape, arr.shape):
        if want is not None and want != got:
            raise ShapeError(f"{what}: expected shape {shape_str(var.type.shape)}, got {shape_str(arr.shape)}")
    if not borrow:
        arr = np.array(arr, copy=True, order="C")
    return arr


def shared(value: Any, name: str | None = None, borrow: bool = False, dtype: Any = None,
           shape: Sequence[int | None] | None = None) -> SharedVariable:
    """A shared variable holding ``value`` (copied unless ``borrow=True``).

    ``dtype`` defaults to the value's (Python floats: float64, ints: int64); it and
    the ndim are fixed for good.  Sizes are known at call time only, so
    ``set_value`` may change them, unless ``shape=`` fixes some (``None`` entries
    stay free)."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if isinstance(value, Node):
        raise TypeError("shared(): expected an array, got a symbolic expression")
    arr = np.asarray(value, dtype=None if dtype is None else as_dtype(dtype))
    if arr.dtype.kind in "iu" and arr.dtype.name not in ("int32", "int64"):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f" and arr.dtype.name not in ("float32", "float64"):
        arr = arr.astype(np.float64)
    dt = as_dtype(arr.dtype, "shared")
    if shape is None:
        static: tuple = (None,) * arr.ndim
    else:
        static = tuple(None if s is None else int(s) for s in shape)
        if len(static) != arr.ndim:
            raise ShapeError(f"shared(): shape={static} has {len(static)} dims, the value has {arr.ndim}")
    attrs = {"name": name, "uid": next(_graph._UIDS)}
    var = SharedVariable("input", (), attrs, TensorType(dt, static))
    object.__setattr__(var, "_c", _Container(_convert(arr, var, borrow and arr is value)))
    return var


def is_shared(node: Any) -> bool:
    return isinstance(node, SharedVariable)


def _label(var: Node) -> str:
    return f"shared variable {var.arg('name') or '<unnamed>'!r}"


def check_givens(givens: Mapping[Node, Any] | Iterable[tuple[Node, Any]] | None) -> dict[Node, Node]:
    """Validate ``givens``: variables to replace, each by an expression of the same dtype and ndim."""
    from exprc.api import as_node

    if not givens:
        return {}
    pairs = list(givens.items()) if isinstance(givens, Mapping) else list(givens)
    out: dict[Node, Node] = {}
    for i, pair in enumerate(pairs):
        try:
            var, expr = pair
        except (TypeError, ValueError):
            raise TypeError(f"givens[{i}]: expected a (variable, expression) pair") from None
        if not isinstance(var, Node) or var.op != "input":
            raise TypeError(f"givens[{i}]: expected a variable (exprc.vector(...), exprc.shared(...)) to replace, "
                            f"got {var!r}")
        if var in out:
            raise ValueError(f"givens: {var.arg('name') or '<unnamed>'!r} is replaced twice")
        expr = as_node(expr, like=var)
        if expr.dtype != var.dtype or expr.ndim != var.ndim:
            raise DTypeError(f"givens: {var.arg('name') or '<unnamed>'!r} is {var.type} but its replacement is "
                             f"{expr.type}; cast or reshape the replacement")
        out[var] = expr
    return out


def check_updates(updates: Any, givens: dict[Node, Node]) -> tuple[tuple[SharedVariable, Node], ...]:
    """Validate ``updates``: (shared variable, new value expression) pairs, each variable once,
    each expression of the variable's dtype and ndim (and its static sizes)."""
    from exprc.api import as_node

    if not updates:
        return ()
    pairs = list(updates.items()) if isinstance(updates, Mapping) else list(updates)
    seen: set[Node] = set()
    out = []
    for i, pair in enumerate(pairs):
        try:
            var, expr = pair
        except (TypeError, ValueError):
            raise TypeError(f"updates[{i}]: expected a (shared variable, expression) pair") from None
        if not isinstance(var, SharedVariable):
            raise TypeError(f"updates[{i}]: only shared variables (exprc.shared) can be updated, got {var!r}")
        label = _label(var)
        if var in seen:
            raise UpdateError(f"updates: {label} is updated twice")
        seen.add(var)
        expr = as_node(expr, like=var)
        if givens:
            (expr,) = substitute([expr], givens)
        if expr.dtype != var.dtype:
            raise DTypeError(f"updates: {label} is {var.dtype} but its update is {expr.dtype}; "
                             f"cast the update with .astype({var.dtype!r})")
        if expr.ndim != var.ndim:
            raise ShapeError(f"updates: {label} has ndim {var.ndim} but its update has shape "
                             f"{shape_str(expr.type.shape)}")
        for want, got in zip(var.type.shape, expr.type.shape):
            if want is not None and got is not None and want != got:
                raise ShapeError(f"updates: {label} has shape {shape_str(var.type.shape)} but its update has "
                                 f"shape {shape_str(expr.type.shape)}")
        if expr is not var:  # an update to itself changes nothing
            out.append((var, expr))
    return tuple(out)


def default_updates(exprs: Sequence[Node], updates: Any, inputs: Sequence[Node] = ()
                    ) -> tuple[tuple[SharedVariable, Node], ...]:
    """The default updates of the shared variables ``exprs`` read that ``updates`` (as given to
    ``exprc.function``, already checked) does not name and that are not explicit ``inputs`` (as in
    ``.eval()``, which passes their values); naming a variable with itself as its new value turns
    its default update off."""
    if not _WITH_DEFAULT_UPDATE[0]:  # (the common case: no graph walk on every exprc.function)
        return ()
    pairs = list(updates.items()) if isinstance(updates, Mapping) else list(updates or ())
    named = {v for v, _ in pairs} | set(inputs)
    return tuple((v, v._c.default_update) for v in _graph.graph_inputs(exprs)
                 if isinstance(v, SharedVariable) and v._c.default_update is not None and v not in named)


def install(targets: Sequence[SharedVariable], new: list[np.ndarray], others: Sequence[Any]) -> None:
    """Check every new value against its variable, then install them all (callers hold the locks).

    ``others``: arrays handed to the caller; a new value that is one of them (or
    another new value) is copied so that no two owners share memory."""
    for var, arr in zip(targets, new):
        old = var._c.value
        if arr.shape != old.shape:
            raise ShapeError(f"updates: the update of {_label(var)} has shape {shape_str(arr.shape)} but the "
                             f"variable's value has shape {shape_str(old.shape)}; nothing was updated")
    taken = {id(o) for o in others}
    for var, arr in zip(targets, new):
        if id(arr) in taken:
            arr = arr.copy()
        taken.add(id(arr))
        var._c.value = arr


def lock_order(targets: Sequence[SharedVariable]) -> list[threading.Lock]:
    """The locks of the updated variables in one global order (no deadlock between functions)."""
    return [v._c.lock for v in sorted(targets, key=lambda v: v.arg("uid"))]


class SharedFunction(Function):
    """A compiled function that reads shared variables and/or updates them.

    The kernel's inputs are the declared inputs followed by the shared variables
    (``shared``); its outputs are the declared outputs followed by one new value per
    update (``updates``: the (variable, expression) pairs).
    """

    def __init__(self, inputs: tuple, outputs: tuple, single: bool, graph: Any, kernel: Any, backend: str,
                 config: Any, allow_downcast: bool, hidden: tuple, updates: tuple):
        super().__init__(inputs, outputs, single, graph, kernel, backend, config, allow_downcast)
        self.shared = list(hidden)
        self.updates = list(updates)
        self._hidden = tuple(v._c for v in hidden)
        self._targets = tuple(v for v, _ in updates)
        self._boxes = tuple(v._c for v in self._targets)
        self._nout = len(outputs)
        self._locks = tuple(lock_order(self._targets))
        self._into_spares = kernel.writes_out  # big updates computed into the spare buffers
        self._ncalls = 0
        # Updates the kernel may compute where the variable's value lies (a sparse update:
        # inc_subtensor(W[idx], v) of a big table touches its rows, not a copy of it):
        # update number -> the kernel input holding the variable's value.
        first = len(inputs)
        slot = {id(c): first + k for k, c in enumerate(self._hidden)}
        pairs = getattr(kernel, "in_place", {})  # (a wrapped kernel may not have it)
        self._in_place = {k: slot[id(c)] for k, c in enumerate(self._boxes)
                          if id(c) in slot and pairs.get(self._nout + k) == slot[id(c)]}
        for k in self._in_place:
            self._boxes[k].in_place = True
        # Shared variables read (not updated) that some function updates in place: read under
        # their lock, before this call takes its own (one lock at a time: no deadlock).
        self._locked_reads = tuple(j for j, c in enumerate(self._hidden) if c not in self._boxes)

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None and out is None and not kwargs and self._targets and not self._in_place:
            # The common training-step call, all in the C dispatcher (under the locks): each new
            # value written into its variable's spare buffer, then installed.  None: it does not
            # take these arguments, and the Python path raises the precise errors.
            res = fast.update(args, self._hidden, self._boxes, self._locks)
            if res is not None:
                return res[0] if self._single else res[:self._nout]
        return self._call(args, out, kwargs)

    def _call(self, args: tuple, out: Any, kwargs: dict) -> Any:
        if kwargs:
            args = tuple(self._bind(args, kwargs))
        elif len(args) != self._n:
            raise InputTypeError(f"expected {self._n} arguments ({self._signature()}), got {len(args)}")
        arrays = [conv(a) for conv, a in zip(self._convert, args)]
        if out is not None:
            out = [out] if self._single else list(out)
            if len(out) != self._nout:
                raise InputTypeError(f"out: expected {self._nout} arrays, got {len(out)}")
        hidden = self._hidden
        values = [c.value for c in hidden]
        for j in self._locked_reads:
            c = hidden[j]
            if c.in_place:
                with c.lock:
                    values[j] = c.value
        if not self._targets:
            res = self._run(arrays + values, out)
            return res[0] if self._single else res
        locks = self._locks
        for lock in locks:
            lock.acquire()
        try:
            for j, c in enumerate(hidden):
                if j not in self._locked_reads:  # (the values this call updates, read under its locks)
                    values[j] = c.value
            arrays += values
            del values
            nout = self._nout
            if self._in_place or (self._into_spares and any(c.value.nbytes >= SWAP_BYTES for c in self._boxes)):
                res = self._run_swap(arrays, out)
            else:
                res = self._run(arrays, out)
            if nout == 0 and len(self._boxes) == 1:  # one update, no outputs (an optimizer step)
                c, new = self._boxes[0], res[0]
                if new.shape != c.value.shape:
                    install(self._targets, res, ())  # raises the error
                c.value = new
            else:
                install(self._targets, res[nout:], res[:nout])
        finally:
            for lock in reversed(locks):
                lock.release()
        return res[0] if self._single else res[:nout]

    def _run(self, arrays: list, out: list | None) -> list:
        """One call of the kernel; update values come back as fresh arrays."""
        if out is None:
            fast = self._fast
            if fast is not None:
                res = fast(*arrays)
                if res is not None:
                    return res
            else:
                make_fast = self._make_fast  # read once: another thread may attach it meanwhile
                if make_fast is not None:
                    self._ncalls += 1
                    if self._ncalls >= 2:
                        self._fast, self._make_fast = make_fast(False), None
            return self._kernel(*arrays)
        return self._kernel(*arrays, out=out + [None] * len(self._targets))  # fresh arrays for the updates

    def _run_swap(self, arrays: list, out: list | None) -> list:
        """One call of the kernel writing each big update into its variable's spare buffer
        (the previous value, when nobody else holds it), so big values are not
        allocated and page-faulted afresh on every call; and each update the kernel can
        compute in place (``self._in_place``) into the value itself, when nobody else holds it."""
        spares: list[Any] = []
        pairs: list[tuple[int, int]] = []
        for k, c in enumerate(self._boxes):
            i = self._in_place.get(k)
            # 4 references: the container, ``arrays``, ``cur`` and getrefcount's argument.  More:
            # someone holds it (and must not see it change); a view: whoever holds its base does.
            if i is not None and arrays[i] is (cur := c.value) and sys.getrefcount(cur) == 4 and cur.base is None:
                spares.append(cur)
                pairs.append((self._nout + k, i))
                continue
            sp, cur = c.spare, c.value
            # 3 references: the slot, ``sp`` and getrefcount's argument.  More: someone holds it (a view:
            # whoever holds its base holds the memory).
            if (sp is None or sys.getrefcount(sp) > 3 or sp.base is not None or sp.shape != cur.shape
                    or not sp.flags.c_contiguous):
                sp = None if cur.nbytes < SWAP_BYTES else np.empty_like(cur, order="C")
            spares.append(sp)
        try:
            if pairs:
                res = self._kernel(*arrays, out=(out or [None] * self._nout) + spares, in_place=pairs)
            else:
                res = self._kernel(*arrays, out=(out or [None] * self._nout) + spares)
        except InputTypeError:  # an update of the wrong shape: let install() name the variable
            return self._run(arrays, out)
        done = {j - self._nout for j, _ in pairs}
        for k, c in enumerate(self._boxes):
            if k not in done:  # (an update in place keeps its value, and its spare)
                c.spare = c.value
        return res


#: Updates of values this big (bytes) are written into a spare buffer swapped with the value
#: instead of a fresh array: glibc serves fresh blocks over 32 MiB from mmap, whose page faults
#: cost ~40% of a memory-bound update.  Smaller values take the C dispatcher's fresh outputs.
SWAP_BYTES = 16 << 20


__all__ = ["SharedFunction", "SharedVariable", "check_givens", "check_updates", "default_updates", "is_shared",
           "shared"]
