// The field MLP on CUDA: one fused kernel runs every layer (formulas: csrc/include/dgnerf/mlp.h).
//
// A block owns BM = 128 points (64 when the width does not fit) and 8 warps. Its activations never
// leave shared memory: regions X [BM, Dx16] (gamma(x)), Dd [BM, Dd16] (gamma(d)), H [BM, W32] (trunk
// activations; for W <= 256 one region that each layer overwrites in place after a block barrier, else
// two in ping-pong) and HD [BM, Wd16] (direction hidden), each row padded by 8 elements so ldmatrix rows
// fall in distinct banks. Every layer is a GEMM [BM, K] x [K, N] on the tensor cores (mma.sync m16n8k16,
// bf16 or fp16 operands, fp32 accumulators in registers): warp w takes the output columns [32c, 32c + 32)
// for c = w, w + 8, ..., i.e. all BM rows x 4 n-tiles (MT x 4 x 4 floats of accumulators per thread).
// Its A operand comes from shared memory (ldmatrix.x4, all MT tiles of a k-step issued together); its B
// operand is pre-packed on the host in the exact mma fragment order (1 MB for the paper's MLP, L2
// resident) and streamed by cp.async into a per-warp ring of 8 (or 4) k-steps in shared memory. A layer's
// input may be two K segments (skip layer: [x | h], direction layer: [h | d]); the sigma head is one extra
// output row of the direction layer. Epilogues per layer kind (trunk / direction / feature head) add the
// bias (per column, or per image for the folded conditioning cond0 / cond_skip), apply ReLU, round to the
// compute dtype into the next region, and optionally save the activation for the backward pass. They are
// kept lean on purpose: one general epilogue unrolled 64 times overflowed the instruction cache.
//
// Packing the weights is cached (see Plan below). Measured speeds and every version's history: docs/mlp_notes.md.
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
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "dgnerf/checks.h"
#include "dgnerf/mlp.h"

