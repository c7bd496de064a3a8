"""The native build (geoattn/backends/native/build.py, flags.py), its fallback and ``python -m geoattn doctor``.

Compilers are faked by small shell scripts (they log every call, reject chosen flags, fail the kernel's
build on demand), so the flag choice, the probe cache, the failed-build record and the one-time warning
are tested without compiling the kernel; one test builds the real kernel without OpenMP.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import geoattn
from geoattn import doctor
from geoattn.backends import policy
from geoattn.backends.native import build, flags
from geoattn.backends.native.flags import Option, ProbeCache, Target

# The flags of the build on GCC for x86-64 with AVX-512 at -march=native, in order: what the kernel's
# bit-identity checks were made with. The table must give exactly these when every probe passes.
GCC_AVX512 = ["-O3", "-march=native", "-mprefer-vector-width=512", "--param=vect-partial-vector-usage=2", "-fopenmp",
              "-fno-math-errno", "-fno-trapping-math", "-fno-split-loops", "-fno-semantic-interposition",
              "-std=c++17", "-shared", "-fPIC"]
COMMON_TAIL = ["-fno-math-errno", "-fno-trapping-math"]


def first_choices(options: list[Option]) -> list[str]:
    return [f for o in options for f in o.choices[0]]


X86, V3 = Target("x86_64"), Target("x86_64", "x86-64-v3")
ARM, ARM_CROSS = Target("aarch64"), Target("aarch64", None, "aarch64-linux-gnu")

TABLE = [
    ("gcc", X86, True, GCC_AVX512),
    ("gcc", V3, False, ["-O3", "-march=x86-64-v3", "-fopenmp", *COMMON_TAIL, "-fno-split-loops",
                        "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]),
    ("clang", X86, True, ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", *COMMON_TAIL,
                          "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]),
    ("clang", X86, False, ["-O3", "-march=native", "-fopenmp", *COMMON_TAIL, "-fno-semantic-interposition",
                           "-std=c++17", "-shared", "-fPIC"]),
    ("gcc", ARM, False, ["-O3", "-mcpu=native", "-fopenmp", *COMMON_TAIL, "-fno-split-loops",
                         "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]),
    ("gcc", ARM_CROSS, False, ["-O3", "-fopenmp", *COMMON_TAIL, "-fno-split-loops", "-fno-semantic-interposition",
                               "-std=c++17", "-shared", "-fPIC"]),
    ("clang", ARM_CROSS, False, ["--target=aarch64-linux-gnu", "-O3", "-fopenmp", *COMMON_TAIL,
                                 "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]),
    ("apple-clang", ARM, False, ["-O3", "-mcpu=native", "-Xclang", "-fopenmp", "-I/opt/homebrew/opt/libomp/include",
                                 "-L/opt/homebrew/opt/libomp/lib", "-Wl,-rpath,/opt/homebrew/opt/libomp/lib", "-lomp",
                                 *COMMON_TAIL, "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]),
]


@pytest.mark.parametrize("family,target,avx512,expected", TABLE)
def test_flag_table(family, target, avx512, expected):
    options = flags.plan(family, target, avx512)
    assert first_choices(options) == expected
    everything = [f for o in options for c in o.choices for f in c]
    if family != "gcc":  # the GCC-only flags clang and Apple clang reject
        assert "-fno-split-loops" not in everything and not any(f.startswith("--param") for f in everything)
    if target.arch == "aarch64":  # x86-only
        assert not any(f.startswith("-mprefer-vector-width") for f in everything)
    if family == "apple-clang":
        assert "-march=native" not in everything
    openmp = next(o for o in options if o.purpose == "OpenMP")
    assert openmp.choices[-1] == ("-fopenmp-simd",)  # without an OpenMP runtime: one thread, simd loops kept
    assert [o.purpose for o in options if o.required][-2:] == ["language", "shared library"]


def test_flag_table_rejects_unknown_family_and_arch():
    with pytest.raises(ValueError, match="unknown compiler family 'msvc'"):
        flags.plan("msvc", X86, False)
    with pytest.raises(ValueError, match="unsupported target architecture 'riscv64'"):
        flags.plan("gcc", Target("riscv64"), False)


@pytest.mark.parametrize("text,target", [("x86-64-v3", V3), ("x86-64-v4", Target("x86_64", "x86-64-v4")),
                                         ("aarch64-linux-gnu", ARM_CROSS),
                                         ("arm64-apple-darwin", Target("aarch64", None, "arm64-apple-darwin"))])
def test_parse_target(text, target):
    assert flags.parse_target(text) == target


@pytest.mark.parametrize("text", ["sparc-sun-solaris", "x86-64-v9", "native"])
def test_parse_target_rejects(text):
    with pytest.raises(ValueError, match="unknown target"):
        flags.parse_target(text)


@pytest.mark.parametrize("text,family", [("g++ (Debian 12.2.0-14) 12.2.0", "gcc"),
                                         ("Debian clang version 14.0.6", "clang"),
                                         ("Apple clang version 15.0.0 (clang-1500.1.0.2.5)", "apple-clang")])
def test_family_from_version(text, family):
    assert flags.family_of(text) == family


def fake_compiler(directory: Path, version: str = "fakecc (GCC) 1.0", reject: str = "", macros: str = "",
                  fail_build: bool = False) -> Path:
    """A compiler script: logs each call to ``calls.log``; fails if any argument matches the case pattern
    ``reject``; prints ``macros`` for ``-dM -E``; fails the kernel's build if ``fail_build``; else writes the
    ``-o`` file."""
    macros = macros or "#define __x86_64__ 1\\n#define __AVX512F__ 1\\n"
    script = directory / "fakecc"
    log = directory / "calls.log"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi
for a in "$@"; do
  case "$a" in {reject or "__never__"}) echo "fakecc: error: unknown argument '$a'" >&2; exit 1;; esac
done
case " $* " in *" -dM "*) printf '{macros}'; exit 0;; esac
{'case "$*" in *kernel.cpp*) echo "kernel.cpp:1:1: error: fake failure" >&2; exit 1;; esac' if fail_build else ''}
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
[ -n "$out" ] && : > "$out"
exit 0
""")
    script.chmod(0o755)
    return script


