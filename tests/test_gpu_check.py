"""scripts/gpu-check.sh, checked without a GPU: its syntax, its steps (--dry-run) against the benchmark's own
argument parser, and that every test that touches CUDA carries the ``gpu`` marker the script selects."""
from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import kernels

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def test_syntax_and_shellcheck():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (bash -n passed)")
    run = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


def test_dry_run_steps_are_valid_and_cover_the_brief(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GPU_CHECK_OUT": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
    steps = [re.match(r"\[(.*), ≤(\d+)s\] bash -c (.*)", line) for line in run.stdout.splitlines()]
    assert all(steps) and sum(int(s.group(2)) for s in steps) <= 480  # within the 8-minute budget
    tests = [s.group(3) for s in steps if s.group(1).startswith("tests")]
    assert len(tests) == 1 and " -m gpu " in tests[0]
    seen = set()
    for s in steps:
        words = shlex.split(s.group(3))
        if "benchmarks.kernels" not in words:
            continue
        args = kernels.parser().parse_args(words[words.index("benchmarks.kernels") + 1:words.index(">")])
        assert args.device == "cuda" and args.backends == ["flex", "sdpa"]
        assert args.out == tmp_path / f"kernels-{args.dtype}-L{args.lengths[0]}"
        seen.add((args.dtype, args.sdpa_kernel, args.lengths[0]))
    assert {(d, k) for d, k, _ in seen} == {("bfloat16", "flash"), ("float32", "efficient")}
    assert max(L for _, _, L in seen) == 16384


def test_help_and_bad_option():
    assert "--dry-run" in subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    assert subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True).returncode == 2


def test_every_test_that_uses_cuda_is_marked_gpu():
    """The script selects the CUDA tests by marker (pytest -m gpu); a CUDA test without it would never run."""
    uses_cuda = re.compile(r"\.cuda\(|device=\"cuda\"|to\(\"cuda\"")
    found, unmarked = [], []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = [ast.unparse(d) for d in node.decorator_list]
                if uses_cuda.search(ast.get_source_segment(source, node)):
                    found.append(f"{path.name}::{node.name}")
                    if "pytest.mark.gpu" not in marks:
                        unmarked.append(found[-1])
    assert len(found) >= 4 and not unmarked  # test_hf, test_swap, test_models, test_backends_fused