namespace dgnerf {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 24;
constexpr int kRowPad = 8;  // elements of padding per shared-memory row
constexpr int kStageU2 = 4 * 32;  // uint2 per weight-fragment stage: 4 n-tiles x 32 lanes (1 KB)
// The two launch shapes: (MT = 8 row tiles, 8 stages) when the trunk fits in place (W <= 256: one output
// chunk per warp), else (MT = 4, 4 stages). Shared memory: activations + kWarps x stages x 1 KB.
constexpr int stage_bytes(int stages) { return kWarps * stages * kStageU2 * 8; }

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
  int act_slot;        // act_off = act_slot * N * W when saving (set per call), -1: never saved
  int inplace;         // dst is also an input: every warp finishes its K loop before any epilogue writes
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
  int stage_off;  // byte offset of the weight-fragment rings in shared memory (16-byte aligned)
};

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], const uint2& b) {
    asm(  // no side effects: the scheduler may interleave MMAs with the loads
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
    asm(  // no side effects: the scheduler may interleave MMAs with the loads
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

__device__ __forceinline__ void ldmatrix_x4_u32(uint32_t (&a)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}
__device__ __forceinline__ uint2 lds64(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ void cp_async16_u32(uint32_t smem_addr, const void* gmem_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// One layer on the block's BM rows. MT = BM / 16 row tiles per warp. `bring`: this warp's kStages x 1 KB
// ring of weight fragments in shared memory, filled by cp.async kStages - 1 k-steps ahead of the MMAs
// (the fragments come from L2, ~1 MB shared by all blocks; one step of prefetch left the warps waiting).
template <typename T, int MT, int kStages>
__device__ __forceinline__ void run_layer(const Params& p, const LayerDesc& L, T* smem, uint32_t smem_u32,
                                          uint32_t bring, int row0) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int KT = L.kt1 + L.kt2;
  const int n_chunks = L.nt8 / 4;
  // Rounds of kWarps chunks, the same trip count in every warp (the in-place barrier below is block-wide).
  for (int chunk0 = 0; chunk0 < n_chunks; chunk0 += kWarps) {
    const int chunk = chunk0 + warp;
    const bool active = chunk < n_chunks;
    float acc[MT][4][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.f;
    if (active) {
    // Fragment of n-tile (chunk*4 + j) at k-step kt: w[((chunk*4 + j) * KT + kt) * 32 + lane].
    // Stage s holds k-step kt (s = kt % kStages) as [j][lane]; each lane copies 2 x 16 bytes of it.
    // Every address below is formed once per chunk (shared-memory addresses as 32-bit integers); a k-step
    // only adds its offset. Nsight Compute on the previous form: 125 instructions per 32 MMAs, most of
    // them address arithmetic recomputed every k-step, and stalls on their dependency chains.
    const uint2* wsrc[2];
    uint32_t wdst[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int q = lane + 32 * i, j = q >> 4, o = (q & 15) * 2;
      wsrc[i] = L.w + (static_cast<size_t>(chunk) * 4 + j) * KT * 32 + o;
      wdst[i] = bring + (j * 32 + o) * 8;
    }
    auto issue = [&](int kt) {
      if (kt < KT) {
        const uint32_t so = (kt % kStages) * (kStageU2 * 8);
#pragma unroll
        for (int i = 0; i < 2; ++i) cp_async16_u32(wdst[i] + so, wsrc[i] + kt * 32);
      }
      cp_async_commit();  // an empty group past the end keeps the group count uniform
    };
    // ldmatrix.x4 addresses: lanes 0-15 rows 0-15 at the k-step's column, lanes 16-31 the same rows 8
    // columns on; row tile m is m * 16 rows further.
    const uint32_t lane_row = lane % 16, lane_col = (lane / 16) * 8;
    const uint32_t a1 = smem_u32 + (L.src1 + lane_row * L.ld1 + lane_col) * 2, ms1 = 16 * L.ld1 * 2;
    const uint32_t a2 = smem_u32 + (L.src2 + lane_row * L.ld2 + lane_col) * 2, ms2 = 16 * L.ld2 * 2;
    const uint32_t bread = bring + lane * 8;
    auto kstep = [&](int kt, uint32_t abase, uint32_t mstep) {
      cp_async_wait<kStages - 2>();  // this lane's copies of k-step kt have landed
      __syncwarp();                  // ... and every other lane's
      issue(kt + kStages - 1);       // refills the stage read in step kt - 1
      uint2 b[4];
      const uint32_t bs = bread + (kt % kStages) * (kStageU2 * 8);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = lds64(bs + j * 256);
      // All MT A fragments first, then the 4 MT MMAs: the shared-memory loads are in flight together
      // instead of each MMA group waiting on its own load (interleaving them was 2.4x slower, docs/mlp_notes.md).
      uint32_t a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) ldmatrix_x4_u32(a[m], abase + m * mstep);
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j) Mma<T>::run(acc[m][j], a[m], b[j]);
    };
    __syncwarp();  // every lane is done with the ring (previous chunk / layer) before it is refilled
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) issue(s);
    const int kt1 = L.kt1;
    for (int kt = 0; kt < kt1; ++kt) kstep(kt, a1 + kt * 32, ms1);
    for (int kt = kt1; kt < KT; ++kt) kstep(kt, a2 + (kt - kt1) * 32, ms2);
    cp_async_wait<0>();
    }
    if (L.inplace) __syncthreads();  // all reads of the input region are done before it is overwritten
    if (!active) continue;
    // Epilogue: accumulator element (m, j, e) is row m*16 + g + 8*(e/2), column chunk*32 + j*8 + tig*2 + e%2.
    // This thread's 8 column biases, loaded once when they are the same for all the block's rows (always,
    // unless the bias is per image and the block straddles images).
    const int img_lo = min(row0, p.N - 1) / p.P, img_hi = min(row0 + MT * 16 - 1, p.N - 1) / p.P;
    const bool one_bias = !L.bias_cond || img_lo == img_hi;
    float bcol[4][2];
    {
      const float* bias = L.bias_cond ? L.bias + static_cast<size_t>(img_lo) * L.n_bias : L.bias;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = chunk * 32 + j * 8 + tig * 2 + e;
          bcol[j][e] = c < L.n_bias ? __ldg(bias + c) : 0.f;
        }
    }
    // Trunk layers (8 of the paper's 10): a lean epilogue, bias + ReLU + one 32-bit shared store per pair
    // (+ one 32-bit global store when saving). The three epilogues share their loop scaffolding on purpose:
    // one general epilogue (every case behind runtime branches) was ~4x the instructions of this one, and
    // unrolled 64 times it no longer fitted the instruction cache (docs/mlp_notes.md, version c3).
    if (L.kind == kHidden) {
      T* act = L.act_off >= 0 ? static_cast<T*>(p.acts) + L.act_off : nullptr;
      const bool pair_store = (L.n_real % 2) == 0;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int r = m * 16 + g + hh * 8;
          const int grow = row0 + r;
          const float* brow = one_bias ? nullptr
                                       : L.bias + static_cast<size_t>(min(grow, p.N - 1) / p.P) * L.n_bias;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int n = chunk * 32 + j * 8 + tig * 2;
            float v0 = acc[m][j][hh * 2], v1 = acc[m][j][hh * 2 + 1];
            if (one_bias) {
              v0 += bcol[j][0];
              v1 += bcol[j][1];
            } else {
              v0 += n < L.n_bias ? __ldg(brow + n) : 0.f;
              v1 += n + 1 < L.n_bias ? __ldg(brow + n + 1) : 0.f;
            }
            // ReLU that lets NaN through (fmaxf would turn it into 0: a silent NaN); padding columns are 0.
            v0 = (n < L.n_real) ? (v0 <= 0.f ? 0.f : v0) : 0.f;
            v1 = (n + 1 < L.n_real) ? (v1 <= 0.f ? 0.f : v1) : 0.f;
            const uint32_t packed = Mma<T>::pack(v0, v1);
            *reinterpret_cast<uint32_t*>(smem + L.dst + r * L.ld_dst + n) = packed;
            if (act != nullptr && grow < p.N && n < L.n_real) {
              T* a = act + static_cast<long long>(grow) * L.n_real + n;
              if (pair_store) {
                *reinterpret_cast<uint32_t*>(a) = packed;
              } else {
                a[0] = Mma<T>::from_float(v0);
                if (n + 1 < L.n_real) a[1] = Mma<T>::from_float(v1);
              }
            }
          }
        }
      }
      continue;
    }
    // The feature head: float32 rows of the output, pairs stored as float2 where they can be.
    if (L.kind == kOut) {
      const bool pair_store = (p.out_cols % 2) == 0;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int grow = row0 + m * 16 + g + hh * 8;
          if (grow >= p.N) continue;
          float* o = p.out + static_cast<size_t>(grow) * p.out_cols;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int n = chunk * 32 + j * 8 + tig * 2;
            const float v0 = acc[m][j][hh * 2] + bcol[j][0], v1 = acc[m][j][hh * 2 + 1] + bcol[j][1];
            if (pair_store && n + 1 < L.n_real) {
              *reinterpret_cast<float2*>(o + n) = make_float2(v0, v1);
            } else {
              if (n < L.n_real) o[n] = v0;
              if (n + 1 < L.n_real) o[n + 1] = v1;
            }
          }
        }
      }
      continue;
    }
    // The direction layer (its bias is never per image): ReLU columns < Wd into HD (and the saved
    // activations, and the "hidden" output), column Wd is sigma (raw, no ReLU), padding columns are 0.
    {
      T* act = L.act_off >= 0 ? static_cast<T*>(p.acts) + L.act_off : nullptr;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int r = m * 16 + g + hh * 8;
          const int grow = row0 + r;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int n = chunk * 32 + j * 8 + tig * 2;
            const float v0 = acc[m][j][hh * 2] + bcol[j][0], v1 = acc[m][j][hh * 2 + 1] + bcol[j][1];
            const float r0 = (n < L.n_real) ? (v0 <= 0.f ? 0.f : v0) : 0.f;
            const float r1 = (n + 1 < L.n_real) ? (v1 <= 0.f ? 0.f : v1) : 0.f;
            if (n < L.dst_cols) {  // dst_cols is even: the pair lies inside the region
              *reinterpret_cast<uint32_t*>(smem + L.dst + r * L.ld_dst + n) = Mma<T>::pack(r0, r1);
            }
            if (grow >= p.N) continue;
            if (n == L.n_real) p.sigma[grow] = v0;
            if (n + 1 == L.n_real) p.sigma[grow] = v1;
            if (n < L.n_real) {
              if (act != nullptr) {
                T* a = act + static_cast<long long>(grow) * L.n_real + n;
                a[0] = Mma<T>::from_float(r0);
                if (n + 1 < L.n_real) a[1] = Mma<T>::from_float(r1);
              }
              if (p.hidden_out) {
                float* o = p.out + static_cast<size_t>(grow) * p.out_cols + n;
                o[0] = r0;
                if (n + 1 < L.n_real) o[1] = r1;
              }
            }
          }
        }
      }
    }
  }
}

