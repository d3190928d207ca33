// quant/kernels/api.hpp: the front end: quantize, dequantize and gemv.
//
// Each function validates every argument first (shapes, buffer sizes, non-finite weights,
// options) and throws quant::error naming the argument and the values, so nothing is written
// to the caller's output when the input is rejected. Then it runs the kernel chosen at compile
// time from the format and granularity; today that is the scalar reference
// (kernels/reference/), which stays the oracle when SIMD kernels take over.
//
//   auto t = quant::quantize<quant::int4, quant::per_group<128>>({w.data(), rows, cols});
//   quant::gemv(t, x, y);                // exact: fp32 activations
//   quant::gemv(t, x, y, quant::fast);   // int8 activations per block of 32, integer dots
#pragma once

#include <cmath>
#include <cstddef>
#include <span>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../scheme/fit.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"
#include "reference/gemv.hpp"
#include "reference/quantize.hpp"

QUANT_NAMESPACE_BEGIN

/// GEMV mode tags: exact (fp32 activations) is the default; fast quantizes activations to int8.
struct exact_t {
  explicit exact_t() = default;
};
struct fast_t {
  explicit fast_t() = default;
};
inline constexpr exact_t exact{};
inline constexpr fast_t fast{};

namespace detail {

inline void check_not_empty(matrix_view<const float> w, const char* who) {
  if (w.empty()) fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
}

inline void check_finite(matrix_view<const float> w, const char* who) {
  for (std::size_t r = 0; r < w.rows(); ++r)
    for (std::size_t c = 0; c < w.cols(); ++c)
      if (!std::isfinite(w(r, c))) fail(who, ": w(", r, ", ", c, ") = ", w(r, c), "; weights must be finite");
}

template <class F, class Gran>
void check_tensor(const tensor_view<F, Gran>& t, const char* who, const char* arg) {
  if (t.rows() == 0 || t.cols() == 0) fail(who, ": ", arg, " is empty (", t.rows(), " x ", t.cols(), ")");
}

inline void check_same_shape(std::size_t tr, std::size_t tc, std::size_t r, std::size_t c, const char* who,
                             const char* ta, const char* a) {
  if (tr != r || tc != c) fail(who, ": ", ta, " is ", tr, " x ", tc, " but ", a, " is ", r, " x ", c);
}

template <class F, class Gran>
void check_gemv(const tensor_view<F, Gran>& t, std::span<const float> x, std::span<float> y) {
  check_tensor(t, "quant::gemv", "w");
  if (x.size() != t.cols()) fail("quant::gemv: x has ", x.size(), " elements, expected cols = ", t.cols());
  if (y.size() != t.rows()) fail("quant::gemv: y has ", y.size(), " elements, expected rows = ", t.rows());
  const auto* xb = x.data();
  const auto* yb = y.data();
  if (xb < yb + y.size() && yb < xb + x.size()) fail("quant::gemv: y overlaps x; y = W x needs separate buffers");
}

}  // namespace detail

/// Round-to-nearest quantization of w into the caller's view out (same shape).
template <class F, class Gran>
void quantize(matrix_view<const float> w, tensor_view<F, Gran> out, const quantize_options& options = {}) {
  static_assert(!std::is_const_v<F>, "quant::quantize: out must be a mutable view (tensor_view<F, Gran>, F not const)");
  const char* who = "quant::quantize";
  detail::check_not_empty(w, who);
  detail::check_tensor(out, who, "out");
  detail::check_same_shape(w.rows(), w.cols(), out.rows(), out.cols(), who, "w", "out");
  detail::check_options(options, who);
  detail::check_finite(w, who);
  reference::quantize(w, out, options);
}

/// Round-to-nearest quantization of w into an owning tensor whose granularity is gran.
template <class F, class Gran>
tensor<F, Gran> quantize(matrix_view<const float> w, const Gran& gran, const quantize_options& options = {}) {
  detail::check_not_empty(w, "quant::quantize");
  tensor<F, Gran> t(w.rows(), w.cols(), gran);
  quantize(w, t.view(), options);
  return t;
}

/// Round-to-nearest quantization of w into an owning tensor (a static granularity).
template <class F, class Gran>
tensor<F, Gran> quantize(matrix_view<const float> w, const quantize_options& options = {}) {
  return quantize<F, Gran>(w, Gran{}, options);
}

/// Writes the dequantized weights of t into out (same shape; out may have a row stride).
template <class F, class Gran>
void dequantize(tensor_view<F, Gran> t, matrix_view<float> out) {
  detail::check_tensor(t, "quant::dequantize", "t");
  detail::check_same_shape(t.rows(), t.cols(), out.rows(), out.cols(), "quant::dequantize", "t", "out");
  reference::dequantize(t, out);
}
template <class F, class Gran>
void dequantize(const tensor<F, Gran>& t, matrix_view<float> out) {
  dequantize(t.cview(), out);
}

/// y = W x with fp32 activations (the exact mode).
template <class F, class Gran>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, exact_t = exact) {
  detail::check_gemv(w, x, y);
  reference::gemv(w, x, y);
}
/// y = W x with activations quantized to int8 per block of fast_block_size (the fast mode).
template <class F, class Gran>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, fast_t) {
  detail::check_gemv(w, x, y);
  reference::gemv_fast(w, x, y);
}
template <class F, class Gran, class Mode = exact_t>
  requires(std::is_same_v<Mode, exact_t> || std::is_same_v<Mode, fast_t>)
void gemv(const tensor<F, Gran>& w, std::span<const float> x, std::span<float> y, Mode mode = Mode{}) {
  gemv(w.cview(), x, y, mode);
}

QUANT_NAMESPACE_END
