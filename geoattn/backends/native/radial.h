// Per-token terms of the radial affine kinds (the affine.h score μ(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ) on the raw
// vectors), in double, and their chain back to each token's norm n = ‖x‖ and to κ. Slots: query α 0, a 1;
// key β 0, γ 1, b 2 (the backward's per-token gradients arrive in the same slots); Lorentz keeps σ and
// cosh(√c t) in slots 3 and 4 for the backward.
//   lorentz:  a = b = σ(t)/n, α = −x₀, γ = x₀, with t = min(n/√E, clip/√c) (c = −κ), σ = sinh(√c t)/√c,
//             x₀ = cosh(√c t)/√c: the spatial part and time coordinate of exp_o(x/√E) on the hyperboloid;
//             all tokens of a head in one simd loop (one dexpm1 per token for sinh and cosh, exact near 0);
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

// The Lorentz terms of the `rows` tokens of one head and side (one simd loop): t (clipped), σ(t), cosh(√c t)
// from one dexpm1, x₀ = cosh/√c, a = b = σ/n (→ 1/√E as n → 0); returns how many tokens the clip shortened
template <bool KEY>
int64_t lorentz_terms(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, float* out,
                      int64_t stride) {
  const double c = -kappa, s = std::sqrt(c);
  float *o0 = out, *o1 = out + stride, *o2 = out + 2 * stride, *o3 = out + 3 * stride, *o4 = out + 4 * stride;
  int64_t clipped = 0;
#pragma omp simd reduction(+ : clipped)
  for (int64_t r = 0; r < rows; ++r) {
    const double n = norms[r];
    bool cl;
    const double t = tangent_norm(n, kappa, inv_sqrt_e, clip, cl);
    const double em = dexpm1_nonneg(s * t), e = em + 1.0;
    const double sig = em * (em + 2.0) / (2.0 * e) / s, ch = 1.0 + em * em / (2.0 * e);
    const double x0 = ch / s, f = n > 0 ? sig / n : inv_sqrt_e;
    o0[r] = KEY ? 0.0f : (float)-x0;
    o1[r] = KEY ? (float)x0 : (float)f;
    if (KEY) o2[r] = (float)f;
    o3[r] = (float)sig, o4[r] = (float)ch;
    clipped += cl ? 1 : 0;
  }
  return clipped;
}

// radial_chain of the Lorentz kind for the `rows` tokens of one head and side at once: fac[r] = (∂L/∂n)/n
// (0 for a zero vector), returns Σ ∂L/∂κ. g: the tokens' slot gradients (3 rows of `rows`), kept: slot 3 (σ)
// of the forward's terms, slot 4 (cosh) `stride` after it.
template <bool KEY>
double lorentz_chain(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, const float* g,
                     const float* kept, int64_t stride, float* fac) {
  const double c = -kappa, s = std::sqrt(c);
  double g_kappa = 0.0;
#pragma omp simd reduction(+ : g_kappa)
  for (int64_t r = 0; r < rows; ++r) {
    const double n = norms[r];
    bool cl;
    const double t = tangent_norm(n, kappa, inv_sqrt_e, clip, cl);
    const double sig = kept[r], ch = kept[stride + r], x0 = ch / s;
    const double g_f = KEY ? g[2 * rows + r] : g[rows + r];
    const double g_x0 = KEY ? g[rows + r] : -(double)g[r];
    const double dt_dn = cl ? 0.0 : inv_sqrt_e;
    const double ssig = s * sig;
    const bool pos = n > 0;
    const double nn = pos ? n : 1.0;
    const double g_norm = pos ? g_f * (ch * dt_dn / nn - sig / (nn * nn)) + g_x0 * ssig * dt_dn : 0.0;
    const double ct2 = c * t * t;
    const double dsig_dc = ct2 < 1e-4 ? t * t * t / 6.0 * (1.0 + ct2 / 10.0) : (t * ch - sig) / (2.0 * c);
    const double dx0_dc = (t * sig - x0 / s) / (2.0 * s);
    const double dt_dc = cl ? -t / (2.0 * c) : 0.0;
    const double df_dc = pos ? (dsig_dc + ch * dt_dc) / nn : 0.0;
    g_kappa += -(g_f * df_dc + g_x0 * (dx0_dc + ssig * dt_dc));
    fac[r] = (float)(g_norm / nn);
  }
  return g_kappa;
}

// ∂L/∂n of one cosine or l2 token from the gradients g of its slots
inline double radial_chain(int kind, double n, bool key, const double g[3]) {
  if (kind == kCosine) return n > 0 ? -(key ? g[2] : g[1]) / (n * n) : 0.0;
  return key ? -g[0] * n : 0.0;  // kL2: β = −½n² (keys only)
}

}  // namespace geoattn_native