template <typename T, int MT, int kStages>
__global__ void __launch_bounds__(kThreads, 1) field_mlp_fused_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  constexpr int BM = MT * 16;
  const uint32_t smem_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t bring = smem_u32 + p.stage_off + (threadIdx.x / 32) * kStages * kStageU2 * 8;  // this warp's ring
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
    run_layer<T, MT, kStages>(p, p.layers[l], smem, smem_u32, bring, row0);
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

// Everything of a launch that depends only on the weights (and the device): the packed fragments, the
// float biases, the layer descriptors and the shared-memory layout. Packing is ~40 small kernels, more
// host time than the kernel itself at 65,536 points, so plans are cached: keyed on the weight tensors
// themselves (same storage, sizes, strides, dtype) and their version counters, so an in-place update (an
// optimizer step) repacks. An entry holds references to its key tensors: their memory cannot be reused
// by other tensors while it lives. Never filled during CUDA graph capture (its tensors would belong to
// the graph's memory pool). DGNERF_MLP_PACK_CACHE=0 disables it.
struct Plan {
  std::vector<LayerDesc> layers;
  std::vector<at::Tensor> keep;  // packed fragments and biases the descriptors point into
  int skip_layer = -1;           // layer whose bias is cond_skip (layer 0's is cond0)
  int MT = 8;  // row tiles per warp; the weight ring is as deep (8 or 4 stages), see stage_bytes
  int64_t smem_bytes = 0, stage_off = 0, off_x = 0, off_d = 0, ldx = 0, ldd = 0, DXP = 0, DDP = 0;
};

