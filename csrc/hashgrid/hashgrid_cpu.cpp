// Multiresolution hash-grid encoding, CPU kernels. Formulas: dgnerf/hashgrid.h.
//
// Forward: each thread takes a range of points and walks it once per level, so one level's table
// (a few MB at T = 2^19) stays in cache while all of the range's corners are gathered from it.
// Backward to the table: no atomics, deterministic. Work is split by table rows, never by points: task
// (level l, slice s) owns rows [T s / S, T (s + 1) / S) of level l's gradient, zero-fills them (first
// touch by the thread that then writes them) and scans every point in order, keeping the corners
// that fall in its rows. Every row's sum therefore runs in point order whatever the thread count.
// S = 1 while there are at least as many levels as threads: every slice recomputes the corners of
// every point, which costs about as much as the adds themselves, so slices only serve threads that
// would otherwise idle.
// Backward to x: a separate level-outer pass like the forward one (it gathers the table the same way).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dgnerf/alloc.h"
#include "dgnerf/checks.h"
#include "dgnerf/hashgrid.h"
#include "dgnerf/parallel.h"

namespace dgnerf {
namespace {

constexpr const char* kFwd = "dgnerf.hash_encode";
constexpr const char* kBwd = "dgnerf.hash_encode_backward";

// The gathers miss cache at the fine levels, and one point's corner arithmetic is long enough to
// keep the out-of-order window from reaching the next point's loads: corners are computed for a
// block of points first, prefetching their rows, then the block's features are gathered.
constexpr int64_t kBlock = 32;

template <typename scalar_t, bool kWrite>
inline void corners_block(const HashGrid<scalar_t>& g, const HashLevel<scalar_t>& lv, const scalar_t* x, int64_t n0,
                          int64_t nb, const void* rows_base, int64_t row_bytes, HashCorners<scalar_t>* c) {
  const char* base = static_cast<const char*>(rows_base);
  for (int64_t j = 0; j < nb; ++j) {
    hash_corners<scalar_t>(g, lv, x + 3 * (n0 + j), &c[j]);
    for (int i = 0; i < 8; ++i) __builtin_prefetch(base + static_cast<int64_t>(c[j].row[i]) * row_bytes, kWrite ? 1 : 0);
  }
}

template <typename scalar_t, typename out_t, int FC>
void hash_forward_cpu_kernel(const scalar_t* x, const scalar_t* table, out_t* out, int64_t N, int64_t F_rt,
                             const HashGrid<scalar_t>& g) {
  const int64_t F = FC > 0 ? FC : F_rt;
  const int64_t L = g.n_levels, T = g.table_size, LF = L * F;
  parallel_dynamic(0, N, 2048, [&](int64_t n0, int64_t n1) {
    scalar_t acc_fixed[FC > 0 ? FC : 1];
    std::vector<scalar_t> acc_dyn(FC > 0 ? 0 : F);
    scalar_t* acc = FC > 0 ? acc_fixed : acc_dyn.data();
    HashCorners<scalar_t> cb[kBlock];
    for (int64_t l = 0; l < L; ++l) {
      const HashLevel<scalar_t> lv = g.level[l];
      const scalar_t* tl = table + l * T * F;
      for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
        const int64_t nb = std::min<int64_t>(kBlock, n1 - b0);
        corners_block<scalar_t, false>(g, lv, x, b0, nb, tl, F * sizeof(scalar_t), cb);
        for (int64_t j = 0; j < nb; ++j) {
          const HashCorners<scalar_t>& c = cb[j];
          for (int64_t f = 0; f < F; ++f) acc[f] = scalar_t(0);
          for (int i = 0; i < 8; ++i) {
            const scalar_t w = c.weight[i];
            const scalar_t* v = tl + static_cast<int64_t>(c.row[i]) * F;
            for (int64_t f = 0; f < F; ++f) acc[f] += w * v[f];
          }
          out_t* o = out + (b0 + j) * LF + l * F;
          for (int64_t f = 0; f < F; ++f) o[f] = static_cast<out_t>(acc[f]);
        }
      }
    }
  });
}

template <typename scalar_t, typename grad_t, int FC>
void hash_backward_table_cpu_kernel(const grad_t* gout, const scalar_t* x, scalar_t* gtable, int64_t N, int64_t F_rt,
                                    const HashGrid<scalar_t>& g) {
  const int64_t F = FC > 0 ? FC : F_rt;
  const int64_t L = g.n_levels, T = g.table_size, LF = L * F;
  const int64_t threads = at::get_num_threads();
  // Slices only when threads outnumber levels, and never thinner than 4096 rows.
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((threads + L - 1) / L, T / 4096));
  parallel_dynamic(0, L * slices, 1, [&](int64_t t0, int64_t t1) {
    scalar_t gf_fixed[FC > 0 ? FC : 1];
    std::vector<scalar_t> gf_dyn(FC > 0 ? 0 : F);
    scalar_t* gf = FC > 0 ? gf_fixed : gf_dyn.data();
    HashCorners<scalar_t> cb[kBlock];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t l = task / slices, s = task % slices;
      const uint32_t r0 = static_cast<uint32_t>(T * s / slices), r1 = static_cast<uint32_t>(T * (s + 1) / slices);
      scalar_t* gl = gtable + l * T * F;
      std::fill(gl + static_cast<int64_t>(r0) * F, gl + static_cast<int64_t>(r1) * F, scalar_t(0));
      const HashLevel<scalar_t> lv = g.level[l];
      for (int64_t b0 = 0; b0 < N; b0 += kBlock) {
        const int64_t nb = std::min<int64_t>(kBlock, N - b0);
        corners_block<scalar_t, true>(g, lv, x, b0, nb, gl, F * sizeof(scalar_t), cb);
        for (int64_t j = 0; j < nb; ++j) {
          const HashCorners<scalar_t>& c = cb[j];
          const grad_t* go = gout + (b0 + j) * LF + l * F;
          for (int64_t f = 0; f < F; ++f) gf[f] = static_cast<scalar_t>(go[f]);
          for (int i = 0; i < 8; ++i) {
            const uint32_t row = c.row[i];
            if (slices > 1 && (row < r0 || row >= r1)) continue;
            const scalar_t w = c.weight[i];
            scalar_t* dst = gl + static_cast<int64_t>(row) * F;
            for (int64_t f = 0; f < F; ++f) dst[f] += w * gf[f];
          }
        }
      }
    }
  });
}

