"""Loading and validating the benchmark's data files (real data, copied into ``benchmarks/data/``).

Every loader raises :class:`DataError` (a ``ValueError``) naming the file, the problem and the fix, so a
missing or malformed ``--data`` file stops the run before any training starts.
"""
from __future__ import annotations

import gzip
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHAKESPEARE = DATA_DIR / "tinyshakespeare" / "input.txt"
MAMMAL_CLOSURE = DATA_DIR / "wordnet" / "mammal_closure.tsv"
NOUN_CLOSURE = DATA_DIR / "wordnet" / "noun_closure.tsv.gz"  # Nickel & Kiela's Table 1: 82,115 synsets


class DataError(ValueError):
    """A data file is missing or does not have the expected format."""


def _read_text(path: Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{what} file {str(path)!r} does not exist (or is not a file); pass an existing file with "
            f"--data, or omit --data to use the bundled copy under {DATA_DIR}"
        )
    try:
        raw = path.read_bytes()
        return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError) as err:
        raise DataError(f"{what} file {str(path)!r} looks gzip-compressed but does not decompress ({err}); pass an "
                        "intact .gz file or the plain text") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{what} file {str(path)!r} is not UTF-8 text ({err}); pass a UTF-8 text file") from None


def load_text(path: str | Path = SHAKESPEARE, min_chars: int = 1000) -> str:
    """A character-level corpus (Tiny Shakespeare format: plain UTF-8 text, lines of a play)."""
    text = _read_text(Path(path), "text corpus")
    if "\x00" in text:
        raise DataError(f"text corpus {str(path)!r} contains NUL bytes: it looks binary; pass a plain text file")
    if len(text) < min_chars:
        raise DataError(
            f"text corpus {str(path)!r} has {len(text)} characters, fewer than the {min_chars} this task needs "
            "for its 90/10 split; pass a longer text file"
        )
    return text


def load_closure(path: str | Path = MAMMAL_CLOSURE) -> list[tuple[str, str]]:
    """``child<TAB>ancestor`` pairs of the transitive closure of a hierarchy (mammal closure format; a ``.gz``
    file is decompressed). A forest (several roots) is accepted: each node's ancestors are its closure pairs.

    Checked: two non-empty tab-separated fields per line, no self-pairs, no cycles, transitively closed. Tasks
    that need more say so themselves (``wordnet-hierarchy`` needs a connected hierarchy for tree distances).
    """
    text = _read_text(Path(path), "hierarchy closure")
    pairs: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(
                f"hierarchy closure {str(path)!r}, line {lineno}: expected 'child<TAB>ancestor', got {line[:80]!r}; "
                "fix the line (two non-empty fields separated by one tab)"
            )
        child, anc = fields[0].strip(), fields[1].strip()
        if child == anc:
            raise DataError(f"hierarchy closure {str(path)!r}, line {lineno}: {child!r} is its own ancestor; "
                            "remove the line")
        pairs.append((child, anc))
    if not pairs:
        raise DataError(f"hierarchy closure {str(path)!r} has no pairs; pass a non-empty child<TAB>ancestor file")
    ancestors: dict[str, set[str]] = {}
    for child, anc in pairs:
        ancestors.setdefault(child, set()).add(anc)
        ancestors.setdefault(anc, set())
    for child, ancs in ancestors.items():
        for anc in ancs:
            if child in ancestors[anc]:
                raise DataError(
                    f"hierarchy closure {str(path)!r} has a cycle: {child!r} and {anc!r} are ancestors of each other; "
                    "pass an acyclic hierarchy"
                )
            missing = ancestors[anc] - ancs
            if missing:
                raise DataError(
                    f"hierarchy closure {str(path)!r} is not transitively closed: {child!r} -> {anc!r} -> "
                    f"{sorted(missing)[0]!r} but the pair ({child!r}, {sorted(missing)[0]!r}) is missing; "
                    "pass the full transitive closure"
                )
    return pairs


def restrict_to_subtree(pairs: list[tuple[str, str]], root: str | None) -> list[tuple[str, str]]:
    """The closure of the subtree under ``root`` (``root`` and its descendants); ``None`` keeps every pair.

    A closure of a subtree is again a transitive closure (with one root), so the same checks hold for it.
    """
    if root is None:
        return pairs
    below = {child for child, anc in pairs if anc == root}
    if not below:
        nodes = sorted({n for p in pairs for n in p})
        raise DataError(f"subtree root {root!r} has no descendants in the closure ({len(nodes)} nodes); pick an inner "
                        f"node, e.g. {sorted({a for _, a in pairs})[:3]}")
    keep = below | {root}
    return [(child, anc) for child, anc in pairs if child in keep and anc in keep]
