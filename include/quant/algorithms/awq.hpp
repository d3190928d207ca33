// quant/algorithms/awq.hpp: AWQ (Lin et al., 2023), activation-aware weight quantization of the
// linear layers that share one input, on buffers the caller owns.
//
// AWQ protects the weights that meet large activations: input channel j of the layers is scaled
// by s_j before quantization and the input divided by s_j (folded into the operation before the
// layers, or applied to the activations), y = W x = (W diag(s)) (x / s). s is searched over one
// exponent alpha of the per-channel mean |x|, then every scale block of the scaled weights is clipped:
//
//   stat_j = mean over the calibration tokens of |x_tj|                   (accumulate_mean_abs)
//   for alpha = i / n_grid, i = 0 .. n_grid-1 (0, 0.05, .., 0.95):
//     s = max(stat^alpha, 1e-4);  s /= sqrt(max(s) min(s))                (candidate_scales)
//     W'_l = Q(W_l diag(s)) / s  for every layer l sharing the input
//     loss(alpha) = mean over tokens and output rows of (X W_l^T - X W'_l^T)^2, all layers
//   keep the s of the strictly smallest loss (the earliest on ties)
//   clip search on W_l diag(s) and X / s, per scale block (row, group): max_val = absmax (1 - i/20),
//     i = 0..9; clamp to [-max_val, max_val], quantize; error = mean over every max(1, n/512)-th
//     token of (sum_{k in block} x_tk (wq_k - w_k))^2; keep the smallest (strict <: the least
//     clipped on ties) and clamp the block to it
//   out_l = Q(clip(W_l diag(s)));  the caller folds 1/s into the previous operation
//
// This is the procedure of the original (mit-han-lab/llm-awq auto_scale.py, auto_clip.py,
// pre_quant.py; ../shared/REFERENCE-ALGORITHMS.md 4.2). Departures:
//   - Q is quant's own quantizer with the caller's format and granularity (the fit of
//     quant::quantize, options::fit), so every format works, user formats included. The
//     original's asymmetric fit uses [min, max] of the group; ours forces 0 into the range
//     ([min(wmin, 0), max(wmax, 0)]). The two differ only for a group whose weights all have one
//     sign: the test layers have none (the original with a 0-forcing quantizer gives identical
//     weights); on a contrived all-positive layer the held-out error moves from 0.0915 to 0.0917.
//   - The search loss scores the concatenated outputs of the layers that share the input (the
//     sum of their squared errors). The original scores the output of the parent module
//     (module2inspect): for q/k/v the attention output, for gate/up the MLP output after
//     down_proj, which a library without the module cannot compute. For one layer both agree.
//   - The search loss uses every max(1, n / options::search_tokens)-th calibration token (512:
//     the same rule as the original's clip search; 0 = all tokens, as the original's scale
//     search). On the test layers 128-1024 tokens choose the same alpha as all 2048.
//   - Each squared error is computed in whichever of two equal forms costs fewer flops: from the
//     tokens, ||X D^T||^2, or from their Gram matrix, tr(D G D^T), G = X^T X / n (D = W - W', per
//     row; for the clip search per block with the block's columns of X). fp32 products
//     (linalg::gemm or options::gemm), sums per row in double.
//   - Queries and keys skip the clip search in the original (matched by module name); here the
//     caller marks them (options::query_key_layers), and options::clip_query_key may clip them.
//   - A scale block of per_channel is a row, of per_tensor the whole matrix (one threshold). The
//     original needs >= 512 tokens (its clip stride would be 0); here the strides are >= 1.
// Everything is fp32 on the CPU (the original runs fp16 on a GPU). Results do not depend on the
// executor: each row's errors are computed by the same operations wherever they run.
//
// Cost: per candidate, 2 R cols min(t, cols) flops (R: the rows of all layers, t: the search
// tokens) and a scalar quantization of the layers; the clip search 10 x 2 R cols min(group,
// clip tokens). 256 x 1024, int4 g128, 2048 tokens: 0.1 s on one core. The workspace
// (workspace_size) holds that many floats: cols x min(t, cols) and cols x min(group, clip tokens)
// for the two error forms, one layer's scaled weights and 512-row chunks of errors;
// quantize(layers, x, act_mean, out, outputs, workspace, ...) allocates one size per layer.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../kernels/api.hpp"
#include "../kernels/threading.hpp"
#include "../linalg/gemm.hpp"
#include "../scheme/fit.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"