struct PlanEntry {
  std::vector<at::Tensor> key;
  std::vector<int64_t> versions;
  at::ScalarType ct;
  int device;
  bool feature;
  std::shared_ptr<const Plan> plan;
};

bool same_tensor(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() == b.defined() &&
         (!a.defined() || (a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes() && a.strides() == b.strides() &&
                           a.scalar_type() == b.scalar_type() && a.device() == b.device()));
}

Plan build_plan(const MlpDims& m, int dev, at::ScalarType ct, const at::Tensor& w0x, at::TensorList hidden_w,
                at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b, const at::Tensor& out_w,
                const at::Tensor& out_b, bool feature, const char* op) {
  Plan plan;
  const int64_t DXP = round_up(m.Dx, 16), DDP = round_up(m.Dd, 16), WP = round_up(m.W, 32), WDP = round_up(m.Wd, 16);
  // Shared-memory regions (elements), rows padded by kRowPad, then the weight-fragment rings.
  const int64_t ldx = DXP + kRowPad, ldd = DDP + kRowPad, ldh = WP + kRowPad, ldhd = WDP + kRowPad;
  // W <= 256: every trunk layer is one output chunk per warp, so it can overwrite its own input (one H
  // region instead of two), which leaves room for 128-row blocks and an 8-deep weight pipeline.
  const bool inplace = WP / 32 <= kWarps;
  const int64_t row_elems = ldx + ldd + (inplace ? 1 : 2) * ldh + ldhd;
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  auto bytes_for = [&](int mt, int stages) { return round_up(row_elems * mt * 16 * 2, 16) + stage_bytes(stages); };
  int MT = 8, stages = 8;
  if (bytes_for(8, 8) > max_smem) MT = stages = 4;
  const int64_t smem_bytes = bytes_for(MT, stages);
  TORCH_CHECK(smem_bytes <= max_smem, op, ": width ", m.W, " needs ", smem_bytes,
              " bytes of shared memory per block in the fused CUDA kernel (device limit ", max_smem,
              "); use precision='fp32' (layer-by-layer GEMMs) for this size");
  const int64_t BM = MT * 16;
  const int64_t off_x = 0, off_d = off_x + BM * ldx, off_h0 = off_d + BM * ldd,
                off_h1 = inplace ? off_h0 : off_h0 + BM * ldh, off_hd = off_h1 + BM * ldh;
  plan.MT = MT;
  plan.smem_bytes = smem_bytes;
  plan.stage_off = round_up((off_hd + BM * ldhd) * 2, 16);
  plan.off_x = off_x;
  plan.off_d = off_d;
  plan.ldx = ldx;
  plan.ldd = ldd;
  plan.DXP = DXP;
  plan.DDP = DDP;

  const auto f32 = w0x.options().dtype(at::kFloat);
  auto add_layer = [&](const at::Tensor& wfull, const at::Tensor& bias, bool bias_cond, int64_t n_bias, int64_t n_real,
                       int64_t kt1, int64_t src1, int64_t ld1, int64_t kt2, int64_t src2, int64_t ld2, int64_t dst,
                       int64_t ld_dst, int64_t dst_cols, int act_slot, int kind) {
    const int64_t NP = round_up(wfull.size(0), 32);
    at::Tensor packed = pack_fragments(pad2(wfull, NP, (kt1 + kt2) * 16), ct);
    plan.keep.push_back(packed);
    LayerDesc L{};
    L.w = reinterpret_cast<const uint2*>(packed.data_ptr());
    if (bias_cond) {
      L.bias = nullptr;  // per call
    } else {
      at::Tensor b = bias.detach().to(at::kFloat).contiguous();
      plan.keep.push_back(b);
      L.bias = b.data_ptr<float>();
    }
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
    L.act_off = -1;
    L.act_slot = act_slot;
    L.inplace = kind != kOut && (dst == src1 || (kt2 > 0 && dst == src2)) ? 1 : 0;
    L.kind = kind;
    plan.layers.push_back(L);
  };
  auto seg = [&](const at::Tensor& w, int64_t cols) { return pad2(w.detach(), w.size(0), cols); };  // pad K columns
  const at::Tensor none;
  int64_t cur = off_h0, other = off_h1;
  add_layer(seg(w0x, DXP), none, true, m.W, m.W, DXP / 16, off_x, ldx, 0, 0, 0, cur, ldh, WP, 0, kHidden);
  size_t bi = 0;
  for (int64_t l = 1; l < m.D; ++l) {
    if (l == m.skip) {
      at::Tensor wf = at::cat({seg(*skip_wx, DXP), seg(hidden_w[l - 1], WP)}, 1);
      plan.skip_layer = static_cast<int>(plan.layers.size());
      add_layer(wf, none, true, m.W, m.W, DXP / 16, off_x, ldx, WP / 16, cur, ldh, other, ldh, WP,
                static_cast<int>(l), kHidden);
    } else {
      add_layer(seg(hidden_w[l - 1], WP), hidden_b[bi++], false, m.W, m.W, WP / 16, cur, ldh, 0, 0, 0, other, ldh, WP,
                static_cast<int>(l), kHidden);
    }
    std::swap(cur, other);
  }
  {
    // Direction layer [Wd, W + Dd] plus the sigma head as row Wd: [[Wdh | Wdd]; [w_sigma | 0]].
    at::Tensor dw = dir_w.detach();
    at::Tensor wd = at::cat({seg(dw.narrow(1, 0, m.W), WP), seg(dw.narrow(1, m.W, m.Dd), DDP)}, 1);
    at::Tensor ws = at::cat({seg(sigma_w, WP), at::zeros({1, DDP}, f32)}, 1);
    at::Tensor bias = at::cat({dir_b.detach().to(at::kFloat), sigma_b.detach().to(at::kFloat)});
    add_layer(at::cat({wd, ws}, 0), bias, false, m.Wd + 1, m.Wd, WP / 16, cur, ldh, DDP / 16, off_d, ldd, off_hd, ldhd,
              WDP, static_cast<int>(m.D), kDir);
  }
  if (feature) {
    add_layer(seg(out_w, WDP), out_b, false, m.F, m.F, WDP / 16, off_hd, ldhd, 0, 0, 0, 0, 0, 0, -1, kOut);
  }
  return plan;
}

