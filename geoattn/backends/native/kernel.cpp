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
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

extern "C" {

// Fortran BLAS sgemm (column-major), e.g. MKL's SGEMM as exported by libtorch_cpu.
typedef void (*sgemm_fn)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

enum Kind : int32_t { kStereographic = 0, kSphere = 1 };

// A 4-D tensor (B, H, rows, cols) with a contiguous last dim, by its strides (elements).
struct View {
  float* data;
  int64_t sb, sh, sr;
};

struct Problem {
  int64_t B, H, L, S, D, Ev;  // queries (B, H, L, D), keys (B, H, S, D), values (B, H, S, Ev)
  int64_t bq;                 // query rows per work item
  int32_t kind, causal, nthreads, pad_;
  View q, k, v, out;          // out (B, H, L, Ev)
  float* lse;                 // (B·H, L): log-sum-exp of each row (+inf for a row with no key)
  const float* kappa;         // (H,) signed curvature (stereographic)
  const float* mu;            // (H,) score multiplier: score = μ·d (stereographic), μ·θ (sphere)
  float inv_sqrt_e;           // 1/√E: the RMS scale of the tangent vectors
  float clip;                 // bound on √|κ|‖u‖ for κ < 0
  float eta;                  // near-pair threshold on the gap
  float pad2_;
  const uint8_t* allowed;     // bool mask (1 = take part) or null, element (b, h, i, j) by strides
  int64_t am_b, am_h, am_i, am_j;
  const float* bias;          // additive float mask or null
  int64_t bm_b, bm_h, bm_i, bm_j;
  int64_t* clipped;           // out: number of (query or key) vectors the clip shortened
  // per-token terms, written by the forward and read by the backward (caller-owned, kept between them):
  float *qterms, *kterms;     // (B·H, kTerms, L), (B·H, kTerms, S)
  double *qnorm, *knorm;      // raw norms ‖q‖, ‖k‖ in double, (B·H, L), (B·H, S)
  // backward
  View dout, dq, dk, dv;      // dq written, dk/dv zero-filled by the caller
  double* dkappa;             // (H,) accumulated
  double* dmu;                // (H,) accumulated
  sgemm_fn sgemm;
};

}  // extern "C"

