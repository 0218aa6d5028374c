"""The bench scripts that no other test runs, on a few cases in their quick mode: a bench that
crashes is found here, not by the next person who wants its figures (bench/guards.py's --rows once
shadowed its list of results and raised at the first case)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_guards_runs_its_cases_with_and_without_a_row_length():
    for extra in ([], ["--rows", "16"], ["--threads", "1"]):
        out = _run("bench/guards.py", "--quick", "--cases", "log1p,softmax", *extra)
        result = json.loads(out.strip().splitlines()[-1])
        assert [r["case"] for r in result["rows"]] == ["log1p", "softmax"]
        for r in result["rows"]:
            assert r["exprc_s"] > 0 and r["nostab_s"] > 0 and r["ratio"] == r["exprc_s"] / r["nostab_s"]
        assert set(result["over"]) <= {"log1p", "softmax"}
        assert result["threads"] == 1 if "--threads" in extra else result["threads"] >= 1
