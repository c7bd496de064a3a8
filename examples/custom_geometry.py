"""Add a geometry: attention on the product manifold H × S (hyperboloid × sphere), contract-tested by
tests/test_custom_geometry.py. Run: ``python examples/custom_geometry.py``."""
import torch

import geoattn
from geoattn.math import eps, lorentz, sphere


@geoattn.register
class HyperbolicSpherical(geoattn.CurvedGeometry):
    """``score = -(d²_L(x_H, y_H) + ‖x_S - y_S‖²) / τ`` on ``H^{m} × S^{E-m-1}``, ``m = E // 2``.

    The first ``m`` features of a query/key are a tangent vector of the hyperboloid of curvature κ < 0
    (``x_H = exp_o(q[:m])``), the rest a direction on the unit sphere (``x_S = q[m:]/‖q[m:]‖``). A product
    manifold adds the squared distances of its factors (Gu, Sala, Gunel, Ré, "Learning Mixed-curvature
    Representations in Product Spaces", ICLR 2019); here the squared Lorentzian distance
    ``d²_L = 2/κ - 2⟨x, y⟩_L`` (Law et al., ICML 2019) and the chordal ``‖x - y‖² = 2 - 2⟨x, y⟩``. Both are
    affine in an inner product, so ``score = (2/τ)(⟨x_H, y_H⟩_L + ⟨x_S, y_S⟩ + 1/|κ| - 1)`` is one dot
    product of concatenated vectors plus a constant: ``affine = True`` and it runs on SDPA.
    """

    name = "hyperspherical"
    affine = True
    curvature_sign = -1  # κ is the hyperbolic factor's curvature (stored as log|κ|, per head; default -1)

    def lift(self, q, k, scale):
        if q.shape[-1] < 2:
            raise ValueError(f"{self.name} splits each head into a hyperbolic and a spherical part; "
                             f"it needs head_dim >= 2, got {q.shape[-1]}")
        m, cd = q.shape[-1] // 2, eps.compute_dtype(q.dtype)
        kappa = self.kappa(q).view(-1, 1, 1)                                         # (H, 1, 1)
        coef = 2 * self.inverse_temperature(q, scale).view(-1, 1, 1)                 # 2/τ, (H, 1, 1)
        xh, yh = lorentz.expmap0(q[..., :m].to(cd), kappa), lorentz.expmap0(k[..., :m].to(cd), kappa)
        xs, ys = sphere.normalize(q[..., m:].to(cd), q.dtype), sphere.normalize(k[..., m:].to(cd), k.dtype)
        q_vec = coef * torch.cat([-xh[..., :1], xh[..., 1:], xs], dim=-1)            # (B, H, L, E+1)
        q_const = (coef * (-1 / kappa - 1)).squeeze(-1).expand(q_vec.shape[:-1])     # (B, H, L)
        return geoattn.Lifted(q_vec, torch.cat([yh, ys], dim=-1), q_terms=(q_const,))


if __name__ == "__main__":
    q, k, v = (torch.randn(2, 4, 32, 16, dtype=torch.float64) for _ in range(3))
    geometry = geoattn.make_geometry("hyperspherical", curvature=-0.5, num_heads=4, learnable=True).double()
    dense = geoattn.attention(q, k, v, geometry=geometry, backend="dense", is_causal=True)
    fast = geoattn.attention(q, k, v, geometry=geometry, is_causal=True)   # auto → sdpa (affine)
    print(f"{geometry}\nmax |sdpa - dense| = {(fast - dense).abs().max():.1e}")
