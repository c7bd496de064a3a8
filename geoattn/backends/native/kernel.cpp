// geoattn native CPU kernel: fused geometric attention, forward and backward, in O(L) memory.
//
// FlashAttention's structure (Dao et al., NeurIPS 2022; FlashAttention-2's online softmax). A work item is
// one head and a block of bq query rows; its keys come in chunks (P.chunk, 512: PyTorch's CPU flash kernel
// uses the same 256 × 512 tiles). Per chunk a thread computes the Gram tile G = Q_blk K_cᵀ with the BLAS
// sgemm it is given (MKL's, from libtorch_cpu), turns it row by row into unnormalised probabilities
// (forward: running max and sum per row, the output rescaled as the max moves, normalised at the end) or
// into dGram and the gradients of its per-token and per-head terms (backward, with the row's lse), and
// multiplies back (P V_c; dGram K_c, dGramᵀ Q, Pᵀ dO). A tile stays in the thread's L2; nothing of size
// L × S is allocated. Per-token terms (norms, radii, sinh factors) are computed here in double precision,
// once per call; the affine kind gets its per-token terms (factors a, b; β, α, γ) from the caller.
//
// Why by hand: the score chain (gap → distance → softmax) runs in one vectorised pass per element, and
// nearly parallel pairs need a data-dependent exact recomputation that neither SDPA nor a compiled torch
// graph can express; and an affine score with per-key and outer terms runs at the head dim E, where SDPA
// needs one or two more columns (E + 1, off the vector widths its CPU kernel is fast at). geoattn's dense float64
// backend is the oracle this file is tested against (tests/test_native.py).
//
// Distances never cancel. With u = q/√E the tangent vector (clipped to √|κ|‖u‖ ≤ clip for κ < 0),
// a = ‖u‖, b = ‖v‖ and gap = 1 − cos θ = ½‖q̂ − k̂‖², every curved score is radial/angular:
//   stereographic:  s² = R + 2 σ_a σ_b · gap,  R = sinh²(√c (a − b))/c | sin²(√κ (a − b))/κ | (a − b)²,
//                   σ_a = sinh(2√c a)/(2√c) | sin(2√κ a)/(2√κ) | a,  d = 2 s H(κ s²),  score = μ d
//   sphere:         θ = 2 asin(√(gap/2))  (π − 2 asin(√((2 − gap)/2)) past 90°),   score = μ θ
// The gap comes from the Gram entry (absolute error ~ε: harmless where gap ≥ eta), except for pairs
// with gap < eta (on the sphere also gap > 2 − eta), recomputed from the vectors in double precision.
// R comes from per-token factors, sinh(√c(a − b)) = αβ − α'β' (α = e^{√c a}, β = e^{−√c b}/2,
// α' = e^{−√c a}, β' = e^{√c b}/2; absolute error ≤ 4ε/√c in distance), or from its Taylor series
// where |κ(a − b)²| < 0.01.
#include "affine.h"
#include "metric.h"
#include "radial.h"
#include "sphere.h"
#include "stereographic.h"

#ifdef _OPENMP
#include <cstddef>
#include <omp.h>
#endif

