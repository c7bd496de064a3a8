"""Compiling and loading the native kernel: once per machine, cached on disk, never at import time.

The kernel (``kernel.cpp`` with its headers, next to this file) is plain C++17 with no torch headers,
compiled with the system's C++ compiler (``$CXX``, else ``c++``, ``g++``, ``clang++``) with the flags
:mod:`.flags` chooses for that compiler and this CPU (each optional flag probed; ``-fopenmp`` when an
OpenMP runtime is there, else one thread). Its matrix products go through the BLAS ``sgemm`` that
PyTorch's own library exports (MKL's ``SGEMM``, or ``sgemm_``), so the kernel uses the rest of the
model's BLAS.

The shared library is cached under ``$GEOATTN_CACHE`` (default ``~/.cache/geoattn``) in ``native/``, in
a file named by a hash of the source, the flags, the compiler and this CPU's model and flags (a library
built for ``-march=native`` must not be loaded on another CPU), written atomically so parallel
processes may build at once. A failed build is recorded there too (``.failed``, with the compiler's
error) under the same hash, so later processes do not compile again until the source, the flags or the
compiler change.

Environment:

* ``GEOATTN_NATIVE=0`` switches the kernel off (``1``, the default, leaves it on); ``auto`` then uses
  the portable backends, with no warning.
* ``GEOATTN_NATIVE_ARCH`` builds for an ``-march`` level instead of ``native`` (e.g. ``x86-64-v3``: AVX2
  only).
* ``CXX`` names the compiler; ``GEOATTN_CACHE`` the cache directory.

If anything is missing (no compiler, no exported sgemm, a failed build), :func:`load` returns the
reason, with its fix, instead of a library; the native backend declines every call with it, ``auto``
uses the portable backends and says so once (:mod:`geoattn.backends.policy`). ``python -m geoattn
doctor`` prints all of this, and dry-runs the build for another compiler or target.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import abi
from . import flags as _flags
from .flags import Compiler, Flags, ProbeCache, Target

SOURCES = [Path(__file__).with_name("kernel.cpp")]
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
SWITCHED_OFF = "the native kernel is switched off (GEOATTN_NATIVE=0)"


@dataclass
class Native:
    """A loaded kernel: the library, the address of the sgemm it calls, its constants (:mod:`.abi`) and whether
    it runs threads."""

    lib: ctypes.CDLL
    sgemm: int
    path: Path
    abi: abi.Constants
    openmp: bool = True


@dataclass(frozen=True)
class Plan:
    """A build: the compiler, the target, the resolved flags and the library's path in the cache."""

    compiler: Compiler
    target: Target
    flags: Flags
    library: Path

    @property
    def failure_record(self) -> Path:
        return self.library.with_suffix(".failed")


_LOCK = threading.Lock()
_LOADED: Native | str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("GEOATTN_CACHE", Path.home() / ".cache" / "geoattn")) / "native"


def switched_on() -> bool:
    """``GEOATTN_NATIVE``: ``0`` switches the native kernel off, ``1`` (or unset) leaves it on."""
    value = os.environ.get("GEOATTN_NATIVE", "1").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"GEOATTN_NATIVE must be 0 (switch the native kernel off) or 1 (the default), got {value!r}")
    return value != "0"


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def _sgemm_address() -> int | None:
    """The address of a Fortran-ABI sgemm exported by libtorch_cpu (MKL: SGEMM; reference/OpenBLAS: sgemm_)."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = lib_dir / name
        if path.exists():
            torch_lib = ctypes.CDLL(str(path))
            for symbol in ("SGEMM", "sgemm_", "sgemm"):
                try:
                    return ctypes.cast(getattr(torch_lib, symbol), ctypes.c_void_p).value
                except AttributeError:
                    continue
    return None


def plan(cxx: str | None = None, target: Target | None = None) -> Plan | str:
    """The build for compiler ``cxx`` (default: ``$CXX`` or the first found) and ``target`` (default: this
    machine), with its flags probed; or why there is none (no compiler)."""
    compiler = _flags.find_compiler(cxx)
    if isinstance(compiler, str):
        return compiler
    target = target or _flags.host_target()
    resolved = _flags.resolve(compiler, target, ProbeCache(cache_dir()))
    sources = "".join(s.read_text() for s in [*SOURCES, *HEADERS])
    key = hashlib.sha256("\n".join([sources, " ".join(resolved.flags), compiler.path, compiler.version, str(target),
                                    platform.machine(), _cpu_fingerprint()]).encode()).hexdigest()[:16]
    return Plan(compiler, target, resolved, cache_dir() / f"geoattn_native_{key}.so")


def compile_library(p: Plan, out: Path) -> str | None:
    """Compile the kernel for plan ``p`` into ``out`` (atomically); the compiler's error, or None."""
    if p.flags.arch is not None and p.flags.arch != p.target.arch:
        cross = f"a cross compiler ({p.target.arch}-linux-gnu-g++) or clang++"
        return f"{p.compiler.path} compiles for {p.flags.arch}, not for the target {p.target.arch}; use {cross}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        result = _flags._run([p.compiler.path, *p.flags.flags, *map(str, SOURCES), "-o", str(partial)])
        if result.returncode != 0:
            return (result.stderr or result.stdout)[-3000:].strip() or f"exit status {result.returncode}"
        os.replace(partial, out)  # atomic: a parallel build of the same source writes the same file
        return None
    finally:
        partial.unlink(missing_ok=True)


