#!/usr/bin/env python
"""The differential fuzzer's long mode: ``python bench/fuzz.py [--graphs 10000] [--seed S] [--json PATH]``.

Runs tests/fuzz.py over many seeded batches of random graphs (every backend against NumPy, the
stability rewrites against exact values) and prints the number of graphs and every unexplained
mismatch with the seed that replays it (``python tests/fuzz.py --seed S --graphs 16 -v``).
The suite runs a fixed slice of the same batches (tests/test_fuzz.py).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz

if __name__ == "__main__":
    warnings.simplefilter("ignore", RuntimeWarning)  # NaN/inf on purpose, in the NumPy reference runs
    sys.exit(fuzz.main())
