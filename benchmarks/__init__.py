"""geoattn benchmarks (kernels: ``python -m benchmarks.kernels``)."""
