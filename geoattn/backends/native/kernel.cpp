// geoattn native CPU kernel: fused geometric attention, forward and backward, in O(L) memory.
//
// FlashAttention's structure (Dao et al., NeurIPS 2022) with whole key rows. A work item is one head and
// a block of query rows. A thread computes the Gram tile G = Q_blk Kᵀ with the BLAS sgemm it is given
// (MKL's, from libtorch_cpu), turns it row by row into normalised probabilities (forward) or into dGram
// and the gradients of its per-token and per-head terms (backward), and multiplies back (P V; dGram K,
// dGramᵀ Q, Pᵀ dO). A tile (bq × S) stays in the thread's cache; nothing of size L × S is allocated.
// Per-token terms (norms, radii, sinh factors) are computed here in double precision, once per call.
//
// Why by hand: the score chain (gap → distance → softmax) runs in one vectorised pass per element, and
// nearly parallel pairs need a data-dependent exact recomputation that neither SDPA nor a compiled torch
// graph can express. geoattn's dense float64 backend is the oracle this file is tested against.
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
#include "sphere.h"
#include "stereographic.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace geoattn_native {

template <bool BACKWARD, bool M>
void run_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  if (P.kind == kSphere) {
    BACKWARD ? sphere_backward_row<M>(P, T, w, scratch) : sphere_forward_row<M>(P, T, w, scratch);
    return;
  }
  const float kappa = P.kappa[w.n % P.H];
  if (kappa < 0.0f) BACKWARD ? stereo_backward_row<-1, M>(P, T, w, scratch) : stereo_forward_row<-1, M>(P, T, w, scratch);
  else if (kappa > 0.0f) BACKWARD ? stereo_backward_row<1, M>(P, T, w, scratch) : stereo_forward_row<1, M>(P, T, w, scratch);
  else BACKWARD ? stereo_backward_row<0, M>(P, T, w, scratch) : stereo_forward_row<0, M>(P, T, w, scratch);
}

template <bool BACKWARD>
void run_row_any(const Problem& P, const Terms& T, Row& w, float* scratch) {
  (P.bias || P.allowed) ? run_row<BACKWARD, true>(P, T, w, scratch) : run_row<BACKWARD, false>(P, T, w, scratch);
}

// ---------------------------------------------------------------------------------------------
// Work items.
// ---------------------------------------------------------------------------------------------
struct Work {
  std::vector<float> tile, dtile, rows;  // (bq × S), (bq × S), 3 padded row buffers
  std::vector<float> dk, dv, gk;         // backward: the current head's dK, dV, key-term gradients
  double gkap = 0, gmu = 0;
  int64_t head = -1;
};

inline int64_t blocks(const Problem& P) { return (P.L + P.bq - 1) / P.bq; }

Row make_row(const Problem& P, const Terms& T, int64_t n, int64_t i, int64_t S, float* g, float* dp) {
  Row w{};
  w.n = n, w.i = i, w.S = S, w.jmax = P.causal ? std::min(S, i + 1) : S;
  // whole vectors for short causal rows: masked lanes are cheaper than the scalar epilogue of a short loop
  w.jvec = std::min(S, (w.jmax + 15) / 16 * 16);
  w.g = g, w.dp = dp;
  w.lse = P.lse + n * P.L + i;
  w.qv = row_ptr(P.q, n, P.H, i);
  w.kbase = row_ptr(P.k, n, P.H, 0);
  w.k_sr = P.k.sr;
  w.qn = T.qn[n * P.L + i];
  w.kn = T.kn + n * P.S;
  return w;
}

void forward_item(const Problem& P, const Terms& T, int64_t item, Work& ws) {
  const int64_t n = item / blocks(P), i0 = (item % blocks(P)) * P.bq;
  const int64_t rows = std::min(P.bq, P.L - i0);
  const int64_t S = P.causal ? std::min(P.S, i0 + rows) : P.S;  // keys after the block's last query never count
  float* G = ws.tile.data();
  gemm_abt(P, (int)rows, (int)S, (int)P.D, row_ptr(P.q, n, P.H, i0), P.q.sr, row_ptr(P.k, n, P.H, 0), P.k.sr, 0.0f,
           G, S);
  for (int64_t r = 0; r < rows; ++r) {
    Row w = make_row(P, T, n, i0 + r, S, G + r * S, nullptr);
    run_row_any<false>(P, T, w, ws.rows.data());
  }
  gemm_ab(P, (int)rows, (int)P.Ev, (int)S, G, S, row_ptr(P.v, n, P.H, 0), P.v.sr, 0.0f,
          row_ptr_mut(P.out, n, P.H, i0), P.out.sr);
}

struct Grads {  // per-token gradients of the terms, (B·H, rows, 3): a|σ|ρ
  std::vector<float> q, k;
};

