// The field MLP on CPU (formulas and layouts: csrc/include/dgnerf/mlp.h).
//
// Points are cut into tiles of 512 points that never straddle two images (so a tile's folded
// conditioning is one bias row); the tiles run in parallel (at::parallel_for) and each worker keeps
// its tile's activations in two [512, W] buffers that stay in its L2 through all layers. Every layer
// is one GEMM through ATen (MKL for float32/float64, oneDNN with AVX-512 BF16 for bf16 operands with
// float32 accumulation). The backward pass runs the same tiles in reverse with per-worker float32
// weight-gradient accumulators (each tile adds a [W, 512] x [512, W] GEMM), summed at the end.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>

#include "dgnerf/mlp.h"

namespace dgnerf {
namespace {

// float32: 512 points x 256 channels x 4 bytes = 512 KiB per activation tile, two of them fit a core's L2.
// bf16: the GEMMs run on the matrix units, where a call has a fixed cost that small tiles pay too often and
// the vectorized epilogues stream the tile once (dgnerf/bf16_rows.h): up to 8192 points (measured on a 2-core
// AMX machine, the demo's 2x64 MLP: fwd+bwd 39 ms at 8192, 41 at 4096, 46 at 2048, 81 at 512; float32 is
// fastest at 512), halved while a batch would have fewer than kMinTiles tiles to share among the threads (a
// small render keeps its parallelism). The tile depends on the batch's shape only, never on the thread count,
// so the weight gradients stay the same bits whatever the threads (parallel.h). DGNERF_MLP_TILE overrides both
// (read once) for tuning on other machines.
constexpr int64_t kMinTiles = 8;

int64_t tile_points(int64_t precision, const at::Tensor& x_enc) {
  static const int64_t env_tile = [] {
    const char* env = std::getenv("DGNERF_MLP_TILE");
    const long v = env ? std::strtol(env, nullptr, 10) : 0;
    return v > 0 ? static_cast<int64_t>(v) : int64_t(0);
  }();
  if (env_tile > 0) return env_tile;
  if (precision != kMlpBF16) return 512;
  const int64_t B = x_enc.dim() == 3 ? x_enc.size(0) : 1, P = x_enc.dim() == 3 ? x_enc.size(1) : 1;
  int64_t tile = 8192;
  while (tile > 512 && B * ((P + tile - 1) / tile) < kMinTiles) tile /= 2;
  return tile;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_mlp_forward_cpu(
    const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& cond0,
    const c10::optional<at::Tensor>& cond_skip, const at::Tensor& w0x, at::TensorList hidden_w,
    at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
    const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b, const at::Tensor& out_w,
    const at::Tensor& out_b, int64_t skip, bool feature, int64_t precision, bool save) {
  return mlp_forward_impl(x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w,
                          dir_b, out_w, out_b, skip, feature, precision, save, tile_points(precision, x_enc));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
field_mlp_backward_cpu(const at::Tensor& grad_sigma, const at::Tensor& grad_out, const at::Tensor& x_enc,
                       const at::Tensor& d_enc, const at::Tensor& acts, const at::Tensor& w0x, at::TensorList hidden_w,
                       const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w, const at::Tensor& dir_w,
                       const at::Tensor& out_w, int64_t skip, bool feature, int64_t precision) {
  return mlp_backward_impl(grad_sigma, grad_out, x_enc, d_enc, acts, w0x, hidden_w, skip_wx, sigma_w, dir_w, out_w,
                           skip, feature, precision, tile_points(precision, x_enc));
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CPU, m) {
  m.impl("field_mlp_forward", &dgnerf::field_mlp_forward_cpu);
  m.impl("field_mlp_backward", &dgnerf::field_mlp_backward_cpu);
}
