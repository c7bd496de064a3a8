"""Add a geometry: attention on the product manifold H × S (hyperboloid × sphere), contract-tested by
tests/test_custom_geometry.py. Run: ``python examples/custom_geometry.py``."""
import math

import torch

import geoattn
from geoattn.math import eps, lorentz, sphere


@geoattn.register
class HyperbolicSpherical(geoattn.CurvedGeometry):
    """``score = -√E·(d²_L(x_H, y_H) + ρ²‖x_S - y_S‖²)/(2τ)`` on ``H^m × S^{E-m-1}``, ``m = E // 2``, ``ρ² = (E-m)/E``.

    The scale rule of every geometry (:mod:`geoattn.geometry.base`): ``√E·sim(u)/τ`` of ``u = q/√E``, sim = -½d².
    ``u[:m]`` is a tangent vector of the hyperboloid of curvature κ < 0 (``x_H = exp_o(u[:m])``, clipped to
    ``√|κ|‖u[:m]‖ ≤ clip_radius``, counted and warned about); ``u[m:]`` gives a direction ``x_S`` on the sphere of
    radius ρ, the norm of ``u[m:]`` for unit-variance features. A product manifold adds its factors' squared
    distances (Gu, Sala, Gunel, Ré, ICLR 2019): ``d²_L = 2/κ - 2⟨x, y⟩_L`` (Law et al., ICML 2019) and
    ``ρ²(2 - 2⟨x_S, y_S⟩)``, so ``score = (√E/τ)(⟨x_H, y_H⟩_L + ρ²⟨x_S, y_S⟩ + 1/|κ| - ρ²)`` is affine: one dot
    product of concatenated vectors plus a constant, and it runs on SDPA."""

    name = "hyperspherical"
    affine = True
    curvature_sign = -1  # κ is the hyperbolic factor's curvature (stored as log|κ|, per head; default -1)
    default_clip = 4.0   # as Lorentz's: float32 keeps the affine form's nearest-neighbour order up to √|κ|‖u‖ ≈ 4
    radius_per_clip = 1.0  # exp_o maps ‖u‖ to hyperbolic distance ‖u‖

    def lift(self, q, k, scale):
        E = q.shape[-1]
        if E < 2:
            raise ValueError(f"{self.name} splits a head into hyperbolic and spherical parts: head_dim >= 2, got {E}")
        m, cd, rho2, kappa = E // 2, eps.compute_dtype(q.dtype), (E - E // 2) / E, self.kappa(q)
        coef = math.sqrt(E) * self.inverse_temperature(q, scale).view(-1, 1, 1)        # √E/τ, (H, 1, 1)
        def points(x):  # hyperboloid point of the clipped u[:m] = x[:m]/√E (head_dim=E), direction of x[m:]
            u = self.tangent(x[..., :m].to(cd), kappa, x.dtype, head_dim=E)
            return lorentz.expmap0(u, kappa.view(-1, 1, 1), clip=None), sphere.normalize(x[..., m:].to(cd), x.dtype)
        (xh, xs), (yh, ys) = points(q), points(k)
        q_vec = coef * torch.cat([-xh[..., :1], xh[..., 1:], rho2 * xs], dim=-1)       # (B, H, L, E+1)
        q_const = (coef * (-1 / kappa.view(-1, 1, 1) - rho2)).squeeze(-1).expand(q_vec.shape[:-1])
        return geoattn.Lifted(q_vec, torch.cat([yh, ys], dim=-1), q_terms=(q_const,))


if __name__ == "__main__":
    q, k, v = (torch.randn(2, 4, 32, 16, dtype=torch.float64) for _ in range(3))
    geometry = geoattn.make_geometry("hyperspherical", curvature=-0.5, num_heads=4, learnable=True).double()
    dense = geoattn.attention(q, k, v, geometry=geometry, backend="dense", is_causal=True)
    fast = geoattn.attention(q, k, v, geometry=geometry, is_causal=True)   # auto → sdpa (affine)
    print(f"{geometry}\nmax |sdpa - dense| = {(fast - dense).abs().max():.1e}")
