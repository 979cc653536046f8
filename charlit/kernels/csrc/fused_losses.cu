// Fused large-vocabulary losses for charlit: CUDA backend.
//
// Strategy (same memory contract as the chunked torch backend): tokens are processed in
// tiles of B rows; the [B, V] logit tiles come from cuBLAS (at::addmm) and everything that
// is row-wise -- soft-capping, log-softmax of student and teacher, divergence, its gradient
// w.r.t. the logits -- is one fused kernel per tile (one thread block per row, fp32), in
// place of ~15 elementwise launches.  Gradients for scalar-upstream reductions are computed
// in the forward (dX tile = G W, dW += G^T X), so a forward+backward costs 4 GEMMs.
//
// Exposed through torch.library as torch.ops.charlit_kernels.{div_fwd, div_bwd, lp_fwd, lp_bwd}.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace charlit {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction; every thread gets the result.  `scratch` holds >= 32 floats.
template <bool IsMax>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = IsMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : (IsMax ? -INFINITY : 0.f);
  if (warp == 0) v = IsMax ? warp_max(v) : warp_sum(v);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

// z <- cap(z) / T in place; fac <- d z'/d z when fac != nullptr.
__global__ void scale_logits_kernel(float* z, float* fac, int64_t numel, float softcap, float inv_t) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
    float v = z[i];
    if (softcap > 0.f) {
      float th = tanhf(v / softcap);
      v = th * softcap;
      if (fac) fac[i] = (1.f - th * th) * inv_t;
    }
    z[i] = v * inv_t;
  }
}

struct RowLse {
  float max, logsum;  // log_softmax(z)_j = (z_j - max) - logsum
};

__device__ RowLse row_lse(const float* z, int64_t V, float* scratch) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
  m = block_reduce<true>(m, scratch);
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(z[j] - m);
  s = block_reduce<false>(s, scratch);
  return {m, logf(s)};
}

// MODE 1: KL(p||q), 2: KL(q||p), 3: generalized JSD.  One block per row of the tile.
// s: student scaled logits (overwritten by d loss / d raw logits when want_grad),
// t: teacher scaled logits, loss[r] written, row_scale (nullable) multiplies the gradient.
template <int MODE>
__global__ void div_rows_kernel(float* __restrict__ s, const float* __restrict__ t, const float* __restrict__ fac,
                                const float* __restrict__ row_scale, float* __restrict__ loss, int64_t V, float beta,
                                float log_ratio, float entropy, float inv_t, bool want_grad) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float* sr = s + r * V;
  const float* tr = t + r * V;
  const RowLse a = row_lse(sr, V, scratch);
  const RowLse b = row_lse(tr, V, scratch);
  float acc = 0.f, cacc = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float ls = (sr[j] - a.max) - a.logsum, lt = (tr[j] - b.max) - b.logsum;
    const float q = expf(ls), p = expf(lt);
    if (MODE == 1) {
      acc += p * (lt - ls);
    } else if (MODE == 2) {
      acc += q * (ls - lt);
    } else {
      const float x = lt - ls + log_ratio, sp = softplus(x);
      acc -= beta * p * (sp - x) + (1.f - beta) * q * sp;
      cacc += q * (beta - 1.f) * sp;
    }
  }
  acc = block_reduce<false>(acc, scratch);
  float c = 0.f;
  if (MODE == 2) c = acc;
  if (MODE == 3) c = block_reduce<false>(cacc, scratch);
  if (threadIdx.x == 0) loss[r] = (MODE == 3) ? acc + entropy : acc;
  if (!want_grad) return;
  const float u = row_scale ? row_scale[r] : 1.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float ls = (sr[j] - a.max) - a.logsum, lt = (tr[j] - b.max) - b.logsum;
    const float q = expf(ls);
    float g;
    if (MODE == 1) {
      g = q - expf(lt);
    } else if (MODE == 2) {
      g = q * ((ls - lt) - c);
    } else {
      g = q * ((beta - 1.f) * softplus(lt - ls + log_ratio) - c);
    }
    sr[j] = g * u * (fac ? fac[r * V + j] : inv_t);
  }
}

// Log-probs forward: lse and z_y per row.
__global__ void lp_rows_kernel(const float* __restrict__ z, const int64_t* __restrict__ y, float* __restrict__ out,
                               float* __restrict__ lse, int64_t V) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const RowLse a = row_lse(z + r * V, V, scratch);
  if (threadIdx.x == 0) {
    lse[r] = a.max + a.logsum;
    out[r] = (z[r * V + y[r]] - a.max) - a.logsum;
  }
}

// Log-probs backward: z <- u * (onehot(y) - softmax(z)) * d z'/d z.
__global__ void lp_grad_rows_kernel(float* __restrict__ z, const int64_t* __restrict__ y, const float* __restrict__ lse,
                                    const float* __restrict__ up, const float* __restrict__ fac, int64_t V, float inv_t) {
  const int64_t r = blockIdx.x;
  const float u = up[r], l = lse[r];
  const int64_t yr = y[r];
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float g = ((j == yr) ? 1.f : 0.f) - expf(z[r * V + j] - l);
    z[r * V + j] = u * g * (fac ? fac[r * V + j] : inv_t);
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "charlit fused losses (cuda backend): ", name, " must be a CUDA tensor, got ", t.device());
}