QUANT_NAMESPACE_BEGIN
namespace awq {

/// How a squared output error is computed: from the tokens, from their Gram matrix, or whichever
/// costs fewer flops (the same number up to fp32 rounding).
enum class loss_form { automatic, tokens, gram };

/// Options of awq::quantize. The defaults follow the original.
struct options {
  unsigned n_grid = 20;                ///< alpha = i / n_grid, i = 0 .. n_grid-1 (>= 1)
  float scale_floor = 1e-4f;           ///< stat^alpha is clamped to at least this (> 0)
  std::size_t search_tokens = 512;     ///< the search loss uses every max(1, n / search_tokens)-th
                                       ///< calibration token (as the clip search); 0 = all (the original)
  bool clip = true;                    ///< run the clip search (the original's mse_range)
  unsigned clip_grid = 20;             ///< clip candidates: absmax * (1 - i / clip_grid), ...
  float clip_max_shrink = 0.5f;        ///< ... i < clip_grid * clip_max_shrink (1.00 .. 0.55)
  std::size_t clip_tokens = 512;       ///< the clip error uses every max(1, n / clip_tokens)-th token
  std::uint64_t query_key_layers = 0;  ///< bit l set: layers[l] is an attention query or key projection
  bool clip_query_key = false;         ///< false (the original): those layers are not clipped
  loss_form form = loss_form::automatic;
  quantize_options fit{};              ///< quant's scale selection for every quantization (min-max)
  linalg::gemm_hook gemm{};            ///< replaces linalg::gemm (called from the calling thread)
};

/// What a search did.
struct report {
  float alpha = 0.0f;             ///< the chosen exponent
  std::size_t best = 0;           ///< its index in the candidates
  double loss = 0.0;              ///< the search loss of the chosen s (before clipping)
  double rtn_loss = 0.0;          ///< the loss of alpha = 0 (s = 1: round-to-nearest)
  double final_loss = 0.0;        ///< the same loss for the output tensors (after clipping)
  double clip_error_before = 0.0; ///< clip objective summed over searched blocks, unclipped
  double clip_error_after = 0.0;  ///< the same with the chosen thresholds (<= before)
  std::size_t clip_blocks = 0;    ///< scale blocks searched
  std::size_t clipped_blocks = 0; ///< of which clipped (threshold below the block's absmax)
  std::size_t search_tokens = 0, clip_tokens = 0;   ///< tokens used by the two searches
  bool search_gram = false, clip_gram = false;      ///< the loss forms used
  double stats_seconds = 0.0, search_seconds = 0.0, clip_seconds = 0.0, quantize_seconds = 0.0;
};

/// The caller's buffers for what the non-allocating quantize finds besides the tensors.
struct search_outputs {
  std::span<float> scales;   ///< cols: s (required)
  std::span<double> losses;  ///< n_grid losses of the candidates, or empty
  std::span<float> clip;     ///< per layer, per scale block (grid order): the threshold on the
                             ///< scaled weights (the block's absmax when unclipped), or empty
};

/// What the allocating quantize returns.
template <class F, class Gran>
struct result {
  std::vector<tensor<F, Gran>> tensors;  ///< Q(clip(W_l diag(s))), one per layer, for x / s
  std::vector<float> scales;             ///< s: fold 1/s into the previous op or divide x by it
  std::vector<float> alphas;             ///< the candidates
  std::vector<double> losses;            ///< their losses (the search curve)
  std::vector<std::vector<float>> clip;  ///< per layer, per scale block: the threshold
  report rep;
};

// ------------------------------------------------------------------------------------------------
// Calibration statistics

namespace detail {
inline void check_x(matrix_view<const float> x, const char* who, const char* arg) {
  if (!quant::detail::all_finite<default_isa>(x))
    for (std::size_t r = 0; r < x.rows(); ++r)
      for (std::size_t c = 0; c < x.cols(); ++c)
        if (!std::isfinite(x(r, c))) quant::detail::fail(who, ": ", arg, "(", r, ", ", c, ") = ", x(r, c), "; activations must be finite");
}
inline void check_s(std::span<const float> s, std::size_t n, const char* who, const char* what, std::size_t want) {
  if (s.size() != want) quant::detail::fail(who, ": s has ", s.size(), " elements, expected ", what, " = ", want);
  for (std::size_t j = 0; j < n; ++j)
    if (!(s[j] > 0.0f) || !std::isfinite(s[j])) quant::detail::fail(who, ": s[", j, "] = ", s[j], "; scales must be finite and > 0");
}
}  // namespace detail

/// Adds the tokens x (tokens x cols) to the running per-channel mean |x| over `tokens` tokens so
/// far: mean <- (n mean + sum_t |x_t|) / (n + t) (batch sums in double); tokens += t. Allocates
/// nothing. Throws quant::error for a size mismatch, an empty x or a non-finite activation.
inline void accumulate_mean_abs(std::span<float> mean, std::size_t& tokens, matrix_view<const float> x) {
  const char* who = "quant::awq::accumulate_mean_abs";
  if (x.empty()) quant::detail::fail(who, ": x is empty (", x.rows(), " x ", x.cols(), ")");
  if (mean.size() != x.cols()) quant::detail::fail(who, ": mean has ", mean.size(), " elements, expected cols = ", x.cols());
  detail::check_x(x, who, "x");
  const double n = static_cast<double>(tokens), t = static_cast<double>(x.rows());
  constexpr std::size_t chunk = 256;
  double acc[chunk];
  for (std::size_t c0 = 0; c0 < x.cols(); c0 += chunk) {
    const std::size_t m = std::min(chunk, x.cols() - c0);
    std::fill(acc, acc + m, 0.0);
    for (std::size_t r = 0; r < x.rows(); ++r) {
      const float* xr = &x(r, c0);
      for (std::size_t j = 0; j < m; ++j) acc[j] += std::fabs(xr[j]);
    }
    for (std::size_t j = 0; j < m; ++j)
      mean[c0 + j] = static_cast<float>((n * (tokens ? mean[c0 + j] : 0.0f) + acc[j]) / (n + t));
  }
  tokens += x.rows();
}

/// An owning accumulator of the per-channel mean |x| (sums kept in double): add() batches, then
/// pass mean_abs() to quantize (or let quantize compute it from its calibration tokens).
class stats_accumulator {
 public:
  explicit stats_accumulator(std::size_t cols) : sum_(cols, 0.0), mean_(cols, 0.0f) {
    if (cols == 0) quant::detail::fail("quant::awq::stats_accumulator: cols is 0");
  }
  void add(matrix_view<const float> x) {
    const char* who = "quant::awq::stats_accumulator::add";
    if (x.empty()) quant::detail::fail(who, ": x is empty (", x.rows(), " x ", x.cols(), ")");
    if (x.cols() != sum_.size()) quant::detail::fail(who, ": x has ", x.cols(), " columns, expected ", sum_.size());
    detail::check_x(x, who, "x");
    for (std::size_t r = 0; r < x.rows(); ++r)
      for (std::size_t c = 0; c < x.cols(); ++c) sum_[c] += std::fabs(x(r, c));
    tokens_ += x.rows();
    for (std::size_t c = 0; c < sum_.size(); ++c) mean_[c] = static_cast<float>(sum_[c] / static_cast<double>(tokens_));
  }
  std::span<const float> mean_abs() const noexcept { return mean_; }
  std::size_t cols() const noexcept { return sum_.size(); }
  std::size_t tokens() const noexcept { return tokens_; }

