// The field MLP at the ATen level: the CPU kernel runs it per point tile (each tile's activations
// stay in cache through all layers, tiles in parallel, every GEMM through MKL/oneDNN with bf16
// operands in bf16 mode); the CUDA backend uses the same code with whole-batch GEMMs for its exact
// (float32) mode and for every backward pass. Formulas and layouts: csrc/include/dgnerf/mlp.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "dgnerf/bf16_rows.h"
#include "dgnerf/checks.h"
#include "dgnerf/mlp.h"
#include "dgnerf/parallel.h"

namespace dgnerf {

namespace {

// Groups of tiles with their own weight-gradient accumulators in the backward pass: enough that a
// descheduled thread holds up a small part of it, few enough that zeroing and adding them is cheap.
constexpr int64_t kBackwardGroups = 16;

at::Tensor to_compute(const at::Tensor& t, at::ScalarType ct) {
  // Detached: the kernel's inner ATen calls must never record autograd history (worker threads
  // do not inherit the caller's below-autograd dispatch state).
  if (!t.defined()) return t;
  return t.detach().to(ct).contiguous();
}

// The bf16 bit patterns of a contiguous CPU bf16 tensor (for the vectorized epilogues, dgnerf/bf16_rows.h).
uint16_t* bf16_bits(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

bool cpu_bf16_tile(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.is_contiguous();
}

// out += bias (one row, broadcast over the rows of a contiguous tile) and ReLU, in one pass over the
// tile while it is in cache (ATen's addmm would first copy the broadcast bias into out: a strided pass
// that cost ~12% of the CPU forward). ReLU keeps NaN (a NaN input must not turn into a silent 0).
void bias_act_cpu(const at::Tensor& out, const at::Tensor& bias_row, bool relu) {
  const int64_t T = out.size(0), C = out.size(1);
  if (out.scalar_type() == at::kBFloat16 &&
      bf16_bias_act(bf16_bits(out), bf16_bits(bias_row), T, C, relu)) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "field_mlp_bias_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* b = bias_row.data_ptr<scalar_t>();
    for (int64_t r = 0; r < T; ++r) {
      scalar_t* orow = o + r * C;
      for (int64_t c = 0; c < C; ++c) {
        acc_t v = static_cast<acc_t>(orow[c]) + static_cast<acc_t>(b[c]);
        if (relu) v = v <= acc_t(0) ? acc_t(0) : v;
        orow[c] = static_cast<scalar_t>(v);
      }
    }
  });
}

// dst (float32 tile) = src (bf16/fp16 tile) + bias: the output layer's epilogue and the dtype conversion
// in one pass.
void bias_convert_cpu(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& bias_row) {
  const int64_t T = src.size(0), C = src.size(1);
  if (src.scalar_type() == at::kBFloat16 &&
      bf16_to_float_rows(dst.data_ptr<float>(), bf16_bits(src), bf16_bits(bias_row), T, C)) {
    return;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(src.scalar_type(), "field_mlp_bias_convert", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const scalar_t* b = bias_row.data_ptr<scalar_t>();
    float* d = dst.data_ptr<float>();
    for (int64_t r = 0; r < T; ++r) {
      for (int64_t c = 0; c < C; ++c) d[r * C + c] = static_cast<float>(s[r * C + c]) + static_cast<float>(b[c]);
    }
  });
}

// One layer on the rows [r0, r1): out = act(in @ wt [+ in2 @ wt2] + bias), where bias is a [C] vector or,
// with per_image, the per-image rows cond [B, C] (folded conditioning). A range inside one image uses
// that image's row; a range of whole images (the CUDA exact path) one GEMM and a broadcast add.
void layer_rows(const at::Tensor& out, const at::Tensor& in, const at::Tensor& wt, const at::Tensor& in2,
                const at::Tensor& wt2, const at::Tensor& bias, bool per_image, int64_t r0, int64_t r1, int64_t P,
                bool relu) {
  at::Tensor o = out;
  const int64_t b0 = r0 / P, b1 = (r1 - 1) / P;
  if (per_image && b0 != b1) {
    TORCH_INTERNAL_ASSERT(r0 % P == 0 && r1 % P == 0, "field_mlp: row range must be inside one image or whole images");
    at::mm_out(o, in, wt);
    if (in2.defined()) o.addmm_(in2, wt2);
    const int64_t nb = b1 - b0 + 1;
    o.view({nb, P, o.size(1)}).add_(bias.narrow(0, b0, nb).unsqueeze(1));
    if (relu) o.relu_();
    return;
  }
  const at::Tensor brow = per_image ? bias.select(0, b0) : bias;
  if (o.device().is_cpu() && o.is_contiguous() && brow.is_contiguous()) {
    at::mm_out(o, in, wt);
    if (in2.defined()) o.addmm_(in2, wt2);
    bias_act_cpu(o, brow, relu);
  } else {
    at::addmm_out(o, brow, in, wt);
    if (in2.defined()) o.addmm_(in2, wt2);
    if (relu) o.relu_();
  }
}

// acc [B, W] (rows of images) += per-image sums of g over rows [r0, r1).
void image_sum_acc(const at::Tensor& acc, const at::Tensor& g, int64_t r0, int64_t r1, int64_t P) {
  const int64_t b0 = r0 / P, b1 = (r1 - 1) / P;
  if (b0 == b1) {
    acc.select(0, b0).add_(at::sum(g, {0}, false, acc.scalar_type()));
  } else {
    const int64_t nb = b1 - b0 + 1;
    acc.narrow(0, b0, nb).add_(at::sum(g.view({nb, P, g.size(1)}), {1}, false, acc.scalar_type()));
  }
}

// acc += a @ b, accumulated in acc's (float32/float64) dtype.
void acc_mm(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (acc.scalar_type() == a.scalar_type()) {
    const_cast<at::Tensor&>(acc).addmm_(a, b);
  } else {
    acc.add_(at::mm(a, b));
  }
}

void acc_colsum(const at::Tensor& acc, const at::Tensor& g) { acc.add_(at::sum(g, {0}, false, acc.scalar_type())); }

// ReLU's backward on a tile, g where h > 0 (at::threshold_backward(g, h, 0)), and, when `colsum` (a float32
// row) is defined, colsum += its column sums (the bias's gradient): one vectorized pass for CPU bf16 tiles.
at::Tensor relu_grad(const at::Tensor& g, const at::Tensor& h, const at::Tensor& colsum) {
  if (cpu_bf16_tile(g) && cpu_bf16_tile(h) && (!colsum.defined() || (colsum.scalar_type() == at::kFloat &&
                                                                     colsum.is_contiguous()))) {
    at::Tensor out = at::empty_like(g);
    if (bf16_relu_grad(bf16_bits(out), bf16_bits(g), bf16_bits(h), g.size(0), g.size(1),
                       colsum.defined() ? colsum.data_ptr<float>() : nullptr)) {
      return out;
    }
  }
  at::Tensor out = at::threshold_backward(g, h, 0);
  if (colsum.defined()) acc_colsum(colsum, out);
  return out;
}

at::Tensor scratch(std::vector<at::Tensor>& work, size_t slot, int64_t rows, int64_t cols, const at::TensorOptions& opt) {
  if (work.size() <= slot) work.resize(slot + 1);
  at::Tensor& t = work[slot];
  if (!t.defined() || t.size(0) < rows || t.size(1) != cols || t.scalar_type() != opt.dtype().toScalarType()) {
    t = at::empty({rows, cols}, opt);
  }
  return t.narrow(0, 0, rows);
}

int64_t num_tiles(const MlpDims& m, int64_t tile, int64_t* per_image) {
  *per_image = (m.P + tile - 1) / tile;
  return m.B * (*per_image);
}

void tile_rows(const MlpDims& m, int64_t tile, int64_t per_image, int64_t t, int64_t* r0, int64_t* r1) {
  const int64_t b = t / per_image, j = t % per_image;
  *r0 = b * m.P + j * tile;
  *r1 = std::min(*r0 + tile, (b + 1) * m.P);
}

}  // namespace

