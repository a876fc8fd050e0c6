// Multiresolution hash-grid encoding (Instant-NGP style): the formulas shared by the CPU and CUDA
// kernels, and the host-side checks. The pure-PyTorch twin (dgnerf/ops/reference.py,
// hash_encode_reference) reproduces every step below in the same arithmetic, so the kernels and the
// twin pick the same cells, corners and table entries.
//
//   x [N,3] in the box [lo, hi], table [L,T,F] -> out [N, L*F], out[n, l*F + f] (level-major)
//
// Level l has resolution N_l = floor(base * b^l), b = exp((ln finest - ln base) / (L - 1)) (b = 1 when
// L = 1), computed in double on the host. Its grid has (N_l + 1)^3 vertices. A point's position in
// level l is p = (x - lo) * s_l per axis with s_l = N_l / (hi - lo) (s_l rounded once to the
// scalar type): p runs over [0, N_l] inside the box. Outside it p is clamped into [0, N_l], so the
// border value extends outward, and the gradient to x is zero along a clamped axis; a NaN coordinate
// is clamped to 0 (so even unchecked NaN input never reads out of bounds). The cell is
// c = min(floor(p), N_l - 1) (p = N_l lies in the last cell, at weight 1 on its far corner), the
// fraction w = p - c in [0, 1]; the 8 corners c + (i & 1, i >> 1 & 1, i >> 2 & 1), i = 0..7, are
// weighted trilinearly and summed in the order of i.
//
// Vertex (vx, vy, vz) of level l maps to the table row
//   dense  ((N_l + 1)^3 <= T):  vx + vy (N_l + 1) + vz (N_l + 1)^2
//   hashed (otherwise):        (vx * 1 ^ vy * 2654435761 ^ vz * 805459861) mod T
// the hash in uint32 arithmetic (products wrap modulo 2^32; the twin masks int64 products with
// 0xFFFFFFFF). Every coordinate is <= N_l <= 2^20, so both forms stay exact.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "dgnerf/checks.h"
#include "dgnerf/math.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DGNERF_UNROLL _Pragma("unroll")
#else
#define DGNERF_UNROLL _Pragma("GCC unroll 8")
#endif

namespace dgnerf {

constexpr int64_t kHashMaxLevels = 64;
constexpr int64_t kHashMaxResolution = int64_t(1) << 20;
constexpr int64_t kHashMaxTableSize = int64_t(1) << 31;
constexpr uint32_t kHashPrimeY = 2654435761u;
constexpr uint32_t kHashPrimeZ = 805459861u;

// floor(base * b^l). The product can land a rounding error below an integer (2047.9999999 for 2048),
// so a value within 1e-9 relative of the next integer counts as that integer: the finest level is
// exactly finest_resolution. In double; the kernels get it from the host (hash_grid_params), where it
// calls the same libm as the twin (hash_grid_resolutions, the same code in Python).
DGNERF_HD int64_t hash_level_resolution(int64_t level, int64_t n_levels, int64_t base, int64_t finest) {
  if (n_levels <= 1 || level == 0) return base;
  const double b = exp((log(static_cast<double>(finest)) - log(static_cast<double>(base))) /
                       static_cast<double>(n_levels - 1));
  const double v = static_cast<double>(base) * pow(b, static_cast<double>(level));
  return static_cast<int64_t>(floor(v * (1.0 + 1e-9)));
}

DGNERF_HD bool hash_level_dense(int64_t resolution, int64_t table_size) {
  const int64_t side = resolution + 1;
  return side * side * side <= table_size;  // side <= 2^20 + 1: no int64 overflow
}

// x mod d for any uint32 x and d >= 1 without a division (Lemire, Kaser & Kurz, "Faster remainder by
// direct computation", 2019: exact for 32-bit operands), magic = floor((2^64 - 1) / d) + 1 (mod 2^64).
// The hashed rows need one remainder per corner, and a hardware division costs more than the rest of
// the corner's arithmetic together.
DGNERF_HD uint32_t fastmod_u32(uint32_t x, uint64_t magic, uint32_t d) {
  const uint64_t low = magic * x;
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__umul64hi(low, d));
#else
  return static_cast<uint32_t>((static_cast<unsigned __int128>(low) * d) >> 64);
#endif
}

