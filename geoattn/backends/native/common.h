// Shared pieces of the native kernel: the Problem layout, vectorisable elementary functions,
// the GEMM wrappers and the per-row plumbing (masks, softmax, gaps). Included by kernel.cpp only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

extern "C" {

// Fortran BLAS sgemm (column-major), e.g. MKL's SGEMM as exported by libtorch_cpu.
typedef void (*sgemm_fn)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

// kAffine: the caller writes the affine terms; kLorentz, kCosine, kL2: the kernel computes them (radial.h);
// kMetric: the learned metric's keys k̃ = G k and terms, computed here too (metric.h)
enum Kind : int32_t { kStereographic = 0, kSphere = 1, kAffine = 2, kLorentz = 3, kCosine = 4, kL2 = 5, kMetric = 6 };
inline bool affine_kind(int32_t kind) { return kind >= kAffine; }

// A 4-D tensor (B, H, rows, cols) with a contiguous last dim, by its strides (elements).
struct View {
  float* data;
  int64_t sb, sh, sr;
};

struct Problem {
  int64_t B, H, L, S, D, Ev;  // queries (B, H, L, D), keys (B, H, S, D), values (B, H, S, Ev)
  int64_t bq;                 // query rows per work item
  int32_t kind, causal, nthreads, chunk;  // chunk: keys per score tile (the tile is bq × chunk)
  View q, k, v, out;          // out (B, H, L, Ev)
  float* lse;                 // (B·H, L): log-sum-exp of each row (+inf for a row with no key)
  const float* kappa;         // (H,) signed curvature (stereographic)
  const float* mu;            // (H,) score multiplier: score = μ·d (stereographic), μ·θ (sphere)
  float inv_sqrt_e;           // 1/√E: the RMS scale of the tangent vectors
  float clip;                 // bound on √|κ|‖u‖ for κ < 0
  float eta;                  // near-pair threshold on the gap
  int32_t want_dkappa;        // backward: 0 when κ needs no gradient (its terms are skipped)
  const uint8_t* allowed;     // bool mask (1 = take part) or null, element (b, h, i, j) by strides
  int64_t am_b, am_h, am_i, am_j;
  const float* bias;          // additive float mask or null
  int64_t bm_b, bm_h, bm_i, bm_j;
  int64_t* clipped;           // out: number of (query or key) vectors the clip shortened
  // per-token terms, written by the forward and read by the backward (caller-owned, kept between them):
  float *qterms, *kterms;     // (B·H, kTerms, L), (B·H, kTerms, S)
  double *qnorm, *knorm;      // raw norms ‖q‖, ‖k‖ in double, (B·H, L), (B·H, S)
  // backward
  View dout, dq, dk, dv;      // written
  double* dkappa;             // (H,) accumulated
  double* dmu;                // (H,) accumulated
  float* dkbias;              // affine: ∂/∂β (B·H, S), written
  float *dqouter, *dkouter;   // affine with the outer term: ∂/∂α (B·H, L), ∂/∂γ (B·H, S), written
  float *dqfactor, *dkfactor; // affine: ∂/∂a (B·H, L), ∂/∂b (B·H, S), written
  int32_t outer, pad3_;       // affine: 1 when the score has the αᵢγⱼ term
  sgemm_fn sgemm;
  const float* metric;        // kMetric: G per head (H, D, D), symmetric
  float* ktilde;              // kMetric: k̃ = G k (H, B, S, D), written by the forward, read by the backward
  float* dmetric;             // kMetric backward: ∂L/∂G per batch and head (B·H, D, D), written
};

}  // extern "C"

