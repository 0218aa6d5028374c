"""Compile generated C into a shared library with the system C compiler.

The library is plain C (no ``Python.h``): compiling it takes tens of
milliseconds, and it is loaded with cffi's ABI mode.  Failures raise
:class:`~exprc.errors.CompileError` with the source path and the compiler log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from exprc.config import Config
from exprc.digest import sha256
from exprc.errors import CacheError, CompileError

#: The line the renderer puts between translation units (:func:`units` splits a large source there).
UNIT = "/* exprc: unit */"

# -O2, not -O3: the hot loops carry `#pragma omp simd`, which -O2 vectorizes (libmvec calls
# included) just as well, and gcc takes about half the time (0.14 s vs 0.26 s for a 20-op kernel).
# -Werror=implicit-function-declaration: a custom_op template naming a function no header of the prelude
# declares (system, exit, ...) must not compile into a call through an implicit declaration.
BASE_FLAGS = ("-O2", "-march=native", "-fPIC", "-shared", "-std=c99", "-fno-math-errno",
              "-fno-trapping-math", "-fwrapv", "-Werror=implicit-function-declaration")
LIBS = ("-lmvec", "-lm")
#: With vector math: gcc merges sin(x) and cos(x) of one argument into a call to sincos, which has no
#: libmvec variant, and the loop around it then runs one element at a time (cos(x)*sin(e) -
#: sin(x)*sin(e/2)^2, the stable sin(x+e) - sin(x), took 15 ms for 1e6 elements, not 2).  This turns
#: that pass off where the compiler knows it (gcc; the probe asks).  -fno-builtin-sin would too, but
#: then gcc no longer knows sin has no side effects, and a loop that computes it in one arm of a
#: where() is not vectorized at all.
NO_SINCOS = ("-fdisable-tree-sincos",)


def compiler(cfg: Config) -> str:
    """The C compiler command: ``Config.cc``, else ``$CC`` (read by Config), else ``cc``."""
    return cfg.cc or "cc"


@functools.lru_cache(maxsize=8)
def _probe(cc: str) -> tuple[str | None, str, bool, bool, bool]:
    """(why unusable or None, version line, has OpenMP, has libmvec, takes :data:`NO_SINCOS`) for
    compiler ``cc``."""
    import subprocess  # (here and below: not at import, a warm start reads the probe from disk)

    exe = shutil.which(cc.split()[0]) if cc else None
    if exe is None:
        return (f"no C compiler found (looked for {cc!r}); install gcc or clang, or set CC", "", False, False, False)
    try:
        out = subprocess.run([*cc.split(), "--version"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (f"{cc} --version failed: {exc}", "", False, False, False)
    version = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else cc
    with tempfile.TemporaryDirectory(prefix="exprc-probe-") as tmp:
        src = Path(tmp, "p.c")
        src.write_text("#include <math.h>\ndouble f(double x){return exp(x);}\n")

        def ok(*flags: str) -> bool:
            r = subprocess.run([*cc.split(), *flags, "-shared", "-fPIC", "-o", str(Path(tmp, "p.so")), str(src)],
                               check=False, capture_output=True, text=True, timeout=60)
            return r.returncode == 0

        if ok("-fopenmp", *NO_SINCOS, "-lmvec", "-lm"):  # the usual case (gcc), settled by one compiler run
            return (None, version, True, True, True)
        if not ok():
            return (f"{cc} cannot build a shared library", version, False, False, False)
        return (None, version, ok("-fopenmp"), ok("-lmvec", "-lm"), ok(*NO_SINCOS))


_FACTS: dict[tuple[str, str], tuple[str | None, str, bool, bool, bool]] = {}


def _facts(cfg: Config) -> tuple[str | None, str, bool, bool, bool]:
    """:func:`_probe`, remembered on disk in the cache's ``toolchain/`` folder so that a fresh
    process with a warm cache starts no compiler.  The record is keyed on the compiler command and
    the resolved executable's path, size and mtime (a compiler upgrade probes again)."""
    cc = compiler(cfg)
    if not cfg.cache:
        return _probe(cc)
    from exprc import cache

    fast_key = (cc, str(cache.root(cfg)))
    facts = _FACTS.get(fast_key)  # this process already knows (a compiler upgraded meanwhile is not seen)
    if facts is not None:
        return facts
    exe = shutil.which(cc.split()[0]) if cc else None
    if exe is None:
        return _probe(cc)
    real = os.path.realpath(exe)
    st = os.stat(real)
    ident = sha256(f"{cc}\n{real}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:16]
    try:
        path = cache.ensure_folder(cache.ensure_root(cfg), "toolchain", "toolchain folder") / f"{ident}.json"
    except OSError:  # the cache cannot be written: probe (cache.load warns and builds privately)
        _FACTS[fast_key] = facts = _probe(cc)
        return facts
    try:
        # a regular file of a few hundred bytes: a FIFO or a symlink here must not hang or redirect the read
        d = json.loads(cache.read_file(path, 1 << 16, "toolchain record"))
        facts = (None, str(d["version"]), bool(d["openmp"]), bool(d["mvec"]), bool(d["no_sincos"]))
    except (OSError, ValueError, KeyError, TypeError, CacheError):
        facts = _probe(cc)
        if facts[0] is None:
            try:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # whatever was there (a FIFO, a symlink) is replaced by a regular file
                cache.write_json_atomic(path, {"cc": cc, "executable": real, "version": facts[1],
                                               "openmp": facts[2], "mvec": facts[3], "no_sincos": facts[4]})
            except OSError:
                pass
    _FACTS[fast_key] = facts
    return facts


def probe(cfg: Config) -> str | None:
    """None when the C backend can compile here, else the reason why not."""
    return _facts(cfg)[0]


def flags(cfg: Config) -> list[str]:
    """Compiler flags for ``cfg`` (part of the cache key)."""
    _, _, has_omp, has_mvec, no_sincos = _facts(cfg)
    out = list(BASE_FLAGS)
    # Without OpenMP (cfg.openmp False: loop bodies) the parallel branches compile as plain loops
    # (the chunks do not depend on the thread count, so the bits are the same) and gcc skips
    # outlining them, which halves the compile of a large library.
    if has_omp and cfg.openmp:
        out.append("-fopenmp")
    else:
        out.append("-fopenmp-simd")
    if cfg.fast_math:
        out.append("-ffast-math")
    out += list(cfg.extra_cflags)
    if has_mvec and not cfg.precise_math:
        if no_sincos:
            out[len(BASE_FLAGS):len(BASE_FLAGS)] = NO_SINCOS
        out += list(LIBS)
    else:
        out.append("-lm")
    return out


def version(cfg: Config) -> str:
    return _facts(cfg)[1]


def has_vector_math(cfg: Config) -> bool:
    return _facts(cfg)[3] and not cfg.precise_math


_TEMPLATES_HASH: list[str] = []


def templates_hash() -> str:
    """Hash of the C templates (a cache key part: template edits invalidate entries)."""
    if not _TEMPLATES_HASH:
        from exprc.backends.templates import digest, prelude, read

        _TEMPLATES_HASH.append(digest(prelude("c", "c_prelude.h"), read("c", "c_module.c")))
    return _TEMPLATES_HASH[0]


def key_parts(cfg: Config) -> dict[str, str]:
    """What besides the source decides a library: the cache key's named parts (and the graph index's)."""
    return {"compiler": compiler(cfg), "compiler_version": version(cfg), "flags": " ".join(flags(cfg)),
            "templates": templates_hash(), "cpu": cpu_features()}


#: The renderer's mark between two kernels, with its line end: a module may be cut there.
UNIT_MARK = UNIT + "\n"
#: Kernel text per translation unit below which a module is not cut: each unit parses the prelude
#: again and starts a compiler (~0.05 s), while gcc spends ~0.15 s per 10 KB of kernels.
UNIT_BYTES = 12_000


def units(source: str, jobs: int) -> list[str]:
    """``source`` cut at its unit marks into at most ``jobs`` translation units of similar size,
    each with the module's head (comment and prelude); ``[source]`` when it is not worth cutting.
    Every unit is the same C as the whole (the marks only move kernels to another file): a kernel
    compiles to the same code either way, so a library built in parts gives the same bits."""
    head, *pieces = source.split(UNIT_MARK)
    size = sum(len(p) for p in pieces)
    jobs = min(jobs, len(pieces), size // UNIT_BYTES)
    if jobs < 2:
        return [source]
    out, current, filled = [], [], 0
    for p in pieces:  # consecutive pieces, each unit closed once it holds its share
        current.append(p)
        filled += len(p)
        if filled >= size * (len(out) + 1) / jobs and len(out) < jobs - 1:
            out.append(head + "".join(current))
            current = []
    if current:
        out.append(head + "".join(current))
    return out


def _jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compile_library(source: str, workdir: Path, name: str, cfg: Config) -> Path:
    """Write ``source`` to ``workdir/name.c`` and build ``workdir/name.so``; a large module is
    compiled as several translation units at once (:func:`units`) and linked."""
    src = workdir / f"{name}.c"
    lib = workdir / f"{name}.so"
    src.write_text(source)
    f = flags(cfg)
    # Libraries must follow the sources on the command line.
    libs = [x for x in f if x.startswith("-l")]
    cc = [*compiler(cfg).split(), *[x for x in f if not x.startswith("-l")]]
    parts = units(source, _jobs())
    if len(parts) == 1:
        _run([[*cc, "-o", str(lib), str(src), *libs]], src)
        return lib
    paths = [workdir / f"{name}.u{i}.c" for i in range(len(parts))]
    for path, text in zip(paths, parts):
        path.write_text(text)
    try:
        _run([[*cc, "-c", "-o", str(p.with_suffix(".o")), str(p)] for p in paths], src)
        _run([[*cc, "-o", str(lib), *[str(p.with_suffix(".o")) for p in paths], *libs]], src)
    finally:
        for p in paths:
            for q in (p, p.with_suffix(".o")):
                with contextlib.suppress(OSError):
                    q.unlink()
    return lib


def _run(cmds: list[list[str]], src: Path) -> None:
    """Run the compiler commands ``cmds`` at the same time; CompileError (naming ``src``, the
    whole module) with the log of the first that fails."""
    import subprocess

    env = {**os.environ, "LC_ALL": "C"}
    procs = []
    try:
        for cmd in cmds:
            procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                env=env)))
        results = [(cmd, p.communicate(timeout=600), p.returncode) for cmd, p in procs]
    except (OSError, subprocess.TimeoutExpired) as exc:
        for _, p in procs:
            p.kill()
            p.wait()
        raise CompileError(f"could not run the C compiler: {exc}", str(src), "") from exc
    for cmd, (out, err), rc in results:
        if rc != 0:
            raise CompileError(f"C compilation failed ({' '.join(cmd)})", str(src), err + out)


