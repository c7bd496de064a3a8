"""Compiling and loading the native kernel: once per machine, cached on disk, never at import time.

The kernel (``kernel.cpp`` with its headers, next to this file) is plain C++ with no torch headers,
so it compiles in a few seconds with the system's C++ compiler (``$CXX`` or ``c++``),
``-O3 -march=native -fopenmp``. The shared library is cached under ``$GEOATTN_CACHE`` (default
``~/.cache/geoattn``) in a file named by a hash of the source, the flags, the compiler and this CPU's
model and flags (a library built with ``-march=native`` must not be loaded on another CPU), written
atomically so parallel processes may build at once. Its matrix products go through the BLAS ``sgemm``
that PyTorch's own library exports (MKL's ``SGEMM``, or ``sgemm_``), so the kernel uses the same BLAS as
the rest of the model.

If anything is missing (no compiler, no exported sgemm, a failed build), :func:`load` returns the
reason instead of a library; the native backend then declines every call with that reason and
``backend="auto"`` uses the portable backends.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from . import abi

SOURCES = [Path(__file__).with_name("kernel.cpp")]
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
# vect-partial-vector-usage=2: masked (AVX-512) loop epilogues, not scalar ones (short causal rows: 1.3× measured);
# no-semantic-interposition: the kernel's own functions are called directly (not through the PLT) and may be
# inlined (−1 to −3% of its time at the quick shape; outputs and gradients bit-identical, measured)
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "--param=vect-partial-vector-usage=2", "-fopenmp",
         "-fno-math-errno", "-fno-trapping-math", "-fno-split-loops", "-fno-semantic-interposition", "-std=c++17",
         "-shared", "-fPIC"]


@dataclass
class Native:
    """A loaded kernel: the library, the address of the sgemm it calls and its constants (:mod:`.abi`)."""

    lib: ctypes.CDLL
    sgemm: int
    path: Path
    abi: abi.Constants


_LOCK = threading.Lock()
_LOADED: Native | str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("GEOATTN_CACHE", Path.home() / ".cache" / "geoattn")) / "native"


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


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


def _build(cxx: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        flags = FLAGS if platform.system() != "Darwin" else [f for f in FLAGS if f != "-fopenmp"]
        result = subprocess.run([cxx, *flags, *map(str, SOURCES), "-o", str(partial)], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build the native kernel:\n{result.stderr[-2000:]}")
        os.replace(partial, target)  # atomic: a parallel build of the same source writes the same file
    finally:
        partial.unlink(missing_ok=True)


def load() -> Native | str:
    """The native kernel (built on first use), or the reason it is unavailable."""
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            _LOADED = _load()
        return _LOADED


def _load() -> Native | str:
    if os.environ.get("GEOATTN_NATIVE", "1") == "0":
        return "the native kernel is switched off (GEOATTN_NATIVE=0)"
    sgemm = _sgemm_address()
    if sgemm is None:
        return "this PyTorch build exports no BLAS sgemm (SGEMM or sgemm_) for the native kernel to call"
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler found (set $CXX or install g++) to build the native kernel"
    key = hashlib.sha256("\n".join([*(s.read_text() for s in [*SOURCES, *HEADERS]), " ".join(FLAGS),
                                    _compiler_version(cxx),
                                    platform.machine(), _cpu_fingerprint()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"geoattn_native_{key}.so"
    try:
        if not target.exists():
            _build(cxx, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return f"the native kernel could not be built or loaded ({err})"
    constants = abi.read(lib)
    if isinstance(constants, str):
        return f"the native kernel at {target} does not match this geoattn: {constants}"
    return Native(lib, sgemm, target, constants)
