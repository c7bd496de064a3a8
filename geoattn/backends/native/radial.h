// Per-token terms of the radial affine kinds (the affine.h score μ(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ) on the raw
// vectors), in double, and their chain back to each token's norm n = ‖x‖ and to κ. Slots: query α 0, a 1;
// key β 0, γ 1, b 2 (the backward's per-token gradients arrive in the same slots).
//   lorentz:  a = b = σ(t)/n, α = −cosh(√c t), γ = P(t) = (cosh(√c t) − 1)/c, β = 0, with t = min(n/√E, clip/√c)
//             (c = −κ), σ = sinh(√c t)/√c: ⟨x, y⟩_L + 1/c = σ_a σ_b cos θ − cosh_a P_b − P_a for the points
//             x, y = exp_o(·/√E) of the hyperboloid (x₀ = cosh/√c, x₀y₀ = 1/c + P_a + P_b + cP_aP_b), less the
//             per-query −P_a, which cancels in the softmax. No term grows like 1/c, so float32 keeps its
//             relative precision as κ → 0 (the time coordinates themselves, x₀y₀ ≈ 1/c, would lose ε/c);
//             all tokens of a head in one simd loop (one dexpm1 per token for sinh and cosh − 1, exact near 0);
//   cosine:   a = 1/‖q‖, b = 1/‖k‖;
//   l2:       a = b = 1, β = −½‖k‖².
#pragma once

#include "terms.h"

