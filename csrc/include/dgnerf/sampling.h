// Ray sampling: the per-ray routine shared by the CPU and CUDA kernels, and the host-side checks.
//
//   c2w [B,3,4] or [B,4,4] (row-major [R | o], OpenCV camera axes), intrinsics [B,4] = (fx, fy, cx, cy)
//   at feature-map resolution -> for pixel (u, v), ray r = v * W + u:
//   points [B,R,S,3] = o + t d, dirs [B,R,3] = d (unit), depths [B,R,S] = t, deltas [B,R,S].
//   Depth i lies in bin i of [tn, tf] at offset u_i: u_i = 0.5 (eval) or uniform01(seed + b, r S + i)
//   (stratified: image b of a batch uses seed + b, so a batch split over processes with shifted seeds
//   draws the same numbers); [tn, tf] is [near, far], clipped to the sphere |x| <= radius when radius > 0.
#pragma once
#include <ATen/ATen.h>

#include "dgnerf/checks.h"
#include "dgnerf/math.h"

namespace dgnerf {

template <typename T>
DGNERF_HD void sample_one_ray(const T* c2w, const T* K, int64_t u, int64_t v, int64_t S, T near_, T far_,
                              bool stratified, int64_t seed, int64_t ray_in_image, T radius, T* pts, T* dir, T* t,
                              T* dl) {
  const Ray<T> ray = pixel_ray<T>(c2w, K[0], K[1], K[2], K[3], u, v);
  T tn, tf;
  ray_bounds<T>(ray, near_, far_, radius, &tn, &tf);
  dir[0] = ray.dx;
  dir[1] = ray.dy;
  dir[2] = ray.dz;
  for (int64_t i = 0; i < S; ++i) {
    const T off = stratified ? uniform01<T>(seed, ray_in_image * S + i) : T(0.5);
    t[i] = sample_depth<T>(tn, tf, i, S, off);
  }
  for (int64_t i = 0; i < S; ++i) {
    dl[i] = sample_delta<T>(t, i, S, tn, tf);
    pts[3 * i + 0] = ray.ox + t[i] * ray.dx;
    pts[3 * i + 1] = ray.oy + t[i] * ray.dy;
    pts[3 * i + 2] = ray.oz + t[i] * ray.dz;
  }
}

inline void check_sampling_inputs(const at::Tensor& c2w, const at::Tensor& intrinsics, int64_t height, int64_t width,
                                  int64_t n_samples, double near_, double far_, double radius) {
  constexpr const char* op = "dgnerf.sample_rays";
  check_defined(c2w, op, "c2w");
  const auto st = c2w.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, op, ": argument 'c2w' expected float32 or float64, got ", st);
  TORCH_CHECK(c2w.dim() == 3 && (c2w.size(1) == 3 || c2w.size(1) == 4) && c2w.size(2) == 4, op,
              ": argument 'c2w' expected shape [batch, 3, 4] or [batch, 4, 4] (camera-to-world), got ",
              shape_str(c2w.sizes()));
  check_nonempty(c2w, op, "c2w");
  check_contiguous(c2w, op, "c2w");
  const int64_t B = c2w.size(0);
  check_defined(intrinsics, op, "intrinsics");
  check_same_device(intrinsics, c2w, op, "intrinsics", "c2w");
  check_same_dtype(intrinsics, c2w, op, "intrinsics", "c2w");
  check_shape(intrinsics, {B, 4}, op, "intrinsics", "[batch, 4] = (fx, fy, cx, cy) matching 'c2w'");
  check_contiguous(intrinsics, op, "intrinsics");
  TORCH_CHECK(height > 0, op, ": argument 'height' expected > 0, got ", height);
  TORCH_CHECK(width > 0, op, ": argument 'width' expected > 0, got ", width);
  TORCH_CHECK(n_samples > 0, op, ": argument 'n_samples' expected > 0, got ", n_samples);
  TORCH_CHECK(std::isfinite(near_) && near_ >= 0.0, op, ": argument 'near' expected a finite value >= 0, got ",
              near_);
  TORCH_CHECK(std::isfinite(far_) && far_ > near_, op, ": argument 'far' expected a finite value > near (", near_,
              "), got ", far_);
  TORCH_CHECK(std::isfinite(radius), op, ": argument 'sphere_radius' expected a finite value, got ", radius);
}

}  // namespace dgnerf