// Per-level constants, computed once on the host (hash_grid_params) and passed by value to the kernels.
template <typename scalar_t>
struct HashLevel {
  scalar_t scale[3];   // s_l = N_l / (hi - lo) per axis
  scalar_t res;        // N_l as a scalar, the upper clamp of p
  int32_t max_cell;    // N_l - 1
  uint32_t side;       // N_l + 1 for a dense level, 0 for a hashed one
};

template <typename scalar_t>
struct HashGrid {
  HashLevel<scalar_t> level[kHashMaxLevels];
  scalar_t lo[3];
  uint64_t mod_magic;   // for fastmod_u32(., ., table_size)
  uint32_t table_size;
  uint32_t table_mask;  // table_size - 1 when table_size is a power of two (then h mod T = h & mask)
  bool table_pow2;
  int32_t n_levels;
};

// One point in one level: the 8 table rows, their trilinear weights, and (for the x gradient) the
// fractions w, the clamp flags and the level's scale. Weight of corner i:
//   prod_d (bit_d(i) ? w_d : 1 - w_d), multiplied x, then y, then z.
template <typename scalar_t>
struct HashCorners {
  uint32_t row[8];
  scalar_t weight[8];
  scalar_t frac[3];
  bool inside[3];  // p_d was inside [0, N_l]: x_d receives a gradient
};

template <typename scalar_t>
DGNERF_HD void hash_corners(const HashGrid<scalar_t>& g, const HashLevel<scalar_t>& lv, const scalar_t* x,
                            HashCorners<scalar_t>* c) {
  uint32_t cell[3];
DGNERF_UNROLL
  for (int d = 0; d < 3; ++d) {
    scalar_t p = (x[d] - g.lo[d]) * lv.scale[d];
    const bool ge0 = p >= scalar_t(0);  // false for NaN as well
    const bool le = p <= lv.res;
    c->inside[d] = ge0 && le;
    if (!ge0) p = scalar_t(0);
    else if (!le) p = lv.res;
    int32_t ci = static_cast<int32_t>(p);  // p >= 0 here: truncation is floor
    if (ci > lv.max_cell) ci = lv.max_cell;
    cell[d] = static_cast<uint32_t>(ci);
    c->frac[d] = p - static_cast<scalar_t>(ci);
  }
  const scalar_t wx[2] = {scalar_t(1) - c->frac[0], c->frac[0]};
  const scalar_t wy[2] = {scalar_t(1) - c->frac[1], c->frac[1]};
  const scalar_t wz[2] = {scalar_t(1) - c->frac[2], c->frac[2]};
  // Both row formulas combine one term per axis (a sum when dense, a xor when hashed), so the 8 corners
  // share 6 terms; (v + 1) * P = v * P + P holds in uint32 arithmetic too.
  const bool dense = lv.side != 0;
  const uint32_t my = dense ? lv.side : kHashPrimeY;
  const uint32_t mz = dense ? lv.side * lv.side : kHashPrimeZ;  // side^2 < 2^22 when dense
  const uint32_t tx[2] = {cell[0], cell[0] + 1u};
  const uint32_t ty[2] = {cell[1] * my, cell[1] * my + my};
  const uint32_t tz[2] = {cell[2] * mz, cell[2] * mz + mz};
DGNERF_UNROLL
  for (int i = 0; i < 8; ++i) {
    const uint32_t bx = i & 1, by = (i >> 1) & 1, bz = (i >> 2) & 1;
    if (dense) {
      c->row[i] = tx[bx] + ty[by] + tz[bz];  // <= (N_l + 1)^3 - 1 < T
    } else {
      const uint32_t h = tx[bx] ^ ty[by] ^ tz[bz];
      c->row[i] = g.table_pow2 ? (h & g.table_mask) : fastmod_u32(h, g.mod_magic, g.table_size);
    }
    c->weight[i] = wx[bx] * wy[by] * wz[bz];
  }
}