namespace geoattn_native {

// the affine kinds whose per-token factors aᵢ, bⱼ are not all 1 (the learned metric and l2 have a = b = 1 and no
// outer term: affine.h's rows skip them)
inline bool has_factors(const Problem& P) { return P.kind != kMetric && P.kind != kL2; }

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

// Double precision, vectorisable (the per-token terms are computed for all tokens of a head in one simd loop;
// std::exp and std::expm1 are scalar library calls, which would keep that loop scalar).
inline double as_double(int64_t i) { double f; std::memcpy(&f, &i, 8); return f; }

// e^x (|error| ≤ 1 ulp more than the rounding of the Taylor sum): x = n ln 2 + r, |r| ≤ ln2/2 (ln 2 in two
// parts, fdlibm's split), e^r by its Taylor series to r¹³/13! (truncation < 5e-18), times 2ⁿ.
inline double dexp(double x) {
  x = std::min(std::max(x, -708.0), 709.0);
  const double n = std::floor(x * 1.4426950408889634 + 0.5);
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  constexpr double inv_fact[13] = {1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                   1.0 / 5040,      1.0 / 720,      1.0 / 120,     1.0 / 24,     1.0 / 6,
                                   1.0 / 2,         1.0,            1.0};  // 1/12! … 1/0!
  for (int k = 0; k < 13; ++k) p = p * r + inv_fact[k];
  return p * as_double((int64_t)(n + 1023) << 52);
}

// e^x − 1 for x ≥ 0 without cancellation: x·Σ xᵏ/(k+1)! to x¹⁴/15! below 0.5 (truncation < 1e-18 relative),
// e^x − 1 above (relative error ≤ 2.6 ε there)
inline double dexpm1_nonneg(double x) {
  constexpr double c[15] = {1.0 / 1307674368000, 1.0 / 87178291200, 1.0 / 6227020800, 1.0 / 479001600,
                            1.0 / 39916800,      1.0 / 3628800,     1.0 / 362880,     1.0 / 40320,
                            1.0 / 5040,          1.0 / 720,         1.0 / 120,        1.0 / 24,
                            1.0 / 6,             1.0 / 2,           1.0};  // 1/15! … 1/1!
  double q = 0.0;
  for (int k = 0; k < 15; ++k) q = q * x + c[k];
  const double big = dexp(x) - 1.0;
  return x < 0.5 ? x * q : big;
}

constexpr float kNegInf = -INFINITY;
constexpr float kSeriesV = 0.01f;   // |κ Δ²| below which R uses its Taylor series
constexpr float kSeriesX = 1e-3f;   // |κ s²| below which H uses its Taylor series
constexpr double kSeriesSigma = 1e-4;  // |4κa²| below which σ uses its Taylor series
constexpr float kSqrtMin = 1e-14f;  // floor under s² (finite gradient at coincident points)

// Flush denormals to zero while a kernel runs (tiny probabilities and their gradients would otherwise take
// the processor's slow microcoded path for denormal operands); the caller's mode is restored.
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

// Row buffers and accumulators are spaced by a non-power-of-two stride: arrays a multiple of 4 KiB apart alias
// in the store-forwarding logic ("4K aliasing"), and each such load waits for an unrelated store.
inline int64_t padded(int64_t S) { return S + 80; }

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

// The row loops run to jpad = jmax rounded up to the vector width, so they have no scalar tail (a causal
// row at L = 64 would spend most of its time there): lanes j ≥ jmax compute on finite data (tile columns
// past the chunk and key terms past S are zero-initialised padding) and get score −inf, p = 0.
constexpr int64_t kLanes = 16;
inline int64_t lanes_up(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// W per-lane partial results of a loop run in blocks of W (`for j0 …; omp simd for j in [j0, j0 + W)`, into
// v[j − j0]), combined by halves at the end: log2(W) dependent vector ops. An `omp simd reduction` may end the
// loop with the lanes added one after another (16 dependent scalar adds per sum and row, a large share of a
// short row's work), and its order of additions is the compiler's; here it is fixed, so results are too.
template <class T, int W>
struct Partials {
  T v[W] = {};
  T sum() {
    for (int w = W / 2; w > 0; w /= 2)
#pragma omp simd
      for (int t = 0; t < w; ++t) v[t] += v[t + w];
    return v[0];
  }
  T max() {
    for (int w = W / 2; w > 0; w /= 2)
#pragma omp simd
      for (int t = 0; t < w; ++t) v[t] = v[t] > v[t + w] ? v[t] : v[t + w];
    return v[0];
  }
};
using Lanes = Partials<float, kLanes>;  // a row's sums and maxima

#if defined(__AVX512F__)
// The same halving in registers, pair for pair (v[t] with v[t + w], w = 8, 4, 2, 1 for floats; 4, 2, 1 for
// doubles), so the same bits, with the partials in registers (a compiler may keep the generic loops' array on
// the stack, a store and a reload per step). MAXPS(a, b) is a > b ? a : b, as the generic max.
// v[0..15] combined by halves with op: its 256- and 128-bit vector forms, and its scalar form for the last pair
template <class Op256, class Op128, class Op1>
inline float halves16(const float* v, Op256 op256, Op128 op128, Op1 op1) {
  const __m512 x = _mm512_loadu_ps(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
  const __m256 h8 = op256(_mm512_castps512_ps256(x), hi);
  const __m128 h4 = op128(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = op128(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(op1(h2, _mm_shuffle_ps(h2, h2, 1)));
}
template <>
inline float Partials<float, 16>::sum() {
  return halves16(v, [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); },
                  [](__m128 a, __m128 b) { return _mm_add_ps(a, b); }, [](__m128 a, __m128 b) { return _mm_add_ss(a, b); });
}
template <>
inline float Partials<float, 16>::max() {
  return halves16(v, [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); },
                  [](__m128 a, __m128 b) { return _mm_max_ps(a, b); }, [](__m128 a, __m128 b) { return _mm_max_ss(a, b); });
}
template <>
inline double Partials<double, 8>::sum() {
  const __m512d x = _mm512_loadu_pd(v);
  const __m256d h4 = _mm256_add_pd(_mm512_castpd512_pd256(x), _mm512_extractf64x4_pd(x, 1));
  const __m128d h2 = _mm_add_pd(_mm256_castpd256_pd128(h4), _mm256_extractf128_pd(h4, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h2, _mm_unpackhi_pd(h2, h2)));
}
#endif

// Σ a[d]·b[d] in double: 8 partial sums (one vector of doubles), then the tail. A plain loop is a chain of
// dependent scalar adds (not vectorised without reassociation), an `omp simd reduction` ends with one.
inline double dot_double(const float* a, const float* b, int64_t n) {
  constexpr int kW = 8;
  Partials<double, kW> acc;
  int64_t d0 = 0;
  for (; d0 + kW <= n; d0 += kW)
#pragma omp simd
    for (int t = 0; t < kW; ++t) acc.v[t] += (double)a[d0 + t] * b[d0 + t];
  double s = acc.sum();
  for (; d0 < n; ++d0) s += (double)a[d0] * b[d0];
  return s;
}

struct Row {  // one query row of a tile: keys c0 … c0 + S − 1 of the head (a chunk); j counts from c0
  int64_t n, i, c0, jmax, jpad, S;  // keys j < jmax take part (causal rows end early); j ≥ jmax get p = 0
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
    const float* bp = P.bias + b * P.bm_b + h * P.bm_h + w.i * P.bm_i + w.c0 * P.bm_j;
    for (int64_t j = 0; j < w.jmax; ++j) buf[j] = bp[j * P.bm_j];
  } else {
    std::memset(buf, 0, sizeof(float) * w.jmax);
  }
  if (P.allowed) {
    const uint8_t* ap = P.allowed + b * P.am_b + h * P.am_h + w.i * P.am_i + w.c0 * P.am_j;
    for (int64_t j = 0; j < w.jmax; ++j) buf[j] = ap[j * P.am_j] ? buf[j] : kNegInf;
  }
  return buf;
}

template <bool M>
inline float masked(float s, const float* add, int64_t j) { return M ? s + add[j] : s; }

// backward: a row with no key (lse = +inf) has no gradient; zero its tile rows and say so
inline bool keyless_row(Row& w) {
  w.ga = w.gs = w.gr = 0.0f;
  if (*w.lse != INFINITY) return false;
  std::memset(w.g, 0, sizeof(float) * w.S);
  std::memset(w.dp, 0, sizeof(float) * w.S);
  return true;
}

// one vector of a row's exp (keys j0 … j0 + 15): p[j] = exp(s[j] − m), 0 where s[j] = −inf, added to its lane's sum
inline void exp_lanes(const float* s, float m, float* p, Lanes& l, int64_t j0) {
#pragma omp simd
  for (int64_t j = j0; j < j0 + kLanes; ++j) {
    const float e = s[j] == kNegInf ? 0.0f : fexp(s[j] - m);
    p[j] = e;
    l.v[j - j0] += e;
  }
}

// exp(s − m) of a chunk of a row's scores (m ≥ their max, masked = -inf → 0, −inf past jmax up to jpad)
// into p, unnormalised (length S, zeros past jmax); returns their sum. The online softmax of the forward
// rescales and normalises.
float exp_row(const float* s, float m, float* p, int64_t jpad, int64_t S) {
  Lanes l;
  for (int64_t j0 = 0; j0 < jpad; j0 += kLanes) exp_lanes(s, m, p, l, j0);
  for (int64_t j = jpad; j < S; ++j) p[j] = 0.0f;
  return l.sum();
}

// exp_row of two rows at once, their vectors interleaved (a row of 64 keys is four vectors, each a chain of
// dependent operations through fexp, and the row ends in its sum's reduction: two independent rows fill the
// pipeline). Each row's results and sum are exp_row's, bit for bit: the same operations in the same order per lane.
void exp_rows2(const float* sa, float ma, float* pa, int64_t ja, const float* sb, float mb, float* pb, int64_t jb,
               int64_t S, float& suma, float& sumb) {
  Lanes la, lb;
  const int64_t jc = std::min(ja, jb);
  int64_t j0 = 0;
  for (; j0 < jc; j0 += kLanes)
#pragma omp simd
    for (int64_t j = j0; j < j0 + kLanes; ++j) {
      const float ea = sa[j] == kNegInf ? 0.0f : fexp(sa[j] - ma);
      const float eb = sb[j] == kNegInf ? 0.0f : fexp(sb[j] - mb);
      pa[j] = ea, pb[j] = eb;
      la.v[j - j0] += ea;
      lb.v[j - j0] += eb;
    }
  for (int64_t k0 = j0; k0 < ja; k0 += kLanes) exp_lanes(sa, ma, pa, la, k0);  // the longer row's last vectors
  for (int64_t k0 = j0; k0 < jb; k0 += kLanes) exp_lanes(sb, mb, pb, lb, k0);
  for (int64_t j = ja; j < S; ++j) pa[j] = 0.0f;
  for (int64_t j = jb; j < S; ++j) pb[j] = 0.0f;
  suma = la.sum();
  sumb = lb.sum();
}

// max of s[0, n), n a multiple of kLanes, in kLanes partial maxima (compilers do not vectorise a float max
// reduction without -ffast-math, and a scalar one is a chain of dependent compares)
inline float row_max(const float* s, int64_t n) {
  Lanes m;
  for (int t = 0; t < kLanes; ++t) m.v[t] = kNegInf;
  for (int64_t j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
    for (int64_t j = j0; j < j0 + kLanes; ++j) m.v[j - j0] = m.v[j - j0] > s[j] ? m.v[j - j0] : s[j];
  return m.max();
}

// gap of a row into buf, exact where gap < eta (BOTH_ENDS: also where gap > 2 − eta)
template <bool BOTH_ENDS>
void row_gaps(const Problem& P, const Row& w, float* __restrict__ gap, float rho, const float* rhok) {
  int near = 0;
  const float eta = P.eta;
  const int64_t jmax = w.jmax, jpad = w.jpad;
  const float* g = w.g;  // locals, not w's fields: a store to gap[j] could alias w
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < jpad; ++j) {
    const float x = clamped_gap(g[j], rho, rhok[j]);
    gap[j] = x;
    near += (j < jmax && (x < eta || (BOTH_ENDS && x > 2.0f - eta))) ? 1 : 0;
  }
  if (!near) return;
  for (int64_t j = 0; j < w.jmax; ++j) {
    const float* kv = w.kbase + j * w.k_sr;
    if (gap[j] < eta) gap[j] = exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, -1.0);
    else if (BOTH_ENDS && gap[j] > 2.0f - eta) gap[j] = 2.0f - exact_gap(w.qv, kv, w.qn, w.kn[j], P.D, 1.0);
  }
}

}  // namespace geoattn_native
