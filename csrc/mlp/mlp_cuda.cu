// The field MLP on CUDA: one fused kernel runs every layer (formulas: csrc/include/dgnerf/mlp.h).
//
// A block owns BM = 128 points (64 when the width does not fit) and 8 warps. Its activations never
// leave shared memory: regions X [BM, Dx16] (gamma(x)), Dd [BM, Dd16] (gamma(d)), H0/H1 [BM, W32]
// (ping-pong trunk activations) and HD [BM, Wd16] (direction hidden), each row padded by 8 elements
// so ldmatrix rows fall in distinct banks. Every layer is a GEMM [BM, K] x [K, N] on the tensor cores
// (mma.sync m16n8k16, bf16 or fp16 operands, fp32 accumulators in registers): warp w takes the output
// columns [32c, 32c + 32) for c = w, w + 8, ..., i.e. all BM rows x 4 n-tiles (MT x 4 x 4 floats of
// accumulators per thread), its A operand from shared memory (ldmatrix.x4) and its B operand straight
// from global memory (L2 resident, 1 MB for the paper's MLP) in a layout pre-packed on the host in the
// exact mma fragment order, so a warp's fragment load is one coalesced 256-byte read. A layer's input
// may be two K segments (skip layer: [x | h], direction layer: [h | d]); the sigma head is one extra
// output row of the direction layer. The epilogue adds the bias (per column, or per image for the
// folded conditioning cond0 / cond_skip), applies ReLU, rounds to the compute dtype into the next
// region, and optionally saves the activation to global memory for the backward pass.
//
// The backward pass runs through ATen (mlp_backward_impl in mlp_aten.cpp): whole-batch GEMMs on the
// saved activations, the weight gradients as [out, N] x [N, in] products (cuBLAS).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dgnerf/checks.h"
#include "dgnerf/mlp.h"

namespace dgnerf {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 24;
constexpr int kRowPad = 8;  // elements of padding per shared-memory row

enum LayerKind : int { kHidden = 0, kDir = 1, kOut = 2 };

struct LayerDesc {
  const uint2* w;      // packed fragments [NT8][KT][32 lanes] of 4 elements
  const float* bias;   // [n_bias] or, if bias_cond, [B, n_bias]
  int bias_cond;
  int n_bias;          // valid bias columns
  int n_real;          // valid output columns (ReLU outputs; kDir: Wd, column Wd is sigma)
  int nt8;             // padded output columns / 8 (a multiple of 4)
  int kt1, kt2;        // 16-wide K steps of the two input segments
  int src1, ld1, src2, ld2;  // element offsets / row strides of the input regions in shared memory
  int dst, ld_dst, dst_cols;  // output region (kHidden / kDir), its width
  long long act_off;   // element offset of this layer's [N, n_real] block in acts, -1: not saved
  int kind;
};

struct Params {
  LayerDesc layers[kMaxLayers];
  int n_layers;
  int N, P, Dx, Dd;
  int x_off, x_ld, x_cols, d_off, d_ld, d_cols;
  const void* x;  // [N, Dx] compute dtype
  const void* d;  // [N, Dd] compute dtype
  float* sigma;   // [N]
  float* out;     // [N, F] (feature) or [N, Wd] (hidden)
  int out_cols;
  int hidden_out;  // output "hidden": the direction layer writes hdir to out
  void* acts;     // compute dtype, or null
};

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint2& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint2& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}

