// quant/algorithms/smoothquant.hpp: SmoothQuant (Xiao et al., 2022), moving the quantization
// difficulty of activations with outlier channels into the weights, for W8A8 inference
// (kernels/w8a8.hpp), on buffers the caller owns.
//
// A linear layer y = W x is unchanged by x' = x / s, W' = W diag(s) for any positive per-input-
// channel factors s. Activations of LLMs have a few channels with huge values; dividing those by
// a large s_j shrinks the per-token range that int8 activations must cover, and the weights,
// which quantize easily, absorb the factor. The recipe (../shared/REFERENCE-ALGORITHMS.md 4.3):
//
//   1. statistics  amax_j = max over calibration tokens of |x_j|, per input channel, a running
//                  max batch by batch (activation_stats / accumulate_max_abs; the max does not
//                  depend on how the tokens are batched);
//   2. factors     wmax_j = max over the output rows of |W_j| and over ALL linears that read the
//                  same input (q, k, v; gate, up), clamped below at 1e-5;
//                  s_j = max(amax_j^alpha / wmax_j^(1 - alpha), 1e-5), alpha = 0.5 by default;
//   3. folding     x / s is never computed at run time: it is folded into what produces x.
//                  fold_into_norm divides the norm's weight (and bias) by s, scale_columns
//                  multiplies column j of every consumer linear by s_j (smooth() does both);
//                  fold_into_rows divides row j (and bias j) of a previous linear instead;
//   4. W8A8        per-channel symmetric int8 weights of W diag(s) (quantize, or scale_columns +
//                  w8a8::quantize_weights: the same codes) and dynamic per-token int8
//                  activations (w8a8::gemm).
//
// The original smooths only norm -> linear pairs: for Llama-like models input_layernorm -> q, k, v
// and post_attention_layernorm -> gate, up (LayerNorm -> QKV and -> FC1 for OPT/BLOOM); o_proj and
// down_proj are quantized unsmoothed. fold_into_rows covers the other cases a caller may want (for
// instance v -> o, as attention is linear in V, or up -> down, as silu(gate) * up is linear in up),
// which the original does not do.
//
// Departures, both deliberate: the factors are computed in double and rounded to float once (the
// original computes in the statistics' dtype), and the int8 weight scale is quant's symmetric
// rule max(wmax / 127, wmin / -128) (using code -128) rather than absmax / 127 (w8a8.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../kernels/api.hpp"
#include "../kernels/threading.hpp"
#include "../kernels/w8a8.hpp"

