// quant/kernels/api.hpp: the front end: quantize, dequantize and gemv.
//
// Each function validates every argument first (shapes, buffer sizes, non-finite weights,
// options) and throws quant::error naming the argument and the values, so nothing is written
// to the caller's output when the input is rejected. Then it runs the kernel chosen at compile
// time from the format, granularity and ISA tier (kernels/simd/: quantize bit-identical to
// the scalar reference in kernels/reference/, which stays the oracle the tests compare with).
//
//   auto t = quant::quantize<quant::int4, quant::per_group<128>>({w.data(), rows, cols});
//   quant::gemv(t, x, y);                // exact: fp32 activations
//   quant::gemv(t, x, y, quant::fast);   // int8 activations per block of 32, integer dots
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../formats/integer.hpp"
#include "../formats/lut.hpp"
#include "../formats/minifloat.hpp"
#include "../scheme/fit.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"
#include "reference/gemv.hpp"
#include "reference/quantize.hpp"
#include "isa.hpp"
#include "simd/dequantize.hpp"
#include "simd/gemv.hpp"
#include "simd/quantize.hpp"
#include "threading.hpp"
#include "dispatch/abi.hpp"

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


/// True when this translation unit routes built-in formats through the runtime-dispatch
/// library (QUANT_RUNTIME_DISPATCH, set by quant_add_dispatch_library()).
#if defined(QUANT_RUNTIME_DISPATCH) && !defined(QUANT_ABI_TAG)
inline constexpr bool runtime_dispatch = true;
#else
inline constexpr bool runtime_dispatch = false;
#endif

template <class F>
inline constexpr bool is_builtin_format_v =
    std::is_same_v<F, int8> || std::is_same_v<F, int4> || std::is_same_v<F, int3> || std::is_same_v<F, int2> ||
    std::is_same_v<F, nf4> || std::is_same_v<F, fp8_e4m3> || std::is_same_v<F, fp8_e5m2> ||
    std::is_same_v<F, fp4_e2m1>;

/// The dispatch library's call for rows [r0, r1) of t (built-in formats only).
template <class F, class Gran>
quant_dispatch_v0::call dispatch_call(const tensor_view<F, Gran>& t, std::size_t r0, std::size_t r1) noexcept {
  using S = typename Gran::scale_type;
  quant_dispatch_v0::call c;
  c.format_id = format_traits<std::remove_const_t<F>>::id;
  c.asymmetric = Gran::is_asymmetric;
  c.scales_type = std::is_same_v<S, float>  ? quant_dispatch_v0::scale_kind::f32
                  : std::is_same_v<S, fp16> ? quant_dispatch_v0::scale_kind::f16
                  : std::is_same_v<S, bf16> ? quant_dispatch_v0::scale_kind::bf16
                                            : quant_dispatch_v0::scale_kind::e8m0;
  c.codes = t.codes().data();
  c.row_bytes = t.requirements().row_bytes;
  c.scales = t.scales().data();
  c.zeros = t.zeros().data();
  const scale_grid& g = t.grid();
  c.rows = g.rows, c.cols = g.cols, c.group = g.group, c.groups_per_row = g.groups_per_row, c.single = g.single;
  c.r0 = r0, c.r1 = r1;
  return c;
}

/// Runs a GEMV (y) or dequantize (out, ld) through the dispatch library; false when this build
/// does not dispatch or the format is not a built-in one.
template <class F, class Gran>
bool try_dispatch(const tensor_view<F, Gran>& t, bool gemv_call, bool fast_mode, const float* x, float* out,
                  std::size_t ld, std::size_t r0, std::size_t r1) {
  if constexpr (runtime_dispatch && is_builtin_format_v<std::remove_const_t<F>>) {
    quant_dispatch_v0::call c = dispatch_call(t, r0, r1);
    c.fast = fast_mode, c.x = x, c.out = out, c.ld = ld;
    const quant_dispatch_v0::tier_entries e = quant_dispatch_v0::select_tier();
    return gemv_call ? e.gemv(c) : e.dequantize(c);
  } else {
    (void)t, (void)gemv_call, (void)fast_mode, (void)x, (void)out, (void)ld, (void)r0, (void)r1;
    return false;
  }
}

