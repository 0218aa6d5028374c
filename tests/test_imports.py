"""The package's import graph: no module-level cycles, graph.py at the bottom, a light ``import exprc``.

The graph is read from the source with :mod:`ast` (nothing is imported), so a cycle is found
even where today's import order happens to hide it.  Edges are the module-level imports:
top-level ``import``/``from … import`` statements, including those inside top-level ``if``/``try``
blocks (they run at import), but not those inside functions or classes (they run when called),
nor ``if TYPE_CHECKING:`` blocks (they never run).  ``from P import name`` is an edge to the
submodule ``P.name`` when there is one, else to ``P``; the parent packages Python initialises on
the way are not edges (every module would otherwise depend on ``exprc/__init__``, which imports
them all), but a package ``__init__`` importing its own submodules is.

Run ``pytest -s tests/test_imports.py`` to print the summary (modules, edges, cycles).
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exprc"

#: What graph.py may import at module level: the leaves below it.
GRAPH_MAY_IMPORT = {"exprc.types", "exprc.errors", "exprc.config", "exprc._version"}
#: Leaves: modules that import nothing of exprc's but the leaves listed with them.
LEAVES = {"exprc._version": set(), "exprc.errors": set(), "exprc.config": set(), "exprc.types": {"exprc.errors"}}
#: Heavy optional dependencies that ``import exprc`` must not load (each is imported where used),
#: and exprc's own modules that load on first use (the built-in rules, saving, custom ops).
NOT_ON_IMPORT = ("networkx", "sympy", "mpmath", "cffi", "json", "exprc.rewrite.rules", "exprc.serialize",
                 "exprc.custom", "exprc.sympy_bridge", "exprc.nxbridge")


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (explicit stack, no recursion)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            branches = node.orelse if _is_type_checking(node.test) else node.body + node.orelse
            stack.extend(reversed(branches))
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            blocks = node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody
            stack.extend(reversed(blocks))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            stack.extend(reversed(node.body))
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports at module level."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for stmt in _module_level(tree.body):
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            else:
                if stmt.level:  # relative: the package of this module, minus level - 1 parents
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (stmt.level - 1)]
                    src = ".".join(base + ([stmt.module] if stmt.module else []))
                else:
                    src = stmt.module or ""
                names = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in stmt.names]
            for n in names:
                if n == "exprc" or n.startswith("exprc."):
                    target = _resolve(n, modules)
                    if target is not None and target != mod:
                        targets.add(target)
        graph[mod] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The shortest cycle (a closed path of module names) through each module of every strongly
    connected component with more than one module, without repeats (Tarjan's algorithm with an
    explicit stack, then a breadth-first search per module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    cycles: list[list[str]] = []
    seen: set[frozenset] = set()
    for comp in components:
        for start in comp:
            cycle = _cycle_through(graph, set(comp), start)
            key = frozenset(itertools.pairwise(cycle))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _cycle_through(graph: dict[str, set[str]], comp: set[str], start: str) -> list[str]:
    """A shortest closed path from ``start`` back to it within the component (breadth-first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def summary(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    edges = sum(len(t) for t in graph.values())
    lines = [f"exprc import graph: {len(graph)} modules, {edges} module-level edges"]
    if cycles:
        in_cycles = sorted({m for c in cycles for m in c})
        lines.append(f"{len(in_cycles)} module(s) on a cycle: {', '.join(in_cycles)}")
    if cycles:
        lines.append(f"{len(cycles)} cycle(s):")
        lines += ["  " + " -> ".join(c) for c in cycles]
    else:
        lines.append("no cycle")
    return "\n".join(lines)


def test_no_module_level_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    text = summary(graph, cycles)
    print(text)
    assert not cycles, text


def test_graph_and_the_leaves_sit_at_the_bottom():
    graph = import_graph()
    assert graph["exprc.graph"] <= GRAPH_MAY_IMPORT, sorted(graph["exprc.graph"] - GRAPH_MAY_IMPORT)
    for leaf, allowed in LEAVES.items():
        assert graph[leaf] <= allowed, (leaf, sorted(graph[leaf] - allowed))


def test_the_parser_sees_what_python_imports():
    # A few edges known from the source, through each kind of statement the parser resolves.
    graph = import_graph()
    assert "exprc.ops.table" in graph["exprc.ops"]  # a package __init__ importing its submodules
    assert "exprc.ops.grad" in graph["exprc.autodiff"]  # from exprc.ops import grad (a submodule)
    assert "exprc.ops" in graph["exprc.api"]  # from exprc.ops import OPS (a name in the package)
    assert "exprc.api" in graph["exprc.ops.grad"]  # from exprc import api as A
    assert "networkx" not in str(graph) and "exprc.nxbridge" not in graph["exprc.pipeline"]  # imported in functions


def test_import_exprc_loads_no_heavy_optional_dependency():
    code = f"import sys, exprc; print(' '.join(m for m in {NOT_ON_IMPORT!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = out.stdout.split()
    assert loaded == [], f"import exprc loaded {loaded}"


def test_lazy_names_load_on_first_use():
    """The names ``import exprc`` leaves unloaded are there on first use, in ``__all__`` and ``dir``,
    and the rule registry has the built-in rules when read before any compile."""
    code = ("import exprc, sys\n"
            "from exprc.rewrite import REGISTRY\n"
            "assert 'log1p_from_log' in REGISTRY and 'exprc.rewrite.rules' in sys.modules\n"
            "assert callable(exprc.dumps) and callable(exprc.custom_op) and callable(exprc.to_sympy)\n"
            "assert {'dumps', 'custom_op', 'from_networkx'} <= set(exprc.__all__) <= set(dir(exprc))\n"
            "from exprc import loads, rewrite_rule\n"
            "x = exprc.vector('x'); print(exprc.loads(exprc.dumps(x)).op)")
    # threads that read the registry while the first of them loads it all see every rule
    threads = ("import exprc, threading\n"
               "from exprc.rewrite import core\n"
               "seen = []\n"
               "ts = [threading.Thread(target=lambda: seen.append(len(core.select('stability')))) for _ in range(8)]\n"
               "[t.start() for t in ts]; [t.join() for t in ts]\n"
               "assert len(set(seen)) == 1 and seen[0] == len(core.select('stability')) > 50, seen\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "input"
    out = subprocess.run([sys.executable, "-c", threads], check=False, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