// [B, V] fp32 scaled logits for rows [i0, i1) and optional d z'/d z.
at::Tensor tile_logits(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, int64_t i0,
                       int64_t i1, double softcap, double inv_t, at::Tensor* fac) {
  auto xr = x.slice(0, i0, i1);
  at::Tensor z = b.has_value() ? at::addmm(*b, xr, w.t()) : at::mm(xr, w.t());
  z = z.to(at::kFloat).contiguous();
  if (fac) *fac = softcap > 0 ? at::empty_like(z) : at::Tensor();
  const int64_t numel = z.numel();
  const int blocks = (int)std::min<int64_t>((numel + kThreads - 1) / kThreads, 4096);
  auto stream = c10::cuda::getCurrentCUDAStream();
  scale_logits_kernel<<<blocks, kThreads, 0, stream>>>(z.data_ptr<float>(),
                                                       (fac && fac->defined()) ? fac->data_ptr<float>() : nullptr, numel,
                                                       (float)(softcap > 0 ? softcap : 0.0), (float)inv_t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return z;
}

void launch_div_rows(int mode, at::Tensor& s, const at::Tensor& t, const at::Tensor& fac, const float* row_scale,
                     at::Tensor& loss_rows, double beta, double inv_t, bool want_grad) {
  const int64_t rows = s.size(0), V = s.size(1);
  const float log_ratio = mode == 3 ? (float)std::log(beta / (1.0 - beta)) : 0.f;
  const float entropy = mode == 3 ? (float)(-beta * std::log(beta) - (1.0 - beta) * std::log(1.0 - beta)) : 0.f;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float* f = fac.defined() ? fac.data_ptr<float>() : nullptr;
#define CHARLIT_LAUNCH(M)                                                                                        \
  div_rows_kernel<M><<<rows, kThreads, 0, stream>>>(s.data_ptr<float>(), t.data_ptr<float>(), f, row_scale,     \
                                                    loss_rows.data_ptr<float>(), V, (float)beta, log_ratio, entropy, \
                                                    (float)inv_t, want_grad)
  if (mode == 1) CHARLIT_LAUNCH(1);
  else if (mode == 2) CHARLIT_LAUNCH(2);
  else CHARLIT_LAUNCH(3);
#undef CHARLIT_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int mode_of(double beta) { return beta == 0.0 ? 1 : (beta == 1.0 ? 2 : 3); }

// Accumulate dX rows, dW, db of one head from a tile gradient g (fp32 [r, V]).
void accumulate(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, int64_t i0, int64_t i1,
                at::Tensor& dx, at::Tensor& dw, at::Tensor& db) {
  auto gg = g.to(w.scalar_type());
  if (dx.defined()) dx.slice(0, i0, i1).copy_(at::mm(gg, w));
  if (dw.defined()) dw.add_(at::mm(gg.t(), x.slice(0, i0, i1)).to(at::kFloat));
  if (db.defined()) db.add_(g.sum(0));
}

std::vector<at::Tensor> div_impl(const at::Tensor& xs, const at::Tensor& ws, const c10::optional<at::Tensor>& bs,
                                 const at::Tensor& xt, const at::Tensor& wt, const c10::optional<at::Tensor>& bt,
                                 const c10::optional<at::Tensor>& upstream, double beta, double temperature,
                                 double softcap, int64_t tile, bool need_dx, bool need_dw, bool need_db) {
  check_cuda(xs, "student_hidden");
  check_cuda(ws, "student_weight");
  const c10::cuda::OptionalCUDAGuard guard(xs.device());
  const int64_t n = xs.size(0), V = ws.size(0);
  const double inv_t = 1.0 / temperature;
  const bool want_grad = need_dx || need_dw || need_db;
  auto fopt = xs.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, fopt);
  at::Tensor dx = need_dx ? at::empty({n, xs.size(1)}, fopt) : at::Tensor();
  at::Tensor dw = need_dw ? at::zeros({V, xs.size(1)}, fopt) : at::Tensor();
  at::Tensor db = need_db ? at::zeros({V}, fopt) : at::Tensor();
  at::Tensor up = upstream.has_value() ? upstream->to(at::kFloat).contiguous() : at::Tensor();
  const int mode = mode_of(beta);
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const int64_t i1 = std::min(n, i0 + tile);
    at::Tensor fac;
    at::Tensor s = tile_logits(xs, ws, bs, i0, i1, softcap, inv_t, want_grad ? &fac : nullptr);
    at::Tensor t = tile_logits(xt, wt, bt, i0, i1, softcap, inv_t, nullptr);
    at::Tensor lrows = loss.slice(0, i0, i1);
    const float* rs = up.defined() ? up.data_ptr<float>() + i0 : nullptr;
    launch_div_rows(mode, s, t, fac, rs, lrows, beta, inv_t, want_grad);
    if (want_grad) accumulate(s, xs, ws, i0, i1, dx, dw, db);
  }
  return {loss, dx, dw, db};
}

