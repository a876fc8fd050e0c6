// The fully-fused conditioned field MLP (docs/design.md, "The model" and "Speed-ups"): shapes, argument checks and the ATen-level
// building blocks that the CPU kernel (per point tile) and the CUDA backward (whole batch) share.
//
// Per point n of image b (points come in contiguous blocks of P per image), x = gamma(x_n) [Dx],
// d = gamma(d_n) [Dd]; the conditioning [z_id; beta] is folded into per-image biases:
//   h_0 = relu(W0x x + cond0[b])                                  cond0[b]     = W0c [z;beta] + b0
//   h_l = relu(W_l h_{l-1} + b_l)                   l = 1..D-1, l != skip
//   h_s = relu(Wsx x + Wsh h_{s-1} + cond_skip[b])  l = skip      cond_skip[b] = Wsc [z;beta] + bs
//   sigma = w_sigma . h_{D-1} + b_sigma                           (raw, no activation)
//   hdir  = relu(Wdh h_{D-1} + Wdd d + b_dir)                     [Wd]
//   F     = W_out hdir + b_out                                    [F]   (output "feature")
// Output "hidden" returns hdir instead of F (integrate-then-project).
//
// Tensors: x_enc [B,P,Dx], d_enc [B,P,Dd], cond0 [B,W], cond_skip [B,W] (or undefined: no skip),
// w0x [W,Dx], hidden_w: D-1 x [W,W] (weight of layer l = 1..D-1 on h; for the skip layer its h part
// Wsh), hidden_b: the biases of the layers 1..D-1 except the skip layer (D-2 entries with a skip,
// D-1 without), skip_wx [W,Dx], sigma_w [1,W], sigma_b [1], dir_w [Wd,W+Dd] (columns [h | d]),
// dir_b [Wd], out_w [F,Wd], out_b [F].
//
// Saved activations (for the backward pass), one flat tensor in the compute dtype:
//   acts[0 : D*N*W]           = h_l for l = 0..D-1, layer-major ([D, N, W]);
//   acts[D*N*W : D*N*W+N*Wd]  = hdir ([N, Wd]).
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "dgnerf/checks.h"

namespace dgnerf {

// Compute precision of the op ("exact" computes in the inputs' dtype, float32 or float64).
enum MlpPrecision : int64_t { kMlpExact = 0, kMlpBF16 = 1, kMlpFP16 = 2 };

struct MlpDims {
  int64_t B = 0, P = 0, N = 0, Dx = 0, Dd = 0, W = 0, D = 0, Wd = 0, F = 0, skip = -1;
  bool feature = true;
  int64_t acts_numel() const { return D * N * W + N * Wd; }
};

inline at::ScalarType mlp_compute_dtype(int64_t precision, at::ScalarType input) {
  if (precision == kMlpBF16) return at::kBFloat16;
  if (precision == kMlpFP16) return at::kHalf;
  return input;
}

inline void check_weight(const at::Tensor& t, const at::Tensor& ref, std::vector<int64_t> shape, const char* op,
                         const char* name, const char* meaning) {
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, "x_enc");
  check_same_dtype(t, ref, op, name, "x_enc");
  check_shape(t, shape, op, name, meaning);
}