namespace geoattn_native {

// A row's scores (forward: into scratch, returning their max) or its backward (P and dGram into the tile rows).
template <bool M>
float row_scores(const Problem& P, const Terms& T, const Row& w, float* scratch) {
  if (P.kind == kSphere) return sphere_scores<M>(P, T, w, scratch);
  if (affine_kind(P.kind)) {
    if (!has_factors(P)) return affine_scores<M, false, false>(P, T, w, scratch);  // the metric, l2: no outer term
    return P.outer ? affine_scores<M, true, true>(P, T, w, scratch) : affine_scores<M, false, true>(P, T, w, scratch);
  }
  const float kappa = P.kappa[w.n % P.H];
  if (kappa < 0.0f) return stereo_scores<-1, M>(P, T, w, scratch);
  if (kappa > 0.0f) return stereo_scores<1, M>(P, T, w, scratch);
  return stereo_scores<0, M>(P, T, w, scratch);
}

template <bool M, bool KG>
void stereo_backward_any(const Problem& P, const Terms& T, Row& w, float* scratch) {
  const float kappa = P.kappa[w.n % P.H];
  if (kappa < 0.0f) return stereo_backward_row<-1, M, KG>(P, T, w, scratch);
  if (kappa > 0.0f) return stereo_backward_row<1, M, KG>(P, T, w, scratch);
  return stereo_backward_row<0, M, KG>(P, T, w, scratch);
}

template <bool M>
void row_backward(const Problem& P, const Terms& T, Row& w, float* scratch) {
  if (P.kind == kSphere) return sphere_backward_row<M>(P, T, w, scratch);
  if (affine_kind(P.kind)) {
    if (!has_factors(P)) return affine_backward_row<M, false, false>(P, T, w, scratch);
    return P.outer ? affine_backward_row<M, true, true>(P, T, w, scratch)
                   : affine_backward_row<M, false, true>(P, T, w, scratch);
  }
  P.want_dkappa ? stereo_backward_any<M, true>(P, T, w, scratch) : stereo_backward_any<M, false>(P, T, w, scratch);
}

inline bool has_mask(const Problem& P) { return P.bias || P.allowed; }

// ---------------------------------------------------------------------------------------------
// Work items: one head and a block of bq query rows, the keys in chunks of P.chunk (a bq × chunk tile).
// ---------------------------------------------------------------------------------------------
struct Work {
  std::vector<float> tile, dtile, rows, rows2;  // (bq × chunk), (bq × chunk), 3 padded row buffers (two rows')
  std::vector<float> m, l, alpha;        // forward: running max and sum of each row, rescale of its output
  std::vector<float> delta, acc;         // backward: rowsum(dO ⊙ O), the rows' (g_a, g_σ, g_ρ) over chunks
  std::vector<float> dk, dv, gk;         // backward: the current head's dK, dV, key-term gradients
  double gkap = 0, gmu = 0;
  int64_t head = -1;
};

inline int64_t blocks(const Problem& P) { return (P.L + P.bq - 1) / P.bq; }

// One work item per head (L ≤ bq): its thread owns the head's dK and dV, and the backward's GEMMs write each
// chunk's rows of them directly, not into the thread's buffers that flush adds up.
inline bool whole_heads(const Problem& P) { return blocks(P) == 1; }

// rows [from, S) of head n's dK and dV ← 0 (keys no query attends to; with several work items per head, all of
// them before the items accumulate)
void zero_key_grads(const Problem& P, int64_t n, int64_t from) {
  for (int64_t j = from; j < P.S; ++j) {
    std::memset(row_ptr_mut(P.dk, n, P.H, j), 0, sizeof(float) * P.D);
    std::memset(row_ptr_mut(P.dv, n, P.H, j), 0, sizeof(float) * P.Ev);
  }
}

// row i of head n against keys c0 … c0 + S − 1 (g, dp: its tile rows, lanes_up(S) long)
Row make_row(const Problem& P, const Terms& T, int64_t n, int64_t i, int64_t c0, int64_t S, float* g, float* dp) {
  Row w{};
  w.n = n, w.i = i, w.c0 = c0, w.S = S;
  w.jmax = P.causal ? std::max<int64_t>(0, std::min(S, i + 1 - c0)) : S;
  w.jpad = lanes_up(w.jmax);
  w.g = g, w.dp = dp;
  w.lse = P.lse + n * P.L + i;
  w.qv = row_ptr(P.q, n, P.H, i);
  w.kbase = row_ptr(P.k, n, P.H, c0);
  w.k_sr = P.k.sr;
  w.qn = T.qn[n * P.L + i];
  w.kn = T.kn + n * P.S + c0;
  return w;
}

// FlashAttention's online softmax over the chunks: out ← (Σ_c exp(s_c − m) V_c)/Σ exp(s − m)
void forward_item(const Problem& P, const Terms& T, int64_t item, Work& ws) {
  const int64_t n = item / blocks(P), i0 = (item % blocks(P)) * P.bq;
  const int64_t rows = std::min(P.bq, P.L - i0);
  const int64_t S = P.causal ? std::min(P.S, i0 + rows) : P.S;  // keys after the block's last query never count
  const float* q = row_ptr(P.q, n, P.H, i0);
  float* out = row_ptr_mut(P.out, n, P.H, i0);
  float *m = ws.m.data(), *l = ws.l.data(), *alpha = ws.alpha.data();
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.0f);
  if (S == 0)
    for (int64_t r = 0; r < rows; ++r) std::memset(out + r * P.out.sr, 0, sizeof(float) * P.Ev);
  const bool masked = has_mask(P);
  for (int64_t c0 = 0; c0 < S; c0 += P.chunk) {
    const int64_t Sc = std::min<int64_t>(P.chunk, S - c0), ld = lanes_up(Sc);  // ld: the tile's row stride
    float* G = ws.tile.data();
    gemm_abt(P, (int)rows, (int)Sc, (int)P.D, q, P.q.sr, row_ptr(P.k, n, P.H, c0), P.k.sr, 0.0f, G, ld);
    // rows two at a time (exp_rows2), a row alone where the pair has none or a row has nothing to attend to yet
    auto scores = [&](int64_t r, float* score, Row& w) {
      w = make_row(P, T, n, i0 + r, c0, Sc, G + r * ld, nullptr);
      return std::max(m[r], masked ? row_scores<true>(P, T, w, score) : row_scores<false>(P, T, w, score));
    };
    auto one_row = [&](int64_t r, const Row& w, const float* score, float mn) {
      if (mn == kNegInf) {  // nothing to attend to yet
        std::memset(w.g, 0, sizeof(float) * Sc);
        alpha[r] = 1.0f;
        return;
      }
      alpha[r] = m[r] == kNegInf ? 0.0f : std::exp(m[r] - mn);
      l[r] = l[r] * alpha[r] + exp_row(score, mn, w.g, w.jpad, Sc);
      m[r] = mn;
    };
    float *sa = ws.rows.data(), *sb = ws.rows2.data();
    for (int64_t r = 0; r < rows; r += 2) {
      Row wa, wb;
      const float ma = scores(r, sa, wa);
      if (r + 1 == rows) {
        one_row(r, wa, sa, ma);
        continue;
      }
      const float mb = scores(r + 1, sb, wb);
      if (ma == kNegInf || mb == kNegInf) {
        one_row(r, wa, sa, ma);
        one_row(r + 1, wb, sb, mb);
        continue;
      }
      alpha[r] = m[r] == kNegInf ? 0.0f : std::exp(m[r] - ma);
      alpha[r + 1] = m[r + 1] == kNegInf ? 0.0f : std::exp(m[r + 1] - mb);
      float suma, sumb;
      exp_rows2(sa, ma, wa.g, wa.jpad, sb, mb, wb.g, wb.jpad, Sc, suma, sumb);
      l[r] = l[r] * alpha[r] + suma;
      l[r + 1] = l[r + 1] * alpha[r + 1] + sumb;
      m[r] = ma, m[r + 1] = mb;
    }
    if (c0 > 0)
      for (int64_t r = 0; r < rows; ++r) {
        float* o = out + r * P.out.sr;
        const float a = alpha[r];
#pragma omp simd
        for (int64_t d = 0; d < P.Ev; ++d) o[d] *= a;
      }
    gemm_ab(P, (int)rows, (int)P.Ev, (int)Sc, G, ld, row_ptr(P.v, n, P.H, c0), P.v.sr, c0 > 0 ? 1.0f : 0.0f, out,
            P.out.sr);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const bool none = m[r] == kNegInf;
    const float inv = none ? 0.0f : 1.0f / l[r];
    float* o = out + r * P.out.sr;
#pragma omp simd
    for (int64_t d = 0; d < P.Ev; ++d) o[d] *= inv;
    P.lse[n * P.L + i0 + r] = none ? INFINITY : m[r] + std::log(l[r]);
  }
}

