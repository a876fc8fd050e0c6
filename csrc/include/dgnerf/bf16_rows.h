// Row-wise bf16 epilogues of the field MLP's CPU tiles, vectorized with AVX-512 BF16 where the CPU has it
// (chosen at run time: the library itself is built for the baseline ISA). Each returns false when it did
// nothing (no AVX-512 BF16, or a row length that is not a multiple of 16); the caller then runs its
// portable ATen code, so every machine computes the same op, only at another speed.
//
// Tiles are contiguous [T, C] row-major arrays of bf16 bit patterns (c10::BFloat16). Values are widened to
// float32, combined there and rounded back to nearest-even, as c10::BFloat16 does (AVX-512 BF16 flushes
// float32 subnormals below bf16's range to zero, which the portable code keeps: at most 2^-126 apart).
#pragma once
#include <cstdint>

namespace dgnerf {

// The CPU runs the vectorized bf16 epilogues (AVX-512 F/BW/VL and BF16, checked once) and they are enabled.
bool bf16_rows_native();

// mode 0 disables the vectorized epilogues (the portable code runs), 1 enables them again, -1 only asks;
// returns whether they run now. The op dgnerf::bf16_rows(mode) (tests compare the two paths with it).
bool bf16_rows_set(int64_t mode);

// o[r, c] = act(o[r, c] + bias[c]); act = ReLU (NaN kept) or identity.
bool bf16_bias_act(uint16_t* o, const uint16_t* bias, int64_t T, int64_t C, bool relu);

// dst[r, c] (float32) = src[r, c] (+ bias[c] when bias is not null).
bool bf16_to_float_rows(float* dst, const uint16_t* src, const uint16_t* bias, int64_t T, int64_t C);

// out[r, c] = h[r, c] <= 0 ? 0 : g[r, c] (ReLU's backward, as at::threshold_backward(g, h, 0)), and, when
// colsum is not null, colsum[c] += sum over r of out[r, c] (float32 accumulation).
bool bf16_relu_grad(uint16_t* out, const uint16_t* g, const uint16_t* h, int64_t T, int64_t C, float* colsum);

}  // namespace dgnerf
