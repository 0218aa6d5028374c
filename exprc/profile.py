"""Profile mode (``exprc.function(..., profile=True)`` or ``Config(profile=True)``): where a
compiled function spends its time.

With the profile on, the C backend runs each fused kernel as its own native call and times it
(off, consecutive kernels run in one call and nothing is timed: the dispatcher's fast path is
untouched), and times each NumPy step.  Per kernel it keeps the calls, the total time, the
elements of its loop and the bytes it reads and writes (each array element it touches once:
broadcast operands count once), hence the achieved GB/s, set against this machine's copy
bandwidth (measured once per process, ``bandwidth()``); and the compile time by stage (optimize,
lower, render, compile, load).  ``f.profile`` prints as a table and gives the same as data
(``to_dict()``).  Loops (``scan``) run their steps natively and are timed as a whole, by their
runner, not kernel by kernel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_BANDWIDTH: list[float] = []


def bandwidth() -> float:
    """This machine's memory bandwidth in GB/s, as NumPy copies a 64 MiB array (read + write;
    best of 3, measured once per process)."""
    if not _BANDWIDTH:
        src, dst = np.ones(8 << 20), np.empty(8 << 20)
        best = min(_timed(np.copyto, dst, src) for _ in range(3))
        _BANDWIDTH.append(2 * src.nbytes / best / 1e9)
    return _BANDWIDTH[0]


def _timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


@dataclass
class Entry:
    """One kernel or NumPy step: calls, total seconds, and (kernels) elements and bytes per call."""

    name: str
    kind: str
    calls: int = 0
    seconds: float = 0.0
    elements: int = 0
    bytes: int = 0

    def add(self, seconds: float, elements: int = 0, nbytes: int = 0) -> None:
        self.calls += 1
        self.seconds += seconds
        self.elements, self.bytes = elements, nbytes


@dataclass
class Profile:
    """What one compiled function spent (see the module docstring)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    compile: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, kind: str, seconds: float, elements: int = 0, nbytes: int = 0) -> None:
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(name, kind)
        e.add(seconds, elements, nbytes)

    def merge(self, other: Profile) -> None:
        for k, e in other.entries.items():
            mine = self.entries.setdefault(k, Entry(e.name, e.kind))
            mine.calls += e.calls
            mine.seconds += e.seconds
            mine.elements, mine.bytes = e.elements, e.bytes
        for k, v in other.compile.items():
            self.compile[k] = self.compile.get(k, 0.0) + v

    def to_dict(self) -> dict:
        """``{"kernels": [{name, kind, calls, total_s, mean_s, elements, bytes, gb_per_s,
        bandwidth_fraction}, ...] (most time first), "compile": {stage: seconds},
        "bandwidth_gb_per_s": ...}``."""
        bw = bandwidth()
        rows = []
        for e in sorted(self.entries.values(), key=lambda e: -e.seconds):
            mean = e.seconds / e.calls if e.calls else 0.0
            rate = e.bytes / mean / 1e9 if mean > 0 and e.bytes else 0.0
            rows.append({"name": e.name, "kind": e.kind, "calls": e.calls, "total_s": e.seconds, "mean_s": mean,
                         "elements": e.elements, "bytes": e.bytes, "gb_per_s": rate,
                         "bandwidth_fraction": rate / bw if bw else 0.0})
        return {"kernels": rows, "compile": dict(self.compile), "bandwidth_gb_per_s": bw}

    def __str__(self) -> str:
        d = self.to_dict()
        lines = [(f"{'kernel / step':40} {'kind':9} {'calls':>6} {'total ms':>10} {'mean us':>10} {'elements':>10} "
                  f"{'GB/s':>7} {'of peak':>7}")]
        for r in d["kernels"]:
            lines.append(f"{r['name'][:40]:40} {r['kind']:9} {r['calls']:6d} {r['total_s'] * 1e3:10.3f} "
                         f"{r['mean_s'] * 1e6:10.1f} {r['elements']:10d} {r['gb_per_s']:7.2f} "
                         f"{r['bandwidth_fraction']:7.0%}")
        stages = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in d["compile"].items())
        lines.append(f"compile: {stages or '-'}; machine copy bandwidth {d['bandwidth_gb_per_s']:.1f} GB/s")
        return "\n".join(lines)

    __repr__ = __str__


__all__ = ["Entry", "Profile", "bandwidth"]