struct Grads {  // per-token gradients of the terms, (B·H, rows, 3): a|σ|ρ
  std::vector<float> q, k;
};

// add this thread's accumulators of its current head into the shared outputs
void flush(const Problem& P, Work& ws, Grads& Gr) {
  if (ws.head < 0) return;
  const int64_t n = ws.head;
  const bool whole = whole_heads(P);
#pragma omp critical(geoattn_flush)
  {
    for (int64_t j = 0; !whole && j < P.S; ++j) {  // a whole head's dK and dV were written directly
      float* dk = row_ptr_mut(P.dk, n, P.H, j);
      float* dv = row_ptr_mut(P.dv, n, P.H, j);
      const float* sk = ws.dk.data() + j * P.D;
      const float* sv = ws.dv.data() + j * P.Ev;
      for (int64_t d = 0; d < P.D; ++d) dk[d] += sk[d];
      for (int64_t d = 0; d < P.Ev; ++d) dv[d] += sv[d];
    }
    for (int t = 0; t < 3; ++t) {
      float* out = Gr.k.data() + (n * 3 + t) * P.S;
      const float* src = ws.gk.data() + t * padded(P.S);
      for (int64_t j = 0; j < P.S; ++j) out[j] += src[j];
    }
    P.dkappa[n % P.H] += ws.gkap;
    P.dmu[n % P.H] += ws.gmu;
  }
  if (!whole) {
    std::fill(ws.dk.begin(), ws.dk.end(), 0.0f);
    std::fill(ws.dv.begin(), ws.dv.end(), 0.0f);
  }
  std::fill(ws.gk.begin(), ws.gk.end(), 0.0f);
  ws.gkap = ws.gmu = 0.0;
  ws.head = -1;
}