// Checks every argument of field_mlp_forward and returns the dimensions.
inline MlpDims check_field_mlp_inputs(const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& cond0,
                                      const c10::optional<at::Tensor>& cond_skip, const at::Tensor& w0x,
                                      at::TensorList hidden_w, at::TensorList hidden_b,
                                      const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                                      const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b,
                                      const at::Tensor& out_w, const at::Tensor& out_b, int64_t skip, bool feature,
                                      int64_t precision) {
  constexpr const char* op = "dgnerf.field_mlp";
  check_float(x_enc, op, "x_enc");
  check_shape(x_enc, {-1, -1, -1}, op, "x_enc", "[images, points per image, Dx]");
  check_nonempty(x_enc, op, "x_enc");
  MlpDims m;
  m.B = x_enc.size(0);
  m.P = x_enc.size(1);
  m.N = m.B * m.P;
  m.Dx = x_enc.size(2);
  m.feature = feature;
  TORCH_CHECK(precision >= 0 && precision <= 2, op, ": argument 'precision' expected 0 (exact), 1 (bf16) or 2 (fp16), got ",
              precision);
  if (x_enc.device().is_cpu()) {
    TORCH_CHECK(precision != kMlpFP16, op, ": argument 'precision' fp16 is not supported on CPU (use fp32 or bf16)");
  }
  if (precision != kMlpExact) {
    TORCH_CHECK(x_enc.scalar_type() != at::kDouble, op,
                ": argument 'x_enc' is float64 but precision is bf16/fp16; use precision fp32 for float64");
  }
  check_defined(d_enc, op, "d_enc");
  check_same_device(d_enc, x_enc, op, "d_enc", "x_enc");
  check_same_dtype(d_enc, x_enc, op, "d_enc", "x_enc");
  check_shape(d_enc, {m.B, m.P, -1}, op, "d_enc", "[images, points per image, Dd] matching 'x_enc'");
  m.Dd = d_enc.size(2);
  check_defined(w0x, op, "w0x");
  check_shape(w0x, {-1, m.Dx}, op, "w0x", "[W, Dx] (layer 0 weight on gamma(x))");
  m.W = w0x.size(0);
  TORCH_CHECK(m.W > 0, op, ": argument 'w0x' has width 0");
  check_weight(w0x, x_enc, {m.W, m.Dx}, op, "w0x", "[W, Dx]");
  check_weight(cond0, x_enc, {m.B, m.W}, op, "cond0", "[images, W] (folded layer-0 conditioning bias)");
  m.D = static_cast<int64_t>(hidden_w.size()) + 1;
  TORCH_CHECK(m.D >= 1, op, ": expected at least one trunk layer");
  for (size_t i = 0; i < hidden_w.size(); ++i) {
    check_weight(hidden_w[i], x_enc, {m.W, m.W}, op, "hidden_w[i]", "[W, W] (trunk layer weight on h)");
  }
  m.skip = skip;
  const bool has_skip = skip >= 0;
  if (has_skip) {
    TORCH_CHECK(skip >= 1 && skip < m.D, op, ": argument 'skip' expected -1 (no skip) or a layer in [1, ", m.D - 1,
                "], got ", skip);
    TORCH_CHECK(cond_skip.has_value() && cond_skip->defined(), op,
                ": argument 'cond_skip' is missing but skip = ", skip);
    TORCH_CHECK(skip_wx.has_value() && skip_wx->defined(), op, ": argument 'skip_wx' is missing but skip = ", skip);
    check_weight(*cond_skip, x_enc, {m.B, m.W}, op, "cond_skip", "[images, W] (folded skip-layer conditioning bias)");
    check_weight(*skip_wx, x_enc, {m.W, m.Dx}, op, "skip_wx", "[W, Dx] (skip layer weight on gamma(x))");
  } else {
    TORCH_CHECK(skip == -1, op, ": argument 'skip' expected -1 (no skip) or a layer in [1, D-1], got ", skip);
  }
  const int64_t nb = has_skip ? m.D - 2 : m.D - 1;
  TORCH_CHECK(static_cast<int64_t>(hidden_b.size()) == std::max<int64_t>(nb, 0), op, ": argument 'hidden_b' expected ",
              std::max<int64_t>(nb, 0), " biases (layers 1..D-1 except the skip layer), got ", hidden_b.size());
  for (size_t i = 0; i < hidden_b.size(); ++i) {
    check_weight(hidden_b[i], x_enc, {m.W}, op, "hidden_b[i]", "[W]");
  }
  check_weight(sigma_w, x_enc, {1, m.W}, op, "sigma_w", "[1, W]");
  check_weight(sigma_b, x_enc, {1}, op, "sigma_b", "[1]");
  check_defined(dir_w, op, "dir_w");
  check_shape(dir_w, {-1, m.W + m.Dd}, op, "dir_w", "[Wd, W + Dd] (direction layer on [h, gamma(d)])");
  m.Wd = dir_w.size(0);
  TORCH_CHECK(m.Wd > 0, op, ": argument 'dir_w' has 0 output channels");
  check_weight(dir_w, x_enc, {m.Wd, m.W + m.Dd}, op, "dir_w", "[Wd, W + Dd]");
  check_weight(dir_b, x_enc, {m.Wd}, op, "dir_b", "[Wd]");
  check_defined(out_w, op, "out_w");
  check_shape(out_w, {-1, m.Wd}, op, "out_w", "[F, Wd] (output layer)");
  m.F = out_w.size(0);
  check_weight(out_w, x_enc, {m.F, m.Wd}, op, "out_w", "[F, Wd]");
  check_weight(out_b, x_enc, {m.F}, op, "out_b", "[F]");
  return m;
}

