// Per-sample / per-ray formulas shared by the CPU and CUDA kernels, so both compute the same
// arithmetic in the same order. Everything here is HOST_DEVICE and header-only.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DGNERF_HD __host__ __device__ __forceinline__
#else
#define DGNERF_HD inline
#endif

namespace dgnerf {

// ---------------------------------------------------------------------------------------------
// Counter-based random numbers: the same (seed, index) gives the same value on CPU, CUDA and the
// pure-PyTorch twin (dgnerf/ops/reference.py implements the identical integer hash).
// ---------------------------------------------------------------------------------------------
DGNERF_HD uint32_t hash_u32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Uniform in [0, 1) with 24 random bits (exact in float32 and float64).
template <typename T>
DGNERF_HD T uniform01(int64_t seed, int64_t index) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t i = static_cast<uint64_t>(index);
  uint32_t h = hash_u32(static_cast<uint32_t>(s) ^ hash_u32(static_cast<uint32_t>(s >> 32) ^ 0x9e3779b9U));
  h = hash_u32(static_cast<uint32_t>(i >> 32) ^ h);
  h = hash_u32(static_cast<uint32_t>(i) ^ h);
  return static_cast<T>(h >> 8) * static_cast<T>(1.0 / 16777216.0);
}

// ---------------------------------------------------------------------------------------------
// Ray sampling. Camera convention (OpenCV): x right, y down, z forward; pixel (u, v) has its centre
// at (u + 0.5, v + 0.5). c2w is row-major [3, 4] = [R | o].
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Ray {
  T ox, oy, oz, dx, dy, dz;
};

template <typename T>
DGNERF_HD Ray<T> pixel_ray(const T* c2w, T fx, T fy, T cx, T cy, int64_t u, int64_t v) {
  const T xc = (static_cast<T>(u) + T(0.5) - cx) / fx;
  const T yc = (static_cast<T>(v) + T(0.5) - cy) / fy;
  // d = R [xc, yc, 1]
  T dx = c2w[0] * xc + c2w[1] * yc + c2w[2];
  T dy = c2w[4] * xc + c2w[5] * yc + c2w[6];
  T dz = c2w[8] * xc + c2w[9] * yc + c2w[10];
  const T inv = T(1) / sqrt(dx * dx + dy * dy + dz * dz);
  Ray<T> r;
  r.ox = c2w[3];
  r.oy = c2w[7];
  r.oz = c2w[11];
  r.dx = dx * inv;
  r.dy = dy * inv;
  r.dz = dz * inv;
  return r;
}

// [near, far] clipped to the sphere |x| <= radius (radius <= 0: no clipping). A ray that misses the
// sphere (or whose clipped interval is empty) keeps [near, far].
template <typename T>
DGNERF_HD void ray_bounds(const Ray<T>& r, T near_, T far_, T radius, T* tn, T* tf) {
  *tn = near_;
  *tf = far_;
  if (radius > T(0)) {
    const T b = r.ox * r.dx + r.oy * r.dy + r.oz * r.dz;
    const T c = r.ox * r.ox + r.oy * r.oy + r.oz * r.oz - radius * radius;
    const T disc = b * b - c;
    if (disc > T(0)) {
      const T sq = sqrt(disc);
      const T a0 = (-b - sq) > near_ ? (-b - sq) : near_;
      const T a1 = (-b + sq) < far_ ? (-b + sq) : far_;
      if (a1 > a0) {
        *tn = a0;
        *tf = a1;
      }
    }
  }
}

// Depth of sample i of S in [tn, tf]: bin i, at offset u in [0, 1) (0.5 = midpoint).
template <typename T>
DGNERF_HD T sample_depth(T tn, T tf, int64_t i, int64_t S, T u) {
  const T step = (tf - tn) / static_cast<T>(S);
  return tn + (static_cast<T>(i) + u) * step;
}

// delta_i = t_{i+1} - t_i; the last sample gets tf - t_{S-1} + (t_0 - tn), so the deltas sum to
// tf - tn exactly (midpoints: every delta equals the bin width).
template <typename T>
DGNERF_HD T sample_delta(const T* t, int64_t i, int64_t S, T tn, T tf) {
  return (i + 1 < S) ? (t[i + 1] - t[i]) : (tf - t[S - 1] + (t[0] - tn));
}

// ---------------------------------------------------------------------------------------------
// Volume integration (docs/design.md, "The model"). tau_i = sigma_i delta_i; T_i = exp(-sum_{j<i} tau_j) (log space);
// alpha_i = 1 - exp(-tau_i); w_i = T_i alpha_i = T_i - T_{i+1}. A sample whose T_i < threshold is
// cut, together with every later one (exact at threshold 0, since T >= 0).
// Backward, with v_i = g_I . (F_i - F_bg) + g_O + g_D t_i (no division by 1 - alpha):
//   dL/dtau_k = T_{k+1} v_k - sum_{i > k, i < cut} w_i v_i
// ---------------------------------------------------------------------------------------------
// Weights of one ray. Writes w[i] and Tnext[i] = T_{i+1} (if Tnext is not null) for the kept
// samples, zeros for the cut ones, and returns the number of kept samples ("cut"). *T_end receives
// the transmittance left after the kept samples, 1 - sum_i w_i, computed without cancellation (the
// background's weight: for nearly opaque rays 1 - sum w in float32 would be mostly rounding error).
template <typename T>
DGNERF_HD int64_t ray_weights(const T* sigma, const T* delta, int64_t S, T threshold, T* w, T* Tnext, T* T_end) {
  T logT = T(0);  // log T_i: the running sum stays in log space, never a product of (1 - alpha)
  int64_t i = 0;
  for (; i < S; ++i) {
    const T Ti = exp(logT);
    if (Ti < threshold) break;
    const T tau = sigma[i] * delta[i];
    logT -= tau;
    w[i] = Ti * (-expm1(-tau));  // T_i alpha_i, accurate for small tau
    if (Tnext) Tnext[i] = exp(logT);
  }
  *T_end = exp(logT);
  for (int64_t k = i; k < S; ++k) {
    w[k] = T(0);
    if (Tnext) Tnext[k] = T(0);
  }
  return i;
}

// Gradients of one ray's tau = sigma * delta, given v_i = dL/dw_i (see above):
//   dL/dtau_k = T_{k+1} v_k - sum_{k < i < cut} w_i v_i;  dL/dsigma = dL/dtau delta, dL/ddelta = dL/dtau sigma.
template <typename T>
DGNERF_HD void ray_tau_grads(const T* w, const T* Tnext, const T* v, const T* sigma, const T* delta, int64_t cut,
                             int64_t S, T* g_sigma, T* g_delta) {
  T suffix = T(0);
  for (int64_t k = S - 1; k >= 0; --k) {
    if (k >= cut) {
      g_sigma[k] = T(0);
      g_delta[k] = T(0);
      continue;
    }
    const T g_tau = Tnext[k] * v[k] - suffix;
    suffix += w[k] * v[k];
    g_sigma[k] = g_tau * delta[k];
    g_delta[k] = g_tau * sigma[k];
  }
}

}  // namespace dgnerf
