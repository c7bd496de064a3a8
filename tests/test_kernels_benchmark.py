"""benchmarks/kernels.py: the interleaved measurement and its table (a tiny shape; timings are not asserted)."""
import csv
import math

import pytest
import torch

import geoattn
from benchmarks import kernels


@pytest.mark.native
def test_kernel_benchmark_measures_auto_backend_and_sdpa_interleaved(tmp_path):
    rows = kernels.main(["--lengths", "32", "--heads", "2", "--head-dim", "8", "--repeats", "2",
                         "--geometries", "euclidean", "lorentz", "poincare", "sphere-cosine",
                         "--backends", "native", "sdpa", "--out", str(tmp_path)])
    got = {(r["geometry"], r["backend"]) for r in rows}
    assert got == {("euclidean", "sdpa"), ("lorentz", "native"), ("lorentz", "sdpa"), ("poincare", "native"),
                   ("sphere-cosine", "native"), ("sphere-cosine", "sdpa")}
    for r in rows:
        assert r["fwd_s"] > 0 and r["fwdbwd_s"] > 0 and math.isfinite(r["fwdbwd_ratio"])
    with open(tmp_path / "kernels.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


@pytest.mark.native
@pytest.mark.parametrize("label", ["lorentz", "sphere-cosine", "metric", "l2"])
def test_affine_geometries_are_measured_on_native_first(label):
    geom = kernels.geometries()[label](16)
    assert geom.affine
    assert kernels.backends_for(geom, 64, 0)[0] == "native"
    x = torch.randn(1, geom.num_heads, 8, 16)  # the first measured backend is the one auto picks on CPU
    assert geoattn.explain_backend(x, x, x, geometry=geom).startswith("native")
