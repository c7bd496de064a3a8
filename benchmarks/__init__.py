"""geoattn's comparative benchmark suite: every geometry against Euclidean (SDPA) attention on the same
backbone, with seeds, confidence intervals and Welch's t-tests. Entry point: ``python -m benchmarks``."""