def calls(directory: Path, word: str = "") -> list[str]:
    log = directory / "calls.log"
    return [line for line in log.read_text().splitlines() if word in line] if log.exists() else []


def test_rejected_flags_are_dropped_and_probes_are_cached(tmp_path):
    cc = flags.find_compiler(str(fake_compiler(tmp_path, reject="-fno-split-loops|-fopenmp")))
    assert cc.family == "gcc"
    got = flags.resolve(cc, X86, ProbeCache(tmp_path / "cache"))
    assert list(got.flags) == ["-O3", "-march=native", "-mprefer-vector-width=512",
                               "--param=vect-partial-vector-usage=2", "-fopenmp-simd", "-fno-math-errno",
                               "-fno-trapping-math", "-fno-semantic-interposition", "-std=c++17", "-shared", "-fPIC"]
    assert got.dropped == ("-fopenmp", "-fno-split-loops")
    assert (got.simd, got.arch, got.openmp) == ("AVX-512", "x86_64", False)
    before = len(calls(tmp_path))
    again = flags.resolve(cc, X86, ProbeCache(tmp_path / "cache"))  # a new process: read from probes.json
    assert again == got and len(calls(tmp_path)) == before  # no compiler run at all
    newer = flags.find_compiler(str(fake_compiler(tmp_path, version="fakecc (GCC) 2.0", reject="-fopenmp")))
    assert "-fno-split-loops" in flags.resolve(newer, X86, ProbeCache(tmp_path / "cache")).flags  # re-probed
    assert len(calls(tmp_path)) > before


