"""Compile generated CUDA with NVRTC (through ``cuda-bindings``): source -> cubin or PTX.

* With a device, the runtime asks for a **cubin** for the device's compute capability
  (``sm_90`` on an H100): no PTX JIT at load time, so a driver older than NVRTC cannot refuse
  the module's PTX version.
* Without one, :func:`compile_source` makes **PTX** for a named architecture (``compute_90``
  for ``arch="sm_90"``): this is what ``exprc.cuda.compile_only`` and the GPU-less tests use.

Failures raise :class:`~exprc.errors.CompileError` carrying NVRTC's log and the path of the
source (written next to the would-be binary).  Binaries are cached in the C backend's cache
(:func:`cached_compile`); the key parts name NVRTC's version, the architecture, the target
and the options.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from exprc.config import Config
from exprc.errors import CompileError

#: Options always given to NVRTC.  ``--fmad=false``: gcc does not contract ``a*b+c`` into an
#: FMA either, so results agree with the C and NumPy backends (``fast_math`` turns it back on).
BASE_OPTIONS = ("--std=c++17", "--fmad=false")
INSTALL_HINT = "pip install 'exprc[cuda]' (cuda-bindings and nvidia-cuda-nvrtc-cu12)"


def _module() -> Any:
    """``cuda.bindings.nvrtc`` (cuda-bindings >= 12.6), or the older ``cuda.nvrtc``."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        from cuda import nvrtc  # type: ignore[no-redef]
    return nvrtc


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when NVRTC can compile here, else why not."""
    try:
        nv = _module()
    except ImportError as exc:
        return f"cuda-bindings is not installed ({exc}); {INSTALL_HINT}"
    try:
        err = nv.nvrtcVersion()[0]
    except Exception as exc:  # noqa: BLE001 - the library is looked up on first use, failing in many ways
        return f"the NVRTC library cannot be loaded ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if int(err) != 0:
        return f"nvrtcVersion failed ({err})"
    return None


def version() -> str:
    """NVRTC's version, ``"12.9"`` (a cache key part)."""
    _, major, minor = _module().nvrtcVersion()
    return f"{major}.{minor}"


def normalize_arch(arch: str) -> str:
    """``"sm_90"`` from ``"sm_90"``, ``"compute_90"``, ``"90"``, ``"9.0"`` or ``(9, 0)``-like text."""
    text = str(arch).strip().lower().replace("compute_", "").replace("sm_", "").replace(".", "")
    if not text[:2].isdigit():
        raise ValueError(f"arch: expected something like 'sm_90', got {arch!r}")
    return f"sm_{text}"


def options(cfg: Config, arch: str, target: str) -> list[str]:
    """NVRTC options: ``--gpu-architecture=sm_XX`` for a cubin, ``compute_XX`` for PTX."""
    sm = normalize_arch(arch)
    gpu = sm if target == "cubin" else sm.replace("sm_", "compute_")
    opts = [f"--gpu-architecture={gpu}", *BASE_OPTIONS]
    if cfg.fast_math:
        opts = [o for o in opts if not o.startswith("--fmad")] + ["--use_fast_math"]
    return opts


def _check(nv: Any, result: Any, what: str) -> Any:
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise CompileError(f"NVRTC: {what} failed ({_error_string(nv, err)})")
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


def _error_string(nv: Any, err: Any) -> str:
    try:
        return nv.nvrtcGetErrorString(err)[1].decode()
    except (AttributeError, IndexError, TypeError, ValueError, UnicodeDecodeError):
        return str(err)


def compile_source(source: str, name: str, arch: str, target: str = "ptx", opts: list[str] | None = None,
                   source_path: str | None = None) -> bytes:
    """NVRTC-compile ``source`` to PTX (text, NUL-terminated as the driver wants it) or a cubin."""
    if target not in ("ptx", "cubin"):
        raise ValueError(f"target: expected 'ptx' or 'cubin', got {target!r}")
    nv = _module()
    opts = opts if opts is not None else options(Config(), arch, target)
    prog = _check(nv, nv.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in opts]
        (err,) = nv.nvrtcCompileProgram(prog, len(encoded), encoded)
        size = _check(nv, nv.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        nv.nvrtcGetProgramLog(prog, log)
        log_text = log.rstrip(b"\0 ").decode(errors="replace")
        if int(err) != 0:
            raise CompileError(f"NVRTC compilation of {name} failed ({_error_string(nv, err)}; options: "
                               f"{' '.join(opts)})", source_path, log_text)
        if target == "ptx":
            size = _check(nv, nv.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            out = b" " * size
            _check(nv, nv.nvrtcGetPTX(prog, out), "nvrtcGetPTX")
        else:
            size = _check(nv, nv.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            out = b" " * size
            _check(nv, nv.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
        return out
    finally:
        nv.nvrtcDestroyProgram(prog)


def build(source: str, workdir: Path, name: str, arch: str, target: str, cfg: Config) -> Path:
    """Write ``workdir/name.cu`` and build ``workdir/name.ptx`` or ``workdir/name.cubin``."""
    src = workdir / f"{name}.cu"
    src.write_text(source)
    out = workdir / f"{name}.{target}"
    out.write_bytes(compile_source(source, name, arch, target, options(cfg, arch, target), str(src)))
    return out


def templates_hash() -> str:
    """Hash of the CUDA templates (a cache key part: template edits invalidate entries)."""
    from exprc.backends.templates import digest, prelude, read

    return digest(prelude("cuda", "cuda_prelude.cuh"), read("cuda", "cuda_module.cu"))


def cached_compile(source: str, name: str, arch: str, target: str, cfg: Config,
                   summary: str = "") -> tuple[bytes, Path | None]:
    """The binary for ``source`` from the cache, compiling it on a miss; (bytes, entry folder)."""
    from exprc import cache

    arch = normalize_arch(arch)
    parts = {"compiler": "nvrtc", "compiler_version": version(), "arch": arch, "target": target,
             "flags": " ".join(options(cfg, arch, target)), "templates": templates_hash()}
    return cache.load(name, source, parts, lambda d: build(source, d, name, arch, target, cfg),
                      lambda p: cache.read_file(Path(p), what="CUDA binary"), cfg,
                      {"backend": "cuda", "arch": arch, "target": target, "summary": summary[:500]})