// One layer on the block's BM rows. MT = BM / 16 row tiles per warp.
template <typename T, int MT>
__device__ __forceinline__ void run_layer(const Params& p, const LayerDesc& L, T* smem, int row0) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int KT = L.kt1 + L.kt2;
  const int n_chunks = L.nt8 / 4;
  for (int chunk = warp; chunk < n_chunks; chunk += kWarps) {
    float acc[MT][4][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.f;
    // Fragment of n-tile (chunk*4 + j) at k-step kt: w[((chunk*4 + j) * KT + kt) * 32 + lane].
    const uint2* wp = L.w + static_cast<size_t>(chunk) * 4 * KT * 32 + lane;
    uint2 b[4], bn[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = __ldg(wp + static_cast<size_t>(j) * KT * 32);
    for (int kt = 0; kt < KT; ++kt) {
      // Prefetch the next k-step's weight fragments while this one multiplies.
      const int ktn = kt + 1 < KT ? kt + 1 : kt;
#pragma unroll
      for (int j = 0; j < 4; ++j) bn[j] = __ldg(wp + (static_cast<size_t>(j) * KT + ktn) * 32);
      const T* base;
      int ld, col;
      if (kt < L.kt1) {
        base = smem + L.src1;
        ld = L.ld1;
        col = kt * 16;
      } else {
        base = smem + L.src2;
        ld = L.ld2;
        col = (kt - L.kt1) * 16;
      }
      // ldmatrix.x4 addresses: lanes 0-15 rows 0-15 at col, lanes 16-31 rows 0-15 at col + 8.
      const T* arow = base + (lane % 16) * ld + col + (lane / 16) * 8;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t a[4];
        ldmatrix_x4(a, arow + m * 16 * ld);
#pragma unroll
        for (int j = 0; j < 4; ++j) Mma<T>::run(acc[m][j], a, b[j]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = bn[j];
    }
    // Epilogue: accumulator element (m, j, e) is row m*16 + g + 8*(e/2), column chunk*32 + j*8 + tig*2 + e%2.
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = m * 16 + g + hh * 8;
        const int grow = row0 + r;
        const bool valid_row = grow < p.N;
        const int img = (valid_row ? grow : p.N - 1) / p.P;
        const float* bias = L.bias_cond ? L.bias + static_cast<size_t>(img) * L.n_bias : L.bias;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int n = chunk * 32 + j * 8 + tig * 2;
          float v[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = n + e;
            v[e] = acc[m][j][hh * 2 + e] + (c < L.n_bias ? __ldg(bias + c) : 0.f);
          }
          if (L.kind == kOut) {
            if (valid_row) {
              float* o = p.out + static_cast<size_t>(grow) * p.out_cols;
              if (n < L.n_real) o[n] = v[0];
              if (n + 1 < L.n_real) o[n + 1] = v[1];
            }
            continue;
          }
          float rv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            // ReLU that lets NaN through (fmaxf would turn it into 0: a silent NaN); padding columns are 0.
            rv[e] = (n + e < L.n_real) ? (v[e] <= 0.f ? 0.f : v[e]) : 0.f;
          }
          if (n < L.dst_cols) {  // dst_cols is even: the pair lies inside the region
            *reinterpret_cast<uint32_t*>(smem + L.dst + r * L.ld_dst + n) = Mma<T>::pack(rv[0], rv[1]);
          }
          if (!valid_row) continue;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = n + e;
            if (c < L.n_real) {
              if (L.act_off >= 0) {
                T* a = static_cast<T*>(p.acts) + L.act_off + static_cast<long long>(grow) * L.n_real + c;
                *a = Mma<T>::from_float(rv[e]);
              }
              if (L.kind == kDir && p.hidden_out) {
                p.out[static_cast<size_t>(grow) * p.out_cols + c] = rv[e];  // output "hidden"
              }
            } else if (L.kind == kDir && c == L.n_real) {
              p.sigma[grow] = v[e];  // the sigma row: raw, no ReLU
            }
          }
        }
      }
    }
  }
}

