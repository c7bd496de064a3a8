"""The results log: one JSON line per finished run, appended atomically.

Crash safety: a record is serialised to one ``bytes`` line and written with a single ``os.write`` on a
descriptor opened with ``O_APPEND``, then ``fsync``-ed, so a finished run is on disk before the next
starts. A process killed mid-write can leave at most a truncated *last* line: :func:`read_log` skips
(and reports) any line that does not parse, and :func:`append_record` starts a new line first when the
file does not end with a newline, so a truncated line never swallows the next record.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any


def run_key(task: str, geometry: str, seed: int, config: dict[str, Any]) -> str:
    """A stable id of a run: sha256 of its task, geometry, seed and full configuration."""
    blob = json.dumps({"task": task, "geometry": geometry, "seed": seed, "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line (single write + fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, allow_nan=True) + "\n").encode()
    if "\n" in line[:-1].decode():
        raise ValueError("a results record must serialise to a single line")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":  # a truncated last line: start a fresh one
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: str | Path, warn: bool = True) -> tuple[list[dict[str, Any]], list[int]]:
    """All complete records of the log and the line numbers that were skipped as unreadable."""
    path = Path(path)
    if not path.exists():
        return [], []
    records, bad = [], []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError("not a run record")
        except ValueError:
            bad.append(lineno)
            continue
        records.append(rec)
    if bad and warn:
        warnings.warn(
            f"results log {str(path)!r}: skipped {len(bad)} unreadable line(s) {bad[:5]} (a run killed mid-write); "
            "those runs will be re-run", stacklevel=2,
        )
    return records, bad


def finished_keys(path: str | Path) -> set[str]:
    records, _ = read_log(path)
    return {r["key"] for r in records}
