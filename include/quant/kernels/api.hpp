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
#include <algorithm>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../scheme/fit.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"
#include "reference/gemv.hpp"
#include "reference/quantize.hpp"
#include "isa.hpp"
#include "simd/dequantize.hpp"
#include "simd/gemv.hpp"
#include "threading.hpp"

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

/// A range of rows [begin, end) for the kernels that can run on part of a matrix.
struct row_range {
  std::size_t begin = 0, end = 0;
};

namespace detail {

template <class F, class Gran>
gemv_problem problem_of(const tensor_view<F, Gran>& t) noexcept {
  return {t.codes().data(), t.requirements().row_bytes, t.scales().data(), t.zeros().data(), t.grid()};
}

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

/// Writes rows [rows.begin, rows.end) of the dequantized t into the same rows of out (same
/// shape as t; out may have a row stride); other rows of out are not touched.
template <class F, class Gran>
void dequantize(tensor_view<F, Gran> t, matrix_view<float> out, row_range rows) {
  detail::check_tensor(t, "quant::dequantize", "t");
  detail::check_same_shape(t.rows(), t.cols(), out.rows(), out.cols(), "quant::dequantize", "t", "out");
  if (rows.begin > rows.end || rows.end > t.rows())
    detail::fail("quant::dequantize: row range [", rows.begin, ", ", rows.end, ") is not inside [0, ", t.rows(), ")");
  detail::dequantize_kernel<std::remove_const_t<F>, Gran::is_asymmetric, typename Gran::scale_type, default_isa>::rows(
      detail::problem_of(t), out.data(), out.ld(), rows.begin, rows.end);
}
/// Writes the dequantized weights of t into out (same shape; out may have a row stride).
template <class F, class Gran>
void dequantize(tensor_view<F, Gran> t, matrix_view<float> out) {
  dequantize(t, out, row_range{0, t.rows()});
}
template <class F, class Gran>
void dequantize(const tensor<F, Gran>& t, matrix_view<float> out, row_range rows) {
  dequantize(t.cview(), out, rows);
}
template <class F, class Gran>
void dequantize(const tensor<F, Gran>& t, matrix_view<float> out) {
  dequantize(t.cview(), out);
}

/// Which kernel a GEMV call runs: the ISA tier, the path (kernels/simd/gemv.hpp) and whether the
/// fast mode runs as integer dot products.
struct gemv_kernel_info {
  isa tier = isa::generic;
  gemv_path_kind path = gemv_path_kind::generic;
  bool integer = false;
};

namespace detail {

template <class Mode>
inline constexpr bool is_gemv_mode_v = std::is_same_v<Mode, exact_t> || std::is_same_v<Mode, fast_t>;

template <class F, class Gran, class Mode, class Isa = default_isa>
using gemv_kernel_for = gemv_kernel<std::remove_const_t<F>, Gran::is_asymmetric, typename Gran::scale_type, Isa,
                                    std::is_same_v<Mode, fast_t>>;

/// An aligned heap workspace for the overloads that allocate.
struct heap_workspace {
  explicit heap_workspace(std::size_t n)
      : p(static_cast<std::byte*>(::operator new(n ? n : 1, std::align_val_t{64}))) {}
  ~heap_workspace() { ::operator delete(p, std::align_val_t{64}); }
  heap_workspace(const heap_workspace&) = delete;
  heap_workspace& operator=(const heap_workspace&) = delete;
  std::byte* p;
};

inline void check_workspace(std::span<std::byte> ws, std::size_t need) {
  if (ws.size() < need) fail("quant::gemv: workspace has ", ws.size(), " bytes, needs ", need);
  if (reinterpret_cast<std::uintptr_t>(ws.data()) % 64 != 0)
    fail("quant::gemv: workspace is not aligned to 64 bytes");
}

inline void check_rows(row_range rr, std::size_t rows) {
  if (rr.begin > rr.end || rr.end > rows)
    fail("quant::gemv: row range [", rr.begin, ", ", rr.end, ") is not inside [0, ", rows, ")");
}

}  // namespace detail

/// The tier the header-only kernels of this translation unit run on ("avx512_vnni", "avx2", ...).
constexpr std::string_view active_isa_name() noexcept { return isa_name(default_isa::id); }

/// The kernel quant::gemv(w, x, y, mode) runs for this tensor.
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
gemv_kernel_info gemv_kernel(tensor_view<F, Gran> w, Mode = Mode{}) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  const gemv_path_kind p = K::path_for(w.grid());
  return {default_isa::id, p, K::integer_fast(p, w.grid())};
}

