// Per-token terms of the κ-stereographic kernel (norms, clipped tangent radii, radial factors), in double.
#pragma once

#include "common.h"

namespace geoattn_native {

// ---------------------------------------------------------------------------------------------
// Per-token terms, computed once per call in double precision.
// Stereographic: t = (a, σ, ρ, α, α') for queries, (b, σ', ρ', β, β') for keys; sphere: ρ only.
// ---------------------------------------------------------------------------------------------
constexpr int kTerms = 5;

// Key-term rows are lanes_up(S) long, zero past S (the row loops read a whole vector past the last key).
inline int64_t key_stride(const Problem& P) { return lanes_up(P.S); }

struct Terms {  // views of the caller's buffers: (B·H, kTerms, L) and (B·H, kTerms, key_stride)
  const float *q, *k;
  const double *qn, *kn;
  int64_t L = 0, Sp = 0;
  Terms(const Problem& P) : q(P.qterms), k(P.kterms), qn(P.qnorm), kn(P.knorm), L(P.L), Sp(key_stride(P)) {}
  const float* qt(int64_t n, int t) const { return q + (n * kTerms + t) * L; }
  const float* kt(int64_t n, int t) const { return k + (n * kTerms + t) * Sp; }
};

struct TokenTerms {  // one token's terms
  double a, sig, rho, e1, e2;
  bool clipped;
};

// the tangent norm a = min(‖x‖/√E, clip/√c) (clip where κ < 0)
inline double tangent_norm(double n, double kappa, double inv_sqrt_e, double clip, bool& clipped) {
  const double a = n * inv_sqrt_e, sc = std::sqrt(std::fabs(kappa));
  clipped = kappa < 0 && sc * a > clip;
  return clipped ? clip / sc : a;
}

// Σ body(r, n, t, clipped) over the `rows` tokens of one head and side in one simd loop, for the per-token terms
// and chain rules computed for all of a head's tokens at once: n = norms[r] the token's raw norm, t its tangent
// norm (tangent_norm, clipped says whether the clip shortened it). body writes the token's outputs and returns
// its share of the sum (a count, or ∂L/∂κ).
template <class T, class Body>
inline T sum_tokens(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip, Body&& body) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t r = 0; r < rows; ++r) {
    const double n = norms[r];
    bool cl;
    const double t = tangent_norm(n, kappa, inv_sqrt_e, clip, cl);
    sum += body(r, n, t, cl);
  }
  return sum;
}

// κ-stereographic terms of a token of raw norm n where κ ≥ 0 (one sincos); key: β-style factors. κ < 0:
// stereo_terms_hyperbolic, for all of a head's tokens at once.
inline TokenTerms stereo_token(double n, double kappa, double inv_sqrt_e, double clip, bool key) {
  TokenTerms t;
  const double c = std::fabs(kappa), sc = std::sqrt(c);
  const double a = tangent_norm(n, kappa, inv_sqrt_e, clip, t.clipped);
  t.a = a;
  t.rho = n > 0 ? 1.0 / n : 0.0;
  const double v = 4.0 * kappa * a * a;
  const bool series = std::fabs(v) < kSeriesSigma;
  if (kappa > 0) {
    const double s1 = std::sin(sc * a), c1 = std::cos(sc * a);
    t.sig = series ? a * (1.0 - v / 6.0 + v * v / 120.0) : s1 * c1 / sc;                    // sin(2√κ a)/(2√κ)
    t.e1 = key ? c1 : s1;
    t.e2 = key ? s1 : c1;
  } else {
    t.sig = a;
    t.e1 = t.e2 = 0.0;
  }
  return t;
}

