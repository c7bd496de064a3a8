"""The native kernel's compiler flags: one table, by compiler family and target, every optional flag probed.

:func:`plan` is the table, a pure function of the compiler family (``gcc``, ``clang``, ``apple-clang``),
the target (x86-64 with or without AVX-512, aarch64) and its ``-march`` level. It returns the flags in
build order, each an :class:`Option`: required (``-O3``, ``-std=c++17``, ``-shared -fPIC``) or optional,
with alternatives tried in order. :func:`resolve` probes every optional one by compiling and linking a
tiny shared library with it and ``-Werror`` (so "unknown argument" and "argument unused" both count as
rejected), keeps the first alternative that builds, and drops the option if none does. Probe results
are cached in ``probes.json`` under the build cache, keyed by the compiler (path and ``--version``) and
the flags, so a process that finds them there runs no compiler for them.

What the optional flags are for:

* ``-march=native`` (x86-64; ``-mcpu=native`` first on aarch64) or a named level such as ``x86-64-v3``
  (``GEOATTN_NATIVE_ARCH``): vector code for this CPU. A cross build (a target triple) uses the
  compiler's baseline for that architecture.
* ``-mprefer-vector-width=512`` and ``--param=vect-partial-vector-usage=2`` (x86 with AVX-512 only; the
  ``--param`` is GCC's): 512-bit vectors, and masked loop epilogues instead of scalar ones, which
  matters for the short rows of causal attention.
* ``-fopenmp``: the kernel's threads. Without OpenMP (clang on Linux without libomp, Apple clang without
  Homebrew's libomp) the build falls back to ``-fopenmp-simd``: the ``omp simd`` loops stay vectorised,
  the ``omp parallel`` regions run on one thread.
* ``-fno-math-errno``, ``-fno-trapping-math``: lets ``sqrt``/``exp`` loops vectorise (no ``errno``, no
  floating-point trap side effects); values are unchanged (no ``-ffast-math``: no reassociation).
* ``-fno-split-loops`` (GCC): keeps loops with a data-dependent branch as one vectorised loop.
* ``-fno-semantic-interposition``: the library's own functions are called directly and may be inlined.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("gcc", "clang", "apple-clang")
ARCHES = ("x86_64", "aarch64")
# Homebrew's libomp (Apple clang has no OpenMP runtime of its own): Apple silicon, then Intel prefixes
_BREW_LIBOMP = ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp")

PROBE_SOURCE = """
#ifdef _OPENMP
#include <omp.h>
extern "C" int geoattn_probe_threads() { return omp_get_max_threads(); }
#endif
extern "C" float geoattn_probe(const float* x, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}
"""


@dataclass(frozen=True)
class Option:
    """Flags of one purpose: ``choices`` are alternatives, the first the compiler accepts is used; a
    required option has one choice and is not probed."""

    purpose: str
    choices: tuple[tuple[str, ...], ...]
    required: bool = False


@dataclass(frozen=True)
class Compiler:
    path: str
    family: str  # one of FAMILIES
    version: str  # the first line of --version


@dataclass(frozen=True)
class Target:
    """What the library is built for: ``arch`` (x86_64, aarch64); ``march``, the ``-march`` level
    (``"native"``, e.g. ``"x86-64-v3"``, or None for the compiler's baseline); ``triple``, a cross target
    (given to clang as ``--target``; a GCC cross compiler is its own target)."""

    arch: str
    march: str | None = "native"
    triple: str | None = None


@dataclass(frozen=True)
class Flags:
    """The outcome of :func:`resolve`: the flags, the architecture and SIMD level they compile for,
    whether OpenMP is on, and the optional flags the compiler rejected."""

    flags: tuple[str, ...]
    arch: str | None
    simd: str
    openmp: bool
    dropped: tuple[str, ...]


def _one(purpose: str, *flags: str) -> Option:
    return Option(purpose, (tuple(flags),))


def arch_option(family: str, target: Target) -> Option | None:
    """The instruction-set flag of ``target`` (None: the compiler's baseline)."""
    if target.march is None:
        return None
    if target.arch == "aarch64" and target.march == "native":
        choices = [("-mcpu=native",)] if family == "apple-clang" else [("-mcpu=native",), ("-march=native",)]
        return Option("instruction set", tuple(choices))
    return _one("instruction set", f"-march={target.march}")


def plan(family: str, target: Target, avx512: bool) -> list[Option]:
    """The build's flags, in order, for a compiler ``family`` and a ``target`` (``avx512``: the target
    has AVX-512, known from the compiler's macros with the instruction-set flag)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown compiler family {family!r}; expected one of {', '.join(FAMILIES)}")
    if target.arch not in ARCHES:
        raise ValueError(f"unsupported target architecture {target.arch!r}; expected one of {', '.join(ARCHES)}")
    out = [Option("optimisation", (("-O3",),), required=True)]
    if target.triple is not None and family != "gcc":
        out.insert(0, Option("cross target", ((f"--target={target.triple}",),), required=True))
    arch = arch_option(family, target)
    if arch is not None:
        out.append(arch)
    if target.arch == "x86_64" and avx512:
        out.append(_one("512-bit vectors", "-mprefer-vector-width=512"))
        if family == "gcc":
            out.append(_one("masked loop epilogues", "--param=vect-partial-vector-usage=2"))
    if family == "apple-clang":
        openmp = [("-Xclang", "-fopenmp", f"-I{p}/include", f"-L{p}/lib", f"-Wl,-rpath,{p}/lib", "-lomp")
                  for p in _BREW_LIBOMP]
    else:
        openmp = [("-fopenmp",)]
    out.append(Option("OpenMP", (*openmp, ("-fopenmp-simd",))))
    out += [_one("no errno", "-fno-math-errno"), _one("no traps", "-fno-trapping-math")]
    if family == "gcc":
        out.append(_one("unsplit loops", "-fno-split-loops"))
    out.append(_one("direct calls", "-fno-semantic-interposition"))
    out += [Option("language", (("-std=c++17",),), required=True),
            Option("shared library", (("-shared", "-fPIC"),), required=True)]
    return out


def has_openmp(flags: tuple[str, ...] | list[str]) -> bool:
    return "-fopenmp" in flags


def family_of(version_text: str) -> str:
    """The compiler family from its ``--version`` text (a compiler that is neither clang nor Apple's is
    treated as GCC-like; every optional flag is probed anyway)."""
    if "Apple clang" in version_text or "Apple LLVM" in version_text:
        return "apple-clang"
    if "clang" in version_text:
        return "clang"
    return "gcc"


def find_compiler(cxx: str | None = None) -> Compiler | str:
    """The compiler ``cxx`` (or ``$CXX``, else ``c++``, ``g++``, ``clang++``), or why there is none."""
    wanted = cxx or os.environ.get("CXX") or None
    candidates = [wanted] if wanted else ["c++", "g++", "clang++"]
    for name in candidates:
        path = shutil.which(name)
        if path is not None:
            version = _run([path, "--version"]).stdout
            if not version:
                return f"the C++ compiler {path} did not answer --version; set CXX to a working g++ or clang++"
            return Compiler(path, family_of(version), version.strip().splitlines()[0])
    if wanted:
        return f"the C++ compiler {wanted!r} (from CXX or --cxx) was not found; install it or set CXX to g++ or clang++"
    return ("no C++ compiler found: install one (Debian/Ubuntu: apt-get install g++; macOS: xcode-select --install) "
            "or set CXX to one")


def host_target() -> Target:
    """This machine, at ``-march=native`` unless ``GEOATTN_NATIVE_ARCH`` names a level (e.g. ``x86-64-v3``)."""
    march = os.environ.get("GEOATTN_NATIVE_ARCH", "").strip() or "native"
    return Target(normal_arch(platform.machine()), march)


def normal_arch(name: str) -> str:
    return {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}.get(name.lower(), name.lower())


def parse_target(text: str) -> Target:
    """``x86-64``, ``x86-64-v2``/``v3``/``v4`` (an x86-64 level at ``-march``), or a triple such as
    ``aarch64-linux-gnu`` (a cross build for that architecture at its baseline)."""
    if re.fullmatch(r"x86-64(-v[234])?", text):
        return Target("x86_64", text)
    arch = normal_arch(text.split("-")[0])
    if "-" not in text or arch not in ARCHES:
        raise ValueError(f"unknown target {text!r}: give an x86-64 level (x86-64-v3, x86-64-v4) or a target triple "
                         f"for {' or '.join(ARCHES)} (e.g. aarch64-linux-gnu)")
    return Target(arch, None, text)


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as err:
        return subprocess.CompletedProcess(cmd, 1, "", str(err))


class ProbeCache:
    """Probe results on disk (``probes.json``), keyed by the compiler and the flags; written atomically."""

    def __init__(self, directory: Path):
        self.path = directory / "probes.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def key(compiler: Compiler, kind: str, flags: list[str]) -> str:
        text = "\n".join([PROBE_SOURCE, compiler.path, compiler.version, kind, *flags])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, value) -> None:
        self.entries[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".json", delete=False) as tmp:
                json.dump(self.entries, tmp)
            os.replace(tmp.name, self.path)
        except OSError:
            pass  # an unwritable cache only costs the probes again next time


def probe(compiler: Compiler, flags: list[str], cache: ProbeCache) -> bool:
    """Whether ``compiler`` builds a tiny shared library (:data:`PROBE_SOURCE`) with ``flags`` and ``-Werror``."""
    key = cache.key(compiler, "probe", flags)
    hit = cache.get(key)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(PROBE_SOURCE)
        cmd = [compiler.path, *flags, "-Werror", "-shared", "-fPIC", str(src), "-o", str(Path(tmp) / "probe.so")]
        ok = _run(cmd, 60).returncode == 0
    cache.put(key, ok)
    return ok


def macros(compiler: Compiler, flags: list[str], cache: ProbeCache) -> set[str]:
    """The preprocessor macros ``compiler`` defines with ``flags`` (the target's instruction set)."""
    key = cache.key(compiler, "macros", flags)
    hit = cache.get(key)
    if hit is None:
        out = _run([compiler.path, *flags, "-dM", "-E", "-x", "c++", os.devnull], 60).stdout
        hit = sorted(line.split()[1] for line in out.splitlines() if line.startswith("#define "))
        cache.put(key, hit)
    return set(hit)


def simd_level(defined: set[str]) -> str:
    for macro, name in (("__AVX512F__", "AVX-512"), ("__AVX2__", "AVX2"), ("__AVX__", "AVX"), ("__SSE2__", "SSE2"),
                        ("__ARM_FEATURE_SVE", "SVE"), ("__ARM_NEON", "NEON")):
        if macro in defined:
            return name
    return "scalar"


def target_arch(defined: set[str]) -> str | None:
    if "__x86_64__" in defined:
        return "x86_64"
    if "__aarch64__" in defined:
        return "aarch64"
    return None


def choose(options: list[Option], compiler: Compiler, cache: ProbeCache,
           chosen: list[str], dropped: list[str]) -> None:
    """Append to ``chosen`` each option's flags: a required one as is, an optional one's first choice that
    builds together with the flags chosen so far (the rejected ones go to ``dropped``)."""
    for option in options:
        if option.required:
            chosen += option.choices[0]
            continue
        for choice in option.choices:
            if probe(compiler, [*chosen, *choice], cache):
                chosen += choice
                break
            dropped += choice


def resolve(compiler: Compiler, target: Target, cache: ProbeCache) -> Flags:
    """The flags :func:`plan` gives for ``compiler`` and ``target``, each optional one probed."""
    # the instruction-set flag first, alone: the target's macros (AVX-512 or not) decide the rest of the plan
    head = [o for o in plan(compiler.family, target, avx512=False) if o.purpose in ("cross target", "instruction set")]
    base: list[str] = []
    choose(head, compiler, cache, base, [])
    defined = macros(compiler, base, cache)
    chosen: list[str] = []
    dropped: list[str] = []
    choose(plan(compiler.family, target, avx512="__AVX512F__" in defined), compiler, cache, chosen, dropped)
    return Flags(tuple(chosen), target_arch(defined), simd_level(defined), has_openmp(chosen), tuple(dropped))
