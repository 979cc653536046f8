// Fused per-row softmax passes for the chunked CPU backend (charlit/kernels/torch_chunked.py).
//
// The GEMMs stay in torch (MKL/oneDNN); what this file replaces is the ~17 eager elementwise
// passes that torch needs per [rows, V] logits tile for log-softmax, the divergence and its
// gradient.  Here each row is read from memory once and then revisited while it sits in L2
// (a 49152-float row of student plus teacher logits is 384 KiB), so the tile costs about one
// read of each input and one write of the gradient.
//
// Built on first use by charlit/kernels/cpu_fused.py with the system C++ compiler and called
// through ctypes; plain C ABI, no torch headers, so the build takes about a second.
// Precision: fp32 elementwise, fp64 row sums; exp/log are polynomial (about 1 ulp) and vectorise
// without -ffast-math, so NaN inputs still propagate into the loss.

#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

inline float bits_to_float(int32_t i) { return __builtin_bit_cast(float, i); }

// e^x; exactly 0 below -87 (where e^x < 1.7e-38), saturates above 88.
inline float fexp(float x) {
  float xc = x > 88.0f ? 88.0f : x;
  xc = xc < -87.0f ? -87.0f : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = std::fma(n, -0.693145751953125f, xc);  // Cody-Waite: ln2 = hi + lo
  r = std::fma(n, -1.428606765330187045e-06f, r);
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// log(u) for u in [1, 2]: 2 atanh((m-1)/(m+1)) series after folding u above sqrt(2) to u/2.
inline float flog_1_2(float u) {
  const bool big = u > 1.41421356f;
  const float m = big ? 0.5f * u : u;
  const float f = (m - 1.0f) / (m + 1.0f);
  const float f2 = f * f;
  float s = 1.0f / 9.0f;
  s = std::fma(s, f2, 1.0f / 7.0f);
  s = std::fma(s, f2, 1.0f / 5.0f);
  s = std::fma(s, f2, 1.0f / 3.0f);
  s = std::fma(s, f2, 1.0f);
  return 2.0f * f * s + (big ? 0.69314718056f : 0.0f);
}

// log(1 + y) for y in [0, 1], accurate for tiny y (Goldberg's correction).
inline float flog1p_01(float y) {
  const float u = 1.0f + y;
  const float d = u - 1.0f;
  return d == 0.0f ? y : flog_1_2(u) * (y / d);
}

inline float softplus(float x) {
  const float ax = x < 0.0f ? -x : x;
  return (x > 0.0f ? x : 0.0f) + flog1p_01(fexp(-ax));
}

inline float row_max(const float* z, int64_t V) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = z[j] > m ? z[j] : m;
  return m;
}

// hi + lo == c to about 1e-14 relative; lets (x - hi) - lo keep the digits of x - c that a
// single fp32 subtraction would lose when x is close to c (a nearly one-hot row).
struct Split {
  float hi, lo;
  explicit Split(double c) : hi(static_cast<float>(c)), lo(static_cast<float>(c - static_cast<float>(c))) {}
};

// One row of the generalized JSD between q = softmax(s) (student) and p = softmax(t)
// (teacher), beta = 0: KL(p||q), beta = 1: KL(q||p).  With want_grad, s is overwritten by
// grad * d loss / d s.  Mirrors torch_chunked.divergence_rows.
float divergence_row(float* s, const float* t, int64_t V, double beta, bool want_grad, float grad) {
  const float ms = row_max(s, V), mt = row_max(t, V);
  double zs = 0.0, zt = 0.0, acc = 0.0;
  if (beta == 0.0) {  // acc = sum e^a (a - b),  a = t - mt,  b = s - ms
#pragma omp simd reduction(+ : zs, zt, acc)
    for (int64_t j = 0; j < V; ++j) {
      const float a = t[j] - mt, b = s[j] - ms, ea = fexp(a);
      zs += fexp(b);
      zt += ea;
      acc += ea * (a - b);
    }
    const float loss = static_cast<float>(acc / zt - std::log(zt) + std::log(zs));
    if (want_grad) {
      const float gs = static_cast<float>(grad / zs), gt = static_cast<float>(grad / zt);
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) s[j] = gs * fexp(s[j] - ms) - gt * fexp(t[j] - mt);
    }
    return loss;
  }
  if (beta == 1.0) {  // acc = sum e^b (b - a)
#pragma omp simd reduction(+ : zs, zt, acc)
    for (int64_t j = 0; j < V; ++j) {
      const float a = t[j] - mt, b = s[j] - ms, eb = fexp(b);
      zs += eb;
      zt += fexp(a);
      acc += eb * (b - a);
    }
    const double c = acc / zs;  // <q, log q - log p> up to the constants that cancel below
    const float loss = static_cast<float>(c - std::log(zs) + std::log(zt));
    if (want_grad) {
      const Split cs(c);
      const float gq = static_cast<float>(grad / zs);
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const float a = t[j] - mt, b = s[j] - ms;
        s[j] = gq * fexp(b) * (((b - a) - cs.hi) - cs.lo);
      }
    }
    return loss;
  }
  // General beta through x = log p - log q + log(beta / (1 - beta)) and softplus, as in torch.