// d weight_i / d p_d for the three axes.
template <typename scalar_t>
DGNERF_HD void hash_weight_grads(const HashCorners<scalar_t>& c, int i, scalar_t* dw) {
  const uint32_t bx = i & 1, by = (i >> 1) & 1, bz = (i >> 2) & 1;
  const scalar_t wx = bx ? c.frac[0] : scalar_t(1) - c.frac[0];
  const scalar_t wy = by ? c.frac[1] : scalar_t(1) - c.frac[1];
  const scalar_t wz = bz ? c.frac[2] : scalar_t(1) - c.frac[2];
  dw[0] = (bx ? scalar_t(1) : scalar_t(-1)) * wy * wz;
  dw[1] = (by ? scalar_t(1) : scalar_t(-1)) * wx * wz;
  dw[2] = (bz ? scalar_t(1) : scalar_t(-1)) * wx * wy;
}

// ---------------------------------------------------------------------------------------------
// Host side: checks and the per-level constants.
// ---------------------------------------------------------------------------------------------
inline void check_hash_inputs(const at::Tensor& x, const at::Tensor& table, at::ArrayRef<double> bbox_min,
                              at::ArrayRef<double> bbox_max, int64_t base, int64_t finest, const char* op) {
  check_defined(x, op, "x");
  check_defined(table, op, "table");
  const auto st = table.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, op, ": argument 'table' expected float32 or float64, got ", st);
  check_same_dtype(x, table, op, "x", "table");
  check_same_device(x, table, op, "x", "table");
  check_shape(x, {-1, 3}, op, "x", "[points, 3]");
  check_shape(table, {-1, -1, -1}, op, "table", "[levels, table_size, features]");
  check_contiguous(x, op, "x");
  check_contiguous(table, op, "table");
  const int64_t L = table.size(0), T = table.size(1), F = table.size(2);
  TORCH_CHECK(L >= 1 && L <= kHashMaxLevels, op, ": argument 'table' expected 1..", kHashMaxLevels,
              " levels (dim 0), got ", L);
  TORCH_CHECK(T >= 1 && T <= kHashMaxTableSize, op, ": argument 'table' expected a table size (dim 1) in [1, 2^31], got ",
              T);
  TORCH_CHECK(F >= 1, op, ": argument 'table' expected at least one feature (dim 2), got ", F);
  TORCH_CHECK(base >= 1 && base <= kHashMaxResolution, op, ": argument 'base_resolution' expected an int in [1, 2^20], got ",
              base);
  TORCH_CHECK(finest >= base && finest <= kHashMaxResolution, op,
              ": argument 'finest_resolution' expected an int in [base_resolution (", base, "), 2^20], got ", finest);
  TORCH_CHECK(bbox_min.size() == 3, op, ": argument 'bbox_min' expected 3 values, got ", bbox_min.size());
  TORCH_CHECK(bbox_max.size() == 3, op, ": argument 'bbox_max' expected 3 values, got ", bbox_max.size());
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(std::isfinite(bbox_min[d]) && std::isfinite(bbox_max[d]) && bbox_max[d] > bbox_min[d], op,
                ": argument 'bbox_max' expected finite values above 'bbox_min' on every axis, got axis ", d, ": [",
                bbox_min[d], ", ", bbox_max[d], "]");
  }
}