def test_without_avx512_the_vector_width_flags_are_not_used(tmp_path):
    cc = flags.find_compiler(str(fake_compiler(tmp_path, macros="#define __x86_64__ 1\\n#define __AVX2__ 1\\n")))
    got = flags.resolve(cc, V3, ProbeCache(tmp_path))
    assert got.simd == "AVX2" and "-march=x86-64-v3" in got.flags
    assert not any(f.startswith(("-mprefer-vector-width", "--param")) for f in got.flags)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty GEOATTN_CACHE, GEOATTN_NATIVE and GEOATTN_NATIVE_ARCH unset, the load result restored."""
    monkeypatch.setenv("GEOATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GEOATTN_NATIVE", raising=False)
    monkeypatch.delenv("GEOATTN_NATIVE_ARCH", raising=False)
    monkeypatch.setattr(build, "_LOADED", None)
    monkeypatch.setattr(policy, "_WARNED_FALLBACK", [False])
    return tmp_path


def test_a_failed_build_is_recorded_and_not_retried_until_source_flags_or_compiler_change(cache, monkeypatch):
    monkeypatch.setenv("CXX", str(fake_compiler(cache, fail_build=True)))
    reason = build._load()
    assert "failed to build with" in reason and "kernel.cpp:1:1: error: fake failure" in reason
    assert "Fix: install g++" in reason and "set CXX" in reason
    records = list((cache / "cache" / "native").glob("*.failed"))
    assert len(records) == 1 and "fake failure" in records[0].read_text()
    assert len(calls(cache, "kernel.cpp")) == 1
    assert build._load() == reason and len(calls(cache, "kernel.cpp")) == 1  # a later process: no retry

    monkeypatch.setenv("GEOATTN_NATIVE_ARCH", "x86-64-v3")  # other flags
    build._load()
    assert len(calls(cache, "kernel.cpp")) == 2
    monkeypatch.delenv("GEOATTN_NATIVE_ARCH")

    source = cache / "kernel.cpp"  # another source
    source.write_text(build.SOURCES[0].read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCES", [source])
    build._load()
    assert len(calls(cache, "kernel.cpp")) == 3
    build._load()
    assert len(calls(cache, "kernel.cpp")) == 3

    monkeypatch.setenv("CXX", str(fake_compiler(cache, version="fakecc (GCC) 2.0", fail_build=True)))  # another one
    build._load()
    assert len(calls(cache, "kernel.cpp")) == 4
    assert len(list((cache / "cache" / "native").glob("*.failed"))) == 4


def test_no_compiler_and_a_bad_switch_say_what_to_do(cache, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "'no-such-compiler-xyz' (from CXX or --cxx) was not found" in build._load()
    monkeypatch.setenv("GEOATTN_NATIVE", "off")
    with pytest.raises(ValueError, match="GEOATTN_NATIVE must be 0 .* or 1"):
        build._load()
    monkeypatch.setenv("GEOATTN_NATIVE", "0")
    assert build._load() == build.SWITCHED_OFF


def test_fallback_warns_once_names_the_fix_and_stays_correct(cache, monkeypatch):
    monkeypatch.setenv("CXX", str(fake_compiler(cache, fail_build=True)))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 8, generator=gen) for _ in range(3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs = {g: geoattn.attention(q, k, v, geometry=g) for g in ("poincare", "lorentz", "sphere")}
    fallbacks = [w for w in seen if "native backend is unavailable" in str(w.message)]
    assert len(fallbacks) == 1 and fallbacks[0].category is UserWarning
    text = str(fallbacks[0].message)
    assert "'poincare'" in text and "Fix: install g++" in text and "fake failure" in text
    explained = geoattn.explain_backend(q, k, v, geometry="poincare")
    assert explained.startswith("dense: auto: ") and "the native backend is unavailable on this machine" in explained
    assert "set CXX" in explained
    for g, out in outs.items():  # the fallback's results: the dense float64 reference
        ref = geoattn.attention(q.double(), k.double(), v.double(), geometry=geoattn.make_geometry(g).double(),
                                backend="dense")
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_switched_off_falls_back_without_a_warning(cache, monkeypatch):
    monkeypatch.setenv("GEOATTN_NATIVE", "0")
    q = torch.randn(1, 2, 16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        geoattn.attention(q, q, q, geometry="poincare")
    assert "unavailable" not in geoattn.explain_backend(q, q, q, geometry="poincare")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_without_openmp_the_kernel_runs_on_one_thread_with_one_note(cache, monkeypatch):
    """A compiler without OpenMP (g++ that rejects -fopenmp): the kernel is built with -fopenmp-simd, says
    so once, and its outputs and gradients equal the dense float64 reference."""
    wrapper = cache / "gxx-no-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-fopenmp" ] && exit 1; done\nexec g++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    with pytest.warns(UserWarning, match="without OpenMP .* one thread. Fix: install GCC's libgomp"):
        native = build._load()
    assert not isinstance(native, str), native
    assert not native.openmp
    monkeypatch.setattr(build, "_LOADED", native)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 40, 8, generator=gen, requires_grad=True) for _ in range(3))
    geom = geoattn.Poincare(curvature=-0.8)
    out = geoattn.attention(q, k, v, geometry=geom, is_causal=True, backend="native")
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = geoattn.attention(q64, k64, v64, geometry=geom.double(), is_causal=True, backend="dense")
    ref.square().sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, (q64.grad, k64.grad, v64.grad)):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_doctor_reports_the_build(cache, monkeypatch, capsys):
    monkeypatch.setenv("CXX", str(fake_compiler(cache)))
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    for part in ("versions:", "torch", "backends:", "native kernel:", "SIMD                 AVX-512",
                 "OpenMP               yes", f"cache                {cache / 'cache' / 'native'}",
                 "built                not built yet", "-O3 -march=native -mprefer-vector-width=512"):
        assert part in out, part
    assert "poincare: no, geometry 'poincare' has a score that is not affine" in out  # sdpa's row


def test_doctor_reports_a_failed_build(cache, monkeypatch, capsys):
    monkeypatch.setenv("CXX", str(fake_compiler(cache, fail_build=True)))
    build._load()
    assert doctor.main([]) == 0
    assert "built                no: the native kernel failed to build" in capsys.readouterr().out
    assert doctor.main(["--rebuild"]) == 0  # forgets the record, builds again (and fails again)
    assert "removed" in capsys.readouterr().out and len(calls(cache, "kernel.cpp")) == 2


def test_doctor_dry_run_exit_codes(cache, monkeypatch, capsys):
    good = fake_compiler(cache)
    assert doctor.main(["--cxx", str(good), "--target", "x86-64-v4"]) == 0
    assert "dry-run build OK" in capsys.readouterr().out
    bad_dir = cache / "bad"
    bad_dir.mkdir()
    bad = fake_compiler(bad_dir, fail_build=True)
    assert doctor.main(["--cxx", str(bad)]) == 1
    assert "kernel.cpp:1:1: error: fake failure" in capsys.readouterr().err
    # a compiler for x86-64 asked for aarch64: refused by its own macros, not "built"
    assert doctor.main(["--cxx", str(good), "--target", "aarch64-linux-gnu"]) == 1
    assert "compiles for x86_64, not for the target aarch64" in capsys.readouterr().err
    assert doctor.main(["--target", "sparc-sun-solaris"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert doctor.main(["--cxx", "no-such-compiler-xyz"]) == 2
    assert not list((cache / "cache" / "native").glob("*.so"))  # a dry run leaves no library in the cache


def test_python_m_geoattn_doctor_command_line(cache):
    run = subprocess.run([sys.executable, "-m", "geoattn", "doctor", "--target", "sparc-sun-solaris"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.returncode == 2 and "unknown target 'sparc-sun-solaris'" in run.stderr
    run = subprocess.run([sys.executable, "-m", "geoattn"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert run.returncode == 2 and "usage: python -m geoattn doctor" in run.stderr