@functools.lru_cache(maxsize=1)
def cpu_features() -> str:
    """A digest of the CPU's feature flags: ``-march=native`` binaries are CPU-specific."""
    import platform

    flags_line = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags_line = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return f"{platform.machine()}-{sha256(flags_line.encode()).hexdigest()[:12]}"


_HELPERS: dict[str, Any] = {}
_HELPERS_LOCK = threading.Lock()


def helper_library(name: str, template: str, load: Any, cfg: Config, summary: str) -> Any:
    """A fixed helper library of the C backend (``templates/<template>``: row gathers, the loop
    stepper), compiled once per compiler into the cache and loaded with ``load(path)`` once per
    process; None when it cannot be built (callers then take their NumPy/Python path, which
    computes the same)."""
    if name not in _HELPERS:
        with _HELPERS_LOCK:
            if name not in _HELPERS:
                _HELPERS[name] = _build_helper(name, template, load, cfg, summary)
    return _HELPERS[name]


def _build_helper(name: str, template: str, load: Any, cfg: Config, summary: str) -> Any:
    try:
        from exprc import cache
        from exprc.backends.templates import read

        source = read("c", template)
        parts = {"compiler": compiler(cfg), "compiler_version": version(cfg), "flags": " ".join(flags(cfg))}
        lib, _ = cache.load(name, source, parts, lambda d: compile_library(source, d, name, cfg), load, cfg,
                            {"backend": "c", "summary": summary})
        return lib
    except Exception:  # noqa: BLE001 - the slower path computes the same
        return None
