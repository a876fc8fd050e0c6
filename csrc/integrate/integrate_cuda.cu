// Feature volume integration, CUDA kernels. Formulas: dgnerf/math.h (shared with the CPU kernels).
//
//   sigma [R,S], features [R,S,C], depths [R,S], deltas [R,S], background [C]
//   -> feature [R,C], opacity [R], depth [R]      (float32/float64/float16/bfloat16; fp32 accumulate)
// Forward: one block per ray (grid-stride). The S weights are computed once per ray into shared
// memory, then each thread accumulates its channels: every feature row is read once, coalesced.
// Backward: one warp per sample computes g_I . F_i (shuffle reduction) while writing
// dL/dF_i = w_i g_I, then one thread runs the suffix sum for dL/dtau (no division by 1 - alpha).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dgnerf/checks.h"
#include "dgnerf/integrate.h"
#include "dgnerf/math.h"

namespace dgnerf {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxSamplesCuda = 1024;

inline int num_blocks(int64_t R) {
  // Enough blocks to fill any current GPU several times over; the kernels loop over the rest.
  return static_cast<int>(std::min<int64_t>(R, 65535));
}

template <typename scalar_t, typename acc_t>
__global__ void integrate_fwd_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ feat,
                                     const scalar_t* __restrict__ depths, const scalar_t* __restrict__ deltas,
                                     const scalar_t* __restrict__ bg, scalar_t* __restrict__ out_f,
                                     scalar_t* __restrict__ out_o, scalar_t* __restrict__ out_d, int64_t R, int64_t S,
                                     int64_t C, acc_t threshold) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* sg = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* dl = sg + S;
  acc_t* w = dl + S;
  __shared__ int64_t cut_s;
  __shared__ acc_t rest_s;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      sg[i] = static_cast<acc_t>(sigma[r * S + i]);
      dl[i] = static_cast<acc_t>(deltas[r * S + i]);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t rest;
      const int64_t cut = ray_weights<acc_t>(sg, dl, S, threshold, w, nullptr, &rest);
      acc_t op = 0, dp = 0;
      for (int64_t i = 0; i < cut; ++i) {
        op += w[i];
        dp += w[i] * static_cast<acc_t>(depths[r * S + i]);
      }
      out_o[r] = static_cast<scalar_t>(op);
      out_d[r] = static_cast<scalar_t>(dp);
      cut_s = cut;
      rest_s = rest;
    }
    __syncthreads();
    const int64_t cut = cut_s;
    const acc_t rest = rest_s;
    const scalar_t* f = feat + r * S * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      acc_t acc = 0;
      for (int64_t i = 0; i < cut; ++i) acc += w[i] * static_cast<acc_t>(f[i * C + c]);
      out_f[r * C + c] = static_cast<scalar_t>(acc + rest * static_cast<acc_t>(bg[c]));
    }
    __syncthreads();  // the shared arrays are reused by the next ray
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return __shfl_sync(0xffffffffu, v, 0);
}

template <typename scalar_t, typename acc_t>
__global__ void integrate_bwd_kernel(const scalar_t* __restrict__ g_f, const scalar_t* __restrict__ g_o,
                                     const scalar_t* __restrict__ g_d, const scalar_t* __restrict__ sigma,
                                     const scalar_t* __restrict__ feat, const scalar_t* __restrict__ depths,
                                     const scalar_t* __restrict__ deltas, const scalar_t* __restrict__ bg,
                                     scalar_t* __restrict__ gr_sigma, scalar_t* __restrict__ gr_feat,
                                     scalar_t* __restrict__ gr_depths, scalar_t* __restrict__ gr_deltas,
                                     scalar_t* __restrict__ rest_out, int64_t R, int64_t S, int64_t C,
                                     acc_t threshold) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* sg = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* dl = sg + S;
  acc_t* w = dl + S;
  acc_t* Tn = w + S;
  acc_t* v = Tn + S;
  acc_t* gs = v + S;
  acc_t* gdl = gs + S;
  __shared__ int64_t cut_s;
  __shared__ acc_t gbg_s;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      sg[i] = static_cast<acc_t>(sigma[r * S + i]);
      dl[i] = static_cast<acc_t>(deltas[r * S + i]);
    }
    const scalar_t* gf = g_f + r * C;
    if (warp == 0) {  // g_I . F_bg, once per ray
      acc_t part = 0;
      for (int64_t c = lane; c < C; c += 32) part += static_cast<acc_t>(gf[c]) * static_cast<acc_t>(bg[c]);
      part = warp_sum(part);
      if (lane == 0) gbg_s = part;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t rest;
      cut_s = ray_weights<acc_t>(sg, dl, S, threshold, w, Tn, &rest);
      rest_out[r] = static_cast<scalar_t>(rest);
    }
    __syncthreads();
    const int64_t cut = cut_s;
    const acc_t go = static_cast<acc_t>(g_o[r]), gd = static_cast<acc_t>(g_d[r]), gbg = gbg_s;
    for (int64_t i = warp; i < S; i += n_warps) {
      const scalar_t* f = feat + (r * S + i) * C;
      scalar_t* gF = gr_feat + (r * S + i) * C;
      const acc_t wi = w[i];  // 0 for cut samples
      acc_t part = 0;
      for (int64_t c = lane; c < C; c += 32) {
        const acc_t g = static_cast<acc_t>(gf[c]);
        if (i < cut) part += g * static_cast<acc_t>(f[c]);
        gF[c] = static_cast<scalar_t>(wi * g);
      }
      part = warp_sum(part);
      if (lane == 0) {
        const acc_t t = static_cast<acc_t>(depths[r * S + i]);
        v[i] = part - gbg + go + gd * t;
        gr_depths[r * S + i] = static_cast<scalar_t>(wi * gd);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) ray_tau_grads<acc_t>(w, Tn, v, sg, dl, cut, S, gs, gdl);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      gr_sigma[r * S + i] = static_cast<scalar_t>(gs[i]);
      gr_deltas[r * S + i] = static_cast<scalar_t>(gdl[i]);
    }
    __syncthreads();
  }
}

