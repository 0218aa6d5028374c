"""Extending exprc from another library: custom elementwise ops and rewrite rules.

:func:`custom_op` adds one row to the op table (:mod:`exprc.ops`), the same kind of
row the built-in elementwise ops have, so a custom op then fuses into C loops,
is cached on disk, constant-folds, differentiates, prints and serializes like
``exp`` does::

    import numpy as np
    import exprc

    def _swish(x):
        return x / (1 + np.exp(-x))

    swish = exprc.custom_op(
        "swish", numpy=_swish,
        c="({0} * exprc_sigmoid{f}({0}))",           # {0}: the operand, {f}: "f" for float32
        grad=lambda node, g: (g * (node + exprc.sigmoid(node.inputs[0]) * (1 - node)),),
    )
    y = swish(exprc.vector("x")) * 2                   # an ordinary exprc expression

Templates (the op table's conventions): ``{0}``, ``{1}`` … are the operands as C
expressions (already cast to the op's compute dtype), ``{f}`` is ``f`` for float32
and empty for float64 (``exp{f}`` is ``expf`` or ``exp``), ``{T}`` is the C type.
A template must be one arithmetic C expression: balanced parentheses; no braces, ``;``,
``#``, comments, quotes, backslashes or non-printable characters, nor their digraph
(``<% %> <: :> %:``) and trigraph (``??<`` …) spellings; no assignments, ``&``/``*``
on addresses or pointer casts; names only of math.h functions (called, not taken as
pointers), exprc's prelude helpers (``exprc_sigmoid`` …), arithmetic types in casts
(``(double)``, ``({T})``) and math constants (``M_PI``, ``NAN`` …).  Generated C is
compiled with ``-Werror=implicit-function-declaration``, so a name no header declares
does not compile either.

Trust model: the C and CUDA templates are code written by the author of the
library that defines the op, compiled and run in the calling process with its
privileges — never build them from user or file input.  The checks here catch
mistakes (a template that would break out of its expression into statements,
a typo in a placeholder), not malice.  Op names reach C kernel names, so they
must be short ASCII identifiers.  Loading a saved graph (:func:`exprc.load`)
never defines ops: a file naming an op this process has not registered is
refused.

Rewrite rules: :func:`exprc.rewrite_rule` (defined in :mod:`exprc.rewrite.core`, re-exported
here and from ``exprc``) registers a named, tagged ``pattern -> replacement``; see its docstring.
"""

from __future__ import annotations

import keyword
import re
import string
import threading
from collections.abc import Callable, Sequence
from typing import Any

from exprc.graph import Node
from exprc.ops import OPS, Op, _elemwise, _errstate, register
from exprc.rewrite.core import rewrite_rule

#: Type rules an elementwise op may use (see :func:`custom_op`).
DTYPE_RULES = ("float", "any", "numeric", "integral", "bool", "float_bool")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}\Z")
_BAD_TEXT = (";", "#", "/*", "*/", "//", "\\", '"', "'", "`", "@", "$")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or not name.isascii():
        raise ValueError(f"custom_op: name {name!r} must be an ASCII identifier of at most 48 characters starting "
                         "with a letter (it becomes part of C kernel names)")
    if keyword.iskeyword(name) or name.startswith(("exprc", "k_")):
        raise ValueError(f"custom_op: name {name!r} is reserved")
    return name


def check_template(template: str | None, nin: int, what: str) -> str | None:
    """Validate a C/CUDA expression template (see the module docstring); return it unchanged."""
    if template is None:
        return None
    if not isinstance(template, str):
        raise TypeError(f"custom_op: {what} must be a string, got {type(template).__name__}")
    if not template.strip() or len(template) > 2000:
        raise ValueError(f"custom_op: {what} must be a non-empty C expression of at most 2000 characters")
    if any(not (" " <= ch <= "~") for ch in template):
        raise ValueError(f"custom_op: {what} {template!r} contains a non-printable or non-ASCII character")
    for bad in _BAD_TEXT:
        if bad in template:
            raise ValueError(f"custom_op: {what} {template!r} contains {bad!r}; a template is one C expression "
                             "(no statements, preprocessor lines, comments or literals of strings)")
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"custom_op: {what} {template!r} has unbalanced braces: {exc}") from None
    used = set()
    rest = []
    for literal, field, spec, conv in fields:
        rest.append(literal)
        if field is None:
            continue
        if spec or conv:
            raise ValueError(f"custom_op: {what} {template!r}: placeholders take no format spec or conversion")
        if field in ("f", "T"):
            continue
        if not field.isdigit() or int(field) >= nin:
            raise ValueError(f"custom_op: {what} {template!r}: unknown placeholder {{{field}}}; use {{0}}.."
                             f"{{{nin - 1}}} for the {nin} operand(s), {{f}} and {{T}}")
        used.add(int(field))
        rest.append(" ")
    text = "".join(rest)
    if "{" in text or "}" in text:  # from "{{" / "}}": a compound statement
        raise ValueError(f"custom_op: {what} {template!r} contains braces; a template is one C expression")
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"custom_op: {what} {template!r} has unbalanced parentheses")
    if used != set(range(nin)):
        missing = sorted(set(range(nin)) - used)
        raise ValueError(f"custom_op: {what} {template!r} never uses operand(s) {missing}")
    if not re.fullmatch(r"[A-Za-z0-9_ .+\-*/%<>=!&|^~?:,()]*", text):
        raise ValueError(f"custom_op: {what} {template!r} contains characters outside a C expression")
    _check_tokens(template, fields, what)
    return template