// ∂σ/∂a and ∂σ/∂κ (at fixed a) of a token's σ(a, κ), κ ≥ 0 (κ < 0: stereo_chain_hyperbolic)
inline void sigma_grads(double a, double kappa, double& dsig_da, double& dsig_dk) {
  const double v = 4.0 * kappa * a * a, c = std::fabs(kappa), sc = std::sqrt(c);
  if (std::fabs(v) < kSeriesSigma) {  // σ = a − (2/3)κa³ + (2/15)κ²a⁵
    dsig_da = 1.0 - 2.0 * kappa * a * a + (2.0 / 3.0) * kappa * kappa * a * a * a * a;
    dsig_dk = -(2.0 / 3.0) * a * a * a + (4.0 / 15.0) * kappa * a * a * a * a * a;
    return;
  }
  const double y = 2.0 * sc * a, co = std::cos(y), sig = std::sin(y) / (2.0 * sc);
  dsig_da = co;
  dsig_dk = (a * co - sig) / (2.0 * c);
}

// stereo_token for the `rows` tokens of one head and side at once where κ < 0 (one simd loop, dexp); returns how
// many tokens the clip shortened
template <bool KEY>
int64_t stereo_terms_hyperbolic(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip,
                                float* out, int64_t stride) {
  const double sc = std::sqrt(-kappa);
  return sum_tokens<int64_t>(norms, rows, kappa, inv_sqrt_e, clip, [&](int64_t r, double n, double a, bool cl) {
    const double v = 4.0 * kappa * a * a;
    const double e = dexp(sc * a), ie = 1.0 / e;
    const double sig = std::fabs(v) < kSeriesSigma ? a * (1.0 - v / 6.0 + v * v / 120.0) : (e * e - ie * ie) / (4.0 * sc);
    out[r] = (float)a;
    out[stride + r] = (float)sig;
    out[2 * stride + r] = (float)(n > 0 ? 1.0 / (n > 0 ? n : 1.0) : 0.0);
    out[3 * stride + r] = (float)(KEY ? ie / 2 : e);
    out[4 * stride + r] = (float)(KEY ? e / 2 : ie);
    return (int64_t)(cl ? 1 : 0);
  });
}

// token_chain's stereographic step for the `rows` tokens of one head and side at once where κ < 0: fac[r] =
// (∂L/∂n)/n (0 for a zero vector, which has no radius term), returns Σ ∂L/∂κ; g: the slot gradients (a|σ|ρ)
inline double stereo_chain_hyperbolic(const double* norms, int64_t rows, double kappa, double inv_sqrt_e, double clip,
                                      const float* g, float* fac) {
  const double c = -kappa, sc = std::sqrt(c);
  return sum_tokens<double>(norms, rows, kappa, inv_sqrt_e, clip, [&](int64_t r, double n, double a, bool cl) {
    const bool pos = n > 0;
    const double nn = pos ? n : 1.0;
    const double v = 4.0 * kappa * a * a;
    const double e2 = dexp(2.0 * sc * a), ie2 = 1.0 / e2;
    const double ch = (e2 + ie2) / 2, sig = (e2 - ie2) / (4.0 * sc);
    const bool series = std::fabs(v) < kSeriesSigma;
    const double dsa = series ? 1.0 - 2.0 * kappa * a * a + (2.0 / 3.0) * kappa * kappa * a * a * a * a : ch;
    const double dsk = series ? -(2.0 / 3.0) * a * a * a + (4.0 / 15.0) * kappa * a * a * a * a * a
                              : -(a * ch - sig) / (2.0 * c);
    const double g_a = (double)g[r] + (double)g[rows + r] * dsa;
    const double gk = (double)g[rows + r] * dsk + (cl ? g_a * a / (2.0 * c) : 0.0);
    const double g_norm = (cl ? 0.0 : g_a * inv_sqrt_e) - (double)g[2 * rows + r] / (nn * nn);
    fac[r] = pos ? (float)(g_norm / nn) : 0.0f;
    return pos ? gk : 0.0;
  });
}

inline double row_norm(const float* x, int64_t D) { return std::sqrt(dot_double(x, x, D)); }

}  // namespace geoattn_native
