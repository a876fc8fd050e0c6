// Argument checks shared by every op. Each message names the op, the argument, what was expected
// and what was given, so a user never has to read a backtrace to find the bad input.
#pragma once
#include <ATen/ATen.h>
#include <sstream>
#include <string>
#include <vector>

namespace dgnerf {

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": argument '", name, "' is undefined (expected a tensor)");
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": argument '", name, "' expected a floating dtype (float32, float64, float16, bfloat16), got ",
              st);
  if (t.device().is_cpu()) {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble, op, ": argument '", name,
                "' expected float32 or float64 on CPU, got ", st);
  }
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' expected dtype ",
              ref.scalar_type(), " (the dtype of '", ref_name, "'), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", name, "' expected device ", ref.device(),
              " (the device of '", ref_name, "'), got ", t.device());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": argument '", name,
              "' must be contiguous (call .contiguous() first); got strides ", shape_str(t.strides()),
              " for shape ", shape_str(t.sizes()));
}

// Expected shape with -1 as "any size".
inline void check_shape(const at::Tensor& t, std::vector<int64_t> expected, const char* op, const char* name,
                        const char* meaning) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || t.size(i) == expected[i];
  if (!ok) {
    std::ostringstream o;
    o << "[";
    for (size_t i = 0; i < expected.size(); ++i) {
      o << (i ? ", " : "");
      if (expected[i] < 0) o << "*"; else o << expected[i];
    }
    o << "]";
    TORCH_CHECK(false, op, ": argument '", name, "' expected shape ", o.str(), " ", meaning, ", got ",
                shape_str(t.sizes()));
  }
}

inline void check_nonempty(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.numel() > 0, op, ": argument '", name, "' is empty (shape ", shape_str(t.sizes()),
              "); expected at least one element");
}

}  // namespace dgnerf