 private:
  std::vector<double> sum_;
  std::vector<float> mean_;
  std::size_t tokens_ = 0;
};

/// The candidate scales of exponent alpha: s_j = max(stat_j^alpha, floor) (0^0 = 1), then
/// s /= sqrt(max(s) min(s)), in fp32 as the original. s and stat have cols elements.
inline void candidate_scales(std::span<const float> stat, double alpha, float floor, std::span<float> s) {
  if (s.size() != stat.size() || s.empty())
    quant::detail::fail("quant::awq::candidate_scales: s has ", s.size(), " elements and stat ", stat.size());
  float mx = 0.0f, mn = std::numeric_limits<float>::infinity();
  for (std::size_t j = 0; j < s.size(); ++j) {
    const float v = std::max(static_cast<float>(std::pow(static_cast<double>(stat[j]), alpha)), floor);
    s[j] = v, mx = std::max(mx, v), mn = std::min(mn, v);
  }
  const float norm = std::sqrt(mx * mn);
  for (float& v : s) v /= norm;
}

// ------------------------------------------------------------------------------------------------
// Folding 1/s into the operation before the layers (y = W x = (W diag(s)) (x / s))

/// A norm's weight (RMSNorm, LayerNorm) divided by s: weight_j /= s_j.
inline void fold_into_norm(std::span<float> weight, std::span<const float> s) {
  detail::check_s(s, s.size(), "quant::awq::fold_into_norm", "weight size", weight.size());
  for (std::size_t j = 0; j < s.size(); ++j) weight[j] /= s[j];
}
/// The same for a LayerNorm with a bias: weight_j /= s_j, bias_j /= s_j.
inline void fold_into_norm(std::span<float> weight, std::span<float> bias, std::span<const float> s) {
  const char* who = "quant::awq::fold_into_norm";
  if (bias.size() != weight.size()) quant::detail::fail(who, ": bias has ", bias.size(), " elements, weight ", weight.size());
  detail::check_s(s, s.size(), who, "weight size", weight.size());
  for (std::size_t j = 0; j < s.size(); ++j) weight[j] /= s[j], bias[j] /= s[j];
}
/// The previous linear layer's LAST s.size() output rows divided by s (row k of them by s_k):
/// the whole layer when its outputs are the input, the v part of a fused QKV (rows q, k, v).
inline void fold_into_rows(matrix_view<float> prev, std::span<const float> s) {
  const char* who = "quant::awq::fold_into_rows";
  if (prev.rows() < s.size()) quant::detail::fail(who, ": prev has ", prev.rows(), " rows, fewer than s's ", s.size());
  detail::check_s(s, s.size(), who, "s size", s.size());
  const std::size_t r0 = prev.rows() - s.size();
  for (std::size_t k = 0; k < s.size(); ++k)
    for (float& v : prev.row(r0 + k)) v /= s[k];
}
/// The same with the previous layer's bias (prev.rows() elements; its last s.size() divided).
inline void fold_into_rows(matrix_view<float> prev, std::span<float> bias, std::span<const float> s) {
  const char* who = "quant::awq::fold_into_rows";
  if (bias.size() != prev.rows()) quant::detail::fail(who, ": bias has ", bias.size(), " elements, expected prev rows = ", prev.rows());
  fold_into_rows(prev, s);
  for (std::size_t k = 0; k < s.size(); ++k) bias[bias.size() - s.size() + k] /= s[k];
}
/// The layer's columns multiplied by s: w(r, j) *= s_j (what quantize does before quantizing).
inline void scale_columns(matrix_view<float> w, std::span<const float> s) {
  detail::check_s(s, s.size(), "quant::awq::scale_columns", "w cols", w.cols());
  for (std::size_t r = 0; r < w.rows(); ++r)
    for (std::size_t j = 0; j < s.size(); ++j) w(r, j) *= s[j];
}
/// Activations (tokens x cols) divided by s: x(t, j) /= s_j, for engines that apply 1/s to the
/// input instead of folding it (the original's ScaledActivation after GELU does this).
inline void unscale_activations(matrix_view<float> x, std::span<const float> s) {
  detail::check_s(s, s.size(), "quant::awq::unscale_activations", "x cols", x.cols());
  for (std::size_t r = 0; r < x.rows(); ++r)
    for (std::size_t j = 0; j < s.size(); ++j) x(r, j) /= s[j];
}

// ------------------------------------------------------------------------------------------------
// Workspace

namespace detail {

inline constexpr std::size_t chunk_rows = 512;  ///< rows whose errors are computed together

/// Everything the sizes of a run depend on.
struct plan {
  std::size_t cols = 0, tokens = 0, total_rows = 0, max_rows = 0, clip_rows = 0, chunk = 0;
  std::size_t search_stride = 1, search_n = 0, search_width = 0;
  std::size_t clip_stride = 1, clip_n = 0, clip_width = 0, clip_floats = 0;
  std::size_t group = 0, groups = 0;  ///< clip blocks along a row (the scale grid's)
  unsigned clip_candidates = 0;
  bool search_gram = false, clip_gram = false, any_clip = false;
};

inline bool clips_layer(const options& o, std::size_t l) {
  if (!o.clip) return false;
  const bool qk = l < 64 && ((o.query_key_layers >> l) & 1u);
  return !qk || o.clip_query_key;
}

inline bool choose_gram(loss_form f, double n, double width, double evals_rows) {
  if (f != loss_form::automatic) return f == loss_form::gram;
  // tokens: evals_rows * n * width flops; Gram: n * width^2 to build + evals_rows * width^2
  return width * (n + evals_rows) < n * evals_rows;
}

template <class Gran>
plan plan_for(std::span<const std::size_t> rows, std::size_t cols, std::size_t tokens, const Gran& gran,
              const options& o) {
  plan p;
  p.cols = cols, p.tokens = tokens;
  for (std::size_t l = 0; l < rows.size(); ++l) {
    p.total_rows += rows[l], p.max_rows = std::max(p.max_rows, rows[l]);
    if (clips_layer(o, l)) p.clip_rows += rows[l];
  }
  p.chunk = std::min(chunk_rows, p.max_rows);
  const std::size_t st = o.search_tokens;
  p.search_stride = st == 0 ? 1 : std::max<std::size_t>(1, tokens / st);
  p.search_n = (tokens + p.search_stride - 1) / p.search_stride;
  p.search_gram = choose_gram(o.form, double(p.search_n), double(cols), double(o.n_grid + 1) * double(p.total_rows));
  p.search_width = p.search_gram ? cols : p.search_n;
  p.group = cols;
  if constexpr (Gran::kind == granularity_kind::group) p.group = std::min(gran.group_size(), cols);
  else (void)gran;
  p.groups = (cols + p.group - 1) / p.group;
  p.clip_candidates = std::max(1u, static_cast<unsigned>(std::floor(double(o.clip_grid) * double(o.clip_max_shrink) + 1e-9)));
  p.any_clip = p.clip_rows > 0;
  if (p.any_clip) {
    p.clip_stride = std::max<std::size_t>(1, tokens / std::max<std::size_t>(1, o.clip_tokens));
    p.clip_n = (tokens + p.clip_stride - 1) / p.clip_stride;
    p.clip_gram = choose_gram(o.form, double(p.clip_n), double(p.group), double(p.clip_candidates) * double(p.clip_rows));
    p.clip_width = p.clip_gram ? p.group : p.clip_n;
    if (p.clip_gram) {
      const std::size_t last = cols - (p.groups - 1) * p.group;
      p.clip_floats = (p.groups - 1) * p.group * p.group + last * last;
    } else {
      p.clip_floats = cols * p.clip_n;
    }
  }
  return p;
}

struct buffers {
  float *stat, *s, *best, *bs, *bc, *layer, *d, *e, *amax, *best_mv;
  double *err, *best_err;
  std::size_t bytes;
};

inline buffers carve(std::byte* base, const plan& p) noexcept {
  quant::detail::workspace_carver c{base};
  buffers b{};
  b.stat = c.take<float>(p.cols);
  b.s = c.take<float>(p.cols);
  b.best = c.take<float>(p.cols);
  b.bs = c.take<float>(p.cols * p.search_width);
  b.bc = c.take<float>(p.clip_floats);
  b.layer = c.take<float>(p.max_rows * p.cols);
  b.d = c.take<float>(p.chunk * p.cols);
  b.e = c.take<float>(p.chunk * std::max(p.search_width, p.clip_width));
  b.amax = c.take<float>(p.chunk);
  b.best_mv = c.take<float>(p.chunk);
  b.err = c.take<double>(p.chunk);
  b.best_err = c.take<double>(p.chunk);
  b.bytes = c.used;
  return b;
}

inline std::vector<std::size_t> rows_of(std::span<const matrix_view<const float>> layers) {
  std::vector<std::size_t> r(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) r[l] = layers[l].rows();
  return r;
}

}  // namespace detail

/// Bytes of workspace awq::quantize needs for layers of these row counts sharing `cols` inputs,
/// calibrated on `tokens` tokens (64-byte aligned).
template <class F, class Gran>
std::size_t workspace_size(std::span<const std::size_t> rows, std::size_t cols, std::size_t tokens,
                           const Gran& gran = {}, const options& o = {}) {
  return detail::carve(nullptr, detail::plan_for(rows, cols, tokens, gran, o)).bytes;
}
/// The same from the layers themselves.
template <class F, class Gran>
std::size_t workspace_size(std::span<const matrix_view<const float>> layers, std::size_t tokens, const Gran& gran = {},
                           const options& o = {}) {
  const std::vector<std::size_t> rows = detail::rows_of(layers);
  return workspace_size<F>(std::span<const std::size_t>(rows), layers.empty() ? 0 : layers[0].cols(), tokens, gran, o);
}

// ------------------------------------------------------------------------------------------------
// The search

namespace detail {

/// Runs fn(r0, r1) over [0, m) on the executor, in parts of at least 32 rows.
template <class Exec, class Fn>
void for_rows(Exec& exec, std::size_t m, Fn&& fn) {
  const std::size_t tasks = std::clamp<std::size_t>(m / 32, 1, 16);
  if (tasks == 1) return fn(std::size_t{0}, m);
  exec(tasks, [&](std::size_t t) {
    const auto [a, b] = quant::detail::split_rows(m, tasks, t, 1);
    if (a < b) fn(a, b);
  });
}

/// v[0, n) replaced by its quantized values under the parameters p.
template <class Fmt, bool Asym, class Scale>
QUANT_ALWAYS_INLINE void fake_quant(float* v, std::size_t n, const block_params<Scale>& p) noexcept {
  for (std::size_t j = 0; j < n; ++j)
    v[j] = quant::detail::dequantize_value<Fmt, Asym>(quant::detail::quantize_value<Fmt, Asym>(v[j], p.scale, p.zero), p.scale, p.zero);
}

/// A row of a layer quantized as quant::quantize does: per group fitted, or with the tensor's p.
template <class Fmt, bool Asym, class Scale>
void fake_quant_row(float* v, const plan& pl, const block_params<Scale>* tensor_p, const quantize_options& fit) noexcept {
  if (tensor_p) return fake_quant<Fmt, Asym>(v, pl.cols, *tensor_p);
  for (std::size_t c0 = 0; c0 < pl.cols; c0 += pl.group) {
    const std::size_t n = std::min(pl.group, pl.cols - c0);
    fake_quant<Fmt, Asym>(v + c0, n, fit_block<Fmt, Asym, Scale>(matrix_view<const float>(v + c0, 1, n), fit));
  }
}

/// fit_block of the block b clamped to [-mv, mv] (without a copy): the same parameters.
template <class Fmt, bool Asym, class Scale>
block_params<Scale> fit_clamped(matrix_view<const float> b, float mv, const quantize_options& o) noexcept {
  auto clampv = [mv](float w) { return std::min(std::max(w, -mv), mv); };
  float lo = b(0, 0), hi = b(0, 0);
  for (std::size_t r = 0; r < b.rows(); ++r)
    for (std::size_t c = 0; c < b.cols(); ++c) lo = std::min(lo, b(r, c)), hi = std::max(hi, b(r, c));
  auto err = [&](const block_params<Scale>& p) {
    double lanes[quant::detail::error_lanes] = {};
    constexpr std::size_t chunk = 4 * quant::detail::error_lanes;
    float v[chunk], wq[chunk];
    for (std::size_t r = 0; r < b.rows(); ++r)
      for (std::size_t c0 = 0; c0 < b.cols(); c0 += chunk) {
        const std::size_t n = std::min(chunk, b.cols() - c0);
        for (std::size_t i = 0; i < n; ++i) wq[i] = v[i] = clampv(b(r, c0 + i));
        fake_quant<Fmt, Asym>(wq, n, p);
        quant::detail::add_sq_errors(v, wq, n, lanes);
      }
    return quant::detail::sum_error_lanes(lanes);
  };
  return quant::detail::choose_params<Fmt, Asym, Scale>(clampv(lo), clampv(hi), o, err);
}

template <class Exec>
void gemm_call(const linalg::gemm_problem& p, Exec& exec, const options& o) {
  if (o.gemm) o.gemm(p);
  else linalg::gemm(p, exec);
}

/// E = D (m x k, row stride k) B (k x width, row stride ldb); err[i] = scale * (gram ?
/// sum_j D_ij E_ij : sum_j E_ij^2), summed in double in column order.
template <class Exec>
void row_errors(const float* d, std::size_t m, std::size_t k, const float* b, std::size_t ldb, std::size_t width,
                bool gram, double scale, float* e, double* err, Exec& exec, const options& o) {
  gemm_call(linalg::gemm_problem{linalg::transpose::no, m, width, k, 1.0f, d, k, b, ldb, 0.0f, e, width}, exec, o);
  for_rows(exec, m, [&](std::size_t r0, std::size_t r1) {
    for (std::size_t r = r0; r < r1; ++r) {
      const float* er = e + r * width;
      const float* dr = d + r * k;
      double acc = 0.0;
      if (gram)
        for (std::size_t j = 0; j < width; ++j) acc += double{dr[j]} * er[j];
      else
        for (std::size_t j = 0; j < width; ++j) acc += double{er[j]} * er[j];
      err[r] = acc * scale;
    }
  });
}

/// dst (cols x n, row-major) = the transpose of the tokens xs (n x cols), column j divided by s_j
/// when s is given.
inline void transpose_tokens(matrix_view<const float> xs, const float* s, float* dst) noexcept {
  const std::size_t n = xs.rows(), cols = xs.cols();
  constexpr std::size_t tb = 16;
  for (std::size_t t0 = 0; t0 < n; t0 += tb)
    for (std::size_t j0 = 0; j0 < cols; j0 += tb)
      for (std::size_t t = t0; t < std::min(n, t0 + tb); ++t)
        for (std::size_t j = j0; j < std::min(cols, j0 + tb); ++j) dst[j * n + t] = s ? xs(t, j) / s[j] : xs(t, j);
}

/// The search: everything after validation.
template <class F, class Gran, class Exec>
report run(std::span<const matrix_view<const float>> layers, matrix_view<const float> x, std::span<const float> act_mean,
           std::span<const tensor_view<F, Gran>> out, const search_outputs& res, const buffers& b, const plan& pl,
           const options& o, Exec& exec) {
  using Fmt = std::remove_const_t<F>;
  using Scale = typename Gran::scale_type;
  constexpr bool asym = Gran::is_asymmetric;
  constexpr bool per_tensor = Gran::kind == granularity_kind::tensor;
  using clock = std::chrono::steady_clock;
  const auto since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
  const std::size_t cols = pl.cols;
  report rep;
  rep.search_tokens = pl.search_n, rep.search_gram = pl.search_gram;

  // The statistic.
  auto t0 = clock::now();
  std::span<const float> stat = act_mean;
  if (stat.empty()) {
    std::size_t n = 0;
    accumulate_mean_abs(std::span<float>(b.stat, cols), n, x);
    stat = std::span<const float>(b.stat, cols);
  }
  rep.stats_seconds = since(t0);

  // The search matrix: the tokens transposed, or their Gram matrix / n.
  t0 = clock::now();
  const matrix_view<const float> xs(x.data(), pl.search_n, cols, x.ld() * pl.search_stride);
  if (pl.search_gram)
    gemm_call(linalg::gemm_problem{linalg::transpose::yes, cols, cols, pl.search_n, static_cast<float>(1.0 / double(pl.search_n)),
                                   xs.data(), xs.ld(), xs.data(), xs.ld(), 0.0f, b.bs, cols},
              exec, o);
  else
    transpose_tokens(xs, nullptr, b.bs);
  const double search_scale = pl.search_gram ? 1.0 : 1.0 / double(pl.search_n);

  // The squared output errors of layer l's W - Q(v)/s summed over its rows, src(r, v) writing the
  // scaled row r into v, tp the per-tensor parameters.
  auto layer_sse = [&](std::size_t l, const float* s, auto&& src, const block_params<Scale>& tp) {
    const matrix_view<const float> w = layers[l];
    double sse = 0.0;
    for (std::size_t q0 = 0; q0 < w.rows(); q0 += pl.chunk) {
      const std::size_t m = std::min(pl.chunk, w.rows() - q0);
      for_rows(exec, m, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t i = r0; i < r1; ++i) {
          float* v = b.d + i * cols;
          const float* wr = &w(q0 + i, 0);
          src(q0 + i, v);
          fake_quant_row<Fmt, asym, Scale>(v, pl, per_tensor ? &tp : nullptr, o.fit);
          for (std::size_t j = 0; j < cols; ++j) v[j] = wr[j] - v[j] / s[j];
        }
      });
      row_errors(b.d, m, cols, b.bs, pl.search_width, pl.search_width, pl.search_gram, search_scale, b.e, b.err, exec, o);
      for (std::size_t i = 0; i < m; ++i) sse += b.err[i];
    }
    return sse;
  };
  // Layer l scaled by s into the layer buffer, and the per-tensor parameters of that buffer.
  auto scale_layer = [&](std::size_t l, const float* s) {
    const matrix_view<const float> w = layers[l];
    for (std::size_t r = 0; r < w.rows(); ++r)
      for (std::size_t j = 0; j < cols; ++j) b.layer[r * cols + j] = w(r, j) * s[j];
  };
  auto tensor_params = [&](std::size_t l) {
    if constexpr (per_tensor) return fit_block<Fmt, asym, Scale>(matrix_view<const float>(b.layer, layers[l].rows(), cols), o.fit);
    else return (void)l, block_params<Scale>{};
  };