std::shared_ptr<const Plan> get_plan(const MlpDims& m, int dev, at::ScalarType ct, const at::Tensor& w0x, at::TensorList hidden_w,
                     at::TensorList hidden_b, const c10::optional<at::Tensor>& skip_wx, const at::Tensor& sigma_w,
                     const at::Tensor& sigma_b, const at::Tensor& dir_w, const at::Tensor& dir_b,
                     const at::Tensor& out_w, const at::Tensor& out_b, bool feature, const char* op) {
  static std::mutex mu;
  static std::deque<PlanEntry> cache;  // most recent first
  constexpr size_t kCap = 4;
  std::vector<at::Tensor> key{w0x};
  key.insert(key.end(), hidden_w.begin(), hidden_w.end());
  key.insert(key.end(), hidden_b.begin(), hidden_b.end());
  key.push_back(skip_wx.has_value() ? *skip_wx : at::Tensor());
  for (const at::Tensor* t : {&sigma_w, &sigma_b, &dir_w, &dir_b, &out_w, &out_b}) key.push_back(*t);
  const char* env = std::getenv("DGNERF_MLP_PACK_CACHE");
  bool cacheable = !(env && env[0] == '0');
  for (const at::Tensor& t : key) {
    if (t.defined() && t.is_inference()) cacheable = false;  // no version counter to watch
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(dev).stream(), &capture));
  std::vector<int64_t> versions;
  if (cacheable) {
    for (const at::Tensor& t : key) versions.push_back(t.defined() ? t._version() : -1);
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (it->ct != ct || it->device != dev || it->feature != feature || it->key.size() != key.size() ||
          it->versions != versions) {
        continue;
      }
      bool same = true;
      for (size_t i = 0; i < key.size() && same; ++i) same = same_tensor(it->key[i], key[i]);
      if (same) return it->plan;
    }
  }
  auto plan = std::make_shared<const Plan>(build_plan(m, dev, ct, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w, dir_b, out_w, out_b,
                         feature, op));
  if (!cacheable || capture != cudaStreamCaptureStatusNone) return plan;
  std::lock_guard<std::mutex> lock(mu);
  PlanEntry e;
  e.key = std::move(key);
  e.versions = std::move(versions);
  e.ct = ct;
  e.device = dev;
  e.feature = feature;
  e.plan = plan;
  cache.push_front(std::move(e));
  while (cache.size() > kCap) cache.pop_back();
  return plan;
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

  const auto f32 = x_enc.options().dtype(at::kFloat);
  const std::shared_ptr<const Plan> plan_ref = get_plan(m, x_enc.get_device(), ct, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w,
                              dir_b, out_w, out_b, feature, op);
  const Plan& plan = *plan_ref;  // held until the launch is enqueued
  Params p{};
  p.n_layers = static_cast<int>(plan.layers.size());
  const int64_t N = m.N, W = m.W;
  for (int l = 0; l < p.n_layers; ++l) {
    LayerDesc& L = p.layers[l];
    L = plan.layers[l];
    L.act_off = (save && L.act_slot >= 0) ? static_cast<long long>(L.act_slot) * N * W : -1;
  }
  // The folded conditioning biases are per call (per image): float32, contiguous.
  at::Tensor c0 = cond0.to(at::kFloat).contiguous();
  p.layers[0].bias = c0.data_ptr<float>();
  at::Tensor cs;
  if (plan.skip_layer >= 0) {
    cs = cond_skip->to(at::kFloat).contiguous();
    p.layers[plan.skip_layer].bias = cs.data_ptr<float>();
  }
  const int64_t smem_bytes = plan.smem_bytes, BM = plan.MT * 16;
  const int MT = plan.MT;
  const int64_t off_x = plan.off_x, off_d = plan.off_d, ldx = plan.ldx, ldd = plan.ldd, DXP = plan.DXP,
                DDP = plan.DDP;
  p.stage_off = static_cast<int>(plan.stage_off);
  const int dev = x_enc.get_device();
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
    if (MT == 8) launch(field_mlp_fused_kernel<__nv_bfloat16, 8, 8>);
    else launch(field_mlp_fused_kernel<__nv_bfloat16, 4, 4>);
  } else {
    if (MT == 8) launch(field_mlp_fused_kernel<__half, 8, 8>);
    else launch(field_mlp_fused_kernel<__half, 4, 4>);
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