// d out[n, l*F + f] / d x_d = s_l,d * sum_i table[row_i, f] * d weight_i / d p_d  (0 on a clamped axis),
// summed over levels in order; level-outer like the forward pass, gx itself holds the running sum.
template <typename scalar_t, typename grad_t, int FC>
void hash_backward_x_cpu_kernel(const grad_t* gout, const scalar_t* x, const scalar_t* table, scalar_t* gx, int64_t N,
                                int64_t F_rt, const HashGrid<scalar_t>& g) {
  const int64_t F = FC > 0 ? FC : F_rt;
  const int64_t L = g.n_levels, T = g.table_size, LF = L * F;
  parallel_dynamic(0, N, 2048, [&](int64_t n0, int64_t n1) {
    HashCorners<scalar_t> cb[kBlock];
    std::fill(gx + 3 * n0, gx + 3 * n1, scalar_t(0));
    for (int64_t l = 0; l < L; ++l) {
      const HashLevel<scalar_t> lv = g.level[l];
      const scalar_t* tl = table + l * T * F;
      for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
        const int64_t nb = std::min<int64_t>(kBlock, n1 - b0);
        corners_block<scalar_t, false>(g, lv, x, b0, nb, tl, F * sizeof(scalar_t), cb);
        for (int64_t j = 0; j < nb; ++j) {
          const HashCorners<scalar_t>& c = cb[j];
          const grad_t* go = gout + (b0 + j) * LF + l * F;
          scalar_t dp[3] = {0, 0, 0};
          for (int i = 0; i < 8; ++i) {
            const scalar_t* v = tl + static_cast<int64_t>(c.row[i]) * F;
            scalar_t dot = 0;
            for (int64_t f = 0; f < F; ++f) dot += static_cast<scalar_t>(go[f]) * v[f];
            scalar_t dw[3];
            hash_weight_grads<scalar_t>(c, i, dw);
            for (int d = 0; d < 3; ++d) dp[d] += dot * dw[d];
          }
          scalar_t* o = gx + 3 * (b0 + j);
          for (int d = 0; d < 3; ++d) {
            if (c.inside[d]) o[d] += dp[d] * lv.scale[d];
          }
        }
      }
    }
  });
}

at::Tensor hash_encode_cpu(const at::Tensor& x, const at::Tensor& table, at::ArrayRef<double> bbox_min,
                           at::ArrayRef<double> bbox_max, int64_t base_resolution, int64_t finest_resolution,
                           std::optional<at::ScalarType> out_dtype) {
  check_hash_inputs(x, table, bbox_min, bbox_max, base_resolution, finest_resolution, kFwd);
  const at::ScalarType ot = hash_out_dtype(table, out_dtype, kFwd);
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  auto out = empty_large({N, L * F}, table.options().dtype(ot));
  if (N == 0) return out;
  hash_dispatch(table.scalar_type(), ot, F, kFwd, [&](auto s, auto o, auto fc) {
    using scalar_t = decltype(s);
    using out_t = decltype(o);
    const auto g = hash_grid_params<scalar_t>(L, T, bbox_min, bbox_max, base_resolution, finest_resolution);
    hash_forward_cpu_kernel<scalar_t, out_t, decltype(fc)::value>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                                                  out.data_ptr<out_t>(), N, F, g);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_encode_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& table, at::ArrayRef<double> bbox_min,
                                                            at::ArrayRef<double> bbox_max, int64_t base_resolution,
                                                            int64_t finest_resolution, bool x_grad,
                                                            bool table_grad) {
  check_hash_inputs(x, table, bbox_min, bbox_max, base_resolution, finest_resolution, kBwd);
  check_hash_grad(grad_out, x, table, kBwd);
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  // Every row is written by its owner task: no zero-filled allocation.
  auto gtable = table_grad ? empty_large({L, T, F}, table.options()) : at::empty({0}, table.options());
  auto gx = x_grad ? at::empty({N, 3}, x.options()) : at::empty({0}, x.options());
  hash_dispatch(table.scalar_type(), grad_out.scalar_type(), F, kBwd, [&](auto s, auto o, auto fc) {
    using scalar_t = decltype(s);
    using grad_t = decltype(o);
    constexpr int FC = decltype(fc)::value;
    const auto g = hash_grid_params<scalar_t>(L, T, bbox_min, bbox_max, base_resolution, finest_resolution);
    if (table_grad) {
      hash_backward_table_cpu_kernel<scalar_t, grad_t, FC>(grad_out.data_ptr<grad_t>(), x.data_ptr<scalar_t>(),
                                                           gtable.data_ptr<scalar_t>(), N, F, g);
    }
    if (x_grad && N > 0) {
      hash_backward_x_cpu_kernel<scalar_t, grad_t, FC>(grad_out.data_ptr<grad_t>(), x.data_ptr<scalar_t>(),
                                                       table.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), N, F, g);
    }
  });
  return {gtable, gx};
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CPU, m) {
  m.impl("hash_encode", &dgnerf::hash_encode_cpu);
  m.impl("hash_encode_backward", &dgnerf::hash_encode_backward_cpu);
}