// add this thread's accumulators of its current head into the shared outputs
void flush(const Problem& P, Work& ws, Grads& Gr) {
  if (ws.head < 0) return;
  const int64_t n = ws.head;
#pragma omp critical(geoattn_flush)
  {
    for (int64_t j = 0; j < P.S; ++j) {
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
  std::fill(ws.dk.begin(), ws.dk.end(), 0.0f);
  std::fill(ws.dv.begin(), ws.dv.end(), 0.0f);
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
  float* G = ws.tile.data();
  float* dP = ws.dtile.data();
  const float* q = row_ptr(P.q, n, P.H, i0);
  const float* dout = row_ptr(P.dout, n, P.H, i0);
  const float* kb = row_ptr(P.k, n, P.H, 0);
  const float* vb = row_ptr(P.v, n, P.H, 0);
  gemm_abt(P, (int)rows, (int)S, (int)P.D, q, P.q.sr, kb, P.k.sr, 0.0f, G, S);
  gemm_abt(P, (int)rows, (int)S, (int)P.Ev, dout, P.dout.sr, vb, P.v.sr, 0.0f, dP, S);
  const int64_t ps = padded(P.S);
  for (int64_t r = 0; r < rows; ++r) {
    Row w = make_row(P, T, n, i0 + r, S, G + r * S, dP + r * S);
    const float* o = row_ptr(P.out, n, P.H, i0 + r);
    const float* dor = dout + r * P.dout.sr;
    double delta = 0.0;  // rowsum(dO ⊙ O)
    for (int64_t d = 0; d < P.Ev; ++d) delta += (double)dor[d] * o[d];
    w.delta = (float)delta;
    w.gkb = ws.gk.data(), w.gks = ws.gk.data() + ps, w.gkr = ws.gk.data() + 2 * ps;
    w.gkap = w.gmu = 0.0;
    run_row_any<true>(P, T, w, ws.rows.data());
    float* gq = Gr.q.data() + n * 3 * P.L + (i0 + r);
    gq[0] = w.ga, gq[P.L] = w.gs, gq[2 * P.L] = w.gr;
    ws.gkap += w.gkap;
    ws.gmu += w.gmu;
  }
  // dV += Pᵀ dO,  dQ = dGram K,  dK += dGramᵀ Q
  gemm_atb(P, (int)S, (int)P.Ev, (int)rows, G, S, dout, P.dout.sr, 1.0f, ws.dv.data(), P.Ev);
  gemm_ab(P, (int)rows, (int)P.D, (int)S, dP, S, kb, P.k.sr, 0.0f, row_ptr_mut(P.dq, n, P.H, i0), P.dq.sr);
  gemm_atb(P, (int)S, (int)P.D, (int)rows, dP, S, q, P.q.sr, 1.0f, ws.dk.data(), P.D);
}

// The chain through the per-token terms: g_a, g_σ, g_ρ → ∂/∂‖x‖ (added to dx along x) and ∂/∂κ.
void token_chain(const Problem& P, const Terms& T, const Grads& Gr) {
  const int64_t N = P.B * P.H;
  std::vector<double> gk(P.H, 0.0);
#pragma omp parallel num_threads(P.nthreads)
  {
    std::vector<double> mine(P.H, 0.0);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const double kappa = P.kind == kStereographic ? (double)P.kappa[n % P.H] : 0.0;
      const double c = std::fabs(kappa);
      for (int side = 0; side < 2; ++side) {
        const bool key = side == 1;
        const int64_t rows = key ? P.S : P.L;
        const View& x = key ? P.k : P.q;
        const View& dx = key ? P.dk : P.dq;
        const float* g = (key ? Gr.k.data() : Gr.q.data()) + n * 3 * rows;
        const double* norms = (key ? T.kn : T.qn) + n * rows;
        for (int64_t r = 0; r < rows; ++r) {
          const double nr = norms[r];
          if (nr <= 0) continue;
          double g_norm = 0.0;
          if (P.kind == kSphere) {
            g_norm = -(double)g[2 * rows + r] / (nr * nr);  // ρ = 1/‖x‖
          } else {
            bool clipped;
            const double a = tangent_norm(nr, kappa, P.inv_sqrt_e, P.clip, clipped);
            double dsa, dsk;
            sigma_grads(a, kappa, dsa, dsk);
            const double g_a = (double)g[r] + (double)g[rows + r] * dsa;
            mine[n % P.H] += (double)g[rows + r] * dsk;
            if (clipped) mine[n % P.H] += g_a * a / (2.0 * c);  // a = clip/√c: ∂a/∂κ = a/(2c) for κ = −c
            else g_norm += g_a * P.inv_sqrt_e;
            g_norm -= (double)g[2 * rows + r] / (nr * nr);
          }
          const float* xr = row_ptr(x, n, P.H, r);
          float* dr = row_ptr_mut(dx, n, P.H, r);
          const float f = (float)(g_norm / nr);
          for (int64_t d = 0; d < P.D; ++d) dr[d] += f * xr[d];
        }
      }
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
    ws.tile.resize(P.bq * P.S);
    ws.rows.resize(3 * padded(P.S));
    if (backward) {
      ws.dtile.resize(P.bq * P.S);
      ws.dk.assign(P.S * P.D, 0.0f);
      ws.dv.assign(P.S * P.Ev, 0.0f);
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

int geoattn_native_abi() { return 4; }

void geoattn_forward(const Problem* P) {
  FlushDenormals ftz;
  compute_terms(*P);
  const Terms T(*P);
  parallel_items(*P, false, [&](int64_t item, Work& ws) { forward_item(*P, T, item, ws); }, nullptr);
}

void geoattn_backward(const Problem* P) {
  FlushDenormals ftz;
  const Terms T(*P);
  Grads Gr;
  Gr.q.assign(P->B * P->H * 3 * P->L, 0.0f);
  Gr.k.assign(P->B * P->H * 3 * P->S, 0.0f);
  parallel_items(*P, true, [&](int64_t item, Work& ws) { backward_item(*P, T, Gr, item, ws); }, &Gr);
  token_chain(*P, T, Gr);
}

}  // extern "C"
