"""MkDocs hooks: pages generated from the code and the committed results, and the docstring check.

- ``<!-- policy-table -->``: the ``auto`` backend's decision table, rendered from ``geoattn.backends.policy.RULES``
  (each rule's condition is the source of its lambda, its backend and reason the rule's own fields).
- ``<!-- headline-table -->``: the README's headline table (:func:`benchmarks.headline.table`).
- ``<!-- results: NAME -->``: a results page from ``benchmarks/results/NAME/`` (its README, its tables, its plots).
- ``<!-- kernels-table -->``, ``<!-- throughput-table -->``: summaries of the kernel and throughput runs.
- The build fails (``PluginError``) when a public name has no docstring or a name of ``geoattn.__all__`` (or of
  ``geoattn.models``, ``geoattn.nn``, ``geoattn.integrations``) is on no API reference page:
  :func:`undocumented` and :func:`unreferenced`, which ``tests/test_docs.py`` runs too.
"""
from __future__ import annotations

import ast
import csv
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = ROOT / "docs" / "reference"
MODULES = ("geoattn", "geoattn.models", "geoattn.nn", "geoattn.integrations", "geoattn.integrations.hf")
LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|#)[^)]+\)")
MARKER = re.compile(r"<!-- (policy-table|headline-table|kernels-table|throughput-table|results: ([\w-]+)) -->")


# ---------------------------------------------------------------- the docstring check