void backward_item(const Problem& P, const Terms& T, Grads& Gr, int64_t item, Work& ws) {
  const int64_t n = item / blocks(P), i0 = (item % blocks(P)) * P.bq;
  if (ws.head != n) {
    flush(P, ws, Gr);
    ws.head = n;
  }
  const int64_t rows = std::min(P.bq, P.L - i0);
  const int64_t S = P.causal ? std::min(P.S, i0 + rows) : P.S;
  const float* q = row_ptr(P.q, n, P.H, i0);
  const float* dout = row_ptr(P.dout, n, P.H, i0);
  float* dq = row_ptr_mut(P.dq, n, P.H, i0);
  for (int64_t r = 0; r < rows; ++r) {  // rowsum(dO ⊙ O)
    const float* o = row_ptr(P.out, n, P.H, i0 + r);
    ws.delta[r] = (float)dot_double(dout + r * P.dout.sr, o, P.Ev);
  }
  std::fill(ws.acc.begin(), ws.acc.end(), 0.0f);
  if (S == 0)
    for (int64_t r = 0; r < rows; ++r) std::memset(dq + r * P.dq.sr, 0, sizeof(float) * P.D);
  const bool masked = has_mask(P), whole = whole_heads(P);
  const int64_t ps = padded(P.S);
  for (int64_t c0 = 0; c0 < S; c0 += P.chunk) {
    const int64_t Sc = std::min<int64_t>(P.chunk, S - c0), ld = lanes_up(Sc);
    float* G = ws.tile.data();
    float* dP = ws.dtile.data();
    const float* kc = row_ptr(P.k, n, P.H, c0);
    gemm_abt(P, (int)rows, (int)Sc, (int)P.D, q, P.q.sr, kc, P.k.sr, 0.0f, G, ld);
    gemm_abt(P, (int)rows, (int)Sc, (int)P.Ev, dout, P.dout.sr, row_ptr(P.v, n, P.H, c0), P.v.sr, 0.0f, dP, ld);
    for (int64_t r = 0; r < rows; ++r) {
      Row w = make_row(P, T, n, i0 + r, c0, Sc, G + r * ld, dP + r * ld);
      w.delta = ws.delta[r];
      w.gkb = ws.gk.data() + c0, w.gks = ws.gk.data() + ps + c0, w.gkr = ws.gk.data() + 2 * ps + c0;
      w.gkap = w.gmu = 0.0;
      masked ? row_backward<true>(P, T, w, ws.rows.data()) : row_backward<false>(P, T, w, ws.rows.data());
      float* acc = ws.acc.data() + 3 * r;
      acc[0] += w.ga, acc[1] += w.gs, acc[2] += w.gr;
      ws.gkap += w.gkap;
      ws.gmu += w.gmu;
    }
    // dV_c += Pᵀ dO,  dQ += dGram K_c,  dK_c += dGramᵀ Q
    float* dv = whole ? row_ptr_mut(P.dv, n, P.H, c0) : ws.dv.data() + c0 * P.Ev;
    float* dk = whole ? row_ptr_mut(P.dk, n, P.H, c0) : ws.dk.data() + c0 * P.D;
    const float add = whole ? 0.0f : 1.0f;  // a whole head's chunk rows are written once
    gemm_atb(P, (int)Sc, (int)P.Ev, (int)rows, G, ld, dout, P.dout.sr, add, dv, whole ? P.dv.sr : P.Ev);
    gemm_ab(P, (int)rows, (int)P.D, (int)Sc, dP, ld, kc, P.k.sr, c0 > 0 ? 1.0f : 0.0f, dq, P.dq.sr);
    gemm_atb(P, (int)Sc, (int)P.D, (int)rows, dP, ld, q, P.q.sr, add, dk, whole ? P.dk.sr : P.D);
  }
  if (whole) zero_key_grads(P, n, S);  // causal: the keys after the last query
  for (int64_t r = 0; r < rows; ++r) {
    float* gq = Gr.q.data() + n * 3 * P.L + (i0 + r);
    const float* acc = ws.acc.data() + 3 * r;
    gq[0] = acc[0], gq[P.L] = acc[1], gq[2 * P.L] = acc[2];
  }
}

