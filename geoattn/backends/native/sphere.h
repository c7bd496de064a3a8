// Rows of the geodesic sphere score, forward and backward.
#pragma once

#include "terms.h"

namespace geoattn_native {

// ---- sphere, geodesic score ----
inline float sphere_angle(float gap, float& dtheta_dgap) {
  const bool far = gap > 1.0f;
  const float h = far ? 2.0f - gap : gap;
  const float y = std::sqrt(std::max(0.5f * h, 1e-30f));
  const float a = 2.0f * fasin(y);
  // 1/sin θ. At θ = 0 or π (parallel or antipodal directions: a token scored against itself, any pair at head
  // dim 1) θ is not differentiable and the subgradient 0 is taken, as the dense path's chord norm does. A gap below
  // kFlatGap is rounding (θ < 1.4e-6, finer than float32 directions resolve): there 1/sin θ would multiply the
  // rounding of the gradient's two cancelling parts (through the Gram and through the norms) into garbage.
  constexpr float kFlatGap = 1e-12f;
  dtheta_dgap = h > kFlatGap ? 1.0f / std::sqrt(h * (2.0f - h)) : 0.0f;
  return far ? 3.14159265358979323846f - a : a;
}

// scores of a row into scratch; returns their max
template <bool M>
float sphere_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  const float rho = T.qt(w.n, 2)[w.i];
  const float* rhok = T.kt(w.n, 2) + w.c0;
  const float mu = P.mu[w.n % P.H], eta = P.eta;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ score = scratch;  // restrict: its stores alias none of the row's inputs
  int near = 0;
  const float* g = w.g;  // a local: a store to score[j] could alias w
  const int64_t jmax = w.jmax, jpad = w.jpad;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < jpad; ++j) {
    const float gap = clamped_gap(g[j], rho, rhok[j]);
    const bool in = j < jmax;
    near += (in && (gap < eta || gap > 2.0f - eta)) ? 1 : 0;
    float unused;
    score[j] = in ? masked<M>(mu * sphere_angle(gap, unused), madd, j) : kNegInf;
  }
  if (near) {
    for (int64_t j = 0; j < w.jmax; ++j) {
      const float gap = clamped_gap(w.g[j], rho, rhok[j]);
      const float* kv = w.kbase + j * w.k_sr;
      float unused;
      if (gap < eta)
        score[j] = masked<M>(mu * sphere_angle(exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, -1.0), unused), madd, j);
      else if (gap > 2.0f - eta)
        score[j] =
            masked<M>(mu * sphere_angle(2.0f - exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, 1.0), unused), madd, j);
    }
  }
  return row_max(score, jpad);
}

template <bool M>
void sphere_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  if (keyless_row(w)) return;
  const float lse = *w.lse;
  const float rho = T.qt(w.n, 2)[w.i];
  const float* rhok = T.kt(w.n, 2) + w.c0;
  const float mu = P.mu[w.n % P.H];
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ gap = scratch;
  row_gaps<true>(P, w, gap, rho, rhok);
  float* __restrict__ gkr = w.gkr;
  float* __restrict__ g = w.g;
  float* __restrict__ dp = w.dp;
  const float delta_i = w.delta;
  Lanes gr, gmu;
  const int64_t jmax = w.jmax, jpad = w.jpad;
  for (int64_t j0 = 0; j0 < jpad; j0 += kLanes)
#pragma omp simd
  for (int64_t j = j0; j < j0 + kLanes; ++j) {
    const int64_t t = j - j0;
    float dth;
    const float theta = sphere_angle(gap[j], dth);
    const float sj = masked<M>(mu * theta, madd, j);
    const bool live = j < jmax && sj != kNegInf;
    const float p = live ? fexp(sj - lse) : 0.0f;
    const float ds = live ? p * (dp[j] - delta_i) : 0.0f;
    gmu.v[t] += ds * theta;
    const float ggap = ds * mu * dth;
    const float gram = g[j];
    gr.v[t] -= ggap * gram * rhok[j];
    gkr[j] -= ggap * gram * rho;
    dp[j] = -ggap * rho * rhok[j];
    g[j] = p;
  }
  for (int64_t j = jpad; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.gr = gr.sum();
  w.gmu += gmu.sum();
}

}  // namespace geoattn_native