# Digraphs and trigraphs are other spellings of braces, brackets and '#' (gcc honours trigraphs under
# -std=c99): "<% system(0); %>" would get around the checks on the characters themselves.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DIGRAPHS = {"<%": "{", "%>": "}", "<:": "[", ":>": "]", "%:": "#"}
_MATH = _words("""
    acos acosh asin asinh atan atan2 atanh cbrt ceil copysign cos cosh erf erfc exp exp2 expm1 fabs fdim
    floor fma fmax fmin fmod hypot ilogb ldexp lgamma llrint llround log log10 log1p log2 logb lrint lround
    nearbyint nextafter nexttoward pow remainder rint round scalbln scalbn sin sinh sqrt tan tanh tgamma trunc
""")
_MATH_MACROS = _words("""isnan isinf isfinite isnormal signbit fpclassify isgreater isgreaterequal isless
    islessequal islessgreater isunordered""")
# CUDA's device math library (templates for the ``cuda=`` argument only).
_CUDA_MATH = _words("""rsqrt rcbrt sinpi cospi exp10 erfinv erfcinv normcdf normcdfinv __expf __logf __sinf
    __cosf __tanf __powf __exp10f __log2f __log10f __fdividef __saturatef max min""")
_HELPER = re.compile(r"exprc_(sigmoid|softplus|logaddexp|two_sum_err|two_prod_err|log1mexp|erfcx|tanh|min|max|mod|floordiv|sign)f?\Z")
_INT_HELPER = re.compile(r"exprc_(iabs|ifloordiv|imod|invert|ipow|imin|imax)_[A-Za-z0-9_]*\Z")
_TYPES = _words("""double float int long short char signed unsigned _Bool bool int8_t int16_t int32_t int64_t
    uint8_t uint16_t uint32_t uint64_t""")
_CONSTANT = re.compile(r"(M_(E|LOG2E|LOG10E|LN2|LN10|PI|PI_2|PI_4|1_PI|2_PI|2_SQRTPI|SQRT2|SQRT1_2)|INFINITY|NAN"
                       r"|HUGE_VALF?|(FLT|DBL)_[A-Z_]+|U?INT(8|16|32|64)_(MAX|MIN))\Z")