MlpWeights mlp_prepare_weights(const MlpDims& m, const at::Tensor& x_enc, const at::Tensor& d_enc,
                               const at::Tensor& cond0, const c10::optional<at::Tensor>& cond_skip,
                               const at::Tensor& w0x, at::TensorList hidden_w, at::TensorList hidden_b,
                               const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                               const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b,
                               const at::Tensor& out_w, const at::Tensor& out_b, at::ScalarType ct) {
  MlpWeights w;
  w.x = to_compute(x_enc.reshape({m.N, m.Dx}), ct);
  w.d = to_compute(d_enc.reshape({m.N, m.Dd}), ct);
  w.cond0 = to_compute(cond0, ct);
  if (m.skip >= 0) {
    if (cond_skip.has_value()) w.cond_skip = to_compute(*cond_skip, ct);
    w.skip_wx = to_compute(*skip_wx, ct);
  }
  w.w0x = to_compute(w0x, ct);
  w.sigma_w = to_compute(sigma_w, ct);
  w.sigma_b = to_compute(sigma_b, ct);
  w.dir_wh = to_compute(dir_w.narrow(1, 0, m.W), ct);
  w.dir_wd = to_compute(dir_w.narrow(1, m.W, m.Dd), ct);
  w.dir_b = to_compute(dir_b, ct);
  w.out_w = to_compute(out_w, ct);
  w.out_b = to_compute(out_b, ct);
  size_t bi = 0;
  for (int64_t l = 1; l < m.D; ++l) {
    w.hidden_w.push_back(to_compute(hidden_w[l - 1], ct));
    if (l == m.skip || hidden_b.empty()) {
      w.hidden_b.emplace_back();
    } else {
      w.hidden_b.push_back(to_compute(hidden_b[bi++], ct));
    }
  }
  return w;
}

