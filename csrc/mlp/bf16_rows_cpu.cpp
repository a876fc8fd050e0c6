// Vectorized bf16 epilogues for the field MLP's CPU tiles (declarations and contract: dgnerf/bf16_rows.h).
//
// Why: with bf16 operands the tile GEMMs run on the CPU's matrix units (AMX / AVX-512 BF16 through oneDNN)
// several times faster than float32, and what is left of a tile is its element-wise work (bias + ReLU,
// ReLU's backward, the column sums of the bias gradients, the float32 outputs). Done by scalar loops or
// separate ATen passes it cost as much as the GEMMs saved (docs/performance.md). These loops do each in one
// pass over the tile while it is in cache, 16 channels at a time.
#include "dgnerf/bf16_rows.h"

#include <atomic>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && (__GNUC__ >= 10)
#define DGNERF_BF16_AVX512 1
#include <immintrin.h>
// GCC 12's own _mm512_setzero_ps / _mm512_undefined_* trip this warning inside its headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dgnerf {

#ifdef DGNERF_BF16_AVX512
#define DGNERF_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace {

DGNERF_TARGET inline __m512 load16(const uint16_t* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

DGNERF_TARGET inline void store16(uint16_t* p, __m512 v) {
  const __m256bh r = _mm512_cvtneps_pbh(v);  // round to nearest even; NaN stays NaN
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<const __m256i&>(r));
}

// Rows outer, 16-channel blocks inner: a tile is streamed once (C <= kMaxC channels; wider rows fall back).
constexpr int64_t kMaxC = 256;

DGNERF_TARGET void bias_act_avx512(uint16_t* o, const uint16_t* bias, int64_t T, int64_t C, bool relu) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 b[kMaxC / 16];
  for (int64_t k = 0; k < C / 16; ++k) b[k] = load16(bias + 16 * k);
  for (int64_t r = 0; r < T; ++r, o += C) {
    for (int64_t k = 0; k < C / 16; ++k) {
      const __m512 v = _mm512_add_ps(load16(o + 16 * k), b[k]);
      // max(0, v) returns its second operand when either is NaN: a NaN stays NaN (never a silent 0).
      store16(o + 16 * k, relu ? _mm512_max_ps(zero, v) : v);
    }
  }
}

DGNERF_TARGET void to_float_avx512(float* dst, const uint16_t* src, const uint16_t* bias, int64_t T, int64_t C) {
  __m512 b[kMaxC / 16];
  for (int64_t k = 0; k < C / 16; ++k) b[k] = bias ? load16(bias + 16 * k) : _mm512_setzero_ps();
  for (int64_t r = 0; r < T; ++r, src += C, dst += C) {
    for (int64_t k = 0; k < C / 16; ++k) _mm512_storeu_ps(dst + 16 * k, _mm512_add_ps(load16(src + 16 * k), b[k]));
  }
}

DGNERF_TARGET void relu_grad_avx512(uint16_t* out, const uint16_t* g, const uint16_t* h, int64_t T, int64_t C,
                                    float* colsum) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 sum[kMaxC / 16];
  for (int64_t k = 0; k < C / 16; ++k) sum[k] = _mm512_setzero_ps();
  for (int64_t r = 0; r < T; ++r, g += C, h += C, out += C) {
    for (int64_t k = 0; k < C / 16; ++k) {
      // keep g unless h <= 0 (as at::threshold_backward: a NaN h keeps g); the kept bf16 bits are copied as they are.
      const __mmask16 keep = _mm512_cmp_ps_mask(load16(h + 16 * k), zero, _CMP_NLE_UQ);
      const __m256i ov = _mm256_maskz_mov_epi16(keep, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 16 * k)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * k), ov);
      if (colsum) sum[k] = _mm512_add_ps(sum[k], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ov), 16)));
    }
  }
  if (colsum) {
    for (int64_t k = 0; k < C / 16; ++k) {
      _mm512_storeu_ps(colsum + 16 * k, _mm512_add_ps(_mm512_loadu_ps(colsum + 16 * k), sum[k]));
    }
  }
}

bool detect() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

std::atomic<bool> g_enabled{true};

}  // namespace

bool bf16_rows_native() {
  static const bool ok = detect();
  return ok && g_enabled.load(std::memory_order_relaxed);
}

bool bf16_rows_set(int64_t mode) {
  if (mode == 0 || mode == 1) g_enabled.store(mode == 1, std::memory_order_relaxed);
  return bf16_rows_native();
}

bool bf16_bias_act(uint16_t* o, const uint16_t* bias, int64_t T, int64_t C, bool relu) {
  if (C % 16 != 0 || C > kMaxC || !bf16_rows_native()) return false;
  bias_act_avx512(o, bias, T, C, relu);
  return true;
}

bool bf16_to_float_rows(float* dst, const uint16_t* src, const uint16_t* bias, int64_t T, int64_t C) {
  if (C % 16 != 0 || C > kMaxC || !bf16_rows_native()) return false;
  to_float_avx512(dst, src, bias, T, C);
  return true;
}

bool bf16_relu_grad(uint16_t* out, const uint16_t* g, const uint16_t* h, int64_t T, int64_t C, float* colsum) {
  if (C % 16 != 0 || C > kMaxC || !bf16_rows_native()) return false;
  relu_grad_avx512(out, g, h, T, C, colsum);
  return true;
}

#else  // not x86-64 GCC: the portable ATen code runs

bool bf16_rows_native() { return false; }
bool bf16_rows_set(int64_t) { return false; }
bool bf16_bias_act(uint16_t*, const uint16_t*, int64_t, int64_t, bool) { return false; }
bool bf16_to_float_rows(float*, const uint16_t*, const uint16_t*, int64_t, int64_t) { return false; }
bool bf16_relu_grad(uint16_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, float*) { return false; }

#endif

}  // namespace dgnerf
