// Multiresolution hash-grid encoding, CUDA kernels. Formulas: dgnerf/hashgrid.h (shared with the CPU
// kernels).
//
// Forward: one thread per (point, level); the grid's y dimension is the level, so a block's level
// constants are uniform and read from the kernel parameters. The sum is taken in the table's dtype
// (float32 for float16/bfloat16 output) and rounded once.
// Backward to the table: one thread per (point, level) adds its 8 weighted corners with atomicAdd into
// a zeroed gradient in the table's dtype (float32 or float64), so collisions sum in an unspecified
// order. Backward to x: one thread per point walks the levels in order (no atomics, deterministic).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dgnerf/checks.h"
#include "dgnerf/hashgrid.h"

namespace dgnerf {
namespace {

constexpr const char* kFwd = "dgnerf.hash_encode";
constexpr const char* kBwd = "dgnerf.hash_encode_backward";
constexpr int kThreads = 128;

template <typename scalar_t>
__device__ __forceinline__ void load_point(const scalar_t* __restrict__ x, int64_t n, scalar_t* p) {
  p[0] = x[3 * n + 0];
  p[1] = x[3 * n + 1];
  p[2] = x[3 * n + 2];
}

template <typename scalar_t, typename out_t, int FC>
__global__ void hash_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ table,
                                out_t* __restrict__ out, int64_t N, int64_t F_rt, const HashGrid<scalar_t> g) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int l = blockIdx.y;
  const int64_t F = FC > 0 ? FC : F_rt;
  scalar_t p[3];
  load_point(x, n, p);
  HashCorners<scalar_t> c;
  hash_corners<scalar_t>(g, g.level[l], p, &c);
  const scalar_t* tl = table + static_cast<int64_t>(l) * g.table_size * F;
  out_t* o = out + n * g.n_levels * F + l * F;
  if constexpr (FC > 0) {
    scalar_t acc[FC];
#pragma unroll
    for (int f = 0; f < FC; ++f) acc[f] = scalar_t(0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const scalar_t* v = tl + static_cast<int64_t>(c.row[i]) * FC;
#pragma unroll
      for (int f = 0; f < FC; ++f) acc[f] += c.weight[i] * __ldg(v + f);
    }
#pragma unroll
    for (int f = 0; f < FC; ++f) o[f] = static_cast<out_t>(acc[f]);
  } else {
    for (int64_t f = 0; f < F; ++f) {
      scalar_t acc = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc += c.weight[i] * __ldg(tl + static_cast<int64_t>(c.row[i]) * F + f);
      o[f] = static_cast<out_t>(acc);
    }
  }
}

template <typename scalar_t, typename grad_t, int FC>
__global__ void hash_bwd_table_kernel(const grad_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                      scalar_t* __restrict__ gtable, int64_t N, int64_t F_rt,
                                      const HashGrid<scalar_t> g) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int l = blockIdx.y;
  const int64_t F = FC > 0 ? FC : F_rt;
  scalar_t p[3];
  load_point(x, n, p);
  HashCorners<scalar_t> c;
  hash_corners<scalar_t>(g, g.level[l], p, &c);
  scalar_t* gl = gtable + static_cast<int64_t>(l) * g.table_size * F;
  const grad_t* go = gout + n * g.n_levels * F + l * F;
  if constexpr (FC > 0) {
    scalar_t gf[FC];
#pragma unroll
    for (int f = 0; f < FC; ++f) gf[f] = static_cast<scalar_t>(go[f]);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      scalar_t* dst = gl + static_cast<int64_t>(c.row[i]) * FC;
#pragma unroll
      for (int f = 0; f < FC; ++f) atomicAdd(dst + f, c.weight[i] * gf[f]);
    }
  } else {
    for (int64_t f = 0; f < F; ++f) {
      const scalar_t gv = static_cast<scalar_t>(go[f]);
#pragma unroll
      for (int i = 0; i < 8; ++i) atomicAdd(gl + static_cast<int64_t>(c.row[i]) * F + f, c.weight[i] * gv);
    }
  }
}