  double best_loss = std::numeric_limits<double>::infinity();
  std::size_t best = o.n_grid;
  for (unsigned k = 0; k < o.n_grid; ++k) {
    const double alpha = double(k) / double(o.n_grid);
    candidate_scales(stat, alpha, o.scale_floor, std::span<float>(b.s, cols));
    double sse = 0.0;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      if constexpr (per_tensor) scale_layer(l, b.s);
      const matrix_view<const float> w = layers[l];
      sse += layer_sse(
          l, b.s, [&](std::size_t r, float* v) { for (std::size_t j = 0; j < cols; ++j) v[j] = w(r, j) * b.s[j]; },
          tensor_params(l));
    }
    const double loss = sse / double(pl.total_rows);
    if (!res.losses.empty()) res.losses[k] = loss;
    if (k == 0) rep.rtn_loss = loss;
    if (loss < best_loss) best_loss = loss, best = k, std::memcpy(b.best, b.s, cols * sizeof(float));
  }
  if (best == o.n_grid) quant::detail::fail("quant::awq::quantize: no candidate has a finite loss (the first is ", rep.rtn_loss, ")");
  rep.best = best, rep.alpha = static_cast<float>(double(best) / double(o.n_grid)), rep.loss = best_loss;
  std::memcpy(res.scales.data(), b.best, cols * sizeof(float));
  const float* s = b.best;
  rep.search_seconds = since(t0);

  // The clip matrix from the clip tokens divided by s: per group, the transposed tokens or the
  // group's Gram matrix / n.
  t0 = clock::now();
  rep.clip_tokens = pl.any_clip ? pl.clip_n : 0, rep.clip_gram = pl.any_clip && pl.clip_gram;
  const matrix_view<const float> xc(x.data(), pl.clip_n, cols, x.ld() * pl.clip_stride);
  auto clip_block = [&](std::size_t gi) { return b.bc + (pl.clip_gram ? gi * pl.group * pl.group : gi * pl.group * pl.clip_n); };
  if (pl.any_clip) {
    if (pl.clip_gram)
      for (std::size_t gi = 0; gi < pl.groups; ++gi) {
        const std::size_t c0 = gi * pl.group, n = std::min(pl.group, cols - c0);
        float* g = clip_block(gi);
        gemm_call(linalg::gemm_problem{linalg::transpose::yes, n, n, pl.clip_n, static_cast<float>(1.0 / double(pl.clip_n)),
                                       xc.data() + c0, xc.ld(), xc.data() + c0, xc.ld(), 0.0f, g, n},
                  exec, o);
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = 0; j < n; ++j) g[i * n + j] = g[i * n + j] / s[c0 + i] / s[c0 + j];
      }
    else
      transpose_tokens(xc, s, b.bc);
  }
  const double clip_scale = pl.clip_gram ? 1.0 : 1.0 / double(pl.clip_n);
  auto factor = [&](unsigned i) { return static_cast<float>(1.0 - double(i) / double(o.clip_grid)); };

  std::size_t clip_offset = 0;
  double final_sse = 0.0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::size_t rows = layers[l].rows();
    const matrix_view<float> fl(b.layer, rows, cols);
    scale_layer(l, s);
    const bool clip = clips_layer(o, l);
    float* thr = res.clip.empty() ? nullptr : res.clip.data() + clip_offset;
    if constexpr (per_tensor) {
      float amax = 0.0f;
      for (std::size_t i = 0; i < rows * cols; ++i) amax = std::max(amax, std::fabs(b.layer[i]));
      float best_mv = amax;
      if (clip) {
        double best_err = std::numeric_limits<double>::infinity();
        for (unsigned c = 0; c < pl.clip_candidates; ++c) {
          const float mv = amax * factor(c);
          const block_params<Scale> p = fit_clamped<Fmt, asym, Scale>(fl, mv, o.fit);
          double err = 0.0;
          for (std::size_t q0 = 0; q0 < rows; q0 += pl.chunk) {
            const std::size_t m = std::min(pl.chunk, rows - q0);
            for_rows(exec, m, [&](std::size_t r0, std::size_t r1) {
              for (std::size_t i = r0; i < r1; ++i) {
                const float* f = &fl(q0 + i, 0);
                float* v = b.d + i * cols;
                for (std::size_t j = 0; j < cols; ++j) v[j] = std::min(std::max(f[j], -mv), mv);
                fake_quant<Fmt, asym>(v, cols, p);
                for (std::size_t j = 0; j < cols; ++j) v[j] -= f[j];
              }
            });
            row_errors(b.d, m, cols, b.bc, pl.clip_width, pl.clip_width, pl.clip_gram, clip_scale, b.e, b.err, exec, o);
            for (std::size_t i = 0; i < m; ++i) err += b.err[i];
          }
          if (c == 0) rep.clip_error_before += err;
          if (err < best_err) best_err = err, best_mv = mv;
        }
        rep.clip_error_after += best_err, rep.clip_blocks += 1, rep.clipped_blocks += best_mv < amax;
        for (std::size_t i = 0; i < rows * cols; ++i) b.layer[i] = std::min(std::max(b.layer[i], -best_mv), best_mv);
      }
      if (thr) thr[0] = best_mv;
      clip_offset += 1;
    } else {
      for (std::size_t q0 = 0; q0 < rows; q0 += pl.chunk) {
        const std::size_t m = std::min(pl.chunk, rows - q0);
        for (std::size_t gi = 0; gi < pl.groups; ++gi) {
          const std::size_t c0 = gi * pl.group, n = std::min(pl.group, cols - c0);
          for_rows(exec, m, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t i = r0; i < r1; ++i) {
              float a = 0.0f;
              for (std::size_t j = 0; j < n; ++j) a = std::max(a, std::fabs(fl(q0 + i, c0 + j)));
              b.amax[i] = b.best_mv[i] = a;
              b.best_err[i] = std::numeric_limits<double>::infinity();
            }
          });
          if (clip) {
            const float* bg = clip_block(gi);
            const std::size_t width = pl.clip_gram ? n : pl.clip_n;
            for (unsigned c = 0; c < pl.clip_candidates; ++c) {
              const float fac = factor(c);
              for_rows(exec, m, [&](std::size_t r0, std::size_t r1) {
                for (std::size_t i = r0; i < r1; ++i) {
                  const float mv = b.amax[i] * fac;
                  const float* f = &fl(q0 + i, c0);
                  float* v = b.d + i * n;
                  for (std::size_t j = 0; j < n; ++j) v[j] = std::min(std::max(f[j], -mv), mv);
                  fake_quant<Fmt, asym>(v, n, fit_block<Fmt, asym, Scale>(matrix_view<const float>(v, 1, n), o.fit));
                  for (std::size_t j = 0; j < n; ++j) v[j] -= f[j];
                }
              });
              row_errors(b.d, m, n, bg, width, width, pl.clip_gram, clip_scale, b.e, b.err, exec, o);
              for (std::size_t i = 0; i < m; ++i) {
                if (c == 0) rep.clip_error_before += b.err[i];
                if (b.err[i] < b.best_err[i]) b.best_err[i] = b.err[i], b.best_mv[i] = b.amax[i] * fac;
              }
            }
            for (std::size_t i = 0; i < m; ++i) {
              rep.clip_error_after += b.best_err[i], rep.clip_blocks += 1, rep.clipped_blocks += b.best_mv[i] < b.amax[i];
              const float mv = b.best_mv[i];
              for (std::size_t j = 0; j < n; ++j) fl(q0 + i, c0 + j) = std::min(std::max(fl(q0 + i, c0 + j), -mv), mv);
            }
          }
          if (thr)
            for (std::size_t i = 0; i < m; ++i) thr[(q0 + i) * pl.groups + gi] = b.best_mv[i];
        }
      }
      clip_offset += rows * pl.groups;
    }
    rep.clip_seconds += since(t0);

    // The final quantization, and its loss on the search tokens.
    t0 = clock::now();
    quant::quantize(matrix_view<const float>(fl), out[l], o.fit);
    final_sse += layer_sse(
        l, s, [&](std::size_t r, float* v) { std::memcpy(v, &fl(r, 0), cols * sizeof(float)); }, tensor_params(l));
    rep.quantize_seconds += since(t0);
    t0 = clock::now();
  }
  rep.final_loss = final_sse / double(pl.total_rows);
  return rep;
}