def failure_reason(p: Plan, error: str) -> str:
    """A failed build's reason with its fix."""
    tail = "\n".join(error.strip().splitlines()[-6:])
    return (f"the native kernel failed to build with {p.compiler.path} ({p.compiler.version}). Fix: install g++ "
            f"(or clang++ and libomp), or set CXX to a working C++17 compiler, and check with `python -m geoattn "
            f"doctor`. The failure is recorded in {p.failure_record} and not retried until the source, the flags "
            f"or the compiler change (or `python -m geoattn doctor --rebuild`). The compiler said:\n{tail}")


def openmp_fix(family: str) -> str:
    if family == "apple-clang":
        return "brew install libomp"
    if family == "clang":
        return "install libomp (Debian/Ubuntu: apt-get install libomp-dev)"
    return "install GCC's libgomp, or set CXX to a compiler with OpenMP"


def load() -> Native | str:
    """The native kernel (built on first use), or the reason it is unavailable."""
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            _LOADED = _load()
        return _LOADED


def failure() -> str | None:
    """Why the native kernel is unavailable, if :func:`load` has run and failed (never builds; no lock)."""
    return _LOADED if isinstance(_LOADED, str) else None


def _load() -> Native | str:
    if not switched_on():
        return SWITCHED_OFF
    sgemm = _sgemm_address()
    if sgemm is None:
        return ("this PyTorch build exports no BLAS sgemm (SGEMM or sgemm_) for the native kernel to call; "
                "install the official torch wheel")
    p = plan()
    if isinstance(p, str):
        return p
    if not p.library.exists():
        try:
            return failure_reason(p, p.failure_record.read_text())
        except OSError:
            pass  # no failure recorded: build
        error = compile_library(p, p.library)
        if error is not None:
            try:
                p.failure_record.write_text(error)
            except OSError:
                pass
            return failure_reason(p, error)
    try:
        lib = ctypes.CDLL(str(p.library))
    except OSError as err:
        return f"the native kernel at {p.library} could not be loaded ({err}); delete the file to rebuild it"
    constants = abi.read(lib)
    if isinstance(constants, str):
        return f"the native kernel at {p.library} does not match this geoattn: {constants}"
    if not p.flags.openmp:
        warnings.warn(f"geoattn: the native kernel was built without OpenMP by {p.compiler.path}, so it runs on one "
                      f"thread. Fix: {openmp_fix(p.compiler.family)}, then `python -m geoattn doctor --rebuild`.",
                      UserWarning, stacklevel=2)
    return Native(lib, sgemm, p.library, constants, p.flags.openmp)


def clear() -> list[Path]:
    """Forget the probes and failed builds on disk and this process's load result (what ``doctor --rebuild``
    does); returns the files removed."""
    global _LOADED
    removed = [f for f in [cache_dir() / "probes.json", *cache_dir().glob("*.failed")] if f.exists()]
    for f in removed:
        f.unlink(missing_ok=True)
    with _LOCK:
        _LOADED = None
    return removed
