// Host-side argument checks of the feature volume integration op (CPU and CUDA share them).
#pragma once
#include <ATen/ATen.h>

#include "dgnerf/checks.h"

namespace dgnerf {

inline void check_integrate_inputs(const at::Tensor& sigma, const at::Tensor& features, const at::Tensor& depths,
                                   const at::Tensor& deltas, const at::Tensor& background, double threshold) {
  constexpr const char* op = "dgnerf.integrate_features";
  check_float(features, op, "features");
  check_shape(features, {-1, -1, -1}, op, "features", "[rays, samples, channels]");
  check_nonempty(features, op, "features");
  const int64_t R = features.size(0), S = features.size(1), C = features.size(2);
  const at::Tensor* per_sample[] = {&sigma, &depths, &deltas};
  const char* names[] = {"sigma", "depths", "deltas"};
  for (int k = 0; k < 3; ++k) {
    check_defined(*per_sample[k], op, names[k]);
    check_same_device(*per_sample[k], features, op, names[k], "features");
    check_same_dtype(*per_sample[k], features, op, names[k], "features");
    check_shape(*per_sample[k], {R, S}, op, names[k], "[rays, samples] matching 'features'");
    check_contiguous(*per_sample[k], op, names[k]);
  }
  check_defined(background, op, "background");
  check_same_device(background, features, op, "background", "features");
  check_same_dtype(background, features, op, "background", "features");
  check_shape(background, {C}, op, "background", "[channels] matching 'features'");
  check_contiguous(background, op, "background");
  check_contiguous(features, op, "features");
  TORCH_CHECK(threshold >= 0.0 && threshold < 1.0, op, ": argument 'threshold' expected a value in [0, 1), got ",
              threshold);
}

inline void check_integrate_grads(const at::Tensor& g_f, const at::Tensor& g_o, const at::Tensor& g_d,
                                  const at::Tensor& features, int64_t R, int64_t C) {
  constexpr const char* op = "dgnerf.integrate_features_backward";
  const at::Tensor* gs[] = {&g_f, &g_o, &g_d};
  const char* names[] = {"grad_feature", "grad_opacity", "grad_depth"};
  for (int k = 0; k < 3; ++k) {
    check_defined(*gs[k], op, names[k]);
    check_same_device(*gs[k], features, op, names[k], "features");
    check_same_dtype(*gs[k], features, op, names[k], "features");
    check_contiguous(*gs[k], op, names[k]);
  }
  check_shape(g_f, {R, C}, op, "grad_feature", "[rays, channels]");
  check_shape(g_o, {R}, op, "grad_opacity", "[rays]");
  check_shape(g_d, {R}, op, "grad_depth", "[rays]");
}

}  // namespace dgnerf