/// dequantize for a tensor with a permuted column order: stored column j goes to out column
/// input_columns()[j], with the same values as the natural-order kernels.
template <class F, class Gran>
void dequantize_permuted(const tensor_view<F, Gran>& t, matrix_view<float> out, std::size_t r0, std::size_t r1) {
  using Fmt = std::remove_const_t<F>;
  constexpr bool asym = Gran::is_asymmetric;
  const scale_grid& g = t.grid();
  const auto order = t.input_columns();
  for (std::size_t r = r0; r < r1; ++r) {
    const std::uint8_t* row = t.row_codes(r);
    float* o = &out(r, 0);
    for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
      const std::size_t k = g.index(r, gi);
      const float sc = t.scale(k);
      const std::uint8_t z = t.zero(k);
      for (std::size_t c = g.group_begin(gi); c < g.group_end(gi); ++c)
        o[order[c]] = dequantize_value<Fmt, asym>(read_code(row, c, t.bits), sc, z);
    }
  }
}

/// Workspace bytes gemv needs ahead of the kernel's: x gathered into stored-column order.
template <class F, class Gran>
std::size_t gather_bytes(const tensor_view<F, Gran>& w) noexcept {
  return w.permuted() ? (w.cols() * sizeof(float) + 63) / 64 * 64 : 0;
}
/// x in the tensor's stored-column order: x itself, or gathered into ws (gather_bytes(w) bytes).
template <class F, class Gran>
const float* gather_x(const tensor_view<F, Gran>& w, const float* x, std::byte* ws) noexcept {
  if (!w.permuted()) return x;
  auto* xp = reinterpret_cast<float*>(ws);
  const auto order = w.input_columns();
  for (std::size_t j = 0; j < order.size(); ++j) xp[j] = x[order[j]];
  return xp;
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
  if (out.permuted())
    detail::fail(who, ": out has a permuted column order; round-to-nearest writes natural-order tensors (permuted "
                      "ones come from gptq::quantize with act_order)");
  if (!detail::all_finite<default_isa>(w)) detail::check_finite(w, who);  // names the first bad weight
  detail::quantize_kernel<F, Gran::is_asymmetric, typename Gran::scale_type, default_isa>::run(w, out, options);
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
  if (t.permuted()) return detail::dequantize_permuted(t, out, rows.begin, rows.end);
  if (detail::try_dispatch(t, false, false, nullptr, out.data(), out.ld(), rows.begin, rows.end)) return;
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

/// The tier quant::gemv and quant::dequantize run on for built-in formats: the tier this
/// translation unit was compiled for, or in the runtime-dispatch mode the one chosen for this CPU.
inline isa active_isa() noexcept {
  if constexpr (detail::runtime_dispatch) return static_cast<isa>(quant_dispatch_v0::select_tier().isa);
  else return default_isa::id;
}
/// active_isa() as a name: "avx512_vnni", "avx512", "avx2", "sse4_2" or "generic".
inline std::string_view active_isa_name() noexcept { return isa_name(active_isa()); }

/// The kernel quant::gemv(w, x, y, mode) runs for this tensor.
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
gemv_kernel_info gemv_kernel(tensor_view<F, Gran> w, Mode = Mode{}) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  const gemv_path_kind p = K::path_for(w.grid());
  if constexpr (detail::runtime_dispatch && detail::is_builtin_format_v<std::remove_const_t<F>>) {
    // The path as the dispatched tier takes it (the tiers share one path rule per ISA level).
    const isa t = active_isa();
    auto info = [&](auto k) {
      using D = decltype(k);
      const gemv_path_kind dp = D::path_for(w.grid());
      return gemv_kernel_info{t, dp, D::integer_fast(dp, w.grid())};
    };
    if (t == isa::avx512_vnni) return info(detail::gemv_kernel_for<F, Gran, Mode, isa_avx512_vnni>{});
    if (t == isa::avx512) return info(detail::gemv_kernel_for<F, Gran, Mode, isa_avx512>{});
    return gemv_kernel_info{t, gemv_path_kind::generic, false};
  }
  return {default_isa::id, p, K::integer_fast(p, w.grid())};
}

