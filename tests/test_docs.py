"""The README and the documentation: every Python block runs, the headline table is the generated one, the README
stays short, the results folder stays small, and every public name has reference text.

The Python blocks run in one fresh interpreter (a block may register a geometry; it must not leak into the other
tests), each file's blocks in order in one namespace, as a reader would paste them.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)

RUNNER = r'''
import json, sys, traceback
failures = []
for path, blocks in json.load(sys.stdin):
    namespace = {"__name__": "__main__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{path} (python block {i + 1})", "exec"), namespace)
        except Exception:
            failures.append(traceback.format_exc())
print("\n".join(failures))
sys.exit(1 if failures else 0)
'''


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_build" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, with pymdownx.snippets includes expanded as the site expands them."""
    return [SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(), b) for b in BLOCK.findall(path.read_text())]


def test_every_python_block_of_the_readme_and_the_docs_runs():
    import json

    files = [(str(p.relative_to(ROOT)), python_blocks(p)) for p in DOC_FILES]
    assert sum(len(b) for _, b in files) >= 10, "expected the README's and the guides' Python blocks"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(files), capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_the_snippet_runner_reports_a_failing_block():
    import json

    files = [("bad.md", ["import torch", "x = undefined_name"])]
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(files), capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "NameError" in proc.stdout


def test_readme_headline_table_is_the_generated_one():
    from benchmarks.headline import README, splice, table

    text = README.read_text()
    assert splice(text, table()) == text, "run python -m benchmarks.headline"
    assert "| `poincare` | 0.975 ± 0.006 (better)" in table()   # the positive control, from quick/results.jsonl


def test_readme_is_a_five_minute_read():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 350 and len(text.split()) <= 3000
    assert text.split("```bash\n", 1)[1].splitlines()[:2][0].startswith("scripts/bench.sh")
    assert text.split("```bash\n", 1)[1].splitlines()[1].startswith("scripts/test.sh")


def test_readme_links_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if not t.startswith(("http", "#"))]
    assert targets and all((ROOT / t).exists() for t in targets), [t for t in targets if not (ROOT / t).exists()]


def test_results_folder_keeps_one_run_per_suite():
    files = [p for p in (ROOT / "benchmarks" / "results").rglob("*") if p.is_file()]
    assert len(files) <= 80
    assert not list((ROOT / "benchmarks" / "results").rglob("*.py"))


def test_every_public_name_has_a_docstring_and_an_api_page():
    hooks = _hooks()
    assert hooks.undocumented() == []
    assert hooks.unreferenced() == []


def test_the_docstring_check_finds_a_missing_docstring(monkeypatch):
    import geoattn

    hooks = _hooks()

    def no_doc(q):
        return q

    monkeypatch.setattr(geoattn, "no_doc", no_doc, raising=False)
    monkeypatch.setattr(geoattn, "__all__", [*geoattn.__all__, "no_doc"])
    assert "geoattn.no_doc" in hooks.undocumented()
    assert "geoattn.no_doc" in hooks.unreferenced()


def test_policy_table_is_rendered_from_rules():
    from geoattn.backends.policy import RULES

    table = _hooks().policy_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == len(RULES)
    assert all(f"`{r.backend}`" in row and r.reason in row for r, row in zip(RULES, rows))


@pytest.mark.parametrize("suite", ["quick", "standard", "nanogpt-cpu", "kernels", "throughput"])
def test_results_pages_render(suite):
    page = _hooks().results_page(suite)
    assert "Command" in page or "Commands" in page
