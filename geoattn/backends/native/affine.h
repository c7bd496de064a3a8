// Rows of the affine score sᵢⱼ = μ(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ), forward and backward: the kernel of the
// geometries that reduce to a dot product (learned metric, squared distance, cosine, and the Lorentz
// inner product, whose time coordinates are the outer-product term αᵢγⱼ), at the head dim of q and k.
// The per-token factors aᵢ, bⱼ carry what a lift would multiply the vectors by (a radial factor, 1/‖x‖,
// a temperature), so the caller passes the raw vectors and nothing of size L × E is made for the score.
// The terms: αᵢ query term 0, aᵢ query term 1; βⱼ key term 0, γⱼ key term 1, bⱼ key term 2, computed by
// compute_terms for the radial kinds (Lorentz, cosine, l2) or written by the caller (kAffine, μ = 1).
// OUTER: the αᵢγⱼ term is there. FACTORS: aᵢ and bⱼ are there; without them (the learned metric, l2: a = b = 1)
// the rows skip their products and their gradients, which no chain reads (the same bits: a product with 1 is
// exact). Gradients of the terms go to the same slots.
#pragma once

#include "terms.h"

namespace geoattn_native {

// the terms of one row (query i of head n against the chunk's keys)
template <bool OUTER>
struct AffineTerms {
  const float *beta, *gamma, *bk;
  float alpha, aq, mu;
  AffineTerms(const Problem& P, const Terms& T, const Row& w)
      : beta(T.kt(w.n, 0) + w.c0), gamma(T.kt(w.n, 1) + w.c0), bk(T.kt(w.n, 2) + w.c0),
        alpha(OUTER ? T.qt(w.n, 0)[w.i] : 0.0f), aq(T.qt(w.n, 1)[w.i]), mu(P.mu[w.n % P.H]) {}
};

// scores of a row into scratch; returns their max
template <bool M, bool OUTER, bool FACTORS>
float affine_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  const AffineTerms<OUTER> t(P, T, w);
  const float *beta = t.beta, *gamma = t.gamma, *bk = t.bk;
  const float alpha = t.alpha, aq = t.aq, mu = t.mu;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ score = scratch;  // restrict: its stores alias none of the row's inputs
  const float* g = w.g;
  const int64_t jmax = w.jmax, jpad = w.jpad;
#pragma omp simd
  for (int64_t j = 0; j < jpad; ++j) {
    const float gram = FACTORS ? aq * bk[j] * g[j] : g[j];
    const float x = OUTER ? gram + beta[j] + alpha * gamma[j] : gram + beta[j];
    score[j] = j < jmax ? masked<M>(mu * x, madd, j) : kNegInf;
  }
  return row_max(score, jpad);
}

template <bool M, bool OUTER, bool FACTORS>
void affine_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  if (keyless_row(w)) return;
  const float lse = *w.lse;
  const AffineTerms<OUTER> t(P, T, w);
  const float *beta = t.beta, *gamma = t.gamma, *bk = t.bk;
  const float alpha = t.alpha, aq = t.aq, mu = t.mu;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* __restrict__ gkb = w.gkb;  // ∂/∂βⱼ
  float* __restrict__ gks = w.gks;  // ∂/∂γⱼ
  float* __restrict__ gkr = w.gkr;  // ∂/∂bⱼ
  float* __restrict__ g = w.g;
  float* __restrict__ dp = w.dp;
  const float delta_i = w.delta;
  Lanes galpha, gaq, gmu;
  const int64_t jmax = w.jmax, jpad = w.jpad;
  for (int64_t j0 = 0; j0 < jpad; j0 += kLanes)
#pragma omp simd
  for (int64_t j = j0; j < j0 + kLanes; ++j) {
    const int64_t t = j - j0;
    const float gram = g[j];
    const float ab = FACTORS ? aq * bk[j] * gram : gram;
    const float x = OUTER ? ab + beta[j] + alpha * gamma[j] : ab + beta[j];
    const float sj = masked<M>(mu * x, madd, j);
    const float p = j < jmax && sj != kNegInf ? fexp(sj - lse) : 0.0f;
    const float dsm = j < jmax ? p * (dp[j] - delta_i) : 0.0f;  // ∂L/∂s
    gmu.v[t] += dsm * x;
    const float ds = dsm * mu;                // ∂L/∂x
    gkb[j] += ds;
    if (FACTORS) {
      const float dsg = ds * gram;
      gkr[j] += dsg * aq;
      gaq.v[t] += dsg * bk[j];
    }
    if (OUTER) {
      gks[j] += ds * alpha;
      galpha.v[t] += ds * gamma[j];
    }
    dp[j] = FACTORS ? ds * aq * bk[j] : ds;  // dGram
    g[j] = p;
  }
  for (int64_t j = jpad; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.ga = OUTER ? galpha.sum() : 0.0f;  // ∂/∂αᵢ
  w.gs = FACTORS ? gaq.sum() : 0.0f;    // ∂/∂aᵢ
  w.gmu += gmu.sum();
}

}  // namespace geoattn_native