// Forward; gradients for a unit upstream are returned when need_* (grad-in-forward).
std::vector<at::Tensor> div_fwd(const at::Tensor& xs, const at::Tensor& ws, const c10::optional<at::Tensor>& bs,
                                const at::Tensor& xt, const at::Tensor& wt, const c10::optional<at::Tensor>& bt,
                                double beta, double temperature, double softcap, int64_t tile, bool need_dx,
                                bool need_dw, bool need_db) {
  return div_impl(xs, ws, bs, xt, wt, bt, c10::nullopt, beta, temperature, softcap, tile, need_dx, need_dw, need_db);
}

// Backward with a per-row upstream gradient (reduction="none"): recomputes the tiles.
std::vector<at::Tensor> div_bwd(const at::Tensor& xs, const at::Tensor& ws, const c10::optional<at::Tensor>& bs,
                                const at::Tensor& xt, const at::Tensor& wt, const c10::optional<at::Tensor>& bt,
                                const at::Tensor& upstream, double beta, double temperature, double softcap,
                                int64_t tile, bool need_dx, bool need_dw, bool need_db) {
  auto out = div_impl(xs, ws, bs, xt, wt, bt, upstream, beta, temperature, softcap, tile, need_dx, need_dw, need_db);
  return {out[1], out[2], out[3]};
}

std::vector<at::Tensor> lp_fwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                               const at::Tensor& y, double temperature, double softcap, int64_t tile) {
  check_cuda(x, "hidden");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  auto fopt = x.options().dtype(at::kFloat);
  at::Tensor out = at::empty({n}, fopt), lse = at::empty({n}, fopt);
  auto yl = y.to(at::kLong).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const int64_t i1 = std::min(n, i0 + tile);
    at::Tensor z = tile_logits(x, w, b, i0, i1, softcap, 1.0 / temperature, nullptr);
    lp_rows_kernel<<<i1 - i0, kThreads, 0, stream>>>(z.data_ptr<float>(), yl.data_ptr<int64_t>() + i0,
                                                     out.data_ptr<float>() + i0, lse.data_ptr<float>() + i0, z.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, lse};
}

std::vector<at::Tensor> lp_bwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                               const at::Tensor& y, const at::Tensor& lse, const at::Tensor& upstream,
                               double temperature, double softcap, int64_t tile, bool need_dx, bool need_dw,
                               bool need_db) {
  check_cuda(x, "hidden");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t n = x.size(0), V = w.size(0);
  const double inv_t = 1.0 / temperature;
  auto fopt = x.options().dtype(at::kFloat);
  at::Tensor dx = need_dx ? at::empty({n, x.size(1)}, fopt) : at::Tensor();
  at::Tensor dw = need_dw ? at::zeros({V, x.size(1)}, fopt) : at::Tensor();
  at::Tensor db = need_db ? at::zeros({V}, fopt) : at::Tensor();
  auto yl = y.to(at::kLong).contiguous();
  auto up = upstream.to(at::kFloat).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const int64_t i1 = std::min(n, i0 + tile);
    at::Tensor fac;
    at::Tensor z = tile_logits(x, w, b, i0, i1, softcap, inv_t, &fac);
    lp_grad_rows_kernel<<<i1 - i0, kThreads, 0, stream>>>(
        z.data_ptr<float>(), yl.data_ptr<int64_t>() + i0, lse.data_ptr<float>() + i0, up.data_ptr<float>() + i0,
        fac.defined() ? fac.data_ptr<float>() : nullptr, V, (float)inv_t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    accumulate(z, x, w, i0, i1, dx, dw, db);
  }
  return {dx, dw, db};
}

}  // namespace
}  // namespace charlit

TORCH_LIBRARY(charlit_kernels, m) {
  m.def(
      "div_fwd(Tensor xs, Tensor ws, Tensor? bs, Tensor xt, Tensor wt, Tensor? bt, float beta, float temperature, "
      "float softcap, int tile, bool need_dx, bool need_dw, bool need_db) -> Tensor[]");
  m.def(
      "div_bwd(Tensor xs, Tensor ws, Tensor? bs, Tensor xt, Tensor wt, Tensor? bt, Tensor upstream, float beta, "
      "float temperature, float softcap, int tile, bool need_dx, bool need_dw, bool need_db) -> Tensor[]");
  m.def("lp_fwd(Tensor x, Tensor w, Tensor? b, Tensor y, float temperature, float softcap, int tile) -> Tensor[]");
  m.def(
      "lp_bwd(Tensor x, Tensor w, Tensor? b, Tensor y, Tensor lse, Tensor upstream, float temperature, float softcap, "
      "int tile, bool need_dx, bool need_dw, bool need_db) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(charlit_kernels, CUDA, m) {
  m.impl("div_fwd", &charlit::div_fwd);
  m.impl("div_bwd", &charlit::div_bwd);
  m.impl("lp_fwd", &charlit::lp_fwd);
  m.impl("lp_bwd", &charlit::lp_bwd);
}
