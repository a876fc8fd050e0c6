// Ray sampling, CPU kernel (parallel over rays). Formulas: dgnerf/sampling.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dgnerf/sampling.h"
#include "dgnerf/parallel.h"

namespace dgnerf {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_rays_cpu(const at::Tensor& c2w,
                                                                           const at::Tensor& intrinsics,
                                                                           int64_t height, int64_t width,
                                                                           int64_t n_samples, double near_,
                                                                           double far_, bool stratified, int64_t seed,
                                                                           double sphere_radius) {
  check_sampling_inputs(c2w, intrinsics, height, width, n_samples, near_, far_, sphere_radius);
  const int64_t B = c2w.size(0), R = height * width, S = n_samples;
  const int64_t cstride = c2w.size(1) * 4;
  auto opts = c2w.options();
  auto points = at::empty({B, R, S, 3}, opts);
  auto dirs = at::empty({B, R, 3}, opts);
  auto depths = at::empty({B, R, S}, opts);
  auto deltas = at::empty({B, R, S}, opts);
  AT_DISPATCH_FLOATING_TYPES(c2w.scalar_type(), "sample_rays_cpu", [&] {
    const scalar_t* cw = c2w.data_ptr<scalar_t>();
    const scalar_t* K = intrinsics.data_ptr<scalar_t>();
    scalar_t* P = points.data_ptr<scalar_t>();
    scalar_t* D = dirs.data_ptr<scalar_t>();
    scalar_t* T = depths.data_ptr<scalar_t>();
    scalar_t* DL = deltas.data_ptr<scalar_t>();
    parallel_dynamic(0, B * R, std::max<int64_t>(1, 8192 / S), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / R, r = i % R;
        sample_one_ray<scalar_t>(cw + b * cstride, K + b * 4, r % width, r / width, S,
                                 static_cast<scalar_t>(near_), static_cast<scalar_t>(far_), stratified,
                                 seed + b, r,
                                 static_cast<scalar_t>(sphere_radius), P + i * S * 3, D + i * 3, T + i * S,
                                 DL + i * S);
      }
    });
  });
  return {points, dirs, depths, deltas};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CPU, m) { m.impl("sample_rays", &dgnerf::sample_rays_cpu); }