def _public(module: str) -> list[str]:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is not None:
        return list(names)
    return [n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", None) == module]


def _members(cls: type) -> list[tuple[str, object]]:
    """Public functions and properties defined in ``cls`` itself (inherited ones are checked on their class)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, getattr(cls, name) if not isinstance(value, property) else value))
    return out


def undocumented() -> list[str]:
    """Public names without a docstring (an override inherits its parent's, as ``inspect.getdoc`` reads it)."""
    missing = []
    for module in MODULES:
        mod = importlib.import_module(module)
        if not inspect.getdoc(mod):
            missing.append(module)
        for name in _public(module):
            obj = getattr(mod, name)
            if inspect.ismodule(obj):
                continue
            if not inspect.getdoc(obj) or (inspect.isclass(obj) and not obj.__doc__):
                missing.append(f"{module}.{name}")
            if inspect.isclass(obj) and obj.__module__.startswith("geoattn"):
                missing += [f"{module}.{name}.{m}" for m, v in _members(obj) if not inspect.getdoc(v)]
    return sorted(set(missing))


def unreferenced(reference: Path = REFERENCE) -> list[str]:
    """Names of the public modules' ``__all__`` that no ``::: path`` directive of the reference pages renders."""
    text = "\n".join(p.read_text() for p in sorted(reference.glob("*.md")))
    rendered = set(re.findall(r"^::: ([\w.]+)", text, flags=re.M))
    missing = []
    for module in MODULES:
        for name in _public(module):
            obj = getattr(importlib.import_module(module), name)
            home = getattr(obj, "__module__", module)
            if module in rendered or f"{module}.{name}" in rendered or f"{home}.{name}" in rendered:
                continue
            if any(m in rendered and name in _public(m) for m in MODULES):
                continue
            missing.append(f"{module}.{name}")
    return missing


# ---------------------------------------------------------------- generated tables

def policy_table() -> str:
    """``auto``'s decision table from ``RULES``: the condition is the source of each rule's lambda."""
    from geoattn.backends import policy

    tree = ast.parse(Path(policy.__file__).read_text())
    conditions = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and getattr(
                node.targets[0] if isinstance(node, ast.Assign) else node.target, "id", None) == "RULES":
            conditions = [ast.unparse(call.args[0].body) for call in node.value.elts]
    if len(conditions) != len(policy.RULES):
        raise ValueError("could not read the conditions of geoattn.backends.policy.RULES from its source")
    lines = ["| # | condition (`c` is the call; first match wins) | backend | why |", "|---|---|---|---|"]
    for i, (cond, rule) in enumerate(zip(conditions, policy.RULES), 1):
        lines.append(f"| {i} | `{cond}` | `{rule.backend}` | {rule.reason} |")
    return "\n".join(lines) + "\n"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def kernels_table() -> str:
    """Forward and forward+backward time and peak memory against SDPA, from ``benchmarks/results/kernels/``."""
    times = _csv(RESULTS / "kernels" / "kernels.csv")
    peak = {(r["geometry"], r["backend"]): r for r in _csv(RESULTS / "kernels" / "memory" / "kernels.csv")}
    lines = [f"| geometry | backend | fwd × SDPA (L = {times[0]['L']}) | fwd+bwd × SDPA | peak memory × SDPA "
             f"(L = {next(iter(peak.values()))['L']}) |", "|---|---|---|---|---|"]
    for r in times:
        m = peak.get((r["geometry"], r["backend"]))
        mem = f"{float(m['mem_ratio']):.2f}" if m else "–"
        lines.append(f"| `{r['geometry']}` | `{r['backend']}` | {float(r['fwd_ratio']):.2f} "
                     f"| {float(r['fwdbwd_ratio']):.2f} | {mem} |")
    return "\n".join(lines) + "\n"


def throughput_table() -> str:
    """Training steps/s × Euclidean (median of the paired rounds, 95% interval) per shape and thread count."""
    runs = [r for shape in ("quick", "medium") for r in _csv(RESULTS / "throughput" / shape / "throughput.csv")]
    columns = sorted({(r["shape"], r["threads"]) for r in runs}, key=lambda c: (c[0] != "quick", c[1]))
    cells = {(r["geometry"], r["shape"], r["threads"]): r for r in runs}
    geometries = list(dict.fromkeys(r["geometry"] for r in runs))
    lines = ["| geometry | " + " | ".join(f"{s}, {t} thread{'s' if t != '1' else ''}" for s, t in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for g in geometries:
        row = []
        for s, t in columns:
            c = cells.get((g, s, t))
            row.append(f"{float(c['vs_euclidean']):.3f} [{float(c['vs_euclidean_low']):.3f}, "
                       f"{float(c['vs_euclidean_high']):.3f}]" if c else "–")
        lines.append(f"| `{g}` | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def results_page(name: str) -> str:
    """A results folder as a page: its README (links to files dropped), its Markdown tables, its plots."""
    folder = RESULTS / name
    if not folder.is_dir():
        raise ValueError(f"no results folder {folder}")
    readme = (folder / "README.md").read_text().split("\n", 1)[1] if (folder / "README.md").exists() else ""
    parts = [LINK.sub(r"\1", readme).strip()]
    for table in sorted(folder.rglob("*.md")):
        if table.name != "README.md":
            title = str(table.relative_to(folder))
            parts.append(f"## Table: `{title}`\n\n" + LINK.sub(r"\1", table.read_text()).strip())
    plots = sorted(folder.rglob("*.png"))
    if plots:
        parts.append("## Plots")
    for png in plots:
        rel = png.relative_to(RESULTS)
        parts.append(f"![{rel}](img/{rel.as_posix()})")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- MkDocs events

def _render(match: re.Match) -> str:
    kind = match.group(1)
    if kind == "policy-table":
        return policy_table()
    if kind == "headline-table":
        from benchmarks.headline import table
        return table()
    if kind == "kernels-table":
        return kernels_table()
    if kind == "throughput-table":
        return throughput_table()
    return results_page(match.group(2))


def on_files(files, config):
    """Add the committed results' plots to the site under ``results/img/``."""
    from mkdocs.structure.files import File

    for png in sorted(RESULTS.rglob("*.png")):
        uri = f"results/img/{png.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(_render, markdown)


def on_pre_build(config):
    from mkdocs.exceptions import PluginError

    problems = [f"no docstring: {n}" for n in undocumented()] + [f"on no API page: {n}" for n in unreferenced()]
    if problems:
        raise PluginError("public names need reference text:\n  " + "\n  ".join(problems))