// The ATen-level forward over the rows [r0, r1) of the flattened points (a range inside one image, or
// whole images). Tensors in `w` are already in the compute dtype and contiguous. Writes the sigma and
// output rows and, when `acts` is defined, the activations; `work` is per-worker scratch (grown on use).
struct MlpWeights {
  // All in the compute dtype, contiguous, nn.Linear layout [out, in]; forward uses their .t() views.
  at::Tensor x, d, cond0, cond_skip, w0x, skip_wx, sigma_w, sigma_b, dir_wh, dir_wd, dir_b, out_w, out_b;
  std::vector<at::Tensor> hidden_w;  // D-1
  std::vector<at::Tensor> hidden_b;  // D-1 entries; undefined at the skip layer
};

MlpWeights mlp_prepare_weights(const MlpDims& m, const at::Tensor& x_enc, const at::Tensor& d_enc,
                               const at::Tensor& cond0, const c10::optional<at::Tensor>& cond_skip,
                               const at::Tensor& w0x, at::TensorList hidden_w, at::TensorList hidden_b,
                               const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                               const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b,
                               const at::Tensor& out_w, const at::Tensor& out_b, at::ScalarType compute);

// sigma [N,1] and out [N,C] may have another dtype than the compute dtype (converted per tile).
void mlp_forward_rows(const MlpDims& m, const MlpWeights& w, int64_t r0, int64_t r1, const at::Tensor& sigma,
                      const at::Tensor& out, const at::Tensor& acts, std::vector<at::Tensor>& work);

// The full ATen-level forward: tiles of `tile` points in parallel (CPU) or, with tile <= 0, one pass
// with whole-batch GEMMs (the CUDA exact-precision path). Returns (sigma [B,P], out, acts).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward_impl(
    const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& cond0,
    const c10::optional<at::Tensor>& cond_skip, const at::Tensor& w0x, at::TensorList hidden_w,
    at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
    const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b, const at::Tensor& out_w,
    const at::Tensor& out_b, int64_t skip, bool feature, int64_t precision, bool save, int64_t tile);

// Gradient accumulators (float32/float64) of one worker; summed over workers at the end.
struct MlpGrads {
  at::Tensor cond0, cond_skip, w0x, skip_wx, sigma_w, sigma_b, dir_w, dir_b, out_w, out_b;
  std::vector<at::Tensor> hidden_w, hidden_b;  // hidden_b: D-1 entries, undefined at the skip layer
  void zeros(const MlpDims& m, const at::TensorOptions& opt);
  void add(const MlpGrads& o);
};

// Backward over the rows [r0, r1) (inside one image or whole images): input grads are written into
// g_x / g_d rows (input dtype), parameter grads are accumulated into `acc`.
void mlp_backward_rows(const MlpDims& m, const MlpWeights& w, int64_t r0, int64_t r1, const at::Tensor& grad_sigma,
                       const at::Tensor& grad_out, const at::Tensor& acts, const at::Tensor& g_x,
                       const at::Tensor& g_d, MlpGrads& acc);

// Checks of the backward arguments; returns the dims (from x_enc, acts and the weights).
MlpDims check_field_mlp_backward_inputs(const at::Tensor& grad_sigma, const at::Tensor& grad_out,
                                        const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& acts,
                                        const at::Tensor& w0x, at::TensorList hidden_w,
                                        const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                                        const at::Tensor& dir_w, const at::Tensor& out_w, int64_t skip, bool feature,
                                        int64_t precision);

// The full backward on any device: one pass over [0, N) with whole-batch GEMMs (the CUDA backward)
// or tiles in parallel (CPU). Returns the schema's tuple.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mlp_backward_impl(const at::Tensor& grad_sigma, const at::Tensor& grad_out, const at::Tensor& x_enc,
                  const at::Tensor& d_enc, const at::Tensor& acts, const at::Tensor& w0x, at::TensorList hidden_w,
                  const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w, const at::Tensor& dir_w,
                  const at::Tensor& out_w, int64_t skip, bool feature, int64_t precision, int64_t tile);

}  // namespace dgnerf
