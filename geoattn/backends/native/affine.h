// Rows of the affine score μ_h·(⟨q̃ᵢ, k̃ⱼ⟩ + βⱼ + αᵢγⱼ), forward and backward: the kernel of the geometries
// that reduce to an augmented dot product (learned metric, squared distance, cosine, and the Lorentz
// inner product, whose time coordinates are the outer-product term αᵢγⱼ), at the head dim of q̃ and k̃
// (SDPA needs a column more for each of βⱼ and αᵢγⱼ, which its CPU kernel pays ~17% for at E = 64).
// βⱼ is key term 0, γⱼ key term 1, αᵢ query term 0 (written by the caller); OUTER: the αᵢγⱼ term is there.
#pragma once

#include "terms.h"

namespace geoattn_native {

// scores of a row into scratch; returns their max
template <bool M, bool OUTER>
float affine_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  const float mu = P.mu[w.n % P.H];
  const float* beta = T.kt(w.n, 0) + w.c0;
  const float* gamma = T.kt(w.n, 1) + w.c0;
  const float alpha = OUTER ? T.qt(w.n, 0)[w.i] : 0.0f;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ score = scratch;  // restrict: its stores alias none of the row's inputs
  const float* g = w.g;
  const int64_t jmax = w.jmax;
#pragma omp simd
  for (int64_t j = 0; j < jmax; ++j) {
    const float x = OUTER ? g[j] + beta[j] + alpha * gamma[j] : g[j] + beta[j];
    score[j] = masked<M>(mu * x, madd, j);
  }
  return row_max(score, jmax);
}

template <bool M, bool OUTER>
void affine_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  w.ga = w.gs = w.gr = 0.0f;
  const float lse = *w.lse;
  if (lse == INFINITY) {
    std::memset(w.g, 0, sizeof(float) * w.S);
    std::memset(w.dp, 0, sizeof(float) * w.S);
    return;
  }
  const float mu = P.mu[w.n % P.H];
  const float* beta = T.kt(w.n, 0) + w.c0;
  const float* gamma = T.kt(w.n, 1) + w.c0;
  const float alpha = OUTER ? T.qt(w.n, 0)[w.i] : 0.0f;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ gkb = w.gkb;  // ∂/∂βⱼ
  float* __restrict__ gks = w.gks;  // ∂/∂γⱼ
  float* __restrict__ g = w.g;
  float* __restrict__ dp = w.dp;
  const float delta_i = w.delta;
  float gmu = 0, ga = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : gmu, ga)
  for (int64_t j = 0; j < jmax; ++j) {
    const float x = OUTER ? g[j] + beta[j] + alpha * gamma[j] : g[j] + beta[j];
    const float sj = masked<M>(mu * x, madd, j);
    const float p = sj != kNegInf ? fexp(sj - lse) : 0.0f;
    const float ds = p * (dp[j] - delta_i);
    const float gx = mu * ds;
    gmu += ds * x;
    gkb[j] += gx;
    if (OUTER) {
      gks[j] += gx * alpha;
      ga += gx * gamma[j];
    }
    dp[j] = gx;  // dGram
    g[j] = p;
  }
  for (int64_t j = jmax; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.ga = ga;  // ∂/∂αᵢ
  w.gmu += gmu;
}

}  // namespace geoattn_native
