// Rows of the affine score sᵢⱼ = aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ, forward and backward: the kernel of the
// geometries that reduce to a dot product (learned metric, squared distance, cosine, and the Lorentz
// inner product, whose time coordinates are the outer-product term αᵢγⱼ), at the head dim of q and k.
// The per-token factors aᵢ, bⱼ carry what a lift would multiply the vectors by (a radial factor, 1/‖x‖,
// a temperature), so the caller passes the raw vectors and nothing of size L × E is made for the score.
// The caller writes the terms in score units: αᵢ query term 0, aᵢ query term 1; βⱼ key term 0, γⱼ key
// term 1, bⱼ key term 2. OUTER: the αᵢγⱼ term is there. Gradients of the terms go to the same slots.
#pragma once

#include "terms.h"

namespace geoattn_native {

// scores of a row into scratch; returns their max
template <bool M, bool OUTER>
float affine_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  const float* beta = T.kt(w.n, 0) + w.c0;
  const float* gamma = T.kt(w.n, 1) + w.c0;
  const float* bk = T.kt(w.n, 2) + w.c0;
  const float alpha = OUTER ? T.qt(w.n, 0)[w.i] : 0.0f;
  const float aq = T.qt(w.n, 1)[w.i];
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ score = scratch;  // restrict: its stores alias none of the row's inputs
  const float* g = w.g;
  const int64_t jmax = w.jmax;
#pragma omp simd
  for (int64_t j = 0; j < jmax; ++j) {
    const float x = OUTER ? aq * bk[j] * g[j] + beta[j] + alpha * gamma[j] : aq * bk[j] * g[j] + beta[j];
    score[j] = masked<M>(x, madd, j);
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
  const float* beta = T.kt(w.n, 0) + w.c0;
  const float* gamma = T.kt(w.n, 1) + w.c0;
  const float* bk = T.kt(w.n, 2) + w.c0;
  const float alpha = OUTER ? T.qt(w.n, 0)[w.i] : 0.0f;
  const float aq = T.qt(w.n, 1)[w.i];
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ gkb = w.gkb;  // ∂/∂βⱼ
  float* __restrict__ gks = w.gks;  // ∂/∂γⱼ
  float* __restrict__ gkr = w.gkr;  // ∂/∂bⱼ
  float* __restrict__ g = w.g;
  float* __restrict__ dp = w.dp;
  const float delta_i = w.delta;
  float galpha = 0, gaq = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : galpha, gaq)
  for (int64_t j = 0; j < jmax; ++j) {
    const float gram = g[j];
    const float x = OUTER ? aq * bk[j] * gram + beta[j] + alpha * gamma[j] : aq * bk[j] * gram + beta[j];
    const float sj = masked<M>(x, madd, j);
    const float p = sj != kNegInf ? fexp(sj - lse) : 0.0f;
    const float ds = p * (dp[j] - delta_i);
    const float dsg = ds * gram;
    gkb[j] += ds;
    gkr[j] += dsg * aq;
    gaq += dsg * bk[j];
    if (OUTER) {
      gks[j] += ds * alpha;
      galpha += ds * gamma[j];
    }
    dp[j] = ds * aq * bk[j];  // dGram
    g[j] = p;
  }
  for (int64_t j = jmax; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.ga = galpha;  // ∂/∂αᵢ
  w.gs = gaq;     // ∂/∂aᵢ
}

}  // namespace geoattn_native