void check_cuda_sizes(const at::Tensor& features) {
  TORCH_CHECK(features.size(1) <= kMaxSamplesCuda, "dgnerf.integrate_features: argument 'features' has ",
              features.size(1), " samples per ray; the CUDA kernel supports at most ", kMaxSamplesCuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> integrate_features_cuda(const at::Tensor& sigma,
                                                                       const at::Tensor& features,
                                                                       const at::Tensor& depths,
                                                                       const at::Tensor& deltas,
                                                                       const at::Tensor& background,
                                                                       double threshold) {
  check_integrate_inputs(sigma, features, depths, deltas, background, threshold);
  check_cuda_sizes(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t R = features.size(0), S = features.size(1), C = features.size(2);
  auto out_f = at::empty({R, C}, features.options());
  auto out_o = at::empty({R}, features.options());
  auto out_d = at::empty({R}, features.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "integrate_features_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const size_t smem = 3 * S * sizeof(acc_t);
    integrate_fwd_kernel<scalar_t, acc_t><<<num_blocks(R), kThreads, smem, stream>>>(
        sigma.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
        deltas.data_ptr<scalar_t>(), background.data_ptr<scalar_t>(), out_f.data_ptr<scalar_t>(),
        out_o.data_ptr<scalar_t>(), out_d.data_ptr<scalar_t>(), R, S, C, static_cast<acc_t>(threshold));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_f, out_o, out_d};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> integrate_features_backward_cuda(
    const at::Tensor& grad_feature, const at::Tensor& grad_opacity, const at::Tensor& grad_depth,
    const at::Tensor& sigma, const at::Tensor& features, const at::Tensor& depths, const at::Tensor& deltas,
    const at::Tensor& background, double threshold) {
  check_integrate_inputs(sigma, features, depths, deltas, background, threshold);
  check_cuda_sizes(features);
  const int64_t R = features.size(0), S = features.size(1), C = features.size(2);
  check_integrate_grads(grad_feature, grad_opacity, grad_depth, features, R, C);
  const c10::cuda::CUDAGuard guard(features.device());
  auto gr_sigma = at::empty({R, S}, features.options());
  auto gr_feat = at::empty({R, S, C}, features.options());
  auto gr_depths = at::empty({R, S}, features.options());
  auto gr_deltas = at::empty({R, S}, features.options());
  auto rest = at::empty({R}, features.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "integrate_features_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const size_t smem = 7 * S * sizeof(acc_t);
        integrate_bwd_kernel<scalar_t, acc_t><<<num_blocks(R), kThreads, smem, stream>>>(
            grad_feature.data_ptr<scalar_t>(), grad_opacity.data_ptr<scalar_t>(), grad_depth.data_ptr<scalar_t>(),
            sigma.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
            deltas.data_ptr<scalar_t>(), background.data_ptr<scalar_t>(), gr_sigma.data_ptr<scalar_t>(),
            gr_feat.data_ptr<scalar_t>(), gr_depths.data_ptr<scalar_t>(), gr_deltas.data_ptr<scalar_t>(),
            rest.data_ptr<scalar_t>(), R, S, C, static_cast<acc_t>(threshold));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  // d feature / d F_bg = (1 - opacity) = T_end per ray: one matrix-vector product over rays.
  auto gr_bg = at::mv(grad_feature.t(), rest);
  return {gr_sigma, gr_feat, gr_depths, gr_deltas, gr_bg};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CUDA, m) {
  m.impl("integrate_features", &dgnerf::integrate_features_cuda);
  m.impl("integrate_features_backward", &dgnerf::integrate_features_backward_cuda);
}