void mlp_forward_rows(const MlpDims& m, const MlpWeights& w, int64_t r0, int64_t r1, const at::Tensor& sigma,
                      const at::Tensor& out, const at::Tensor& acts, std::vector<at::Tensor>& work) {
  const int64_t T = r1 - r0, N = m.N, W = m.W;
  const auto opt = w.w0x.options();
  const at::Tensor x = w.x.narrow(0, r0, T);
  auto layer_out = [&](int64_t l) -> at::Tensor {
    if (acts.defined()) return acts.narrow(0, l * N * W + r0 * W, T * W).view({T, W});
    return scratch(work, l % 2, T, W, opt);
  };
  const at::Tensor none;
  at::Tensor h = layer_out(0);
  layer_rows(h, x, w.w0x.t(), none, none, w.cond0, true, r0, r1, m.P, true);
  for (int64_t l = 1; l < m.D; ++l) {
    at::Tensor nh = layer_out(l);
    if (l == m.skip) {
      layer_rows(nh, h, w.hidden_w[l - 1].t(), x, w.skip_wx.t(), w.cond_skip, true, r0, r1, m.P, true);
    } else {
      layer_rows(nh, h, w.hidden_w[l - 1].t(), none, none, w.hidden_b[l - 1], false, r0, r1, m.P, true);
    }
    h = nh;
  }
  const bool same = sigma.scalar_type() == opt.dtype().toScalarType();
  at::Tensor sig = same ? sigma.narrow(0, r0, T) : scratch(work, 2, T, 1, opt);
  at::addmm_out(sig, w.sigma_b, h, w.sigma_w.t());
  if (!same) sigma.narrow(0, r0, T).copy_(sig);
  at::Tensor hdir;
  if (acts.defined()) {
    hdir = acts.narrow(0, m.D * N * W + r0 * m.Wd, T * m.Wd).view({T, m.Wd});
  } else if (!m.feature && same) {
    hdir = out.narrow(0, r0, T);
  } else {
    hdir = scratch(work, 3, T, m.Wd, opt);
  }
  layer_rows(hdir, h, w.dir_wh.t(), w.d.narrow(0, r0, T), w.dir_wd.t(), w.dir_b, false, r0, r1, m.P, true);
  at::Tensor o = out.narrow(0, r0, T);
  if (m.feature) {
    if (same) {
      layer_rows(o, hdir, w.out_w.t(), none, none, w.out_b, false, r0, r1, m.P, false);
    } else {
      at::Tensor f = scratch(work, 4, T, m.F, opt);
      if (o.device().is_cpu() && o.scalar_type() == at::kFloat && o.is_contiguous()) {
        at::mm_out(f, hdir, w.out_w.t());
        bias_convert_cpu(o, f, w.out_b);
      } else {
        layer_rows(f, hdir, w.out_w.t(), none, none, w.out_b, false, r0, r1, m.P, false);
        o.copy_(f);
      }
    }
  } else if (!o.is_same(hdir)) {
    if (!(cpu_bf16_tile(hdir) && o.scalar_type() == at::kFloat && o.is_contiguous() &&
          bf16_to_float_rows(o.data_ptr<float>(), bf16_bits(hdir), nullptr, T, m.Wd))) {
      o.copy_(hdir);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward_impl(
    const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& cond0,
    const c10::optional<at::Tensor>& cond_skip, const at::Tensor& w0x, at::TensorList hidden_w,
    at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
    const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b, const at::Tensor& out_w,
    const at::Tensor& out_b, int64_t skip, bool feature, int64_t precision, bool save, int64_t tile) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const MlpDims m = check_field_mlp_inputs(x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w,
                                           sigma_b, dir_w, dir_b, out_w, out_b, skip, feature, precision);
  const at::ScalarType ct = mlp_compute_dtype(precision, x_enc.scalar_type());
  const MlpWeights w = mlp_prepare_weights(m, x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx,
                                           sigma_w, sigma_b, dir_w, dir_b, out_w, out_b, ct);
  const int64_t C = feature ? m.F : m.Wd;
  at::Tensor sigma = at::empty({m.N, 1}, x_enc.options());
  at::Tensor out = at::empty({m.N, C}, x_enc.options());
  at::Tensor acts = save ? at::empty({m.acts_numel()}, x_enc.options().dtype(ct)) : at::empty({0}, x_enc.options().dtype(ct));
  const at::Tensor acts_arg = save ? acts : at::Tensor();
  if (tile <= 0 || !x_enc.device().is_cpu()) {
    std::vector<at::Tensor> work;
    mlp_forward_rows(m, w, 0, m.N, sigma, out, acts_arg, work);
  } else {
    int64_t per_image = 0;
    const int64_t nt = num_tiles(m, tile, &per_image);
    parallel_dynamic(0, nt, 1, [&](int64_t t0, int64_t t1) {
      std::vector<at::Tensor> work;  // per-worker tiles, reused across its tiles (stay in cache)
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r0, r1;
        tile_rows(m, tile, per_image, t, &r0, &r1);
        mlp_forward_rows(m, w, r0, r1, sigma, out, acts_arg, work);
      }
    });
  }
  return {sigma.view({m.B, m.P}), out.view({m.B, m.P, C}), acts};
}

void MlpGrads::zeros(const MlpDims& m, const at::TensorOptions& opt) {
  cond0 = at::zeros({m.B, m.W}, opt);
  w0x = at::zeros({m.W, m.Dx}, opt);
  if (m.skip >= 0) {
    cond_skip = at::zeros({m.B, m.W}, opt);
    skip_wx = at::zeros({m.W, m.Dx}, opt);
  }
  sigma_w = at::zeros({1, m.W}, opt);
  sigma_b = at::zeros({1}, opt);
  dir_w = at::zeros({m.Wd, m.W + m.Dd}, opt);
  dir_b = at::zeros({m.Wd}, opt);
  out_w = at::zeros({m.F, m.Wd}, opt);
  out_b = at::zeros({m.F}, opt);
  hidden_w.clear();
  hidden_b.clear();
  for (int64_t l = 1; l < m.D; ++l) {
    hidden_w.push_back(at::zeros({m.W, m.W}, opt));
    hidden_b.push_back(l == m.skip ? at::Tensor() : at::zeros({m.W}, opt));
  }
}

void MlpGrads::add(const MlpGrads& o) {
  at::Tensor* mine[] = {&cond0, &cond_skip, &w0x, &skip_wx, &sigma_w, &sigma_b, &dir_w, &dir_b, &out_w, &out_b};
  const at::Tensor* theirs[] = {&o.cond0, &o.cond_skip, &o.w0x,  &o.skip_wx, &o.sigma_w,
                                &o.sigma_b, &o.dir_w,   &o.dir_b, &o.out_w,   &o.out_b};
  for (int k = 0; k < 10; ++k) {
    if (mine[k]->defined()) mine[k]->add_(*theirs[k]);
  }
  for (size_t i = 0; i < hidden_w.size(); ++i) {
    hidden_w[i].add_(o.hidden_w[i]);
    if (hidden_b[i].defined()) hidden_b[i].add_(o.hidden_b[i]);
  }
}

void mlp_backward_rows(const MlpDims& m, const MlpWeights& w, int64_t r0, int64_t r1, const at::Tensor& grad_sigma,
                       const at::Tensor& grad_out, const at::Tensor& acts, const at::Tensor& g_x,
                       const at::Tensor& g_d, MlpGrads& acc) {
  const int64_t T = r1 - r0, N = m.N, W = m.W;
  auto H = [&](int64_t l) { return acts.narrow(0, l * N * W + r0 * W, T * W).view({T, W}); };
  const at::Tensor hdir = acts.narrow(0, m.D * N * W + r0 * m.Wd, T * m.Wd).view({T, m.Wd});
  const at::Tensor x = w.x.narrow(0, r0, T);
  const at::Tensor d = w.d.narrow(0, r0, T);
  const at::Tensor gout = grad_out.narrow(0, r0, T);
  const at::Tensor gs = grad_sigma.narrow(0, r0, T);  // [T, 1]
  at::Tensor g_hdir;
  if (m.feature) {
    acc_mm(acc.out_w, gout.t(), hdir);
    acc_colsum(acc.out_b, gout);
    g_hdir = at::mm(gout, w.out_w);
  } else {
    g_hdir = gout;
  }
  // A range inside one image sums its cond gradients into that image's row while applying ReLU's backward.
  const at::Tensor none;
  const bool one_image = r0 / m.P == (r1 - 1) / m.P;
  const auto image_row = [&](const at::Tensor& a) { return one_image ? a.select(0, r0 / m.P) : none; };
  at::Tensor g_pre = relu_grad(g_hdir, hdir, acc.dir_b);
  const at::Tensor hl = H(m.D - 1);
  acc_mm(acc.dir_w.narrow(1, 0, W), g_pre.t(), hl);
  acc_mm(acc.dir_w.narrow(1, W, m.Dd), g_pre.t(), d);
  g_d.narrow(0, r0, T).copy_(at::mm(g_pre, w.dir_wd));
  acc_mm(acc.sigma_w, gs.t(), hl);
  acc_colsum(acc.sigma_b, gs);
  at::Tensor g_h = at::mm(g_pre, w.dir_wh);
  g_h.addmm_(gs, w.sigma_w);
  at::Tensor gx;
  for (int64_t l = m.D - 1; l >= 1; --l) {
    g_pre = relu_grad(g_h, H(l), l == m.skip ? image_row(acc.cond_skip) : acc.hidden_b[l - 1]);
    acc_mm(acc.hidden_w[l - 1], g_pre.t(), H(l - 1));
    if (l == m.skip) {
      acc_mm(acc.skip_wx, g_pre.t(), x);
      if (!one_image) image_sum_acc(acc.cond_skip, g_pre, r0, r1, m.P);
      gx = at::mm(g_pre, w.skip_wx);
    }
    g_h = at::mm(g_pre, w.hidden_w[l - 1]);
  }
  g_pre = relu_grad(g_h, H(0), image_row(acc.cond0));
  acc_mm(acc.w0x, g_pre.t(), x);
  if (!one_image) image_sum_acc(acc.cond0, g_pre, r0, r1, m.P);
  if (gx.defined()) {
    gx.addmm_(g_pre, w.w0x);
  } else {
    gx = at::mm(g_pre, w.w0x);
  }
  g_x.narrow(0, r0, T).copy_(gx);
}

MlpDims check_field_mlp_backward_inputs(const at::Tensor& grad_sigma, const at::Tensor& grad_out,
                                        const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& acts,
                                        const at::Tensor& w0x, at::TensorList hidden_w,
                                        const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                                        const at::Tensor& dir_w, const at::Tensor& out_w, int64_t skip, bool feature,
                                        int64_t precision) {
  constexpr const char* op = "dgnerf.field_mlp_backward";
  // Reuse the forward checks for shapes by building dummy-free views: the biases and conds are not
  // needed, so check what the backward reads directly.
  check_float(x_enc, op, "x_enc");
  check_shape(x_enc, {-1, -1, -1}, op, "x_enc", "[images, points per image, Dx]");
  check_nonempty(x_enc, op, "x_enc");
  MlpDims m;
  m.B = x_enc.size(0);
  m.P = x_enc.size(1);
  m.N = m.B * m.P;
  m.Dx = x_enc.size(2);
  m.feature = feature;
  m.skip = skip;
  TORCH_CHECK(precision >= 0 && precision <= 2, op, ": argument 'precision' expected 0, 1 or 2, got ", precision);
  check_defined(d_enc, op, "d_enc");
  check_same_device(d_enc, x_enc, op, "d_enc", "x_enc");
  check_shape(d_enc, {m.B, m.P, -1}, op, "d_enc", "[images, points per image, Dd]");
  m.Dd = d_enc.size(2);
  check_defined(w0x, op, "w0x");
  check_shape(w0x, {-1, m.Dx}, op, "w0x", "[W, Dx]");
  m.W = w0x.size(0);
  m.D = static_cast<int64_t>(hidden_w.size()) + 1;
  for (size_t i = 0; i < hidden_w.size(); ++i) check_weight(hidden_w[i], x_enc, {m.W, m.W}, op, "hidden_w[i]", "[W, W]");
  if (skip >= 0) {
    TORCH_CHECK(skip >= 1 && skip < m.D, op, ": argument 'skip' out of range: ", skip);
    TORCH_CHECK(skip_wx.has_value() && skip_wx->defined(), op, ": argument 'skip_wx' is missing but skip = ", skip);
    check_weight(*skip_wx, x_enc, {m.W, m.Dx}, op, "skip_wx", "[W, Dx]");
  }
  check_weight(sigma_w, x_enc, {1, m.W}, op, "sigma_w", "[1, W]");
  check_defined(dir_w, op, "dir_w");
  check_shape(dir_w, {-1, m.W + m.Dd}, op, "dir_w", "[Wd, W + Dd]");
  m.Wd = dir_w.size(0);
  check_weight(dir_w, x_enc, {m.Wd, m.W + m.Dd}, op, "dir_w", "[Wd, W + Dd]");
  check_defined(out_w, op, "out_w");
  check_shape(out_w, {-1, m.Wd}, op, "out_w", "[F, Wd]");
  m.F = out_w.size(0);
  check_weight(out_w, x_enc, {m.F, m.Wd}, op, "out_w", "[F, Wd]");
  const at::ScalarType ct = mlp_compute_dtype(precision, x_enc.scalar_type());
  check_defined(acts, op, "acts");
  check_same_device(acts, x_enc, op, "acts", "x_enc");
  TORCH_CHECK(acts.scalar_type() == ct, op, ": argument 'acts' expected dtype ", ct, " (the compute dtype), got ",
              acts.scalar_type());
  TORCH_CHECK(acts.dim() == 1 && acts.numel() == m.acts_numel(), op,
              ": argument 'acts' expected the saved activations of the forward pass (", m.acts_numel(),
              " elements; run the forward with save=True), got shape ", shape_str(acts.sizes()));
  check_contiguous(acts, op, "acts");
  check_defined(grad_sigma, op, "grad_sigma");
  check_same_device(grad_sigma, x_enc, op, "grad_sigma", "x_enc");
  check_shape(grad_sigma, {m.B, m.P}, op, "grad_sigma", "[images, points]");
  check_defined(grad_out, op, "grad_out");
  check_same_device(grad_out, x_enc, op, "grad_out", "x_enc");
  check_shape(grad_out, {m.B, m.P, feature ? m.F : m.Wd}, op, "grad_out", "[images, points, F or Wd]");
  return m;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mlp_backward_impl(const at::Tensor& grad_sigma, const at::Tensor& grad_out, const at::Tensor& x_enc,
                  const at::Tensor& d_enc, const at::Tensor& acts, const at::Tensor& w0x, at::TensorList hidden_w,
                  const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w, const at::Tensor& dir_w,
                  const at::Tensor& out_w, int64_t skip, bool feature, int64_t precision, int64_t tile) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const MlpDims m = check_field_mlp_backward_inputs(grad_sigma, grad_out, x_enc, d_enc, acts, w0x, hidden_w, skip_wx,
                                                    sigma_w, dir_w, out_w, skip, feature, precision);
  const at::ScalarType ct = mlp_compute_dtype(precision, x_enc.scalar_type());
  const at::Tensor undef;
  const MlpWeights w = mlp_prepare_weights(m, x_enc, d_enc, undef, c10::nullopt, w0x, hidden_w, {}, skip_wx, sigma_w,
                                           undef, dir_w, undef, out_w, undef, ct);
  const at::Tensor gsig = to_compute(grad_sigma.reshape({m.N, 1}), ct);
  const at::Tensor gout = to_compute(grad_out.reshape({m.N, grad_out.size(2)}), ct);
  const auto acc_dtype = x_enc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opt = x_enc.options().dtype(acc_dtype);
  at::Tensor g_x = at::empty({m.N, m.Dx}, x_enc.options());
  at::Tensor g_d = at::empty({m.N, m.Dd}, x_enc.options());
  MlpGrads total;
  total.zeros(m, acc_opt);
  if (tile <= 0 || !x_enc.device().is_cpu()) {
    mlp_backward_rows(m, w, 0, m.N, gsig, gout, acts, g_x, g_d, total);
  } else {
    int64_t per_image = 0;
    const int64_t nt = num_tiles(m, tile, &per_image);
    // Weight gradients are summed per fixed group of tiles, then over the groups in order: the same bits
    // whatever the thread count or which thread took which group (parallel.h).
    const int64_t groups = std::min<int64_t>(nt, kBackwardGroups);
    std::vector<MlpGrads> part(groups);
    parallel_groups(nt, groups, [&](int64_t g, int64_t t0, int64_t t1) {
      MlpGrads& acc = part[g];
      acc.zeros(m, acc_opt);
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r0, r1;
        tile_rows(m, tile, per_image, t, &r0, &r1);
        mlp_backward_rows(m, w, r0, r1, gsig, gout, acts, g_x, g_d, acc);
      }
    });
    for (const MlpGrads& p : part) total.add(p);
  }
  const auto out_t = [&](const at::Tensor& t) {
    return t.defined() ? t.to(x_enc.scalar_type()) : at::empty({0}, x_enc.options());
  };
  std::vector<at::Tensor> ghw, ghb;
  for (int64_t l = 1; l < m.D; ++l) {
    ghw.push_back(out_t(total.hidden_w[l - 1]));
    if (l != m.skip) ghb.push_back(out_t(total.hidden_b[l - 1]));
  }
  return {g_x.view({m.B, m.P, m.Dx}), g_d.view({m.B, m.P, m.Dd}), out_t(total.cond0), out_t(total.cond_skip),
          out_t(total.w0x), ghw, ghb, out_t(total.skip_wx), out_t(total.sigma_w), out_t(total.sigma_b),
          out_t(total.dir_w), out_t(total.dir_b), out_t(total.out_w), out_t(total.out_b)};
}

}  // namespace dgnerf
