"""Shared fixtures. geomstats is the distance oracle; importing it switches torch's default dtype to
float64 globally, so it is imported lazily and every call runs inside a float64-default block that
restores the previous default afterwards."""
from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch

import geoattn

os.environ.setdefault("GEOMSTATS_BACKEND", "pytorch")
# Hypothesis keeps its example database and a cache of module constants under .hypothesis/ in the working
# directory, whatever pytest's own cache provider does; the seeded tests (derandomize=True) need neither, so both
# go to the system's temporary directory, outside the working tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "geoattn-hypothesis"))
# The test models are tiny: one intra-op thread is faster than two (4x on a busy 2-core machine), and
# keeps timings of the suite predictable. Benchmarks choose their own thread counts.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class Geomstats:
    """Thin wrapper: geomstats manifolds, each call made with float64 as the default dtype."""

    def __init__(self) -> None:
        with float64_default():
            from geomstats.geometry.hyperboloid import Hyperboloid
            from geomstats.geometry.hypersphere import Hypersphere
            from geomstats.geometry.poincare_ball import PoincareBall
        self._classes = {"ball": PoincareBall, "hyperboloid": Hyperboloid, "sphere": Hypersphere}

    def dist(self, kind: str, dim: int, x, y):
        with float64_default():
            return self._classes[kind](dim).metric.dist(x, y)

    def exp(self, kind: str, dim: int, tangent, base):
        with float64_default():
            return self._classes[kind](dim).metric.exp(tangent, base)


@pytest.fixture(scope="session")
def geomstats():
    g = Geomstats()
    yield g
    torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True)
def _default_dtype_guard():
    """Every test starts and ends with float32 as torch's default dtype."""
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float32)


def pytest_runtest_setup(item):
    """The markers' skips, in one place: ``gpu`` without a CUDA device; ``native`` where the native kernel is
    unavailable (switched off with GEOATTN_NATIVE=0, no compiler, a failed build), with the reason; a case
    parametrized with ``backend="native"`` counts as marked."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    params = getattr(getattr(item, "callspec", None), "params", {})
    if item.get_closest_marker("native") is not None or params.get("backend") == "native":
        from geoattn.backends.native import load

        native = load()
        if isinstance(native, str):
            pytest.skip(native)


# Geometry configurations every contract test runs over: each registered geometry, each score and aggregation.
GEOMETRY_CASES = {
    "euclidean": lambda d, h: geoattn.Euclidean(num_heads=h),
    "euclidean-tau": lambda d, h: geoattn.geometry.EuclideanTau(temperature=0.7, num_heads=h),
    "poincare": lambda d, h: geoattn.Poincare(curvature=-0.7, temperature=0.8, num_heads=h),
    "poincare-midpoint": lambda d, h: geoattn.Poincare(curvature=-1.3, num_heads=h, aggregation="midpoint"),
    "l2": lambda d, h: geoattn.L2(temperature=0.8, num_heads=h),
    "lorentz": lambda d, h: geoattn.Lorentz(curvature=-0.6, temperature=1.5, num_heads=h),
    "lorentz-centroid": lambda d, h: geoattn.Lorentz(num_heads=h, aggregation="centroid"),
    "sphere-cosine": lambda d, h: geoattn.Sphere(temperature=0.3, num_heads=h),
    "sphere-geodesic": lambda d, h: geoattn.Sphere(score="geodesic", curvature=2.0, num_heads=h, aggregation="mean"),
    "metric": lambda d, h: geoattn.Metric(head_dim=d, num_heads=h, temperature=2.0),
    "metric-lowrank": lambda d, h: geoattn.Metric(head_dim=d, rank=2, num_heads=h),
    "stereographic-neg": lambda d, h: geoattn.Stereographic(curvature=-0.5, num_heads=h),
    "stereographic-pos": lambda d, h: geoattn.Stereographic(curvature=0.8, num_heads=h, aggregation="midpoint"),
    "stereographic-zero": lambda d, h: geoattn.Stereographic(curvature=0.0, num_heads=h),
}

