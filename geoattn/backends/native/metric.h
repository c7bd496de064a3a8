// The learned metric (geoattn.Metric) on the affine rows: score μ(⟨qᵢ, k̃ⱼ⟩ + βⱼ) with k̃ = G k and
// βⱼ = −½ kⱼᵀ G kⱼ (the per-query −½ qᵀGq cancels in the softmax), μ = scale/(√E τ). The forward forms k̃ (one
// sgemm per head) and β here, so the caller passes q, k and G and nothing of size L × E is made in torch; the
// backward's rows give dk̃ (the gradient of the keys the Gram used) and dβ, and metric_chain turns them into
//   dk = dk̃ G − dβ ⊙ k̃        (∂βⱼ/∂kⱼ = −G kⱼ = −k̃ⱼ),        dG = Σⱼ kⱼ (dk̃ⱼ − ½ dβⱼ kⱼ)ᵀ,
// with G symmetric (the metric_tensor of geoattn.Metric is, exactly: L Lᵀ and U Uᵀ are symmetric in floating
// point too); dG per batch element and head, summed by the caller.
#pragma once

#include "terms.h"

namespace geoattn_native {

// k̃ of the whole problem as a View of (B, H, S, D) stored head-major, (H, B, S, D) contiguous: a head's keys of
// every batch element are one matrix, so k̃ = K G is one sgemm per head where K's are too
inline View ktilde_view(const Problem& P) { return View{P.ktilde, P.S * P.D, P.B * P.S * P.D, P.D}; }
inline float* ktilde_rows(const Problem& P, int64_t n) { return P.ktilde + ((n % P.H) * P.B + n / P.H) * P.S * P.D; }

// whether x's rows of one head, every batch element's S of them, form one matrix (x laid out as (B, S, H, E), e.g.
// K split from one projection or dK as the kernel writes it, or any layout with B = 1)
inline bool heads_stack(const Problem& P, const View& x) { return P.B == 1 || x.sb == P.S * x.sr; }

// k̃ = K G and the affine terms (a = b = 1, β = −½ k·k̃) of every head (forward)
void metric_terms(const Problem& P) {
  const int64_t N = P.B * P.H, Sp = key_stride(P);
  const bool stack = heads_stack(P, P.k);
  if (stack && P.S > 0) {
#pragma omp parallel for schedule(static) num_threads(P.nthreads)
    for (int64_t h = 0; h < P.H; ++h)
      gemm_ab(P, (int)(P.B * P.S), (int)P.D, (int)P.D, row_ptr(P.k, h, P.H, 0), P.k.sr, P.metric + h * P.D * P.D,
              P.D, 0.0f, ktilde_rows(P, h), P.D);
  }
#pragma omp parallel for schedule(static) num_threads(P.nthreads)
  for (int64_t n = 0; n < N; ++n) {
    const float* G = P.metric + (n % P.H) * P.D * P.D;
    float* kt = ktilde_rows(P, n);
    if (!stack && P.S > 0)
      gemm_ab(P, (int)P.S, (int)P.D, (int)P.D, row_ptr(P.k, n, P.H, 0), P.k.sr, G, P.D, 0.0f, kt, P.D);
    float* qa = P.qterms + (n * kTerms + 1) * P.L;
    std::fill(qa, qa + P.L, 1.0f);
    float* beta = P.kterms + n * kTerms * Sp;
    float* b = beta + 2 * Sp;
    for (int64_t j = 0; j < P.S; ++j) {
      const float* kj = row_ptr(P.k, n, P.H, j);
      const float* ktj = kt + j * P.D;
      double dot = 0.0;
      for (int64_t d = 0; d < P.D; ++d) dot += (double)kj[d] * ktj[d];
      beta[j] = (float)(-0.5 * dot);
      b[j] = 1.0f;
    }
  }
}

// dk and dG from dk̃ (what the rows accumulated into P.dk: the gradient of the keys they used) and dβ (slot 0 of
// the key-term gradients, (B·H, 3, S)), in place: P.dk ← dk̃ G − dβ ⊙ k̃ (backward). Per head: dk̃ G in one sgemm
// over every batch element where dK's rows stack as K's do, dG per batch element.
void metric_chain(const Problem& P, const float* gk) {
  const bool stack = heads_stack(P, P.dk);
#pragma omp parallel num_threads(P.nthreads)
  {
    std::vector<float> m(P.B * P.S * P.D);  // this head's dk̃ of every batch element, then dk̃ − ½ dβ ⊙ k
#pragma omp for schedule(static)
    for (int64_t h = 0; h < P.H; ++h) {
      const float* G = P.metric + h * P.D * P.D;
      if (P.S == 0) {
        for (int64_t b = 0; b < P.B; ++b) std::fill(P.dmetric + (b * P.H + h) * P.D * P.D,
                                                    P.dmetric + (b * P.H + h + 1) * P.D * P.D, 0.0f);
        continue;
      }
      for (int64_t b = 0; b < P.B; ++b)
        for (int64_t j = 0; j < P.S; ++j)
          std::memcpy(m.data() + (b * P.S + j) * P.D, row_ptr(P.dk, b * P.H + h, P.H, j), sizeof(float) * P.D);
      if (stack)  // dk̃ G
        gemm_ab(P, (int)(P.B * P.S), (int)P.D, (int)P.D, m.data(), P.D, G, P.D, 0.0f, row_ptr_mut(P.dk, h, P.H, 0),
                P.dk.sr);
      for (int64_t b = 0; b < P.B; ++b) {
        const int64_t n = b * P.H + h;
        const float* kt = ktilde_rows(P, n);
        const float* dbeta = gk + n * 3 * P.S;
        float* mb = m.data() + b * P.S * P.D;
        float* dk = row_ptr_mut(P.dk, n, P.H, 0);
        if (!stack) gemm_ab(P, (int)P.S, (int)P.D, (int)P.D, mb, P.D, G, P.D, 0.0f, dk, P.dk.sr);
        for (int64_t j = 0; j < P.S; ++j) {
          float* dkj = dk + j * P.dk.sr;
          float* mj = mb + j * P.D;
          const float* kj = row_ptr(P.k, n, P.H, j);
          const float db = dbeta[j];
          for (int64_t d = 0; d < P.D; ++d) {
            dkj[d] -= db * kt[j * P.D + d];
            mj[d] -= 0.5f * db * kj[d];
          }
        }
        gemm_atb(P, (int)P.D, (int)P.D, (int)P.S, row_ptr(P.k, n, P.H, 0), P.k.sr, mb, P.D, 0.0f,
                 P.dmetric + n * P.D * P.D, P.D);
      }
    }
  }
}

}  // namespace geoattn_native