template <class F, class Gran>
void check_args(std::span<const matrix_view<const float>> layers, matrix_view<const float> x,
                std::span<const float> act_mean, std::span<const tensor_view<F, Gran>> out, const search_outputs& res,
                const options& o, const char* who) {
  if (o.n_grid == 0) quant::detail::fail(who, ": options::n_grid is 0; the search needs >= 1 candidate");
  if (!(o.scale_floor > 0.0f) || !std::isfinite(o.scale_floor))
    quant::detail::fail(who, ": options::scale_floor is ", o.scale_floor, "; it must be finite and > 0");
  if (o.clip_grid == 0) quant::detail::fail(who, ": options::clip_grid is 0");
  if (!(o.clip_max_shrink >= 0.0f && o.clip_max_shrink < 1.0f))
    quant::detail::fail(who, ": options::clip_max_shrink = ", o.clip_max_shrink, " is outside [0, 1)");
  if (o.clip_tokens == 0) quant::detail::fail(who, ": options::clip_tokens is 0");
  quant::detail::check_options(o.fit, who);
  if (layers.empty()) quant::detail::fail(who, ": layers is empty; pass the linear layers that share the input x");
  const std::size_t cols = layers[0].cols();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].empty()) quant::detail::fail(who, ": layers[", l, "] is empty (", layers[l].rows(), " x ", layers[l].cols(), ")");
    if (layers[l].cols() != cols)
      quant::detail::fail(who, ": layers[", l, "] has ", layers[l].cols(), " columns but layers[0] has ", cols,
                          "; layers sharing one input have the same number of input features");
  }
  if (layers.size() < 64 && (o.query_key_layers >> layers.size()) != 0)
    quant::detail::fail(who, ": options::query_key_layers marks layer indices >= the ", layers.size(), " layers");
  if (x.empty()) quant::detail::fail(who, ": x_calib is empty (", x.rows(), " x ", x.cols(), ")");
  if (x.cols() != cols)
    quant::detail::fail(who, ": x_calib has ", x.cols(), " columns, expected cols = ", cols, " (the layers' input features)");
  if (!act_mean.empty()) {
    if (act_mean.size() != cols) quant::detail::fail(who, ": act_mean has ", act_mean.size(), " elements, expected cols = ", cols);
    for (std::size_t j = 0; j < cols; ++j)
      if (!(act_mean[j] >= 0.0f) || !std::isfinite(act_mean[j]))
        quant::detail::fail(who, ": act_mean[", j, "] = ", act_mean[j], "; a mean |x| is finite and >= 0");
  }
  if (out.size() != layers.size()) quant::detail::fail(who, ": out has ", out.size(), " tensors for ", layers.size(), " layers");
  std::size_t blocks = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (out[l].rows() != layers[l].rows() || out[l].cols() != cols)
      quant::detail::fail(who, ": out[", l, "] is ", out[l].rows(), " x ", out[l].cols(), " but layers[", l, "] is ",
                          layers[l].rows(), " x ", cols);
    if (out[l].permuted()) quant::detail::fail(who, ": out[", l, "] has a permuted column order; AWQ writes natural-order tensors");
    blocks += out[l].grid().count();
  }
  if (res.scales.size() != cols) quant::detail::fail(who, ": outputs.scales has ", res.scales.size(), " elements, expected cols = ", cols);
  if (!res.losses.empty() && res.losses.size() != o.n_grid)
    quant::detail::fail(who, ": outputs.losses has ", res.losses.size(), " elements, expected n_grid = ", o.n_grid, " (or none)");
  if (!res.clip.empty() && res.clip.size() != blocks)
    quant::detail::fail(who, ": outputs.clip has ", res.clip.size(), " elements, expected ", blocks,
                        " (the scale blocks of all layers) or none");
  for (std::size_t l = 0; l < layers.size(); ++l)
    if (!quant::detail::all_finite<default_isa>(layers[l]))
      for (std::size_t r = 0; r < layers[l].rows(); ++r)
        for (std::size_t c = 0; c < cols; ++c)
          if (!std::isfinite(layers[l](r, c)))
            quant::detail::fail(who, ": layers[", l, "](", r, ", ", c, ") = ", layers[l](r, c), "; weights must be finite");
  check_x(x, who, "x_calib");
}

}  // namespace detail