/// Bytes of workspace quant::gemv(w, x, y, mode, workspace) needs for this tensor (O(cols)).
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
std::size_t gemv_workspace_size(tensor_view<F, Gran> w, Mode = Mode{}) {
  detail::check_tensor(w, "quant::gemv_workspace_size", "w");
  return detail::gemv_kernel_for<F, Gran, Mode>::workspace_bytes(w.grid());
}

/// y = W x without allocating: workspace is 64-byte aligned, gemv_workspace_size(w, mode) bytes.
/// exact (the default) uses fp32 activations; fast quantizes them to int8 per block of 32.
template <class F, class Gran, class Mode>
  requires detail::is_gemv_mode_v<Mode>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, std::span<std::byte> workspace) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  detail::check_workspace(workspace, K::workspace_bytes(w.grid()));
  const detail::gemv_prepared p = K::prepare(w.grid(), x.data(), workspace.data());
  K::rows(detail::problem_of(w), p, y.data(), 0, w.rows());
}

/// y = W x (rows of y outside `rows` are not touched): one range of a caller's own partition.
template <class F, class Gran, class Mode>
  requires detail::is_gemv_mode_v<Mode>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, row_range rows) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  detail::check_rows(rows, w.rows());
  detail::heap_workspace ws(K::workspace_bytes(w.grid()));
  const detail::gemv_prepared p = K::prepare(w.grid(), x.data(), ws.p);
  K::rows(detail::problem_of(w), p, y.data(), rows.begin, rows.end);
}

/// y = W x on an executor: x is prepared once, then exec(n, task) runs the row ranges.
template <class F, class Gran, class Mode, class Exec>
  requires(detail::is_gemv_mode_v<Mode> && executor<std::remove_reference_t<Exec>>)
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, Exec&& exec) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  detail::heap_workspace ws(K::workspace_bytes(w.grid()));
  const detail::gemv_prepared p = K::prepare(w.grid(), x.data(), ws.p);
  const detail::gemv_problem m = detail::problem_of(w);
  const std::size_t rows = w.rows();
  // Enough ranges to balance the load, each at least 8 rows and 32K weights.
  const std::size_t min_rows = std::max<std::size_t>(8, 32768 / w.cols());
  const std::size_t tasks = std::clamp<std::size_t>(rows / min_rows, 1, 64);
  exec(tasks, [&](std::size_t i) {
    const auto [r0, r1] = detail::split_rows(rows, tasks, i);
    K::rows(m, p, y.data(), r0, r1);
  });
}

/// y = W x with fp32 activations (the exact mode).
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode mode = Mode{}) {
  gemv(w, x, y, mode, row_range{0, w.rows()});
}

template <class F, class Gran, class... Args>
void gemv(const tensor<F, Gran>& w, std::span<const float> x, std::span<float> y, Args&&... args) {
  gemv(w.cview(), x, y, std::forward<Args>(args)...);
}
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
gemv_kernel_info gemv_kernel(const tensor<F, Gran>& w, Mode mode = Mode{}) {
  return gemv_kernel(w.cview(), mode);
}
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
std::size_t gemv_workspace_size(const tensor<F, Gran>& w, Mode mode = Mode{}) {
  return gemv_workspace_size(w.cview(), mode);
}

QUANT_NAMESPACE_END