template <typename T, int MT>
__global__ void __launch_bounds__(kThreads, 1) field_mlp_fused_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  constexpr int BM = MT * 16;
  const int row0 = blockIdx.x * BM;
  // Stage gamma(x) and gamma(d), zero padded (padding must be 0, not stale bits: 0 * NaN = NaN).
  const T* x = static_cast<const T*>(p.x);
  const T* d = static_cast<const T*>(p.d);
  const T zero = Mma<T>::from_float(0.f);
  for (int i = threadIdx.x; i < BM * p.x_cols; i += kThreads) {
    const int r = i / p.x_cols, c = i % p.x_cols, grow = row0 + r;
    smem[p.x_off + r * p.x_ld + c] = (grow < p.N && c < p.Dx) ? x[static_cast<size_t>(grow) * p.Dx + c] : zero;
  }
  for (int i = threadIdx.x; i < BM * p.d_cols; i += kThreads) {
    const int r = i / p.d_cols, c = i % p.d_cols, grow = row0 + r;
    smem[p.d_off + r * p.d_ld + c] = (grow < p.N && c < p.Dd) ? d[static_cast<size_t>(grow) * p.Dd + c] : zero;
  }
  __syncthreads();
  for (int l = 0; l < p.n_layers; ++l) {
    run_layer<T, MT>(p, p.layers[l], smem, row0);
    __syncthreads();  // this layer's outputs are the next one's inputs
  }
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// [rows, K] -> zero-padded [rows_pad, K_pad] float.
at::Tensor pad2(const at::Tensor& w, int64_t rows_pad, int64_t cols_pad) {
  at::Tensor out = at::zeros({rows_pad, cols_pad}, w.options().dtype(at::kFloat));
  out.narrow(0, 0, w.size(0)).narrow(1, 0, w.size(1)).copy_(w);
  return out;
}

