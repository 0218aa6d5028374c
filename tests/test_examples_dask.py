"""examples/dask_bigarray.py at a small size: its two checks (the first chunks against NumPy to
1e-12; the totals against their expected values for uniform inputs) run inside ``main``, which raises
when one fails.  The 2e9-element run is done by hand (its time and peak RSS are in bench/README.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("dask.array")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import dask_bigarray


def test_dask_bigarray_small():
    out = dask_bigarray.main(["--size", "3e5", "--chunk", "4e4", "--threads", "2"])
    assert out["n"] == 300_000
    assert abs(out["logsumexp"] - (math.log(3e5) + math.log(math.sinh(3) / 3))) < 10 / math.sqrt(3e5)
    assert out["peak_rss_gb"] > 0