namespace {

// ---------------------------------------------------------------------------------------------
// Vectorisable elementary functions (Cephes single precision, < 2 ulp on their domains).
// ---------------------------------------------------------------------------------------------
inline float as_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t as_int(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

inline float fexp(float x) {  // callers select 0 for masked (-inf) entries themselves
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * (-2.12194440e-4f);
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  return p * as_float(((int32_t)n + 127) << 23);
}

inline float flog(float x) {  // positive normal x
  const int32_t ix = as_int(x);
  float e = (float)(((ix >> 23) & 0xff) - 126);
  float m = as_float((ix & 0x007fffff) | 0x3f000000);  // x = m·2^e, m in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return m + y + e * 0.693359375f;
}

inline float fasin(float x) {  // x in [0, 1]
  const bool big = x > 0.5f;
  const float z = big ? 0.5f * (1.0f - x) : x * x;
  const float xx = big ? std::sqrt(z) : x;
  const float p = ((((4.2163199048E-2f * z + 2.4181311049E-2f) * z + 4.5470025998E-2f) * z + 7.4953002686E-2f) * z +
                   1.6666752422E-1f) * z * xx + xx;
  return big ? 1.57079632679489661923f - 2.0f * p : p;
}

constexpr float kNegInf = -INFINITY;
constexpr float kSeriesV = 0.01f;   // |κ Δ²| below which R uses its Taylor series
constexpr float kSeriesX = 1e-3f;   // |κ s²| below which H uses its Taylor series
constexpr double kSeriesSigma = 1e-4;  // |4κa²| below which σ uses its Taylor series
constexpr float kSqrtMin = 1e-14f;  // floor under s² (finite gradient at coincident points)

// Flush denormals to zero while a kernel runs (tiny probabilities and their gradients would take the
// slow microcoded path: measured 1.7× on the backward); the caller's mode is restored.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Row-major GEMMs through a column-major sgemm.
//   ab:  C(m×n) = A(m×k)·B(k×n)     abt: C = A·Bᵀ with B (n×k)     atb: C = Aᵀ·B with A (k×m), B (k×n)
inline void gemm(const Problem& P, const char* ta, const char* tb, int m, int n, int k, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const float one = 1.0f;
  const int la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  P.sgemm(tb, ta, &n, &m, &k, &one, B, &lb, A, &la, &beta, C, &lc);
}
inline void gemm_ab(const Problem& P, int m, int n, int k, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float beta, float* C, int64_t ldc) {
  gemm(P, "N", "N", m, n, k, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm_abt(const Problem& P, int m, int n, int k, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float beta, float* C, int64_t ldc) {
  gemm(P, "N", "T", m, n, k, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm_atb(const Problem& P, int m, int n, int k, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float beta, float* C, int64_t ldc) {
  gemm(P, "T", "N", m, n, k, A, lda, B, ldb, beta, C, ldc);
}

inline const float* row_ptr(const View& t, int64_t n, int64_t H, int64_t r) {
  return t.data + (n / H) * t.sb + (n % H) * t.sh + r * t.sr;
}
inline float* row_ptr_mut(const View& t, int64_t n, int64_t H, int64_t r) {
  return t.data + (n / H) * t.sb + (n % H) * t.sh + r * t.sr;
}

// Row buffers and accumulators are spaced by a non-power-of-two stride: arrays 4 KiB apart alias in
// the store-forwarding logic (measured 2.5× on the backward).
inline int64_t padded(int64_t S) { return S + 80; }

// ---------------------------------------------------------------------------------------------
// Per-token terms, computed once per call in double precision.
// Stereographic: t = (a, σ, ρ, α, α') for queries, (b, σ', ρ', β, β') for keys; sphere: ρ only.
// ---------------------------------------------------------------------------------------------
constexpr int kTerms = 5;

struct Terms {  // views of the caller's buffers
  const float *q, *k;
  const double *qn, *kn;
  int64_t L = 0, S = 0;
  Terms(const Problem& P) : q(P.qterms), k(P.kterms), qn(P.qnorm), kn(P.knorm), L(P.L), S(P.S) {}
  const float* qt(int64_t n, int t) const { return q + (n * kTerms + t) * L; }
  const float* kt(int64_t n, int t) const { return k + (n * kTerms + t) * S; }
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

// κ-stereographic terms of a token of raw norm n (one exponential, or one sincos); key: β-style factors.
inline TokenTerms stereo_token(double n, double kappa, double inv_sqrt_e, double clip, bool key) {
  TokenTerms t;
  const double c = std::fabs(kappa), sc = std::sqrt(c);
  const double a = tangent_norm(n, kappa, inv_sqrt_e, clip, t.clipped);
  t.a = a;
  t.rho = n > 0 ? 1.0 / n : 0.0;
  const double v = 4.0 * kappa * a * a;
  const bool series = std::fabs(v) < kSeriesSigma;
  if (kappa < 0) {
    const double e = std::exp(sc * a), ie = 1.0 / e;
    t.sig = series ? a * (1.0 - v / 6.0 + v * v / 120.0) : (e * e - ie * ie) / (4.0 * sc);  // sinh(2√c a)/(2√c)
    t.e1 = key ? ie / 2 : e;
    t.e2 = key ? e / 2 : ie;
  } else if (kappa > 0) {
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

// ∂σ/∂a and ∂σ/∂κ (at fixed a) of a token's σ(a, κ)
inline void sigma_grads(double a, double kappa, double& dsig_da, double& dsig_dk) {
  const double v = 4.0 * kappa * a * a, c = std::fabs(kappa), sc = std::sqrt(c);
  if (std::fabs(v) < kSeriesSigma) {  // σ = a − (2/3)κa³ + (2/15)κ²a⁵
    dsig_da = 1.0 - 2.0 * kappa * a * a + (2.0 / 3.0) * kappa * kappa * a * a * a * a;
    dsig_dk = -(2.0 / 3.0) * a * a * a + (4.0 / 15.0) * kappa * a * a * a * a * a;
    return;
  }
  if (kappa < 0) {
    const double e2 = std::exp(2.0 * sc * a), ie2 = 1.0 / e2;
    const double ch = (e2 + ie2) / 2, sig = (e2 - ie2) / (4.0 * sc);
    dsig_da = ch;
    dsig_dk = -(a * ch - sig) / (2.0 * c);  // ∂/∂κ = −∂/∂c
  } else {
    const double y = 2.0 * sc * a, co = std::cos(y), sig = std::sin(y) / (2.0 * sc);
    dsig_da = co;
    dsig_dk = (a * co - sig) / (2.0 * c);
  }
}

inline double row_norm(const float* x, int64_t D) {
  double s = 0.0;
  for (int64_t d = 0; d < D; ++d) s += (double)x[d] * x[d];
  return std::sqrt(s);
}

// Fill the caller's term buffers (forward only; the backward reads them back).
void compute_terms(const Problem& P) {
  const int64_t N = P.B * P.H;
  int64_t clipped = 0;
#pragma omp parallel for schedule(static) num_threads(P.nthreads) reduction(+ : clipped)
  for (int64_t n = 0; n < N; ++n) {
    const double kappa = P.kind == kStereographic ? (double)P.kappa[n % P.H] : 0.0;
    for (int side = 0; side < 2; ++side) {
      const bool key = side == 1;
      const int64_t rows = key ? P.S : P.L;
      const View& x = key ? P.k : P.q;
      float* out = (key ? P.kterms : P.qterms) + n * kTerms * rows;
      double* norms = (key ? P.knorm : P.qnorm) + n * rows;
      for (int64_t r = 0; r < rows; ++r) {
        const double nr = row_norm(row_ptr(x, n, P.H, r), P.D);
        norms[r] = nr;
        if (P.kind == kSphere) {
          out[2 * rows + r] = (float)(nr > 0 ? 1.0 / nr : 0.0);  // ρ, at the stereographic ρ's slot
          continue;
        }
        const TokenTerms t = stereo_token(nr, kappa, P.inv_sqrt_e, P.clip, key);
        out[0 * rows + r] = (float)t.a;
        out[1 * rows + r] = (float)t.sig;
        out[2 * rows + r] = (float)t.rho;
        out[3 * rows + r] = (float)t.e1;
        out[4 * rows + r] = (float)t.e2;
        clipped += t.clipped;
      }
    }
  }
  if (P.clipped) *P.clipped = clipped;
}

// ---------------------------------------------------------------------------------------------
// Rows.
// ---------------------------------------------------------------------------------------------
// ½‖q/‖q‖ ∓ k/‖k‖‖² in double, normalised with the double norms (the rounding of float32 norms would add
// ~ε² to a gap that can itself be ~ε²); sign = -1: the gap, +1: 2 − gap.
inline float exact_gap(const float* qv, const float* kv, double qn, double kn, int64_t D, double sign) {
  const double rq = qn > 0 ? 1.0 / qn : 0.0;
  const double rk = (kn > 0 ? 1.0 / kn : 0.0) * -sign;
  double acc = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    const double x = rq * qv[d] - rk * kv[d];
    acc += x * x;
  }
  return (float)(0.5 * acc);
}

inline float clamped_gap(float gram, float rho, float rhok) {
  return std::min(std::max(1.0f - gram * rho * rhok, 0.0f), 2.0f);
}

struct Row {  // one query row of a tile
  int64_t n, i, jmax, jvec, S;  // keys 0..jmax take part; loops run to jvec = jmax rounded up to 16 (≤ S)
  float *g, *dp;   // tile rows: Gram in; P (and dGram) out
  float* lse;
  float delta;
  const float* qv;        // the raw query vector
  const float* kbase;     // row 0 of the head's keys
  int64_t k_sr;
  double qn;
  const double* kn;
  // backward accumulators (this thread's): per-key (gb, gσ', gρ'), per-query results, per-head
  float *gkb, *gks, *gkr;
  float ga, gs, gr;
  double gkap, gmu;
};

const float* row_mask(const Problem& P, const Row& w, float* buf) {
  if (!P.bias && !P.allowed) return nullptr;
  const int64_t b = w.n / P.H, h = w.n % P.H;
  if (P.bias) {
    const float* bp = P.bias + b * P.bm_b + h * P.bm_h + w.i * P.bm_i;
    for (int64_t j = 0; j < w.jmax; ++j) buf[j] = bp[j * P.bm_j];
  } else {
    std::memset(buf, 0, sizeof(float) * w.jmax);
  }
  if (P.allowed) {
    const uint8_t* ap = P.allowed + b * P.am_b + h * P.am_h + w.i * P.am_i;
    for (int64_t j = 0; j < w.jmax; ++j) buf[j] = ap[j * P.am_j] ? buf[j] : kNegInf;
  }
  return buf;
}

template <bool M>
inline float masked(float s, const float* add, int64_t j) { return M ? s + add[j] : s; }

// softmax of a row of scores (masked = -inf → 0) into p (length S, zeros past jmax); returns the lse
float softmax_row(const float* s, float* p, int64_t jmax, int64_t S) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < jmax; ++j) m = std::max(m, s[j]);
  if (m == kNegInf) {
    std::memset(p, 0, sizeof(float) * S);
    return INFINITY;
  }
  float l = 0.0f;
#pragma omp simd reduction(+ : l)
  for (int64_t j = 0; j < jmax; ++j) {
    const float e = s[j] == kNegInf ? 0.0f : fexp(s[j] - m);
    p[j] = e;
    l += e;
  }
  const float inv = 1.0f / l;
#pragma omp simd
  for (int64_t j = 0; j < jmax; ++j) p[j] *= inv;
  for (int64_t j = jmax; j < S; ++j) p[j] = 0.0f;
  return m + flog(l);
}

// gap of a row into buf, exact where gap < eta (BOTH_ENDS: also where gap > 2 − eta)
template <bool BOTH_ENDS>
void row_gaps(const Problem& P, const Row& w, float* gap, float rho, const float* rhok) {
  int near = 0;
  const float eta = P.eta;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < w.jvec; ++j) {
    const float x = clamped_gap(w.g[j], rho, rhok[j]);
    gap[j] = x;
    near += ((x < eta || (BOTH_ENDS && x > 2.0f - eta)) && j < jmax) ? 1 : 0;
  }
  if (!near) return;
  for (int64_t j = 0; j < w.jmax; ++j) {
    const float* kv = w.kbase + j * w.k_sr;
    if (gap[j] < eta) gap[j] = exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, -1.0);
    else if (BOTH_ENDS && gap[j] > 2.0f - eta) gap[j] = 2.0f - exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, 1.0);
  }
}

// ---- κ-stereographic ----
struct Stereo {
  float a, sig, rho, al, al2, kappa, c, inv_c, sqrt_c, inv_sqrt_c, mu;
  const float *b, *sigk, *rhok, *be, *be2;
  Stereo(const Problem& P, const Terms& T, int64_t n, int64_t i) {
    a = T.qt(n, 0)[i], sig = T.qt(n, 1)[i], rho = T.qt(n, 2)[i], al = T.qt(n, 3)[i], al2 = T.qt(n, 4)[i];
    b = T.kt(n, 0), sigk = T.kt(n, 1), rhok = T.kt(n, 2), be = T.kt(n, 3), be2 = T.kt(n, 4);
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

template <int SIGN, bool M>
void stereo_forward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  const Stereo r(P, T, w.n, w.i);
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* score = scratch;
  const float eta = P.eta;
  int near = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < w.jvec; ++j) {
    const float gap = clamped_gap(w.g[j], r.rho, r.rhok[j]);
    near += (gap < eta && j < jmax) ? 1 : 0;
    score[j] = j < jmax ? masked<M>(stereo_score<SIGN>(r, j, gap), madd, j) : kNegInf;
  }
  if (near) {  // nearly parallel pairs: the exact gap, in double
    for (int64_t j = 0; j < w.jmax; ++j)
      if (clamped_gap(w.g[j], r.rho, r.rhok[j]) < eta)
        score[j] = masked<M>(
            stereo_score<SIGN>(r, j, exact_gap(w.qv, w.kbase + j * w.k_sr, w.qn, w.kn[j], P.D, -1.0)), madd, j);
  }
  *w.lse = softmax_row(score, w.g, w.jvec, w.S);
}

template <int SIGN, bool M>
void stereo_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  w.ga = w.gs = w.gr = 0.0f;
  const float lse = *w.lse;
  if (lse == INFINITY) {  // a row with no key: no gradient
    std::memset(w.g, 0, sizeof(float) * w.S);
    std::memset(w.dp, 0, sizeof(float) * w.S);
    return;
  }
  const Stereo r(P, T, w.n, w.i);
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* gap = scratch;
  row_gaps<false>(P, w, gap, r.rho, r.rhok);
  float *gkb = w.gkb, *gks = w.gks, *gkr = w.gkr;
  const float inv_kappa = r.kappa != 0.0f ? 1.0f / r.kappa : 0.0f;
  const float sgn = SIGN < 0 ? -1.0f : 1.0f;  // ∂|κ|/∂κ
  const float delta_i = w.delta;
  float* g = w.g;
  float* dp = w.dp;
  float ga = 0, gs = 0, gr = 0, gkap = 0, gmu = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : ga, gs, gr, gkap, gmu)
  for (int64_t j = 0; j < w.jvec; ++j) {
    float delta, v, sh, s, x, root;
    bool ser_r, ser_d;
    const float R = stereo_radial<SIGN>(r, j, delta, v, sh, ser_r);
    const float two_ss = 2.0f * r.sig * r.sigk[j];
    const float s2raw = R + two_ss * gap[j];
    const bool floored = s2raw < kSqrtMin;
    const float s2 = floored ? kSqrtMin : s2raw;
    const float d = stereo_dist<SIGN>(r, s2, s, x, root, ser_d);
    const float sj = j < jmax ? masked<M>(r.mu * d, madd, j) : kNegInf;
    const bool live = sj != kNegInf;
    const float p = live ? fexp(sj - lse) : 0.0f;
    const float ds = p * (dp[j] - delta_i);
    // ∂d/∂s² = 1/(s √(1 − κ s²)) = 1/(s·root); explicit ∂d/∂κ = 2 s s² H'(x), H' = (1/root − H)/(2x)
    const float inv_sroot = 1.0f / (s * root);
    const float inv_root = s * inv_sroot;
    const float hf = d * (0.5f * root * inv_sroot);  // H(x) = d/(2s)
    const float dh_ser = 1.0f / 6.0f + x * (3.0f / 20.0f + x * (15.0f / 112.0f));
    const float dkap_d = ser_d ? 2.0f * s * s2 * dh_ser : s * (inv_root - hf) * inv_kappa;
    const float gd = ds * r.mu;
    gmu += ds * d;
    const float gs2 = floored ? 0.0f : gd * inv_sroot;
    gkap += gd * dkap_d;
    // radial part: ∂R/∂Δ and explicit ∂R/∂κ, from the series or from sh, ch = sinh|sin, cosh|cos(√|κ|Δ)
    const float ch = SIGN < 0 ? r.al * r.be[j] + r.al2 * r.be2[j] : r.al2 * r.be[j] + r.al * r.be2[j];
    const float d4 = delta * delta * delta * delta;
    const float dR_ddelta = ser_r ? 2.0f * delta * (1.0f - v * (2.0f / 3.0f) + v * v * (2.0f / 15.0f))
                                  : 2.0f * sh * ch * r.inv_sqrt_c;
    const float dR_dkappa = ser_r ? d4 * (-1.0f / 3.0f + v * (4.0f / 45.0f))
                                  : sgn * (sh * ch * delta * r.inv_c * r.inv_sqrt_c - R * r.inv_c);
    const float gdelta = gs2 * dR_ddelta;
    ga += gdelta;
    gkb[j] -= gdelta;
    gkap += gs2 * dR_dkappa;
    // angular part: s² ∋ 2σσ'(1 − Gρρ')
    const float ggap = gs2 * two_ss;
    gs += gs2 * 2.0f * r.sigk[j] * gap[j];
    gks[j] += gs2 * 2.0f * r.sig * gap[j];
    const float gram = g[j];
    gr -= ggap * gram * r.rhok[j];
    gkr[j] -= ggap * gram * r.rho;
    dp[j] = -ggap * r.rho * r.rhok[j];  // dGram
    g[j] = p;
  }
  for (int64_t j = w.jvec; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.ga = ga, w.gs = gs, w.gr = gr;
  w.gkap += gkap;
  w.gmu += gmu;
}

// ---- sphere, geodesic score ----
inline float sphere_angle(float gap, float& dtheta_dgap) {
  const bool far = gap > 1.0f;
  const float h = far ? 2.0f - gap : gap;
  const float y = std::sqrt(std::max(0.5f * h, 1e-30f));
  const float a = 2.0f * fasin(y);
  dtheta_dgap = 1.0f / std::sqrt(std::max(h * (2.0f - h), 1e-30f));  // 1/sin θ
  return far ? 3.14159265358979323846f - a : a;
}

template <bool M>
void sphere_forward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  const float rho = T.qt(w.n, 2)[w.i];
  const float* rhok = T.kt(w.n, 2);
  const float mu = P.mu[w.n % P.H], eta = P.eta;
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* score = scratch;
  int near = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < w.jvec; ++j) {
    const float gap = clamped_gap(w.g[j], rho, rhok[j]);
    near += ((gap < eta || gap > 2.0f - eta) && j < jmax) ? 1 : 0;
    float unused;
    score[j] = j < jmax ? masked<M>(mu * sphere_angle(gap, unused), madd, j) : kNegInf;
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
  *w.lse = softmax_row(score, w.g, w.jvec, w.S);
}

template <bool M>
void sphere_backward_row(const Problem& P, const Terms& T, Row& w, float* scratch) {
  w.ga = w.gs = w.gr = 0.0f;
  const float lse = *w.lse;
  if (lse == INFINITY) {
    std::memset(w.g, 0, sizeof(float) * w.S);
    std::memset(w.dp, 0, sizeof(float) * w.S);
    return;
  }
  const float rho = T.qt(w.n, 2)[w.i];
  const float* rhok = T.kt(w.n, 2);
  const float mu = P.mu[w.n % P.H];
  const float* madd = row_mask(P, w, scratch + 2 * padded(P.S));
  float* gap = scratch;
  row_gaps<true>(P, w, gap, rho, rhok);
  float* gkr = w.gkr;
  float* g = w.g;
  float* dp = w.dp;
  const float delta_i = w.delta;
  float gr = 0, gmu = 0;
  const int64_t jmax = w.jmax;
#pragma omp simd reduction(+ : gr, gmu)
  for (int64_t j = 0; j < w.jvec; ++j) {
    float dth;
    const float theta = sphere_angle(gap[j], dth);
    const float sj = j < jmax ? masked<M>(mu * theta, madd, j) : kNegInf;
    const bool live = sj != kNegInf;
    const float p = live ? fexp(sj - lse) : 0.0f;
    const float ds = p * (dp[j] - delta_i);
    gmu += ds * theta;
    const float ggap = ds * mu * dth;
    const float gram = g[j];
    gr -= ggap * gram * rhok[j];
    gkr[j] -= ggap * gram * rho;
    dp[j] = -ggap * rho * rhok[j];
    g[j] = p;
  }
  for (int64_t j = w.jvec; j < w.S; ++j) g[j] = dp[j] = 0.0f;
  w.gr = gr;
  w.gmu += gmu;
}

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

}  // namespace

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