// κ of head n for the kinds whose terms depend on it (stereographic, Lorentz); 0 for the others
inline double head_kappa(const Problem& P, int64_t n) {
  return P.kind == kStereographic || P.kind == kLorentz ? (double)P.kappa[n % P.H] : 0.0;
}

// The terms of one head's tokens on one side from their norms (the vectorised loops where there is one);
// returns how many tokens the clip shortened.
int64_t side_terms(const Problem& P, double kappa, bool key, const double* norms, int64_t rows, float* out,
                   int64_t stride) {
  if (P.kind == kSphere) {
    float* rho = out + 2 * stride;  // ρ, at the stereographic ρ's slot
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) rho[r] = (float)(norms[r] > 0 ? 1.0 / (norms[r] > 0 ? norms[r] : 1.0) : 0.0);
    return 0;
  }
  if (P.kind == kLorentz)
    return key ? lorentz_terms<true>(norms, rows, kappa, P.inv_sqrt_e, P.clip, out, stride)
               : lorentz_terms<false>(norms, rows, kappa, P.inv_sqrt_e, P.clip, out, stride);
  if (P.kind == kStereographic && kappa < 0)
    return key ? stereo_terms_hyperbolic<true>(norms, rows, kappa, P.inv_sqrt_e, P.clip, out, stride)
               : stereo_terms_hyperbolic<false>(norms, rows, kappa, P.inv_sqrt_e, P.clip, out, stride);
  int64_t clipped = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double nr = norms[r];
    if (affine_kind(P.kind)) {  // cosine, l2
      radial_terms(P.kind, nr, key, out, stride, r);
      continue;
    }
    const TokenTerms t = stereo_token(nr, kappa, P.inv_sqrt_e, P.clip, key);
    out[0 * stride + r] = (float)t.a;
    out[1 * stride + r] = (float)t.sig;
    out[2 * stride + r] = (float)t.rho;
    out[3 * stride + r] = (float)t.e1;
    out[4 * stride + r] = (float)t.e2;
    clipped += t.clipped;
  }
  return clipped;
}