QUANT_NAMESPACE_BEGIN
namespace smoothquant {

/// Options of the smoothing factors.
struct options {
  float alpha = 0.5f;         ///< migration strength, in [0, 1]: 0 leaves x alone, 1 moves it all to W
  float min_value = 1e-5f;    ///< lower clamp of max|W_j| and of s_j (the original's 1e-5), > 0
};

namespace detail {
using quant::detail::fail;

inline void check_finite_x(matrix_view<const float> x, const char* who) {
  if (!quant::detail::all_finite<default_isa>(x))
    for (std::size_t t = 0; t < x.rows(); ++t)
      for (std::size_t c = 0; c < x.cols(); ++c)
        if (!std::isfinite(x(t, c))) fail(who, ": x(", t, ", ", c, ") = ", x(t, c), "; activations must be finite");
}

inline void check_factors(std::span<const float> s, std::size_t n, const char* who, const char* what) {
  if (s.size() != n) fail(who, ": s has ", s.size(), " elements, expected ", what, " = ", n);
  for (std::size_t j = 0; j < n; ++j)
    if (!(s[j] > 0.0f) || !std::isfinite(s[j])) fail(who, ": s[", j, "] = ", s[j], "; factors must be finite and > 0");
}

inline void check_options(const options& o, const char* who) {
  if (!(o.alpha >= 0.0f && o.alpha <= 1.0f)) fail(who, ": options::alpha = ", o.alpha, " is outside [0, 1]");
  if (!(o.min_value > 0.0f) || !std::isfinite(o.min_value))
    fail(who, ": options::min_value = ", o.min_value, "; it must be finite and > 0");
}

/// m[j] = max(m[j], max_r |w(r, j)|), no checks.
inline void max_abs_columns(std::span<float> m, matrix_view<const float> w) noexcept {
  for (std::size_t r = 0; r < w.rows(); ++r) {
    const float* row = &w(r, 0);
    for (std::size_t j = 0; j < w.cols(); ++j) {
      const float a = std::fabs(row[j]);
      m[j] = a > m[j] ? a : m[j];
    }
  }
}
}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Statistics

/// amax[j] = max(amax[j], max_t |x(t, j)|) over the tokens x (tokens x cols, finite). The caller
/// starts amax at zeros. Allocates nothing; amax is untouched if an argument is rejected.
inline void accumulate_max_abs(std::span<float> amax, matrix_view<const float> x) {
  const char* who = "quant::smoothquant::accumulate_max_abs";
  if (x.empty()) detail::fail(who, ": x is empty (", x.rows(), " x ", x.cols(), ")");
  if (amax.size() != x.cols()) detail::fail(who, ": amax has ", amax.size(), " elements, expected cols = ", x.cols());
  detail::check_finite_x(x, who);
  detail::max_abs_columns(amax, x);
}

/// The running per-channel max |x| over calibration batches (owning).
class activation_stats {
 public:
  explicit activation_stats(std::size_t cols) : m_(cols, 0.0f) {
    if (cols == 0) detail::fail("quant::smoothquant::activation_stats: cols is 0");
  }
  /// Adds a batch of tokens (tokens x cols).
  void add(matrix_view<const float> x) {
    if (x.cols() != m_.size())
      detail::fail("quant::smoothquant::activation_stats::add: x has ", x.cols(), " columns, expected ", m_.size());
    accumulate_max_abs(m_, x);
    tokens_ += x.rows();
  }
  /// max |x_j| per channel over every token added.
  std::span<const float> max_abs() const noexcept { return m_; }
  std::size_t cols() const noexcept { return m_.size(); }
  std::size_t tokens() const noexcept { return tokens_; }