namespace geoattn_native {

// the cosine and l2 terms of token r into its slots (term rows `stride` apart)
inline void radial_terms(int kind, double n, bool key, float* out, int64_t stride, int64_t r) {
  float* slot[3] = {out + r, out + stride + r, out + 2 * stride + r};
  const double inv = n > 0 ? 1.0 / n : 0.0;
  if (kind == kCosine) {
    if (key) *slot[0] = 0.0f, *slot[1] = 0.0f, *slot[2] = (float)inv;
    else *slot[0] = 0.0f, *slot[1] = (float)inv;
  } else {  // kL2
    if (key) *slot[0] = (float)(-0.5 * n * n), *slot[1] = 0.0f, *slot[2] = 1.0f;
    else *slot[0] = 0.0f, *slot[1] = 1.0f;
  }
}

// sinh(y)/√c, cosh y − 1 and (cosh y − 1)/c of y = √c·t (s = √c) from one dexpm1 (em = eʸ − 1:
// sinh y = em(em + 2)/(2eʸ), cosh y − 1 = em²/(2eʸ), no cancellation), or their Taylor series in y² = ct² below
// 1e-4 (error < 1e-16 relative; also c = 0, where they are t, 0, t²/2)
inline void lorentz_radial(double t, double c, double s, double& sig, double& m, double& p) {
  const double y2 = c * t * t;
  if (y2 < 1e-4) {
    sig = t * (1.0 + y2 / 6.0 + y2 * y2 / 120.0);
    p = t * t / 2.0 * (1.0 + y2 / 12.0 + y2 * y2 / 360.0);
    m = c * p;
    return;
  }
  const double em = dexpm1_nonneg(s * t), e = em + 1.0;
  sig = em * (em + 2.0) / (2.0 * e) / s, m = em * em / (2.0 * e), p = m / c;
}

// The Lorentz terms of the `rows` tokens of one head and side (one simd loop): t (clipped), σ(t) and
// P = (cosh(√c t) − 1)/c (lorentz_radial), a = b = σ/n (→ 1/√E as n → 0), α = −cosh(√c t) = −(1 + cP), γ = P;
// returns how many tokens the clip shortened.
template <bool KEY>
int64_t lorentz_terms(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, float* out,
                      int64_t stride) {
  const double c = -kappa, s = std::sqrt(c);
  float *o0 = out, *o1 = out + stride, *o2 = out + 2 * stride;
  return sum_tokens<int64_t>(norms, rows, kappa, inv_sqrt_e, clip, [&](int64_t r, double n, double t, bool cl) {
    double sig, m, p;
    lorentz_radial(t, c, s, sig, m, p);
    const double f = n > 0 ? sig / n : inv_sqrt_e;
    o0[r] = KEY ? 0.0f : (float)-(1.0 + m);
    o1[r] = KEY ? (float)p : (float)f;
    if (KEY) o2[r] = (float)f;
    return (int64_t)(cl ? 1 : 0);
  });
}

// radial_chain of the Lorentz kind for the `rows` tokens of one head and side at once: fac[r] = (∂L/∂n)/n
// (0 for a zero vector), returns Σ ∂L/∂κ. g: the tokens' slot gradients (3 rows of `rows`). σ, P and cosh are
// recomputed in double (lorentz_radial); their c-derivatives at fixed t, in closed form with no cancellation
// (Taylor series in y² = ct² below 1e-2, error < 1e-14 relative):
//   ∂σ/∂c = (t cosh − σ)/(2c) = (t³/6)(1 + y²/10 + y⁴/280 + y⁶/15120 + …),
//   ∂P/∂c = (tσ/2 − P)/c     = (t⁴/24)(1 + y²/15 + y⁴/560 + y⁶/37800 + …),   ∂cosh/∂c = tσ/2;
// and ∂σ/∂t = cosh, ∂P/∂t = σ, ∂cosh/∂t = cσ. Unclipped (t = n/√E), ∂(σ/n)/∂n = (t cosh − σ)/n² = 2c(∂σ/∂c)/n².
template <bool KEY>
double lorentz_chain(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, const float* g,
                     float* fac) {
  const double c = -kappa, s = std::sqrt(c);
  return sum_tokens<double>(norms, rows, kappa, inv_sqrt_e, clip, [&](int64_t r, double n, double t, bool cl) {
    double sig, m, p;
    lorentz_radial(t, c, s, sig, m, p);
    const double ch = 1.0 + m, y2 = c * t * t, t2 = t * t;
    const bool series = y2 < 1e-2;
    const double dsig_dc = series ? t2 * t / 6.0 * (1.0 + y2 / 10.0 + y2 * y2 / 280.0 + y2 * y2 * y2 / 15120.0)
                                  : (t * ch - sig) / (2.0 * c);
    const double dp_dc = series ? t2 * t2 / 24.0 * (1.0 + y2 / 15.0 + y2 * y2 / 560.0 + y2 * y2 * y2 / 37800.0)
                                : (t * sig / 2.0 - p) / c;
    const double g_f = KEY ? g[2 * rows + r] : g[rows + r];
    // the outer slot: γ = P of a key, α = −cosh of a query (∂L/∂cosh = −g_α)
    const double g_o = KEY ? g[rows + r] : -(double)g[r];
    const double do_dt = KEY ? sig : c * sig, do_dc = KEY ? dp_dc : t * sig / 2.0;
    const bool pos = n > 0;
    const double nn = pos ? n : 1.0;
    const double df_dn = cl ? -sig / (nn * nn) : 2.0 * c * dsig_dc / (nn * nn);
    const double dt_dn = cl ? 0.0 : inv_sqrt_e;
    const double g_norm = pos ? g_f * df_dn + g_o * do_dt * dt_dn : 0.0;
    const double dt_dc = cl ? -t / (2.0 * c) : 0.0;  // t = clip/√c
    const double df_dc = pos ? (dsig_dc + ch * dt_dc) / nn : 0.0;
    fac[r] = (float)(g_norm / nn);
    return -(g_f * df_dc + g_o * (do_dc + do_dt * dt_dc));
  });
}

// ∂L/∂n of one cosine or l2 token from the gradients g of its slots
inline double radial_chain(int kind, double n, bool key, const double g[3]) {
  if (kind == kCosine) return n > 0 ? -(key ? g[2] : g[1]) / (n * n) : 0.0;
  return key ? -g[0] * n : 0.0;  // kL2: β = −½n² (keys only)
}

}  // namespace geoattn_native