#pragma omp simd reduction(+ : zs, zt)
  for (int64_t j = 0; j < V; ++j) {
    zs += fexp(s[j] - ms);
    zt += fexp(t[j] - mt);
  }
  const double lzs = std::log(zs), lzt = std::log(zt);
  const float shift = static_cast<float>(lzs - lzt + std::log(beta / (1.0 - beta)));
  double p_sp = 0.0, p_x = 0.0, q_sp = 0.0;
#pragma omp simd reduction(+ : p_sp, p_x, q_sp)
  for (int64_t j = 0; j < V; ++j) {
    const float a = t[j] - mt, b = s[j] - ms;
    const float x = (a - b) + shift, sp = softplus(x), ea = fexp(a);
    p_sp += ea * sp;
    p_x += ea * x;
    q_sp += fexp(b) * sp;
  }
  p_sp /= zt;
  p_x /= zt;
  q_sp /= zs;
  const double entropy = -beta * std::log(beta) - (1.0 - beta) * std::log(1.0 - beta);
  const float loss = static_cast<float>(entropy - beta * (p_sp - p_x) - (1.0 - beta) * q_sp);
  if (want_grad) {
    // dL/ds_j = q_j (g_j - <q, g>) with g = (beta - 1) softplus(x)
    const Split cs(q_sp);
    const float gq = static_cast<float>(grad * (beta - 1.0) / zs);
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) {
      const float a = t[j] - mt, b = s[j] - ms;
      const float sp = softplus((a - b) + shift);
      s[j] = gq * fexp(b) * ((sp - cs.hi) - cs.lo);
    }
  }
  return loss;
}

// log softmax(z)[y] for one row; with want_grad, z is overwritten by grad * (onehot(y) - softmax(z)).
// The row max and the log-sum are kept apart: at |z| ~ 1e4 a single fp32 lse loses ~1e-3.
float logprob_row(float* z, int64_t y, int64_t V, bool want_grad, float grad) {
  const float m = row_max(z, V);
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < V; ++j) total += fexp(z[j] - m);
  const float log_sum = static_cast<float>(std::log(total));
  const float out = (z[y] - m) - log_sum;
  if (want_grad) {
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) z[j] = -grad * fexp((z[j] - m) - log_sum);
    z[y] += grad;
  }
  return out;
}

template <class F>
void parallel_rows(int64_t rows, int nthreads, F fn) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(nthreads, rows));
  if (workers == 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (rows + workers - 1) / workers;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t r0 = w * per, r1 = std::min(rows, r0 + per);
    if (r0 < r1) pool.emplace_back(fn, r0, r1);
  }
  fn(0, std::min(rows, per));
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" {

// loss[r] = divergence of row r; with want_grad, s[r] <- grad_mul * row_scale[r] * d loss_r / d s[r]
// (row_scale may be null: 1).  s and t are row-major with leading dimensions ld_s, ld_t.
void charlit_divergence_rows(float* s, int64_t ld_s, const float* t, int64_t ld_t, int64_t rows, int64_t V,
                             double beta, int want_grad, const float* row_scale, float grad_mul, float* loss,
                             int nthreads) {
  parallel_rows(rows, nthreads, [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float g = grad_mul * (row_scale ? row_scale[r] : 1.0f);
      loss[r] = divergence_row(s + r * ld_s, t + r * ld_t, V, beta, want_grad != 0, g);
    }
  });
}

// out[r] = log softmax(z[r])[y[r]]; with want_grad, z[r] <- grad_mul * g[r] * (onehot - softmax)
// (g may be null: 1).
void charlit_logprob_rows(float* z, int64_t ld, const int64_t* y, int64_t rows, int64_t V, int want_grad,
                          const float* g, float grad_mul, float* out, int nthreads) {
  parallel_rows(rows, nthreads, [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      out[r] = logprob_row(z + r * ld, y[r], V, want_grad != 0, grad_mul * (g ? g[r] : 1.0f));
    }
  });
}

}  // extern "C"