// d out[n, l*F + f] / d x_d = s_l,d * sum_i table[row_i, f] * d weight_i / d p_d (0 on a clamped axis).
template <typename scalar_t, typename grad_t, int FC>
__global__ void hash_bwd_x_kernel(const grad_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                  const scalar_t* __restrict__ table, scalar_t* __restrict__ gx, int64_t N,
                                  int64_t F_rt, const HashGrid<scalar_t> g) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int64_t F = FC > 0 ? FC : F_rt;
  const int64_t LF = g.n_levels * F;
  scalar_t p[3];
  load_point(x, n, p);
  scalar_t acc[3] = {0, 0, 0};
  for (int l = 0; l < g.n_levels; ++l) {
    const HashLevel<scalar_t>& lv = g.level[l];
    HashCorners<scalar_t> c;
    hash_corners<scalar_t>(g, lv, p, &c);
    const scalar_t* tl = table + static_cast<int64_t>(l) * g.table_size * F;
    const grad_t* go = gout + n * LF + l * F;
    scalar_t dp[3] = {0, 0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const scalar_t* v = tl + static_cast<int64_t>(c.row[i]) * F;
      scalar_t dot = 0;
      for (int64_t f = 0; f < F; ++f) dot += static_cast<scalar_t>(go[f]) * __ldg(v + f);
      scalar_t dw[3];
      hash_weight_grads<scalar_t>(c, i, dw);
#pragma unroll
      for (int d = 0; d < 3; ++d) dp[d] += dot * dw[d];
    }
#pragma unroll
    for (int d = 0; d < 3; ++d) {
      if (c.inside[d]) acc[d] += dp[d] * lv.scale[d];
    }
  }
#pragma unroll
  for (int d = 0; d < 3; ++d) gx[3 * n + d] = acc[d];
}

inline unsigned int blocks_for(int64_t N) { return static_cast<unsigned int>((N + kThreads - 1) / kThreads); }

at::Tensor hash_encode_cuda(const at::Tensor& x, const at::Tensor& table, at::ArrayRef<double> bbox_min,
                            at::ArrayRef<double> bbox_max, int64_t base_resolution, int64_t finest_resolution,
                            std::optional<at::ScalarType> out_dtype) {
  check_hash_inputs(x, table, bbox_min, bbox_max, base_resolution, finest_resolution, kFwd);
  const at::ScalarType ot = hash_out_dtype(table, out_dtype, kFwd);
  const c10::cuda::CUDAGuard guard(table.device());
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  auto out = at::empty({N, L * F}, table.options().dtype(ot));
  if (N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  hash_dispatch(table.scalar_type(), ot, F, kFwd, [&](auto s, auto o, auto fc) {
    using scalar_t = decltype(s);
    using out_t = decltype(o);
    const auto g = hash_grid_params<scalar_t>(L, T, bbox_min, bbox_max, base_resolution, finest_resolution);
    const dim3 grid(blocks_for(N), static_cast<unsigned int>(L));
    hash_fwd_kernel<scalar_t, out_t, decltype(fc)::value><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), out.data_ptr<out_t>(), N, F, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_encode_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                             const at::Tensor& table, at::ArrayRef<double> bbox_min,
                                                             at::ArrayRef<double> bbox_max, int64_t base_resolution,
                                                             int64_t finest_resolution, bool x_grad,
                                                             bool table_grad) {
  check_hash_inputs(x, table, bbox_min, bbox_max, base_resolution, finest_resolution, kBwd);
  check_hash_grad(grad_out, x, table, kBwd);
  const c10::cuda::CUDAGuard guard(table.device());
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  auto gtable = table_grad ? at::zeros({L, T, F}, table.options()) : at::empty({0}, table.options());
  auto gx = x_grad ? at::empty({N, 3}, x.options()) : at::empty({0}, x.options());
  if (N == 0) return {gtable, gx};
  auto stream = c10::cuda::getCurrentCUDAStream();
  hash_dispatch(table.scalar_type(), grad_out.scalar_type(), F, kBwd, [&](auto s, auto o, auto fc) {
    using scalar_t = decltype(s);
    using grad_t = decltype(o);
    constexpr int FC = decltype(fc)::value;
    const auto g = hash_grid_params<scalar_t>(L, T, bbox_min, bbox_max, base_resolution, finest_resolution);
    const dim3 grid(blocks_for(N), static_cast<unsigned int>(L));
    if (table_grad) {
      hash_bwd_table_kernel<scalar_t, grad_t, FC><<<grid, kThreads, 0, stream>>>(
          grad_out.data_ptr<grad_t>(), x.data_ptr<scalar_t>(), gtable.data_ptr<scalar_t>(), N, F, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (x_grad) {
      hash_bwd_x_kernel<scalar_t, grad_t, FC><<<blocks_for(N), kThreads, 0, stream>>>(
          grad_out.data_ptr<grad_t>(), x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
          N, F, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gtable, gx};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CUDA, m) {
  m.impl("hash_encode", &dgnerf::hash_encode_cuda);
  m.impl("hash_encode_backward", &dgnerf::hash_encode_backward_cuda);
}
