"""Peak memory of a CPU call, from the kernel's resident-set high-water mark.

Method: glibc is told (``mallopt``) to serve every allocation ≥ 64 KiB with its own ``mmap`` and to
return it on ``free``, so the resident set tracks live tensor memory; ``/proc/self/clear_refs``
(writing ``5``) resets the high-water mark ``VmHWM``; the peak of a call is ``VmHWM`` after it minus
``VmRSS`` before it. This counts every allocation (eager ops, compiled kernels, SDPA's internal
buffers, autograd's saved tensors) the same way, which torch's CPU allocator has no counters for.
Linux only; elsewhere :func:`peak_bytes` returns ``None``.
"""
from __future__ import annotations

import ctypes
import re
from typing import Callable

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_configured = False


def configure() -> bool:
    """Switch glibc to one mmap per allocation ≥ 64 KiB (for the rest of the process); False if unavailable."""
    global _configured
    if not _configured:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 16)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _configured = True
        except OSError:
            return False
    return True


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def peak_bytes(fn: Callable[[], object]) -> int | None:
    """Extra resident bytes at the peak of ``fn()`` (its result is dropped before returning)."""
    if not configure():
        return None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    result = fn()
    peak = _status("VmHWM") - base
    del result
    return max(0, peak)