// fn(key, rows, x) for a head's queries (key = false, rows = L, x = q), then its keys (true, S, k)
template <class Fn>
inline void for_each_side(const Problem& P, Fn&& fn) {
  fn(false, P.L, P.q);
  fn(true, P.S, P.k);
}

// Fill the caller's term buffers (forward only; the backward reads them back).
void compute_terms(const Problem& P) {
  const int64_t N = P.B * P.H;
  int64_t clipped = 0;
#pragma omp parallel for schedule(static) num_threads(P.nthreads) reduction(+ : clipped)
  for (int64_t n = 0; n < N; ++n) {
    const double kappa = head_kappa(P, n);
    for_each_side(P, [&](bool key, int64_t rows, const View& x) {
      const int64_t stride = key ? key_stride(P) : rows;  // of a term's row
      float* out = (key ? P.kterms : P.qterms) + n * kTerms * stride;
      double* norms = (key ? P.knorm : P.qnorm) + n * rows;
      for (int64_t r = 0; r < rows; ++r) norms[r] = row_norm(row_ptr(x, n, P.H, r), P.D);
      clipped += side_terms(P, kappa, key, norms, rows, out, stride);
    });
  }
  if (P.clipped) *P.clipped = clipped;
}

// The chain through the per-token terms of one head's tokens on one side: fac[r] = (∂L/∂‖x_r‖)/‖x_r‖ (0 for
// a zero vector); returns their ∂L/∂κ. g: the slot gradients g_a, g_σ, g_ρ (3 rows of `rows`).
double side_chain(const Problem& P, double kappa, bool key, const double* norms,
                  int64_t rows, const float* g, float* fac) {
  if (P.kind == kLorentz)
    return key ? lorentz_chain<true>(norms, rows, kappa, P.inv_sqrt_e, P.clip, g, fac)
               : lorentz_chain<false>(norms, rows, kappa, P.inv_sqrt_e, P.clip, g, fac);
  if (P.kind == kStereographic && kappa < 0)
    return stereo_chain_hyperbolic(norms, rows, kappa, P.inv_sqrt_e, P.clip, g, fac);
  const double c = std::fabs(kappa);
  double g_kappa_sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const double nr = norms[r];
    fac[r] = 0.0f;
    if (nr <= 0 && !affine_kind(P.kind)) continue;  // a zero vector: no direction, no radius term
    double g_norm = 0.0;
    if (affine_kind(P.kind)) {  // cosine, l2: no κ
      const double gs[3] = {g[r], g[rows + r], g[2 * rows + r]};
      g_norm = radial_chain(P.kind, nr, key, gs);
    } else if (P.kind == kSphere) {
      g_norm = -(double)g[2 * rows + r] / (nr * nr);  // ρ = 1/‖x‖
    } else {
      bool clipped;
      const double a = tangent_norm(nr, kappa, P.inv_sqrt_e, P.clip, clipped);
      double dsa, dsk;
      sigma_grads(a, kappa, dsa, dsk);
      const double g_a = (double)g[r] + (double)g[rows + r] * dsa;
      g_kappa_sum += (double)g[rows + r] * dsk;
      if (clipped) g_kappa_sum += g_a * a / (2.0 * c);  // a = clip/√c: ∂a/∂κ = a/(2c) for κ = −c
      else g_norm += g_a * P.inv_sqrt_e;
      g_norm -= (double)g[2 * rows + r] / (nr * nr);
    }
    if (nr > 0) fac[r] = (float)(g_norm / nr);
  }
  return g_kappa_sum;
}

