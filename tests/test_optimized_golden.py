"""The optimized graph of every bench case (bench/run.py, bench/accuracy.py, the 1,003-node
rewrite graph) hashes as recorded in tests/golden/optimized_graphs.json.

A refactoring that moves rules between modules must keep their registration order and so the
rewritten graphs: this pins them.  After a deliberate rule change, regenerate the file with
``EXPRC_REGOLD=1 python -m pytest tests/test_optimized_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

import exprc
from exprc import serialize

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "optimized_graphs.json"
sys.path.insert(0, str(ROOT / "bench"))


def _digest(outputs: list, inputs: list) -> str:
    doc = serialize.to_dict(exprc.optimize(exprc.FunctionGraph(tuple(inputs), tuple(outputs))))
    body = json.dumps({"nodes": doc["nodes"], "outputs": doc["outputs"], "inputs": doc["inputs"]},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _graphs() -> dict[str, str]:
    import accuracy as acc_bench
    import run as run_bench

    out: dict[str, str] = {}
    for key, e in sorted(run_bench.EXPRS.items()):
        for dtype in ("float64", "float32"):
            ins = [exprc.vector(n, dtype) for n in "abc"[:e.nin]]
            out[f"run/{key}/{dtype}"] = _digest([e.fn(exprc, *ins)], ins)
    for case in acc_bench.CASES:
        ins = [exprc.tensor(f"x{i}", "float64", ndim=2 if case.rows else 1) for i in range(len(case.ranges))]
        out[f"accuracy/{case.name}"] = _digest([case.fn(exprc, *ins)], ins)
    big = acc_bench.big_graph()
    inputs = sorted({n for n in exprc.graph.toposort(big) if n.op == "input"}, key=lambda v: v.arg("name"))
    out["accuracy/big_graph_1003"] = _digest(big, inputs)
    return out


def test_optimized_bench_graphs_hash_as_recorded():
    got = _graphs()
    if os.environ.get("EXPRC_REGOLD"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden file rewritten")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    changed = [k for k in sorted(want) if got[k] != want[k]]
    assert not changed, f"optimized graphs changed: {changed}"