/// AWQ of the layers that share the input x_calib (each rows_l x cols; calibration tokens
/// tokens x cols), into the caller's tensors out[l] (same shapes, natural order) and outputs
/// (s, and optionally the loss curve and the clip thresholds), with the caller's workspace
/// (workspace_size<F>(rows, cols, tokens, gran, o) bytes, 64-byte aligned). act_mean is the
/// per-channel mean |x| (e.g. stats_accumulator::mean_abs() over more tokens than x_calib), or
/// empty to compute it from x_calib. out[l] holds Q(clip(W_l diag(s))): the caller folds 1/s into
/// the previous operation (fold_into_norm, fold_into_rows) or divides the activations by s.
/// Allocates nothing; nothing is written to out or outputs if an argument is rejected.
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
report quantize(std::span<const matrix_view<const float>> layers, matrix_view<const float> x_calib,
                std::span<const float> act_mean, std::span<const tensor_view<F, Gran>> out, const search_outputs& outputs,
                std::span<std::byte> workspace, const options& o = {}, Exec&& exec = {}) {
  static_assert(!std::is_const_v<F>, "quant::awq::quantize: out must hold mutable views");
  const char* who = "quant::awq::quantize";
  detail::check_args(layers, x_calib, act_mean, out, outputs, o, who);
  const std::vector<std::size_t> rows = detail::rows_of(layers);  // the only allocation: one size per layer
  const detail::plan pl = detail::plan_for(std::span<const std::size_t>(rows), layers[0].cols(), x_calib.rows(),
                                           out[0].granularity(), o);
  const std::size_t need = detail::carve(nullptr, pl).bytes;
  if (workspace.size() < need)
    quant::detail::fail(who, ": workspace has ", workspace.size(), " bytes, needs ", need, " (awq::workspace_size)");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % 64 != 0) quant::detail::fail(who, ": workspace is not aligned to 64 bytes");
  return detail::run(layers, x_calib, act_mean, out, outputs, detail::carve(workspace.data(), pl), pl, o, exec);
}

