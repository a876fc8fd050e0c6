// Ray sampling, CUDA kernel: one thread per ray runs the shared per-ray routine (dgnerf/sampling.h),
// so CPU, CUDA and the PyTorch twin produce the same depths for the same seed.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dgnerf/sampling.h"

namespace dgnerf {
namespace {

template <typename scalar_t>
__global__ void sample_rays_kernel(const scalar_t* __restrict__ c2w, const scalar_t* __restrict__ K, int64_t B,
                                   int64_t H, int64_t W, int64_t S, int64_t cstride, scalar_t near_, scalar_t far_,
                                   bool stratified, int64_t seed, scalar_t radius, scalar_t* __restrict__ P,
                                   scalar_t* __restrict__ D, scalar_t* __restrict__ T, scalar_t* __restrict__ DL) {
  const int64_t R = H * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * R;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / R, r = i % R;
    sample_one_ray<scalar_t>(c2w + b * cstride, K + b * 4, r % W, r / W, S, near_, far_, stratified,
                                 seed + b, r, radius,
                             P + i * S * 3, D + i * 3, T + i * S, DL + i * S);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_rays_cuda(const at::Tensor& c2w,
                                                                            const at::Tensor& intrinsics,
                                                                            int64_t height, int64_t width,
                                                                            int64_t n_samples, double near_,
                                                                            double far_, bool stratified,
                                                                            int64_t seed, double sphere_radius) {
  check_sampling_inputs(c2w, intrinsics, height, width, n_samples, near_, far_, sphere_radius);
  const c10::cuda::CUDAGuard guard(c2w.device());
  const int64_t B = c2w.size(0), R = height * width, S = n_samples;
  auto opts = c2w.options();
  auto points = at::empty({B, R, S, 3}, opts);
  auto dirs = at::empty({B, R, 3}, opts);
  auto depths = at::empty({B, R, S}, opts);
  auto deltas = at::empty({B, R, S}, opts);
  const int threads = 128;
  const int blocks = static_cast<int>(std::min<int64_t>((B * R + threads - 1) / threads, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(c2w.scalar_type(), "sample_rays_cuda", [&] {
    sample_rays_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        c2w.data_ptr<scalar_t>(), intrinsics.data_ptr<scalar_t>(), B, height, width, S, c2w.size(1) * 4,
        static_cast<scalar_t>(near_), static_cast<scalar_t>(far_), stratified, seed,
        static_cast<scalar_t>(sphere_radius), points.data_ptr<scalar_t>(), dirs.data_ptr<scalar_t>(),
        depths.data_ptr<scalar_t>(), deltas.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {points, dirs, depths, deltas};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CUDA, m) { m.impl("sample_rays", &dgnerf::sample_rays_cuda); }