# Placeholders become markers: \x01 an operand, \x02 {f}, \x03 {T}.
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>\.?[0-9](?:[eEpP][+-]|[0-9A-Za-z_.\x02])*)
  | (?P<name>[A-Za-z_\x02\x03][A-Za-z0-9_\x02\x03]*)
  | (?P<operand>\x01)
  | (?P<assign>(?:<<|>>|[-+*/%&|^])=|\+\+|--|->|=(?!=))
  | (?P<op><<|>>|<=|>=|==|!=|&&|\|\||[-+*/%<>!&|^~?:,().]))""", re.VERBOSE)


def _is_function(name: str, what: str) -> bool:
    base = name[:-1] if name[-1:] in "fl" and name[:-1] in _MATH else name
    return (base in _MATH or name in _MATH_MACROS or bool(_HELPER.match(name) or _INT_HELPER.match(name))
            or (what == "cuda" and name in _CUDA_MATH))


def _check_tokens(template: str, fields: list, what: str) -> None:
    """Accept only an arithmetic expression: operands, numbers, calls of math functions and exprc helpers,
    casts to arithmetic types, math constants and operators (no assignment, address or pointer)."""
    def fail(why: str) -> ValueError:
        return ValueError(f"custom_op: {what} {template!r} {why}; a template is an arithmetic C expression of its "
                          "operands (math.h functions and exprc_* helpers, casts like (double), constants like "
                          "M_PI)")

    marked = "".join(lit + ("" if field is None else "\x02" if field == "f" else "\x03" if field == "T" else "\x01")
                     for lit, field, _, _ in fields)
    # Empty substitutions ({f} for float64) can join characters into a digraph or trigraph: check both spellings.
    for text in (template, marked.replace("\x02", "").replace("\x03", "").replace("\x01", " ")):
        if "??" in text:
            raise fail("contains '??' (trigraphs like '??<' spell braces and '#')")
        for dig, real in _DIGRAPHS.items():
            if dig in text:
                raise fail(f"contains the digraph {dig!r} (another spelling of {real!r})")
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(marked):
        m = _TOKEN.match(marked, pos)
        if m is None:
            if not marked[pos:].strip():
                break
            raise fail(f"has an unexpected character {marked[pos]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    parens: list[str] = []
    value = False  # whether the previous token ends an operand (then & and * are binary)
    for i, (kind, tok) in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        prev = tokens[i - 1] if i else ("", "")
        if kind == "assign":
            raise fail(f"contains {tok!r} (assignments, increments and member access are not arithmetic)")
        if kind in ("num", "operand"):
            value = True
        elif kind == "name":
            name = tok.replace("\x02", "").replace("\x03", "")
            known = name in _TYPES or name == "" or _is_function(name, what) or _CONSTANT.match(name)
            if not known:
                raise fail(f"uses the name {name!r}, which is not a math.h function, exprc helper, arithmetic type "
                           "or math constant")
            if re.search(r"[\x02\x03].", tok) or ("\x03" in tok and name and not _INT_HELPER.match(name)):
                raise fail("puts a {f} or {T} placeholder inside a name ({f} ends a function name, {T} ends an "
                           "exprc_i*_ helper or stands alone as a type)")
            if name in _TYPES or name == "":
                # A type name only in a cast "(double)" / "(unsigned int)": no pointer or function types.
                if prev[1] not in ("(",) and not _is_type_token(prev) or nxt[1] != ")" and not _is_type_token(nxt):
                    raise fail(f"uses the type name {name or '{T}'!r} outside a cast to an arithmetic type like "
                               "(double)")
                value = False
            elif _is_function(name, what):
                if nxt[1] != "(":
                    raise fail(f"names the function {name!r} without calling it (functions must be called)")
                value = False
            else:  # a constant
                value = True
        elif tok == "(":
            cast = nxt[0] == "name" and _is_type_token(nxt)
            parens.append("cast" if cast else "group")
            value = False
        elif tok == ")":
            value = not parens or parens.pop() != "cast"
        elif tok == ".":
            raise fail("contains '.' outside a number (member access is not arithmetic)")
        elif tok in ("&", "*") and not value:
            raise fail("takes an address-of ('&') or dereference ('*'): a template works on values, not pointers")
        else:
            value = False


def _is_type_token(tok: tuple[str, str]) -> bool:
    return tok[0] == "name" and tok[1].replace("\x02", "").replace("\x03", "") in _TYPES | {""}


def _operand_count(template: str | None) -> int | None:
    if template is None:
        return None
    try:
        idx = [int(f) for _, f, _, _ in string.Formatter().parse(template) if f is not None and f.isdigit()]
    except ValueError:
        return None
    return max(idx) + 1 if idx else None


def custom_op(name: str, numpy: Callable[..., Any], c: str | None = None, *, cuda: str | None = None,
              c_int: str | None = None, grad: Callable[[Node, Node], Any] | None = None,
              dtype_rule: str = "float", nin: int | None = None, commutative: bool = False,
              doc: str | None = None) -> Callable[..., Node]:
    """Add an elementwise op to the op table and return its builder (``builder(x, ...) -> Node``).

    * ``name``: how the op prints (``name(x)``) and is saved; an ASCII identifier.
    * ``numpy``: the reference, ``numpy(*arrays) -> array`` (broadcasting like a ufunc).
      The NumPy backend, constant folding and ``.eval()`` use it; the C backend runs
      it as a NumPy step when ``c`` is None.
    * ``c``: the C expression template for float operands (``{0}``, ``{f}``, ``{T}``);
      ``c_int`` for int/bool operands where it differs.  ``cuda``: the CUDA
      expression where it differs from ``c``.
    * ``grad``: the gradient rule of the built-ins: ``grad(node, g)`` returns one
      gradient expression per operand (``None``: zero) given the op's node (its
      operands are ``node.inputs``; ``node`` itself is the result) and the gradient
      ``g`` of the result.  Broadcasting and dtype casts of the results are done
      by :func:`exprc.grad`, as for the built-ins.
    * ``dtype_rule``: ``"float"`` (operands promoted, then to float: like ``exp``),
      ``"any"`` (NumPy promotion: like ``add``), ``"numeric"`` (no bools),
      ``"integral"`` (bools and ints only), ``"bool"`` (bool result: comparisons),
      ``"float_bool"`` (float operands, bool result: like ``isnan``).
    * ``nin``: the number of operands (default: from the template, else 1).

    Registering the same name again with the same templates and rules replaces the
    NumPy reference and gradient rule (re-importing a module works); a different
    definition under a taken name is an error.
    """
    _check_name(name)
    if not callable(numpy):
        raise TypeError(f"custom_op {name!r}: numpy= must be a callable (the NumPy reference)")
    if grad is not None and not callable(grad):
        raise TypeError(f"custom_op {name!r}: grad= must be a callable grad(node, g) -> gradients")
    if dtype_rule not in DTYPE_RULES:
        raise ValueError(f"custom_op {name!r}: dtype_rule must be one of {', '.join(DTYPE_RULES)}, got "
                         f"{dtype_rule!r}")
    if nin is None:
        nin = _operand_count(c) or _operand_count(c_int) or _operand_count(cuda) or 1
    if not isinstance(nin, int) or not 1 <= nin <= 8:
        raise ValueError(f"custom_op {name!r}: nin must be between 1 and 8, got {nin!r}")
    c = check_template(c, nin, "c")
    c_int = check_template(c_int, nin, "c_int")
    cuda = check_template(cuda, nin, "cuda")
    if commutative and nin != 2:
        raise ValueError(f"custom_op {name!r}: only binary ops can be commutative")
    rule = _wrap_grad(name, grad, nin) if grad is not None else None
    op = Op(name, "elemwise", _errstate(numpy), _elemwise(name, dtype_rule), c=c, c_int=c_int, cuda=cuda,
            commutative=commutative, grad=rule)
    signature = (c, c_int, cuda, dtype_rule, nin, commutative)
    with _LOCK:
        if name in OPS:
            if name not in _CUSTOM:
                raise ValueError(f"custom_op: {name!r} is a built-in op")
            if _CUSTOM[name] != signature:
                raise ValueError(f"custom_op: an op named {name!r} already exists with a different definition")
            OPS[name] = op
            from exprc.function import clear_memo

            clear_memo()  # compiled NumPy listings hold the previous reference
        else:
            register(op)
        _CUSTOM[name] = signature

    def builder(*xs: Any) -> Node:
        from exprc.api import _operands

        if len(xs) != nin:
            raise TypeError(f"{name}() takes {nin} operand(s), got {len(xs)}")
        return OPS[name].make(tuple(_operands(*xs)), {})

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc or f"The custom elementwise op {name!r}."
    builder.op = name  # type: ignore[attr-defined]
    return builder


#: name -> (c, c_int, cuda, dtype_rule, nin, commutative) of each custom op (the op table holds the rest).
_CUSTOM: dict[str, tuple] = {}
_LOCK = threading.Lock()


def _wrap_grad(name: str, grad: Callable, nin: int) -> Callable[[Node, Node], tuple]:
    def rule(node: Node, g: Node) -> tuple:
        res = grad(node, g)
        if isinstance(res, Node) or res is None:
            res = (res,)
        res = tuple(res)
        if len(res) != nin:
            raise ValueError(f"the gradient rule of custom op {name!r} returned {len(res)} gradients for "
                             f"{nin} operand(s)")
        return res

    rule.__name__ = f"grad_{name}"
    return rule


def custom_ops() -> list[str]:
    """Names of the ops added with :func:`custom_op` in this process."""
    return sorted(_CUSTOM)


def register_rewrite(name: str, tags: Sequence[str], replace: Callable[..., Node | None],
                     pattern: Any = None) -> None:
    """The call form of :func:`exprc.rewrite_rule` (kept for existing callers):
    ``register_rewrite(name, tags, fn, pattern)`` is ``rewrite_rule(name, tags, pattern)(fn)``."""
    rewrite_rule(name, tags, pattern)(replace)


__all__ = ["DTYPE_RULES", "check_template", "custom_op", "custom_ops", "register_rewrite", "rewrite_rule"]
