"""Peak memory of a run: CUDA's allocator statistics on GPU, sampled process RSS on CPU.

PyTorch keeps no allocator statistics for CPU tensors, so on CPU a background thread samples the
resident set size (``/proc/self/statm``) every few milliseconds and reports the peak above the RSS
at the start of the run: a coarse figure, compared only as a ratio to Euclidean in the same suite.
"""
from __future__ import annotations

import os
import resource
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: ``.peak_mb`` after exit, and ``.kind`` ("cuda_allocated" or "cpu_rss_delta")."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device, self.interval, self.peak_mb = device, interval_s, float("nan")
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_delta"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mb = (self._peak - self._base) / 2**20
