"""geoattn's benchmarks: the comparative suite (every geometry against Euclidean/SDPA attention on the same
backbone, with seeds, confidence intervals and Welch's t-tests; ``python -m benchmarks``) and the kernel
benchmark (``python -m benchmarks kernels`` / ``python -m benchmarks.kernels``)."""