// Padded [NP, KP] weight (NP % 8 == 0, KP % 16 == 0) -> mma B fragments: element (n, k) goes to
// [n/8][k/16][lane = (n%8)*4 + (k%8)/2][half = (k%16)/8][k%2], one uint2 per lane.
at::Tensor pack_fragments(const at::Tensor& wpad, at::ScalarType ct) {
  const int64_t NP = wpad.size(0), KP = wpad.size(1);
  return wpad.to(ct).view({NP / 8, 8, KP / 16, 2, 4, 2}).permute({0, 2, 1, 4, 3, 5}).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_mlp_forward_cuda(
    const at::Tensor& x_enc, const at::Tensor& d_enc, const at::Tensor& cond0,
    const c10::optional<at::Tensor>& cond_skip, const at::Tensor& w0x, at::TensorList hidden_w,
    at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
    const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b, const at::Tensor& out_w,
    const at::Tensor& out_b, int64_t skip, bool feature, int64_t precision, bool save) {
  const char* fused_env = std::getenv("DGNERF_MLP_FUSED");  // "0": layer-by-layer cuBLAS instead (A/B, safety)
  const bool fused = !(fused_env && fused_env[0] == '0');
  if (precision == kMlpExact || !fused) {
    // float32 / float64 exactness: cuBLAS GEMMs layer by layer (the fused kernel is tensor-core only).
    return mlp_forward_impl(x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w,
                            dir_b, out_w, out_b, skip, feature, precision, save, 0);
  }
  constexpr const char* op = "dgnerf.field_mlp";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const MlpDims m = check_field_mlp_inputs(x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w,
                                           sigma_b, dir_w, dir_b, out_w, out_b, skip, feature, precision);
  const c10::cuda::CUDAGuard guard(x_enc.device());
  const at::ScalarType ct = mlp_compute_dtype(precision, x_enc.scalar_type());
  TORCH_CHECK(m.D + 2 <= kMaxLayers, op, ": the fused CUDA kernel supports at most ", kMaxLayers - 2,
              " trunk layers, got ", m.D);
  TORCH_CHECK(m.N < (int64_t(1) << 31), op, ": too many points for the fused CUDA kernel: ", m.N);

  const int64_t DXP = round_up(m.Dx, 16), DDP = round_up(m.Dd, 16), WP = round_up(m.W, 32), WDP = round_up(m.Wd, 16);
  // Shared-memory regions (elements), rows padded by kRowPad.
  const int64_t ldx = DXP + kRowPad, ldd = DDP + kRowPad, ldh = WP + kRowPad, ldhd = WDP + kRowPad;
  const int64_t row_elems = ldx + ldd + 2 * ldh + ldhd;
  int dev = x_enc.get_device();
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  int MT = 8;
  if (row_elems * 128 * 2 > max_smem) MT = 4;
  const int64_t smem_bytes = row_elems * MT * 16 * 2;
  TORCH_CHECK(smem_bytes <= max_smem, op, ": width ", m.W, " needs ", smem_bytes,
              " bytes of shared memory per block in the fused CUDA kernel (device limit ", max_smem,
              "); use precision='fp32' (layer-by-layer GEMMs) for this size");
  const int64_t BM = MT * 16;
  const int64_t off_x = 0, off_d = off_x + BM * ldx, off_h0 = off_d + BM * ldd, off_h1 = off_h0 + BM * ldh,
                off_hd = off_h1 + BM * ldh;

  // Pack the weights (per call: ~1 MB for the paper's MLP) and the biases.
  const auto f32 = x_enc.options().dtype(at::kFloat);
  std::vector<at::Tensor> keep;  // keeps packed tensors alive until the launch is enqueued
  Params p{};
  int nl = 0;
  auto add_layer = [&](const at::Tensor& wfull, const at::Tensor& bias, bool bias_cond, int64_t n_bias, int64_t n_real,
                       int64_t kt1, int64_t src1, int64_t ld1, int64_t kt2, int64_t src2, int64_t ld2, int64_t dst,
                       int64_t ld_dst, int64_t dst_cols, long long act_off, int kind) {
    const int64_t NP = round_up(wfull.size(0), 32);
    at::Tensor packed = pack_fragments(pad2(wfull, NP, (kt1 + kt2) * 16), ct);
    at::Tensor b = bias.to(at::kFloat).contiguous();
    keep.push_back(packed);
    keep.push_back(b);
    LayerDesc& L = p.layers[nl++];
    L.w = reinterpret_cast<const uint2*>(packed.data_ptr());
    L.bias = b.data_ptr<float>();
    L.bias_cond = bias_cond ? 1 : 0;
    L.n_bias = static_cast<int>(n_bias);
    L.n_real = static_cast<int>(n_real);
    L.nt8 = static_cast<int>(NP / 8);
    L.kt1 = static_cast<int>(kt1);
    L.kt2 = static_cast<int>(kt2);
    L.src1 = static_cast<int>(src1);
    L.ld1 = static_cast<int>(ld1);
    L.src2 = static_cast<int>(src2);
    L.ld2 = static_cast<int>(ld2);
    L.dst = static_cast<int>(dst);
    L.ld_dst = static_cast<int>(ld_dst);
    L.dst_cols = static_cast<int>(dst_cols);
    L.act_off = act_off;
    L.kind = kind;
  };
  auto seg = [&](const at::Tensor& w, int64_t cols) { return pad2(w, w.size(0), cols); };  // pad K columns
  const int64_t N = m.N, W = m.W;
  int64_t cur = off_h0, other = off_h1;
  add_layer(seg(w0x, DXP), cond0, true, W, W, DXP / 16, off_x, ldx, 0, 0, 0, cur, ldh, WP, save ? 0 : -1, kHidden);
  size_t bi = 0;
  for (int64_t l = 1; l < m.D; ++l) {
    const long long act = save ? static_cast<long long>(l * N * W) : -1;
    if (l == m.skip) {
      at::Tensor wf = at::cat({seg(*skip_wx, DXP), seg(hidden_w[l - 1], WP)}, 1);
      add_layer(wf, *cond_skip, true, W, W, DXP / 16, off_x, ldx, WP / 16, cur, ldh, other, ldh, WP, act, kHidden);
    } else {
      add_layer(seg(hidden_w[l - 1], WP), hidden_b[bi++], false, W, W, WP / 16, cur, ldh, 0, 0, 0, other, ldh, WP, act,
                kHidden);
    }
    std::swap(cur, other);
  }
  {
    // Direction layer [Wd, W + Dd] plus the sigma head as row Wd: [[Wdh | Wdd]; [w_sigma | 0]].
    at::Tensor wd = at::cat({seg(dir_w.narrow(1, 0, W), WP), seg(dir_w.narrow(1, W, m.Dd), DDP)}, 1);
    at::Tensor ws = at::cat({seg(sigma_w, WP), at::zeros({1, DDP}, f32)}, 1);
    at::Tensor bias = at::cat({dir_b.to(at::kFloat), sigma_b.to(at::kFloat)});
    const long long act = save ? static_cast<long long>(m.D * N * W) : -1;
    add_layer(at::cat({wd, ws}, 0), bias, false, m.Wd + 1, m.Wd, WP / 16, cur, ldh, DDP / 16, off_d, ldd, off_hd, ldhd,
              WDP, act, kDir);
  }
  if (feature) {
    add_layer(seg(out_w, WDP), out_b, false, m.F, m.F, WDP / 16, off_hd, ldhd, 0, 0, 0, 0, 0, 0, -1, kOut);
  }
  p.n_layers = nl;

  at::Tensor xc = x_enc.reshape({N, m.Dx}).to(ct).contiguous();
  at::Tensor dc = d_enc.reshape({N, m.Dd}).to(ct).contiguous();
  const int64_t C = feature ? m.F : m.Wd;
  at::Tensor sigma = at::empty({N}, f32);
  at::Tensor out = at::empty({N, C}, f32);
  at::Tensor acts = at::empty({save ? m.acts_numel() : 0}, x_enc.options().dtype(ct));
  p.N = static_cast<int>(N);
  p.P = static_cast<int>(m.P);
  p.Dx = static_cast<int>(m.Dx);
  p.Dd = static_cast<int>(m.Dd);
  p.x_off = static_cast<int>(off_x);
  p.x_ld = static_cast<int>(ldx);
  p.x_cols = static_cast<int>(DXP);
  p.d_off = static_cast<int>(off_d);
  p.d_ld = static_cast<int>(ldd);
  p.d_cols = static_cast<int>(DDP);
  p.x = xc.data_ptr();
  p.d = dc.data_ptr();
  p.sigma = sigma.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.out_cols = static_cast<int>(C);
  p.hidden_out = feature ? 0 : 1;
  p.acts = save ? acts.data_ptr() : nullptr;

  const dim3 grid(static_cast<unsigned>((N + BM - 1) / BM));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  auto launch = [&](auto kernel) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)));
    kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (ct == at::kBFloat16) {
    if (MT == 8) launch(field_mlp_fused_kernel<__nv_bfloat16, 8>);
    else launch(field_mlp_fused_kernel<__nv_bfloat16, 4>);
  } else {
    if (MT == 8) launch(field_mlp_fused_kernel<__half, 8>);
    else launch(field_mlp_fused_kernel<__half, 4>);
  }
  at::Tensor sig_out = sigma.view({m.B, m.P});
  at::Tensor o = out.view({m.B, m.P, C});
  if (x_enc.scalar_type() != at::kFloat) {
    sig_out = sig_out.to(x_enc.scalar_type());
    o = o.to(x_enc.scalar_type());
  }
  return {sig_out, o, acts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
           std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
field_mlp_backward_cuda(const at::Tensor& grad_sigma, const at::Tensor& grad_out, const at::Tensor& x_enc,
                        const at::Tensor& d_enc, const at::Tensor& acts, const at::Tensor& w0x,
                        at::TensorList hidden_w, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                        const at::Tensor& dir_w, const at::Tensor& out_w, int64_t skip, bool feature,
                        int64_t precision) {
  const c10::cuda::CUDAGuard guard(x_enc.device());
  return mlp_backward_impl(grad_sigma, grad_out, x_enc, d_enc, acts, w0x, hidden_w, skip_wx, sigma_w, dir_w, out_w,
                           skip, feature, precision, 0);
}

}  // namespace
}  // namespace dgnerf

TORCH_LIBRARY_IMPL(dgnerf, CUDA, m) {
  m.impl("field_mlp_forward", &dgnerf::field_mlp_forward_cuda);
  m.impl("field_mlp_backward", &dgnerf::field_mlp_backward_cuda);
}