inline void check_hash_grad(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const char* op) {
  check_defined(grad_out, op, "grad_out");
  check_same_device(grad_out, table, op, "grad_out", "table");
  const at::ScalarType gt = grad_out.scalar_type(), st = table.scalar_type();
  TORCH_CHECK(gt == st || (st == at::kFloat && (gt == at::kHalf || gt == at::kBFloat16)), op,
              ": argument 'grad_out' expected the table's dtype (", st,
              ") or float16/bfloat16 with a float32 table, got ", gt);
  check_shape(grad_out, {x.size(0), table.size(0) * table.size(2)}, op, "grad_out", "[points, levels * features]");
  check_contiguous(grad_out, op, "grad_out");
}

template <typename scalar_t>
HashGrid<scalar_t> hash_grid_params(int64_t L, int64_t T, at::ArrayRef<double> bbox_min, at::ArrayRef<double> bbox_max,
                                    int64_t base, int64_t finest) {
  HashGrid<scalar_t> g{};
  g.table_size = static_cast<uint32_t>(T);
  g.table_pow2 = (T & (T - 1)) == 0;
  g.table_mask = g.table_pow2 ? static_cast<uint32_t>(T - 1) : 0u;
  g.mod_magic = ~uint64_t(0) / static_cast<uint64_t>(T) + 1;  // wraps to 0 for T = 1: x mod 1 = 0
  g.n_levels = static_cast<int32_t>(L);
  for (int d = 0; d < 3; ++d) g.lo[d] = static_cast<scalar_t>(bbox_min[d]);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t n = hash_level_resolution(l, L, base, finest);
    HashLevel<scalar_t>& lv = g.level[l];
    for (int d = 0; d < 3; ++d) lv.scale[d] = static_cast<scalar_t>(static_cast<double>(n) / (bbox_max[d] - bbox_min[d]));
    lv.res = static_cast<scalar_t>(n);
    lv.max_cell = static_cast<int32_t>(n - 1);
    lv.side = hash_level_dense(n, T) ? static_cast<uint32_t>(n + 1) : 0u;
  }
  return g;
}

inline at::ScalarType hash_out_dtype(const at::Tensor& table, std::optional<at::ScalarType> out_dtype, const char* op) {
  const at::ScalarType st = table.scalar_type();
  if (!out_dtype.has_value() || *out_dtype == st) return st;
  const at::ScalarType o = *out_dtype;
  TORCH_CHECK(st == at::kFloat && (o == at::kHalf || o == at::kBFloat16), op,
              ": argument 'out_dtype' expected None, the table's dtype (", st,
              "), or float16/bfloat16 with a float32 table, got ", o);
  return o;
}

// Calls fn(scalar_t{}, io_t{}, std::integral_constant<int, FC>{}) for the table's scalar type, the
// output's (forward) or incoming gradient's (backward) type io_t, and the feature count: FC = F for
// the common counts (the per-corner feature loop unrolls), FC = 0 (runtime F) otherwise.
template <typename Fn>
void hash_dispatch(at::ScalarType table_t, at::ScalarType io_t, int64_t F, const char* op, Fn&& fn) {
  auto by_f = [&](auto s, auto o) {
    if (F == 2) fn(s, o, std::integral_constant<int, 2>{});
    else if (F == 4) fn(s, o, std::integral_constant<int, 4>{});
    else if (F == 8) fn(s, o, std::integral_constant<int, 8>{});
    else fn(s, o, std::integral_constant<int, 0>{});
  };
  if (table_t == at::kDouble && io_t == at::kDouble) by_f(double{}, double{});
  else if (table_t == at::kFloat && io_t == at::kFloat) by_f(float{}, float{});
  else if (table_t == at::kFloat && io_t == at::kHalf) by_f(float{}, at::Half{});
  else if (table_t == at::kFloat && io_t == at::kBFloat16) by_f(float{}, at::BFloat16{});
  else TORCH_CHECK(false, op, ": unsupported dtype pair (table ", table_t, ", output/gradient ", io_t, ")");
}

}  // namespace dgnerf
