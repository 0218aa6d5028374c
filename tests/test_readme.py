"""README's Python examples run as written, in order, in one namespace (as a reader pastes them
into one session), so an API change that breaks the README fails here.

They run in a fresh process, in a temporary folder (the examples write files, register a custom op
and a rewrite rule: none of that may leak into the other tests).  Blocks that need a GPU and CuPy
(the CUDA section) run only where ``backend="cuda"`` can run and CuPy is installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.DOTALL | re.MULTILINE)

RUNNER = r"""
import importlib.util, json, sys, traceback
blocks = json.loads(sys.stdin.read())
import exprc.cuda
gpu = exprc.cuda.is_available() and importlib.util.find_spec("cupy") is not None
namespace = {"__name__": "readme"}
for i, block in enumerate(blocks):
    if ("cupy" in block or 'backend="cuda"' in block) and not gpu:
        print(f"skipped block {i}: needs a GPU and CuPy", file=sys.stderr)
        continue
    try:
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception:
        print(f"README python block {i} failed:\n{block}\n{traceback.format_exc()}", file=sys.stderr)
        sys.exit(1)
    print(f"ran block {i}", file=sys.stderr)
"""


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 8
    assert sum("cupy" in b or 'backend="cuda"' in b for b in BLOCKS) == 1  # only the CUDA section needs a GPU


def test_readme_python_blocks_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(BLOCKS), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    ran = r.stderr.count("ran block ")
    assert ran >= len(BLOCKS) - 1, r.stderr
    assert "softplus" in r.stdout  # the tour prints its results (pprint of softplus(x) * 2.0 + ...)