/// Allocating convenience: AWQ of the layers sharing the input x_calib into new tensors of
/// granularity gran, with act_mean as above (empty: from x_calib).
template <class F, class Gran, class Exec = inline_executor>
  requires is_granularity_v<Gran> && executor<std::remove_reference_t<Exec>>
result<F, Gran> quantize(std::span<const matrix_view<const float>> layers, matrix_view<const float> x_calib,
                         std::span<const float> act_mean, const Gran& gran, const options& o = {}, Exec&& exec = {}) {
  const char* who = "quant::awq::quantize";
  if (layers.empty()) quant::detail::fail(who, ": layers is empty; pass the linear layers that share the input x_calib");
  result<F, Gran> res;
  std::vector<tensor_view<F, Gran>> views;
  res.tensors.reserve(layers.size());
  std::size_t blocks = 0;
  for (const auto& w : layers) {
    if (w.empty()) quant::detail::fail(who, ": a layer is empty (", w.rows(), " x ", w.cols(), ")");
    res.tensors.emplace_back(w.rows(), w.cols(), gran);
    views.push_back(res.tensors.back().view());
    blocks += views.back().grid().count();
  }
  res.scales.resize(layers[0].cols());
  res.losses.resize(o.n_grid);
  std::vector<float> clip(blocks);
  const std::size_t bytes = workspace_size<F>(layers, x_calib.rows(), gran, o);
  quant::detail::heap_workspace ws(bytes);
  res.rep = quantize(layers, x_calib, act_mean, std::span<const tensor_view<F, Gran>>(views),
                     search_outputs{res.scales, res.losses, clip}, std::span<std::byte>(ws.p, bytes), o, exec);
  for (unsigned k = 0; k < o.n_grid; ++k) res.alphas.push_back(static_cast<float>(double(k) / double(o.n_grid)));
  for (std::size_t l = 0, at = 0; l < layers.size(); ++l) {
    const std::size_t n = views[l].grid().count();
    res.clip.emplace_back(clip.begin() + static_cast<std::ptrdiff_t>(at), clip.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += n;
  }
  return res;
}
/// The same with the statistic computed from x_calib:
/// awq::quantize<int4>(layers, x, per_group<128, asymmetric, fp16>{}).
template <class F, class Gran, class Exec = inline_executor>
  requires is_granularity_v<Gran> && executor<std::remove_reference_t<Exec>>
result<F, Gran> quantize(std::span<const matrix_view<const float>> layers, matrix_view<const float> x_calib, const Gran& gran,
                         const options& o = {}, Exec&& exec = {}) {
  return quantize<F>(layers, x_calib, std::span<const float>{}, gran, o, exec);
}
/// One layer: awq::quantize<int4>(w, x, gran) (result.tensors[0]).
template <class F, class Gran, class Exec = inline_executor>
  requires is_granularity_v<Gran> && executor<std::remove_reference_t<Exec>>
result<F, Gran> quantize(matrix_view<const float> w, matrix_view<const float> x_calib, const Gran& gran, const options& o = {},
                         Exec&& exec = {}) {
  return quantize<F>(std::span<const matrix_view<const float>>(&w, 1), x_calib, std::span<const float>{}, gran, o, exec);
}

}  // namespace awq
QUANT_NAMESPACE_END
