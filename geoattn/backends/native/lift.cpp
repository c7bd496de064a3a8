// The Lorentz lift for the SDPA reduction, fused: one pass over q (or k) forward, one backward.
//
// For x (B, H, N, E) and per-head κ = -c < 0, coefficient w and sign s (queries: -1, keys: +1):
//   n = ‖x‖ (double), a = min(n/√E, clip/√c), y = √c a,
//   out = w·[s·cosh(y)/√c, (sinh(y)/(√c n))·x]       (B, H, N, E + 1), contiguous
// so that ⟨out_q, out_k⟩ = w(−x₀y₀ + x_s·y_s) = w⟨exp_o(u), exp_o(v)⟩_L (geoattn/geometry/lorentz.py).
// In torch these are some 20 small ops per side, which dominated Lorentz's training step (measured).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" {

struct Lift {
  int64_t B, H, N, E;
  int64_t sb, sh, sn;   // strides of x (elements; the last dim is contiguous)
  const float* x;
  float* out;           // (B, H, N, E + 1) contiguous
  const float* kappa;   // (H,)
  const float* coef;    // (H,)
  float sign, clip;
  int32_t nthreads, pad_;
  int64_t* clipped;     // out (forward)
  double* norms;        // (B·H·N): written by the forward, read by the backward
  // backward
  const float* dout;    // (B, H, N, E + 1) contiguous
  float* dx;            // (B, H, N, E), contiguous
  double* dkappa;       // (H,) accumulated
  double* dcoef;        // (H,) accumulated
};

}  // extern "C"

namespace {

struct Radial {  // what the lift and its backward need of one token
  double a, y, x0, f, dx0_dn, df_dn, dx0_dc, df_dc;
  bool clipped;
};

// y > 0 small: cosh y − sinh(y)/y = y²/3 + y⁴/30 + …, y cosh y − sinh y = y³/3 + y⁵/30 + …
inline Radial radial(double n, double c, double inv_sqrt_e, double clip) {
  Radial r;
  const double sc = std::sqrt(c);
  r.a = n * inv_sqrt_e;
  r.clipped = sc * r.a > clip;
  if (r.clipped) r.a = clip / sc;
  r.y = sc * r.a;
  const double e = std::exp(r.y), ie = 1.0 / e;
  const double ch = (e + ie) / 2, sh = r.y < 1e-3 ? r.y * (1.0 + r.y * r.y / 6.0) : (e - ie) / 2;
  r.x0 = ch / sc;
  const bool small = r.y < 1e-3;
  const double shc = small ? 1.0 + r.y * r.y / 6.0 : sh / r.y;  // sinh(y)/y
  r.f = n > 0 ? shc * r.a / n : inv_sqrt_e;                     // sinh(y)/(√c n)
  if (r.clipped) {
    r.dx0_dn = 0.0;
    r.df_dn = -r.f / n;
    r.dx0_dc = -r.x0 / (2.0 * c);
    r.df_dc = -r.f / (2.0 * c);
  } else {
    r.dx0_dn = sh * inv_sqrt_e;
    const double bracket = small ? r.y * r.y / 3.0 + r.y * r.y * r.y * r.y / 30.0 : ch - shc;  // cosh − sinh/y
    r.df_dn = n > 0 ? bracket * inv_sqrt_e / n : 0.0;
    r.dx0_dc = (r.y * sh - ch) / (2.0 * c * sc);
    const double y3 = r.y * r.y * r.y;
    const double odd = small ? y3 / 3.0 + y3 * r.y * r.y / 30.0 : r.y * ch - sh;  // y cosh − sinh
    r.df_dc = n > 0 ? odd / (2.0 * c * sc * n) : 0.0;
  }
  return r;
}

inline const float* token(const Lift& L, int64_t t) {
  const int64_t b = t / (L.H * L.N), h = (t / L.N) % L.H, i = t % L.N;
  return L.x + b * L.sb + h * L.sh + i * L.sn;
}

}  // namespace

extern "C" {

void geoattn_lorentz_lift(const Lift* Lp) {
  const Lift& L = *Lp;
  const int64_t tokens = L.B * L.H * L.N;
  const double inv_sqrt_e = 1.0 / std::sqrt((double)L.E);
  int64_t clipped = 0;
#pragma omp parallel for schedule(static) num_threads(L.nthreads) reduction(+ : clipped)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t h = (t / L.N) % L.H;
    const float* x = token(L, t);
    double nn = 0.0;
    for (int64_t d = 0; d < L.E; ++d) nn += (double)x[d] * x[d];
    const double n = std::sqrt(nn);
    L.norms[t] = n;
    const Radial r = radial(n, -(double)L.kappa[h], inv_sqrt_e, L.clip);
    clipped += r.clipped;
    const float w = L.coef[h];
    float* o = L.out + t * (L.E + 1);
    o[0] = (float)(L.sign * w * r.x0);
    const float fw = (float)(w * r.f);
#pragma omp simd
    for (int64_t d = 0; d < L.E; ++d) o[d + 1] = fw * x[d];
  }
  if (L.clipped) *L.clipped = clipped;
}

void geoattn_lorentz_lift_backward(const Lift* Lp) {
  const Lift& L = *Lp;
  const int64_t tokens = L.B * L.H * L.N;
  const double inv_sqrt_e = 1.0 / std::sqrt((double)L.E);
  std::vector<double> gk(L.H, 0.0), gw(L.H, 0.0);
#pragma omp parallel num_threads(L.nthreads)
  {
    std::vector<double> mk(L.H, 0.0), mw(L.H, 0.0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t h = (t / L.N) % L.H;
      const float* x = token(L, t);
      const float* g = L.dout + t * (L.E + 1);
      float* dx = L.dx + t * L.E;
      const double n = L.norms[t], c = -(double)L.kappa[h], w = L.coef[h];
      const Radial r = radial(n, c, inv_sqrt_e, L.clip);
      double gx = 0.0;  // g_s · x
      for (int64_t d = 0; d < L.E; ++d) gx += (double)g[d + 1] * x[d];
      const double g0 = g[0] * L.sign;
      mw[h] += g0 * r.x0 + r.f * gx;
      mk[h] -= w * (g0 * r.dx0_dc + gx * r.df_dc);  // ∂/∂κ = −∂/∂c
      // dx = w f g_s + w (f'(n)(g_s·x) + s g₀ x₀'(n)) x/n
      const float along = n > 0 ? (float)(w * (r.df_dn * gx + g0 * r.dx0_dn) / n) : 0.0f;
      const float fw = (float)(w * r.f);
#pragma omp simd
      for (int64_t d = 0; d < L.E; ++d) dx[d] = fw * g[d + 1] + along * x[d];
    }
#pragma omp critical(geoattn_lift)
    for (int64_t h = 0; h < L.H; ++h) gk[h] += mk[h], gw[h] += mw[h];
  }
  for (int64_t h = 0; h < L.H; ++h) L.dkappa[h] += gk[h], L.dcoef[h] += gw[h];
}

}  // extern "C"
