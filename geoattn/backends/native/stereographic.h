// Rows of the κ-stereographic score (Poincaré for κ < 0), forward and backward.
#pragma once

#include "terms.h"

namespace geoattn_native {

// ---- κ-stereographic ----
struct Stereo {
  float a, sig, rho, al, al2, kappa, c, inv_c, sqrt_c, inv_sqrt_c, mu;
  const float *b, *sigk, *rhok, *be, *be2;
  __attribute__((always_inline)) Stereo(const Problem& P, const Terms& T, const Row& w) {
    const int64_t n = w.n, i = w.i, c0 = w.c0;
    a = T.qt(n, 0)[i], sig = T.qt(n, 1)[i], rho = T.qt(n, 2)[i], al = T.qt(n, 3)[i], al2 = T.qt(n, 4)[i];
    b = T.kt(n, 0) + c0, sigk = T.kt(n, 1) + c0, rhok = T.kt(n, 2) + c0;
    be = T.kt(n, 3) + c0, be2 = T.kt(n, 4) + c0;
    kappa = P.kappa[n % P.H], mu = P.mu[n % P.H];
    c = std::fabs(kappa);
    inv_c = c > 0 ? 1.0f / c : 0.0f;
    sqrt_c = std::sqrt(c);
    inv_sqrt_c = c > 0 ? 1.0f / sqrt_c : 0.0f;
  }
};

template <int SIGN>
inline float stereo_radial(const Stereo& r, int64_t j, float& delta, float& v, float& sh, bool& series) {
  delta = r.a - r.b[j];
  v = r.kappa * delta * delta;
  series = SIGN == 0 || std::fabs(v) < kSeriesV;
  sh = r.al * r.be[j] - r.al2 * r.be2[j];
  const float rs = delta * delta * (1.0f - v * (1.0f / 3.0f) + v * v * (2.0f / 45.0f));
  return series ? rs : sh * sh * r.inv_c;
}

// d from s² (already floored); also s, x = κ s², root = √(1 − κ s²), and the series flag
template <int SIGN>
inline float stereo_dist(const Stereo& r, float s2, float& s, float& x, float& root, bool& series) {
  s = std::sqrt(s2);
  x = r.kappa * s2;
  series = SIGN == 0 || std::fabs(x) < kSeriesX;
  const float ser = 1.0f + x * (1.0f / 6.0f + x * (3.0f / 40.0f + x * (5.0f / 112.0f)));
  const float y = r.sqrt_c * s;
  float far;
  if (SIGN < 0) {
    root = std::sqrt(1.0f + y * y);
    far = 2.0f * flog(y + root) * r.inv_sqrt_c;  // (2/√c) asinh(y)
  } else if (SIGN > 0) {
    const float yc = std::min(y, 1.0f - 1e-6f);
    root = std::sqrt(std::max(1.0f - yc * yc, 1e-12f));
    far = 2.0f * fasin(yc) * r.inv_sqrt_c;  // (2/√κ) asin(y)
  } else {
    root = 1.0f;
    far = 0.0f;
  }
  return series ? 2.0f * s * ser : far;
}

template <int SIGN>
inline float stereo_score(const Stereo& r, int64_t j, float gap) {
  float delta, v, sh, s, x, root;
  bool ser_r, ser_d;
  const float R = stereo_radial<SIGN>(r, j, delta, v, sh, ser_r);
  const float s2 = std::max(R + 2.0f * r.sig * r.sigk[j] * gap, kSqrtMin);
  return r.mu * stereo_dist<SIGN>(r, s2, s, x, root, ser_d);
}

// scores of a row into scratch; returns their max
template <int SIGN, bool M>
float stereo_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  const Stereo r(P, T, w);
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ score = scratch;  // restrict: its stores alias none of the row's inputs
  const float eta = P.eta;
  int near = 0;
  const float* g = w.g;  // a local: a store to score[j] could alias w
  const int64_t jmax = w.jmax, jpad = w.jpad;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < jpad; ++j) {
    const float gap = clamped_gap(g[j], r.rho, r.rhok[j]);
    const bool in = j < jmax;
    near += in && gap < eta ? 1 : 0;
    score[j] = in ? masked<M>(stereo_score<SIGN>(r, j, gap), madd, j) : kNegInf;
  }
  if (near) {  // nearly parallel pairs: the exact gap, in double
    for (int64_t j = 0; j < w.jmax; ++j)
      if (clamped_gap(w.g[j], r.rho, r.rhok[j]) < eta)
        score[j] = masked<M>(
            stereo_score<SIGN>(r, j, exact_gap(w.qv, w.kbase + j * w.k_sr, w.qn, w.kn[j], P.D, -1.0)), madd, j);
  }
  return row_max(score, jpad);
}