// The chain through the per-token terms: g_a, g_σ, g_ρ → ∂/∂‖x‖ (added to dx along x) and ∂/∂κ.
void token_chain(const Problem& P, const Terms& T, const Grads& Gr) {
  const int64_t N = P.B * P.H;
  std::vector<double> gk(P.H, 0.0);
#pragma omp parallel num_threads(P.nthreads)
  {
    std::vector<double> mine(P.H, 0.0);
    std::vector<float> fac(std::max(P.L, P.S));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const double kappa = head_kappa(P, n);
      for_each_side(P, [&](bool key, int64_t rows, const View& x) {
        const View& dx = key ? P.dk : P.dq;
        const float* g = (key ? Gr.k.data() : Gr.q.data()) + n * 3 * rows;
        const double* norms = (key ? T.kn : T.qn) + n * rows;
        mine[n % P.H] += side_chain(P, kappa, key, norms, rows, g, fac.data());
        for (int64_t r = 0; r < rows; ++r) {
          if (norms[r] <= 0) continue;
          const float* xr = row_ptr(x, n, P.H, r);
          float* dr = row_ptr_mut(dx, n, P.H, r);
          const float f = fac[r];
          for (int64_t d = 0; d < P.D; ++d) dr[d] += f * xr[d];
        }
      });
    }
#pragma omp critical(geoattn_token_chain)
    for (int64_t h = 0; h < P.H; ++h) gk[h] += mine[h];
  }
  for (int64_t h = 0; h < P.H; ++h) P.dkappa[h] += gk[h];
}

template <class Fn>
void parallel_items(const Problem& P, bool backward, Fn&& fn, Grads* Gr) {
  const int64_t items = P.B * P.H * blocks(P);
  const int nth = std::max(1, (int)std::min<int64_t>(P.nthreads, items));
#pragma omp parallel num_threads(nth)
  {
    FlushDenormals ftz;
    Work ws;
    const int64_t tile = std::min(P.bq, P.L) * lanes_up(std::min<int64_t>(P.chunk, P.S));  // an item has ≤ L rows
    ws.tile.assign(tile, 0.0f);  // zeros: the padding columns past a chunk stay finite (see Row)
    ws.rows.resize(3 * padded(P.S));
    if (!backward) ws.rows2.resize(3 * padded(P.S));
    ws.m.resize(P.bq), ws.l.resize(P.bq), ws.alpha.resize(P.bq);
    if (backward) {
      ws.dtile.assign(tile, 0.0f);
      ws.delta.resize(P.bq), ws.acc.resize(3 * P.bq);
      if (!whole_heads(P)) {
        ws.dk.assign(P.S * P.D, 0.0f);
        ws.dv.assign(P.S * P.Ev, 0.0f);
      }
      ws.gk.assign(3 * padded(P.S), 0.0f);
    }
    // contiguous chunks: a thread's items share heads, so its accumulators are flushed rarely
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) fn(item, ws);
    if (backward) flush(P, ws, *Gr);
  }
}

}  // namespace geoattn_native

using namespace geoattn_native;

