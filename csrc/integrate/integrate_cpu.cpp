// Feature volume integration, CPU kernels (parallel over rays).
//
//   sigma [R,S], features [R,S,C], depths [R,S], deltas [R,S], background [C]
//   tau_i = sigma_i delta_i, T_i = exp(-sum_{j<i} tau_j), w_i = T_i (1 - exp(-tau_i))
//   feature = sum_i w_i F_i + (1 - sum_i w_i) F_bg,  opacity = sum_i w_i,  depth = sum_i w_i t_i
// Samples with T_i < threshold (and all later ones) are cut; threshold 0 is exact.
// The backward formula (math.h) never divides by 1 - alpha.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dgnerf/alloc.h"
#include "dgnerf/checks.h"
#include "dgnerf/integrate.h"
#include "dgnerf/math.h"
#include "dgnerf/parallel.h"

namespace dgnerf {
namespace {

template <typename scalar_t>
void integrate_forward_cpu_kernel(const scalar_t* sigma, const scalar_t* feat, const scalar_t* depths,
                                  const scalar_t* deltas, const scalar_t* bg, scalar_t* out_f, scalar_t* out_o,
                                  scalar_t* out_d, int64_t R, int64_t S, int64_t C, double threshold) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, S * C / 64));
  parallel_dynamic(0, R, grain, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> w(S);
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* sg = sigma + r * S;
      const scalar_t* dl = deltas + r * S;
      const scalar_t* tt = depths + r * S;
      scalar_t rest;
      const int64_t cut = ray_weights<scalar_t>(sg, dl, S, static_cast<scalar_t>(threshold), w.data(), nullptr, &rest);
      scalar_t* of = out_f + r * C;
      for (int64_t c = 0; c < C; ++c) of[c] = scalar_t(0);
      scalar_t op = 0, dp = 0;
      for (int64_t i = 0; i < cut; ++i) {
        const scalar_t wi = w[i];
        op += wi;
        dp += wi * tt[i];
        const scalar_t* f = feat + (r * S + i) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) of[c] += wi * f[c];
      }
      for (int64_t c = 0; c < C; ++c) of[c] += rest * bg[c];
      out_o[r] = op;
      out_d[r] = dp;
    }
  });
}

template <typename scalar_t>
void integrate_backward_cpu_kernel(const scalar_t* g_f, const scalar_t* g_o, const scalar_t* g_d,
                                   const scalar_t* sigma, const scalar_t* feat, const scalar_t* depths,
                                   const scalar_t* deltas, const scalar_t* bg, scalar_t* gr_sigma,
                                   scalar_t* gr_feat, scalar_t* gr_depths, scalar_t* gr_deltas, scalar_t* rest,
                                   int64_t R,
                                   int64_t S, int64_t C, double threshold) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, S * C / 64));
  parallel_dynamic(0, R, grain, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> w(S), Tn(S), v(S);
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* sg = sigma + r * S;
      const scalar_t* dl = deltas + r * S;
      const scalar_t* tt = depths + r * S;
      const int64_t cut =
          ray_weights<scalar_t>(sg, dl, S, static_cast<scalar_t>(threshold), w.data(), Tn.data(), rest + r);
      const scalar_t* gf = g_f + r * C;
      const scalar_t go = g_o[r], gd = g_d[r];
      // g_I . F_bg once per ray, so v_i = g_I . F_i - g_I . F_bg + g_O + g_D t_i.
      scalar_t gbg = 0;
#pragma omp simd reduction(+ : gbg)
      for (int64_t c = 0; c < C; ++c) gbg += gf[c] * bg[c];
      for (int64_t i = 0; i < S; ++i) {
        const scalar_t* f = feat + (r * S + i) * C;
        scalar_t* gF = gr_feat + (r * S + i) * C;
        if (i < cut) {
          const scalar_t wi = w[i];
          scalar_t dot = 0;
          // The reduction may be reordered (simd lanes): without this the strict FP order keeps the
          // loop scalar, and it is the backward pass's hot loop.
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < C; ++c) {
            dot += gf[c] * f[c];
            gF[c] = wi * gf[c];
          }
          v[i] = dot - gbg + go + gd * tt[i];
          gr_depths[r * S + i] = wi * gd;
        } else {
          for (int64_t c = 0; c < C; ++c) gF[c] = scalar_t(0);
          gr_depths[r * S + i] = scalar_t(0);
        }
      }
      ray_tau_grads<scalar_t>(w.data(), Tn.data(), v.data(), sg, dl, cut, S, gr_sigma + r * S, gr_deltas + r * S);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> integrate_features_cpu(const at::Tensor& sigma,
                                                                      const at::Tensor& features,
                                                                      const at::Tensor& depths,
                                                                      const at::Tensor& deltas,
                                                                      const at::Tensor& background,
                                                                      double threshold) {
  check_integrate_inputs(sigma, features, depths, deltas, background, threshold);
  const int64_t R = features.size(0), S = features.size(1), C = features.size(2);
  auto out_f = at::empty({R, C}, features.options());
  auto out_o = at::empty({R}, features.options());
  auto out_d = at::empty({R}, features.options());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "integrate_features_cpu", [&] {
    integrate_forward_cpu_kernel<scalar_t>(sigma.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                                           depths.data_ptr<scalar_t>(), deltas.data_ptr<scalar_t>(),
                                           background.data_ptr<scalar_t>(), out_f.data_ptr<scalar_t>(),
                                           out_o.data_ptr<scalar_t>(), out_d.data_ptr<scalar_t>(), R, S, C,
                                           threshold);
  });
  return {out_f, out_o, out_d};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> integrate_features_backward_cpu(
    const at::Tensor& grad_feature, const at::Tensor& grad_opacity, const at::Tensor& grad_depth,
    const at::Tensor& sigma, const at::Tensor& features, const at::Tensor& depths, const at::Tensor& deltas,
    const at::Tensor& background, double threshold) {
  check_integrate_inputs(sigma, features, depths, deltas, background, threshold);
  const int64_t R = features.size(0), S = features.size(1), C = features.size(2);
  check_integrate_grads(grad_feature, grad_opacity, grad_depth, features, R, C);
  auto gr_sigma = at::empty({R, S}, features.options());
  auto gr_feat = empty_large({R, S, C}, features.options());  // 134 MB at the default size: huge pages
  auto gr_depths = at::empty({R, S}, features.options());
  auto gr_deltas = at::empty({R, S}, features.options());
  auto rest = at::empty({R}, features.options());  // 1 - opacity per ray
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "integrate_features_backward_cpu", [&] {
    integrate_backward_cpu_kernel<scalar_t>(
        grad_feature.data_ptr<scalar_t>(), grad_opacity.data_ptr<scalar_t>(), grad_depth.data_ptr<scalar_t>(),
        sigma.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
        deltas.data_ptr<scalar_t>(), background.data_ptr<scalar_t>(), gr_sigma.data_ptr<scalar_t>(),
        gr_feat.data_ptr<scalar_t>(), gr_depths.data_ptr<scalar_t>(), gr_deltas.data_ptr<scalar_t>(), rest.data_ptr<scalar_t>(), R, S, C,
        threshold);
  });
  // d feature / d F_bg = (1 - opacity): one small matrix-vector product over rays.
  auto gr_bg = at::mv(grad_feature.t(), rest);
  return {gr_sigma, gr_feat, gr_depths, gr_deltas, gr_bg};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CPU, m) {
  m.impl("integrate_features", &dgnerf::integrate_features_cpu);
  m.impl("integrate_features_backward", &dgnerf::integrate_features_backward_cpu);
}