// KG: accumulate ∂/∂κ (skipped when κ needs no gradient)
template <int SIGN, bool M, bool KG>
void stereo_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  if (keyless_row(w)) return;
  const float lse = *w.lse;
  const Stereo r(P, T, w);
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ gap = scratch;
  row_gaps<false>(P, w, gap, r.rho, r.rhok);
  float *__restrict__ gkb = w.gkb, *__restrict__ gks = w.gks, *__restrict__ gkr = w.gkr;
  const float inv_kappa = r.kappa != 0.0f ? 1.0f / r.kappa : 0.0f;
  const float sgn = SIGN < 0 ? -1.0f : 1.0f;  // ∂|κ|/∂κ
  const float delta_i = w.delta;
  float* __restrict__ g = w.g;
  float* __restrict__ dp = w.dp;
  Lanes ga, gs, gr, gkap, gmu;
  const int64_t jmax = w.jmax, jpad = w.jpad;
  for (int64_t j0 = 0; j0 < jpad; j0 += kLanes)
#pragma omp simd
  for (int64_t j = j0; j < j0 + kLanes; ++j) {
    const int64_t t = j - j0;
    float delta, v, sh, s, x, root;
    bool ser_r, ser_d;
    const float R = stereo_radial<SIGN>(r, j, delta, v, sh, ser_r);
    const float two_ss = 2.0f * r.sig * r.sigk[j];
    const float s2raw = R + two_ss * gap[j];
    const bool floored = s2raw < kSqrtMin;
    const float s2 = floored ? kSqrtMin : s2raw;
    const float d = stereo_dist<SIGN>(r, s2, s, x, root, ser_d);
    const float sj = masked<M>(r.mu * d, madd, j);
    const bool live = j < jmax && sj != kNegInf;
    const float p = live ? fexp(sj - lse) : 0.0f;
    const float ds = live ? p * (dp[j] - delta_i) : 0.0f;
    // ∂d/∂s² = 1/(s √(1 − κ s²)) = 1/(s·root); explicit ∂d/∂κ = 2 s s² H'(x), H' = (1/root − H)/(2x)
    const float inv_sroot = 1.0f / (s * root);
    const float gd = ds * r.mu;
    gmu.v[t] += ds * d;
    const float gs2 = floored ? 0.0f : gd * inv_sroot;
    if (KG) {
      const float inv_root = s * inv_sroot;
      const float hf = d * (0.5f * root * inv_sroot);  // H(x) = d/(2s)
      const float dh_ser = 1.0f / 6.0f + x * (3.0f / 20.0f + x * (15.0f / 112.0f));
      gkap.v[t] += gd * (ser_d ? 2.0f * s * s2 * dh_ser : s * (inv_root - hf) * inv_kappa);
    }
    // radial part: ∂R/∂Δ and explicit ∂R/∂κ, from the series or from sh, ch = sinh|sin, cosh|cos(√|κ|Δ)
    const float ch = SIGN < 0 ? r.al * r.be[j] + r.al2 * r.be2[j] : r.al2 * r.be[j] + r.al * r.be2[j];
    const float d4 = KG ? delta * delta * delta * delta : 0.0f;
    const float dR_ddelta = ser_r ? 2.0f * delta * (1.0f - v * (2.0f / 3.0f) + v * v * (2.0f / 15.0f))
                                  : 2.0f * sh * ch * r.inv_sqrt_c;
    const float dR_dkappa = ser_r ? d4 * (-1.0f / 3.0f + v * (4.0f / 45.0f))
                                  : sgn * (sh * ch * delta * r.inv_c * r.inv_sqrt_c - R * r.inv_c);
    const float gdelta = gs2 * dR_ddelta;
    ga.v[t] += gdelta;
    gkb[j] -= gdelta;
    if (KG) gkap.v[t] += gs2 * dR_dkappa;
    // angular part: s² ∋ 2σσ'(1 − Gρρ')
    const float ggap = gs2 * two_ss;
    gs.v[t] += gs2 * 2.0f * r.sigk[j] * gap[j];
    gks[j] += gs2 * 2.0f * r.sig * gap[j];
    const float gram = g[j];
    gr.v[t] -= ggap * gram * r.rhok[j];
    gkr[j] -= ggap * gram * r.rho;
    dp[j] = -ggap * r.rho * r.rhok[j];  // dGram
    g[j] = p;
  }
  for (int64_t j = jpad; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.ga = ga.sum(), w.gs = gs.sum(), w.gr = gr.sum();
  if (KG) w.gkap += gkap.sum();
  w.gmu += gmu.sum();
}

}  // namespace geoattn_native
