// Every dgnerf op schema, in one place. Kernels register themselves per dispatch key in
// <op>/<op>_cpu.cpp (CPU) and <op>/<op>_cuda.cu (CUDA); autograd and fake (meta) kernels are
// registered from Python (dgnerf/ops/*.py) with torch.library.register_autograd / register_fake.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "dgnerf/bf16_rows.h"

#ifndef DGNERF_TORCH_VERSION
#define DGNERF_TORCH_VERSION "unknown"
#endif
#ifndef DGNERF_ARCH_LIST
#define DGNERF_ARCH_LIST ""
#endif

namespace {
std::string build_info() {
  std::string s = "{\"torch_version\": \"" DGNERF_TORCH_VERSION "\", \"cuda_kernels\": ";
#ifdef DGNERF_WITH_CUDA
  s += "true";
#else
  s += "false";
#endif
  s += ", \"arch_list\": \"" DGNERF_ARCH_LIST "\"}";
  return s;
}
}  // namespace

TORCH_LIBRARY(dgnerf, m) {
  m.def("build_info() -> str", &build_info);
  // The field MLP's vectorized bf16 CPU epilogues (dgnerf/bf16_rows.h): mode 0 off, 1 on, -1 ask; -> whether
  // they run (false where the CPU lacks AVX-512 BF16).
  m.def("bf16_rows(int mode) -> bool", [](int64_t mode) { return dgnerf::bf16_rows_set(mode); });

  // Ray sampling: a batch of pinhole cameras -> per feature pixel a ray and S depths in [near, far]
  // (optionally clipped to a sphere). Returns points [B,H*W,S,3], dirs [B,H*W,3], depths [B,H*W,S],
  // deltas [B,H*W,S].
  m.def(
      "sample_rays(Tensor c2w, Tensor intrinsics, int height, int width, int n_samples, float near, "
      "float far, bool stratified, int seed, float sphere_radius) -> (Tensor, Tensor, Tensor, Tensor)");

  // Feature volume integration: sigma [R,S], features [R,S,C], depths [R,S], deltas [R,S],
  // background [C] -> feature [R,C], opacity [R], depth [R].
  m.def(
      "integrate_features(Tensor sigma, Tensor features, Tensor depths, Tensor deltas, Tensor background, "
      "float threshold) -> (Tensor, Tensor, Tensor)");
  // -> grad_sigma [R,S], grad_features [R,S,C], grad_depths [R,S], grad_deltas [R,S], grad_background [C]
  m.def(
      "integrate_features_backward(Tensor grad_feature, Tensor grad_opacity, Tensor grad_depth, Tensor sigma, "
      "Tensor features, Tensor depths, Tensor deltas, Tensor background, float threshold) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Multiresolution hash-grid encoding (csrc/include/dgnerf/hashgrid.h): x [N,3] in the box
  // [bbox_min, bbox_max], table [L,T,F] -> [N, L*F] (level-major), in out_dtype (default: the table's).
  m.def(
      "hash_encode(Tensor x, Tensor table, float[] bbox_min, float[] bbox_max, int base_resolution, "
      "int finest_resolution, ScalarType? out_dtype=None) -> Tensor");
  // -> grad_table [L,T,F] (the table's dtype; shape [0] unless table_grad), grad_x [N,3] (shape [0]
  // unless x_grad)
  m.def(
      "hash_encode_backward(Tensor grad_out, Tensor x, Tensor table, float[] bbox_min, float[] bbox_max, "
      "int base_resolution, int finest_resolution, bool x_grad, bool table_grad) -> (Tensor, Tensor)");

  // The fully-fused conditioned MLP (csrc/mlp/) adds its schemas below.
  // Field MLP (csrc/include/dgnerf/mlp.h): x_enc [B,P,Dx], d_enc [B,P,Dd], folded per-image biases
  // cond0/cond_skip [B,W] -> sigma [B,P], out [B,P,F] (feature) or [B,P,Wd] (hidden), and the saved
  // activations (flat, compute dtype; empty unless save). precision: 0 exact, 1 bf16, 2 fp16.
  m.def(
      "field_mlp_forward(Tensor x_enc, Tensor d_enc, Tensor cond0, Tensor? cond_skip, Tensor w0x, "
      "Tensor[] hidden_w, Tensor[] hidden_b, Tensor? skip_wx, Tensor sigma_w, Tensor sigma_b, Tensor dir_w, "
      "Tensor dir_b, Tensor out_w, Tensor out_b, int skip, bool feature, int precision, bool save) -> "
      "(Tensor, Tensor, Tensor)");
  // -> grad x_enc, d_enc, cond0, cond_skip ([0] without skip), w0x, hidden_w[], hidden_b[], skip_wx ([0]
  // without skip), sigma_w, sigma_b, dir_w, dir_b, out_w, out_b.
  m.def(
      "field_mlp_backward(Tensor grad_sigma, Tensor grad_out, Tensor x_enc, Tensor d_enc, Tensor acts, "
      "Tensor w0x, Tensor[] hidden_w, Tensor? skip_wx, Tensor sigma_w, Tensor dir_w, Tensor out_w, int skip, "
      "bool feature, int precision) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The extension is a plain module whose only job is to register the ops above when imported.
static struct PyModuleDef dgnerf_module = {PyModuleDef_HEAD_INIT, "_C", "dgnerf compiled ops", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&dgnerf_module); }