/// Bytes of workspace quant::gemv(w, x, y, mode, workspace) needs for this tensor (O(cols)).
template <class F, class Gran, class Mode = exact_t>
  requires detail::is_gemv_mode_v<Mode>
std::size_t gemv_workspace_size(tensor_view<F, Gran> w, Mode = Mode{}) {
  detail::check_tensor(w, "quant::gemv_workspace_size", "w");
  return detail::gather_bytes(w) + detail::gemv_kernel_for<F, Gran, Mode>::workspace_bytes(w.grid());
}

/// y = W x without allocating: workspace is 64-byte aligned, gemv_workspace_size(w, mode) bytes.
/// exact (the default) uses fp32 activations; fast quantizes them to int8 per block of 32.
template <class F, class Gran, class Mode>
  requires detail::is_gemv_mode_v<Mode>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, std::span<std::byte> workspace) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  const std::size_t gb = detail::gather_bytes(w);
  detail::check_workspace(workspace, gb + K::workspace_bytes(w.grid()));
  const float* xs = detail::gather_x(w, x.data(), workspace.data());
  const detail::gemv_prepared p = K::prepare(w.grid(), xs, workspace.data() + gb);
  K::rows(detail::problem_of(w), p, y.data(), 0, w.rows());
}

/// y = W x (rows of y outside `rows` are not touched): one range of a caller's own partition.
template <class F, class Gran, class Mode>
  requires detail::is_gemv_mode_v<Mode>
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, row_range rows) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  detail::check_rows(rows, w.rows());
  const std::size_t gb = detail::gather_bytes(w);
  detail::heap_workspace ws(gb + K::workspace_bytes(w.grid()));
  const float* xs = detail::gather_x(w, x.data(), ws.p);
  if (detail::try_dispatch(w, true, std::is_same_v<Mode, fast_t>, xs, y.data(), 0, rows.begin, rows.end)) return;
  const detail::gemv_prepared p = K::prepare(w.grid(), xs, ws.p + gb);
  K::rows(detail::problem_of(w), p, y.data(), rows.begin, rows.end);
}

/// y = W x on an executor: x is prepared once, then exec(n, task) runs the row ranges.
template <class F, class Gran, class Mode, class Exec>
  requires(detail::is_gemv_mode_v<Mode> && executor<std::remove_reference_t<Exec>>)
void gemv(tensor_view<F, Gran> w, std::span<const float> x, std::span<float> y, Mode, Exec&& exec) {
  using K = detail::gemv_kernel_for<F, Gran, Mode>;
  detail::check_gemv(w, x, y);
  const std::size_t rows = w.rows();
  const std::size_t min_rows0 = std::max<std::size_t>(8, 32768 / w.cols());
  const std::size_t gb = detail::gather_bytes(w);
  if constexpr (detail::runtime_dispatch && detail::is_builtin_format_v<std::remove_const_t<F>>) {
    // The dispatched kernels prepare x per range (O(cols) each).
    detail::heap_workspace xw(gb);
    const float* xs = detail::gather_x(w, x.data(), xw.p);
    const std::size_t tasks = std::clamp<std::size_t>(rows / min_rows0, 1, 64);
    exec(tasks, [&](std::size_t i) {
      const auto [r0, r1] = detail::split_rows(rows, tasks, i);
      detail::try_dispatch(w, true, std::is_same_v<Mode, fast_t>, xs, y.data(), 0, r0, r1);
    });
    return;
  }
  detail::heap_workspace ws(gb + K::workspace_bytes(w.grid()));
  const float* xs = detail::gather_x(w, x.data(), ws.p);
  const detail::gemv_prepared p = K::prepare(w.grid(), xs, ws.p + gb);
  const detail::gemv_problem m = detail::problem_of(w);
  // Enough ranges to balance the load, each at least 8 rows and 32K weights.
  const std::size_t tasks = std::clamp<std::size_t>(rows / min_rows0, 1, 64);
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
