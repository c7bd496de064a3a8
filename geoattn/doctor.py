"""``python -m geoattn doctor``: what geoattn can run here, and why not (as ``python -m torch.utils.collect_env``).

It prints the versions (geoattn, torch, Python), which backends can run a CPU float32 call of a
non-affine (Poincaré) and an affine (Lorentz) geometry and why any cannot, and the native kernel's
build: the compiler, the flags (and those the compiler rejected), the SIMD level, OpenMP, the cache and
whether the library is built. It compiles nothing unless asked:

    python -m geoattn doctor                        # report (probes flags on first use; builds nothing)
    python -m geoattn doctor --rebuild              # forget cached probes and failed builds, build, report
    python -m geoattn doctor --cxx clang++          # dry-run: build the kernel with clang++, load nothing
    python -m geoattn doctor --cxx aarch64-linux-gnu-g++ --target aarch64-linux-gnu
    python -m geoattn doctor --target x86-64-v3     # AVX2-only x86-64

A dry run (``--cxx`` or ``--target``) compiles the kernel into a temporary directory and exits 1 with
the compiler's error if that fails (2 for an unknown target or compiler). To run the kernel itself at
another x86-64 level, set ``GEOATTN_NATIVE_ARCH`` (e.g. ``x86-64-v3``) before the first call.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from .backends import policy
from .backends.native import build
from .backends.native.flags import parse_target
from .call import prepare_call


def versions() -> list[tuple[str, str]]:
    from . import __version__

    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    return [("geoattn", f"{__version__} ({Path(__file__).parent})"), ("torch", torch.__version__),
            ("CUDA", str(cuda)), ("Python", platform.python_version()),
            ("platform", f"{platform.system()} {platform.machine()}, {cpu_model()}"),
            ("threads", f"{torch.get_num_threads()} (torch.get_num_threads)")]


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def backends() -> list[tuple[str, str]]:
    """Per backend: whether it runs a small CPU float32 call of Poincaré and of Lorentz, else why not (the
    native backend's row comes from its build, so no compiler runs here)."""
    q = torch.randn(1, 1, 16, 8)
    rows = []
    for name in policy.available_backends()[1:]:
        if name == "native":
            rows.append((name, native_state()[1]))
            continue
        verdicts = []
        for geometry in ("poincare", "lorentz"):
            reason = policy.unsupported(prepare_call(q, q, q, geometry), name)
            verdicts.append(f"{geometry}: {'yes' if reason is None else 'no, ' + reason}")
        rows.append((name, "; ".join(verdicts)))
    return rows


def native_state() -> tuple[build.Plan | None, str]:
    """The native build's plan for this machine (None without a compiler) and its state, in words."""
    try:
        on = build.switched_on()
    except ValueError as err:
        return None, f"no: {err}"
    if not on:
        return None, f"no: {build.SWITCHED_OFF}"
    p = build.plan()
    if isinstance(p, str):
        return None, f"no: {p}"
    if p.library.exists():
        threads = "" if p.flags.openmp else f" without OpenMP (one thread; {build.openmp_fix(p.compiler.family)})"
        return p, "yes: built" + threads
    if p.failure_record.exists():
        return p, "no: " + build.failure_reason(p, p.failure_record.read_text())
    return p, "not built yet: it builds on the first native call, or with `python -m geoattn doctor --rebuild`"


def describe_plan(p: build.Plan) -> list[tuple[str, str]]:
    target = f"{p.target.arch}, " + (f"-march={p.target.march}" if p.target.march else "the compiler's baseline")
    if p.target.triple:
        target += f", triple {p.target.triple}"
    return [("compiler", f"{p.compiler.path} ({p.compiler.family}: {p.compiler.version})"), ("target", target),
            ("flags", " ".join(p.flags.flags)), ("rejected", " ".join(p.flags.dropped) or "none"),
            ("SIMD", p.flags.simd), ("OpenMP", "yes" if p.flags.openmp else
                                     f"no, one thread ({build.openmp_fix(p.compiler.family)})")]


def report(out=None) -> None:
    out = out or sys.stdout
    p, state = native_state()
    sections = [("versions", versions()), ("backends", backends())]
    native = [("GEOATTN_NATIVE", os.environ.get("GEOATTN_NATIVE", "unset (on)")),
              ("GEOATTN_NATIVE_ARCH", os.environ.get("GEOATTN_NATIVE_ARCH", "unset (native)")),
              ("cache", str(build.cache_dir()))]
    if p is not None:
        native += [*describe_plan(p), ("library", str(p.library))]
    native.append(("built", state))
    sections.append(("native kernel", native))
    for title, rows in sections:
        print(f"{title}:", file=out)
        for key, value in rows:
            print(f"  {key:<20} {value}", file=out)


def dry_run(cxx: str | None, target: str | None, out=None, err=None) -> int:
    """Build the kernel with ``cxx`` for ``target`` into a temporary directory: 0 if it compiles, 1 with the
    compiler's error if not, 2 if the compiler or the target is unknown."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        t = parse_target(target) if target else None
    except ValueError as e:
        print(f"error: {e}", file=err)
        return 2
    p = build.plan(cxx, t)
    if isinstance(p, str):
        print(f"error: {p}", file=err)
        return 2
    for key, value in describe_plan(p):
        print(f"  {key:<20} {value}", file=out)
    with tempfile.TemporaryDirectory() as tmp:
        error = build.compile_library(p, Path(tmp) / "geoattn_native.so")
    if error is not None:
        print(f"dry-run build FAILED with {p.compiler.path}:\n{error}", file=err)
        return 1
    print(f"dry-run build OK: {p.compiler.path} compiles the native kernel for {p.flags.arch} ({p.flags.simd})",
          file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoattn doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--cxx", help="dry-run the native build with this C++ compiler")
    parser.add_argument("--target", help="dry-run the native build for this target: x86-64-v3, x86-64-v4 or a triple "
                                         "such as aarch64-linux-gnu")
    parser.add_argument("--rebuild", action="store_true",
                        help="forget cached flag probes and failed builds, then build the native kernel")
    args = parser.parse_args(argv)
    if args.cxx or args.target:
        return dry_run(args.cxx, args.target)
    if args.rebuild:
        for f in build.clear():
            print(f"removed {f}")
        native = build.load()
        print(f"build: {'OK, ' + str(native.path) if not isinstance(native, str) else 'FAILED: ' + native}\n")
    report()
    return 0