extern "C" {

// The layout of View and Problem and the constants Python passes on, by name, for abi.py to check its ctypes
// mirror against when it loads the library (sizes and offsets in bytes).
#define FIELD(T, f) {#T "." #f, (int64_t)offsetof(T, f)},
struct LayoutEntry {
  const char* name;
  int64_t value;
};
const LayoutEntry kLayout[] = {
    {"sizeof View", (int64_t)sizeof(View)}, {"sizeof Problem", (int64_t)sizeof(Problem)},
    FIELD(View, data) FIELD(View, sb) FIELD(View, sh) FIELD(View, sr) FIELD(Problem, B) FIELD(Problem, H)
    FIELD(Problem, L) FIELD(Problem, S) FIELD(Problem, D) FIELD(Problem, Ev) FIELD(Problem, bq) FIELD(Problem, kind)
    FIELD(Problem, causal) FIELD(Problem, nthreads) FIELD(Problem, chunk) FIELD(Problem, q) FIELD(Problem, k)
    FIELD(Problem, v) FIELD(Problem, out) FIELD(Problem, lse) FIELD(Problem, kappa) FIELD(Problem, mu)
    FIELD(Problem, inv_sqrt_e) FIELD(Problem, clip) FIELD(Problem, eta) FIELD(Problem, want_dkappa)
    FIELD(Problem, allowed) FIELD(Problem, am_b) FIELD(Problem, am_h) FIELD(Problem, am_i) FIELD(Problem, am_j)
    FIELD(Problem, bias) FIELD(Problem, bm_b) FIELD(Problem, bm_h) FIELD(Problem, bm_i) FIELD(Problem, bm_j)
    FIELD(Problem, clipped) FIELD(Problem, qterms) FIELD(Problem, kterms) FIELD(Problem, qnorm) FIELD(Problem, knorm)
    FIELD(Problem, dout) FIELD(Problem, dq) FIELD(Problem, dk) FIELD(Problem, dv) FIELD(Problem, dkappa)
    FIELD(Problem, dmu) FIELD(Problem, dkbias) FIELD(Problem, dqouter) FIELD(Problem, dkouter)
    FIELD(Problem, dqfactor) FIELD(Problem, dkfactor) FIELD(Problem, outer) FIELD(Problem, pad3_)
    FIELD(Problem, sgemm) FIELD(Problem, metric) FIELD(Problem, ktilde) FIELD(Problem, dmetric)
    {"kind.stereographic", kStereographic}, {"kind.sphere", kSphere}, {"kind.affine", kAffine},
    {"kind.lorentz", kLorentz}, {"kind.cosine", kCosine}, {"kind.l2", kL2}, {"kind.metric", kMetric},
    {"kTerms", kTerms}, {"kLanes", kLanes},
};
#undef FIELD

// Writes up to `cap` entries of the table into names and values; returns the table's length.
int64_t geoattn_native_layout(const char** names, int64_t* values, int64_t cap) {
  const int64_t n = sizeof(kLayout) / sizeof(kLayout[0]);
  for (int64_t i = 0; i < std::min(n, cap); ++i) names[i] = kLayout[i].name, values[i] = kLayout[i].value;
  return n;
}

void geoattn_forward(const Problem* P) {
  FlushDenormals ftz;
  Problem Q = *P;
  if (P->kind == kMetric) {  // the rows' keys are k̃ = G k
    metric_terms(*P);
    Q.k = ktilde_view(*P);
  } else if (P->kind != kAffine) {
    compute_terms(*P);  // affine: the caller wrote its terms (affine.h)
  }
  const Terms T(Q);
  parallel_items(Q, false, [&](int64_t item, Work& ws) { forward_item(Q, T, item, ws); }, nullptr);
}

void geoattn_backward(const Problem* P) {
  FlushDenormals ftz;
  Problem Q = *P;
  if (P->kind == kMetric) Q.k = ktilde_view(*P);  // the rows accumulate dk̃ into P.dk; metric_chain makes it dk
  const Terms T(Q);
  Grads Gr;
  Gr.q.assign(P->B * P->H * 3 * P->L, 0.0f);
  Gr.k.assign(P->B * P->H * 3 * P->S, 0.0f);
  if (!whole_heads(*P)) {
#pragma omp parallel for schedule(static) num_threads(P->nthreads)
    for (int64_t n = 0; n < P->B * P->H; ++n) zero_key_grads(*P, n, 0);
  }
  parallel_items(Q, true, [&](int64_t item, Work& ws) { backward_item(Q, T, Gr, item, ws); }, &Gr);
  if (P->kind == kMetric) {
    metric_chain(*P, Gr.k.data());
  } else if (P->kind == kAffine) {  // the terms' gradients back to the caller (its autograd carries them on)
    for (int64_t n = 0; n < P->B * P->H; ++n) {
      const float* gq = Gr.q.data() + n * 3 * P->L;
      const float* gk = Gr.k.data() + n * 3 * P->S;
      std::memcpy(P->dkbias + n * P->S, gk, sizeof(float) * P->S);
      std::memcpy(P->dkfactor + n * P->S, gk + 2 * P->S, sizeof(float) * P->S);
      std::memcpy(P->dqfactor + n * P->L, gq + P->L, sizeof(float) * P->L);
      if (P->outer) {
        std::memcpy(P->dkouter + n * P->S, gk + P->S, sizeof(float) * P->S);
        std::memcpy(P->dqouter + n * P->L, gq, sizeof(float) * P->L);
      }
    }
  } else {
    token_chain(*P, T, Gr);
  }
}

}  // extern "C"