 private:
  std::vector<float> m_;
  std::size_t tokens_ = 0;
};

/// wmax[j] = max(wmax[j], max_r |w(r, j)|): call it for every linear that reads the input (the
/// caller starts wmax at zeros). Throws quant::error for a size mismatch or a non-finite weight.
inline void accumulate_weight_max(std::span<float> wmax, matrix_view<const float> w) {
  const char* who = "quant::smoothquant::accumulate_weight_max";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  if (wmax.size() != w.cols()) detail::fail(who, ": wmax has ", wmax.size(), " elements, expected cols = ", w.cols());
  if (!quant::detail::all_finite<default_isa>(w)) quant::detail::check_finite(w, who);
  detail::max_abs_columns(wmax, w);
}

// ------------------------------------------------------------------------------------------------
// Factors

/// s_j = max(amax_j^alpha / max(wmax_j, min_value)^(1 - alpha), min_value) from the activation
/// statistic and the weight statistic (already the max over every linear sharing the input).
/// Computed in double, rounded once. s may alias wmax. Nothing is written if an argument is
/// rejected.
inline void factors(std::span<const float> amax, std::span<const float> wmax, std::span<float> s, const options& o = {}) {
  const char* who = "quant::smoothquant::factors";
  detail::check_options(o, who);
  const std::size_t n = amax.size();
  if (n == 0) detail::fail(who, ": amax is empty");
  if (wmax.size() != n) detail::fail(who, ": wmax has ", wmax.size(), " elements, expected amax's ", n);
  if (s.size() != n) detail::fail(who, ": s has ", s.size(), " elements, expected amax's ", n);
  for (std::size_t j = 0; j < n; ++j) {
    if (!(amax[j] >= 0.0f) || !std::isfinite(amax[j]))
      detail::fail(who, ": amax[", j, "] = ", amax[j], "; it must be finite and >= 0");
    if (!(wmax[j] >= 0.0f) || !std::isfinite(wmax[j]))
      detail::fail(who, ": wmax[", j, "] = ", wmax[j], "; it must be finite and >= 0");
  }
  const double a = o.alpha, lo = o.min_value;
  auto value = [&](std::size_t j) {
    const double wm = std::max<double>(wmax[j], lo);
    return std::max(static_cast<float>(std::pow(static_cast<double>(amax[j]), a) / std::pow(wm, 1.0 - a)), o.min_value);
  };
  for (std::size_t j = 0; j < n; ++j)
    if (!std::isfinite(value(j)))
      detail::fail(who, ": s[", j, "] = amax^alpha / wmax^(1 - alpha) = ", amax[j], "^", o.alpha, " / ",
                   std::max(wmax[j], o.min_value), "^", 1.0f - o.alpha, " overflows float");
  for (std::size_t j = 0; j < n; ++j) s[j] = value(j);
}

/// The same from the linears that read the input (each rows_i x cols, finite): wmax is their
/// column-wise max |W|, computed into s first (no workspace; s must not alias amax).
inline void factors(std::span<const float> amax, std::span<const matrix_view<const float>> linears,
                    std::span<float> s, const options& o = {}) {
  const char* who = "quant::smoothquant::factors";
  detail::check_options(o, who);
  if (linears.empty()) detail::fail(who, ": no linears given (the layers that read this input)");
  if (s.size() != amax.size()) detail::fail(who, ": s has ", s.size(), " elements, expected amax's ", amax.size());
  for (std::size_t i = 0; i < linears.size(); ++i) {
    const auto& w = linears[i];
    if (w.empty()) detail::fail(who, ": linears[", i, "] is empty (", w.rows(), " x ", w.cols(), ")");
    if (w.cols() != amax.size())
      detail::fail(who, ": linears[", i, "] has ", w.cols(), " columns, expected amax's ", amax.size());
    if (!quant::detail::all_finite<default_isa>(w)) quant::detail::check_finite(w, who);
  }
  for (std::size_t j = 0; j < amax.size(); ++j)
    if (!(amax[j] >= 0.0f) || !std::isfinite(amax[j]))
      detail::fail(who, ": amax[", j, "] = ", amax[j], "; it must be finite and >= 0");
  for (auto& v : s) v = 0.0f;
  for (const auto& w : linears) detail::max_abs_columns(s, w);
  factors(amax, s, s, o);
}

/// Allocating convenience: factors(amax, {wq, wk, wv}, options).
inline std::vector<float> factors(std::span<const float> amax, std::initializer_list<matrix_view<const float>> linears,
                                  const options& o = {}) {
  std::vector<float> s(amax.size());
  factors(amax, std::span<const matrix_view<const float>>(linears.begin(), linears.size()), s, o);
  return s;
}

// ------------------------------------------------------------------------------------------------
// Folding

/// weight[j] /= s[j] (an RMSNorm's weight, or a LayerNorm's without bias).
inline void fold_into_norm(std::span<float> weight, std::span<const float> s) {
  detail::check_factors(s, weight.size(), "quant::smoothquant::fold_into_norm", "weight's size");
  for (std::size_t j = 0; j < weight.size(); ++j) weight[j] /= s[j];
}

/// weight[j] /= s[j], bias[j] /= s[j] (a LayerNorm).
inline void fold_into_norm(std::span<float> weight, std::span<float> bias, std::span<const float> s) {
  const char* who = "quant::smoothquant::fold_into_norm";
  detail::check_factors(s, weight.size(), who, "weight's size");
  if (bias.size() != weight.size())
    detail::fail(who, ": bias has ", bias.size(), " elements, expected weight's ", weight.size());
  for (std::size_t j = 0; j < weight.size(); ++j) weight[j] /= s[j], bias[j] /= s[j];
}

/// w(r, j) *= s[j] for every row: a linear that reads the smoothed input.
inline void scale_columns(matrix_view<float> w, std::span<const float> s) {
  const char* who = "quant::smoothquant::scale_columns";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  detail::check_factors(s, w.cols(), who, "w.cols()");
  for (std::size_t r = 0; r < w.rows(); ++r) {
    float* row = &w(r, 0);
    for (std::size_t j = 0; j < w.cols(); ++j) row[j] *= s[j];
  }
}

/// Row j of the previous linear (whose output is the smoothed input) divided by s[j]: prev has
/// s.size() rows. Not what the original does (only norms; see the top of this header).
inline void fold_into_rows(matrix_view<float> prev, std::span<const float> s) {
  const char* who = "quant::smoothquant::fold_into_rows";
  if (prev.empty()) detail::fail(who, ": prev is empty (", prev.rows(), " x ", prev.cols(), ")");
  detail::check_factors(s, prev.rows(), who, "prev.rows()");
  for (std::size_t j = 0; j < prev.rows(); ++j) {
    float* row = &prev(j, 0);
    for (std::size_t c = 0; c < prev.cols(); ++c) row[c] /= s[j];
  }
}

/// The same with the previous linear's bias (bias[j] /= s[j]).
inline void fold_into_rows(matrix_view<float> prev, std::span<float> bias, std::span<const float> s) {
  const char* who = "quant::smoothquant::fold_into_rows";
  if (bias.size() != prev.rows())
    detail::fail(who, ": bias has ", bias.size(), " elements, expected prev.rows() = ", prev.rows());
  fold_into_rows(prev, s);
  for (std::size_t j = 0; j < bias.size(); ++j) bias[j] /= s[j];
}

/// One norm -> linears pair smoothed in place: the norm's weight (and bias, unless empty) divided
/// by s, every linear's columns multiplied by s. Everything is checked before anything is written.
inline void smooth(std::span<float> norm_weight, std::span<float> norm_bias, std::span<const matrix_view<float>> linears,
                   std::span<const float> s) {
  const char* who = "quant::smoothquant::smooth";
  detail::check_factors(s, norm_weight.size(), who, "norm_weight's size");
  if (!norm_bias.empty() && norm_bias.size() != norm_weight.size())
    detail::fail(who, ": norm_bias has ", norm_bias.size(), " elements, expected 0 or ", norm_weight.size());
  for (std::size_t i = 0; i < linears.size(); ++i)
    if (linears[i].empty() || linears[i].cols() != s.size())
      detail::fail(who, ": linears[", i, "] is ", linears[i].rows(), " x ", linears[i].cols(), ", expected ", s.size(),
                   " columns");
  if (norm_bias.empty()) fold_into_norm(norm_weight, s);
  else fold_into_norm(norm_weight, norm_bias, s);
  for (const auto& w : linears) scale_columns(w, s);
}

// ------------------------------------------------------------------------------------------------
// W8A8 quantization of a smoothed layer

/// Bytes of workspace quantize needs: none (the factors are applied on the fly). Kept for the
/// algorithm-header convention.
constexpr std::size_t workspace_size(std::size_t /*rows*/, std::size_t /*cols*/) noexcept { return 0; }

/// W8A8 weights of W diag(s) (w: rows x cols, never modified) into the caller's out: per row,
/// symmetric int8 with quant's rule; exactly the codes of scale_columns(w, s) followed by
/// w8a8::quantize_weights. Rows split over exec; allocates nothing; nothing is written to out if
/// an argument is rejected.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void quantize(matrix_view<const float> w, std::span<const float> s, w8a8::weights_view<std::int8_t> out,
              Exec&& exec = {}) {
  const char* who = "quant::smoothquant::quantize";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  quant::detail::check_same_shape(w.rows(), w.cols(), out.rows(), out.cols(), who, "w", "out");
  detail::check_factors(s, w.cols(), who, "w.cols()");
  if (!quant::detail::all_finite<default_isa>(w)) quant::detail::check_finite(w, who);
  for (std::size_t r = 0; r < w.rows(); ++r)  // w * s may overflow where w alone does not
    for (std::size_t c = 0; c < w.cols(); ++c)
      if (!std::isfinite(w(r, c) * s[c]))
        detail::fail(who, ": w(", r, ", ", c, ") * s[", c, "] = ", w(r, c) * s[c], " is not finite");
  const std::size_t tasks = w8a8::detail::task_count(w.rows(), w.cols());
  exec(tasks, [&](std::size_t i) {
    const auto [r0, r1] = quant::detail::split_rows(w.rows(), tasks, i, 1);
    for (std::size_t r = r0; r < r1; ++r) w8a8::detail::quantize_row(&w(r, 0), s.data(), w.cols(), out, r);
  });
  w8a8::detail::clear_padding_rows(out);
}

/// Allocating convenience: new W8A8 weights of W diag(s).
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
w8a8::weights quantize(matrix_view<const float> w, std::span<const float> s, Exec&& exec = {}) {
  if (w.empty()) detail::fail("quant::smoothquant::quantize: w is empty (", w.rows(), " x ", w.cols(), ")");
  w8a8::weights q(w.rows(), w.cols());
  quantize(w, s, q.view(), exec);
  return q;
}

}  // namespace smoothquant
QUANT_NAMESPACE_END
