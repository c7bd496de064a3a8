// Per-token terms of the radial affine kinds (the affine.h score μ(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ) on the raw
// vectors), in double, and their chain back to each token's norm n = ‖x‖ and to κ. Slots: query α 0, a 1;
// key β 0, γ 1, b 2 (the backward's per-token gradients arrive in the same slots); Lorentz keeps σ and
// cosh(√c t) in slots 3 and 4 for the backward (one expm1 per token and call).
//   lorentz:  a = b = σ(t)/n, α = −x₀, γ = x₀, with t = min(n/√E, clip/√c) (c = −κ), σ = sinh(√c t)/√c,
//             x₀ = cosh(√c t)/√c: the spatial part and time coordinate of exp_o(x/√E) on the hyperboloid;
//   cosine:   a = 1/‖q‖, b = 1/‖k‖;
//   l2:       a = b = 1, β = −½‖k‖².
#pragma once

#include "terms.h"

namespace geoattn_native {

struct LorentzToken {
  double c, s, t, sig, ch, x0, f;
  bool clipped;
};

// sig, ch < 0: compute them (forward); else the values the forward kept (backward)
inline LorentzToken lorentz_token(double n, double kappa, double inv_sqrt_e, double clip, double sig = -1,
                                  double ch = -1) {
  LorentzToken L;
  L.c = -kappa, L.s = std::sqrt(L.c);
  L.t = tangent_norm(n, kappa, inv_sqrt_e, clip, L.clipped);
  if (ch < 0) {
    const double em = std::expm1(L.s * L.t), e = em + 1.0;  // one expm1 for sinh and cosh, exact near 0
    sig = em * (em + 2.0) / (2.0 * e) / L.s, ch = 1.0 + em * em / (2.0 * e);
  }
  L.sig = sig, L.ch = ch, L.x0 = ch / L.s;
  L.f = n > 0 ? L.sig / n : inv_sqrt_e;  // σ(t)/n → 1/√E as n → 0
  return L;
}

// the terms of token r into its slots (term rows `stride` apart); returns whether it was clipped
inline bool radial_terms(int kind, double n, double kappa, double inv_sqrt_e, double clip, bool key, float* out,
                         int64_t stride, int64_t r) {
  float* slot[3] = {out + r, out + stride + r, out + 2 * stride + r};
  if (kind == kLorentz) {
    const LorentzToken L = lorentz_token(n, kappa, inv_sqrt_e, clip);
    if (key) *slot[0] = 0.0f, *slot[1] = (float)L.x0, *slot[2] = (float)L.f;
    else *slot[0] = (float)-L.x0, *slot[1] = (float)L.f;
    out[3 * stride + r] = (float)L.sig, out[4 * stride + r] = (float)L.ch;
    return L.clipped;
  }
  const double inv = n > 0 ? 1.0 / n : 0.0;
  if (kind == kCosine) {
    if (key) *slot[0] = 0.0f, *slot[1] = 0.0f, *slot[2] = (float)inv;
    else *slot[0] = 0.0f, *slot[1] = (float)inv;
  } else {  // kL2
    if (key) *slot[0] = (float)(-0.5 * n * n), *slot[1] = 0.0f, *slot[2] = 1.0f;
    else *slot[0] = 0.0f, *slot[1] = 1.0f;
  }
  return false;
}

// lorentz_token and radial_terms for the `rows` tokens of one head and side at once (one simd loop, dexpm1):
// the forward's terms of the Lorentz kind; returns how many tokens the clip shortened
template <bool KEY>
int64_t lorentz_terms(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, float* out,
                      int64_t stride) {
  const double c = -kappa, s = std::sqrt(c);
  float *o0 = out, *o1 = out + stride, *o2 = out + 2 * stride, *o3 = out + 3 * stride, *o4 = out + 4 * stride;
  int64_t clipped = 0;
#pragma omp simd reduction(+ : clipped)
  for (int64_t r = 0; r < rows; ++r) {
    const double n = norms[r], a = n * inv_sqrt_e;
    const bool cl = s * a > clip;  // tangent_norm's test
    const double t = cl ? clip / s : a;
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
    const double n = norms[r], a = n * inv_sqrt_e;
    const bool cl = s * a > clip;
    const double t = cl ? clip / s : a;
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

// ∂L/∂n and ∂L/∂κ of one token from the gradients g of its slots (kept: its slots 3 and 4)
inline void radial_chain(int kind, double n, double kappa, double inv_sqrt_e, double clip, bool key,
                         const double g[3], const double kept[2], double& g_norm, double& g_kappa) {
  g_norm = g_kappa = 0.0;
  if (kind == kCosine) {
    if (n > 0) g_norm = -(key ? g[2] : g[1]) / (n * n);
    return;
  }
  if (kind == kL2) {
    if (key) g_norm = -g[0] * n;
    return;
  }
  const LorentzToken L = lorentz_token(n, kappa, inv_sqrt_e, clip, kept[0], kept[1]);
  const double g_f = key ? g[2] : g[1];
  const double g_x0 = key ? g[1] : -g[0];
  const double dt_dn = L.clipped ? 0.0 : inv_sqrt_e;
  const double ssig = L.s * L.sig;                     // sinh(√c t) = ∂x₀/∂t
  if (n > 0) g_norm = g_f * (L.ch * dt_dn / n - L.sig / (n * n)) + g_x0 * ssig * dt_dn;
  // ∂/∂c at fixed n: at fixed t, plus through t = clip/√c where clipped (∂t/∂c = −t/(2c))
  const double ct2 = L.c * L.t * L.t;
  const double dsig_dc = ct2 < 1e-4 ? L.t * L.t * L.t / 6.0 * (1.0 + ct2 / 10.0)  // (t ch − σ)/(2c), cancels
                                    : (L.t * L.ch - L.sig) / (2.0 * L.c);
  const double dx0_dc = (L.t * L.sig - L.x0 / L.s) / (2.0 * L.s);
  const double dt_dc = L.clipped ? -L.t / (2.0 * L.c) : 0.0;
  const double df_dc = n > 0 ? (dsig_dc + L.ch * dt_dc) / n : 0.0;
  g_kappa = -(g_f * df_dc + g_x0 * (dx0_dc + ssig * dt_dc));  // κ = −c
}

}  // namespace geoattn_native
