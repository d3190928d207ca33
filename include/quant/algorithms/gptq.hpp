// quant/algorithms/gptq.hpp: GPTQ (Frantar et al., 2022), second-order weight quantization of one
// linear layer, on buffers the caller owns.
//
// GPTQ quantizes W (rows x cols; y = W x) one input column at a time and pushes each column's
// rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
// layer's inputs, H = 2 X^T X over calibration tokens X (tokens x cols):
//
//   U = upper Cholesky factor of (H + damp I)^-1        (U^T U = H^-1)
//   for each block of block_size columns [i1, i2):
//     for each column i in the block, every row r:
//       q = Q(w_ri)  with the row's group parameters (fitted when i starts a group)
//       e_r = (w_ri - q) / U_ii;   w_r[i+1, i2) -= e_r U_i[i+1, i2)
//     W[:, i2:] -= E U[i1:i2, i2:]                       (one GEMM: the lazy batch update)
//
// What this implementation does, step by step, and where it departs from the original
// (IST-DASLab/gptq; doc/design.md has the list):
//   - Hessian: hessian_accumulator keeps H as a running average over TOKENS,
//     H <- n/(n+t) H + 2/(n+t) X^T X, so batching changes H only by rounding (the original
//     counts sequences; the scale of H changes nothing in the result).
//   - Dead inputs (H_jj == 0): H_jj = 1 and column j of the working copy is zeroed, before
//     anything else (as the original).
//   - Act-order: columns processed by decreasing H_jj (a stable sort: ties in column order).
//   - Damping: damp * mean(diag H) added to the diagonal (default 0.01). If the factorization
//     fails, damp is multiplied by 10 and it is retried (options::damp_retries times); the damping
//     finally used is reported; if it still fails, quant::error. The original has no retry.
//   - The factor U comes from one Cholesky of the index-reversed H and one triangular inverse
//     (linalg::inverse_upper_factor), the same U as the original's chol -> inverse -> chol.
//   - Groups: the parameters (scale, zero point) of a group are fitted with quant's own
//     round-to-nearest fit (scheme/fit.hpp, options::fit: min-max or mse clipping search) on the
//     row's CURRENT weights when the pass reaches the group's first column. The original fits on
//     a copy that misses the updates made inside the current block when a group starts in the
//     middle of one (group size < block size); we use the updated weights (a knowing fix: with
//     group == block size, the default, both are the same). A block also ends early where a
//     group would start inside it and end past it, so a fit never sees columns that miss
//     updates: the result depends on the block size only through rounding.
//   - Static groups: parameters fitted before the pass on the original weights (dead columns
//     zeroed), one per group of the ORIGINAL column order; with act-order each column keeps the
//     group of its original index. The result is a natural-order tensor.
//   - Act-order without static groups: groups are runs of consecutive columns in processing
//     order. The result is a tensor with a permuted column order (tensor/storage.hpp): codes
//     stored in processing order with the input column of each, which dequantize and gemv apply
//     themselves (x is gathered once per call, the kernels stay the contiguous-group ones).
//     GPTQ checkpoints express the same thing with g_idx; io converts between the two.
//     Per-channel and per-tensor granularities have no groups to reorder: natural order.
//   - Everything in float32, as the original; the loss reported is sum (w - q)^2 / U_ii^2 / 2.
//
// Memory: quantize(w, hessian, out, workspace, options, exec) allocates nothing; its workspace
// (workspace_size) holds the working copy of W (unless quantize_in_place works in the caller's
// W), the cols x cols factor, one block of errors and O(rows + cols) bookkeeping. The block
// updates are matrix products through linalg::gemm (or the caller's gemm hook, e.g. a BLAS),
// run on the caller's executor together with the per-row column passes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../kernels/api.hpp"
#include "../kernels/threading.hpp"
#include "../layout/packing.hpp"
#include "../linalg/cholesky.hpp"
#include "../linalg/gemm.hpp"
#include "../scheme/fit.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"

QUANT_NAMESPACE_BEGIN
namespace gptq {

/// Options of gptq::quantize.
struct options {
  float damp = 0.01f;             ///< fraction of mean(diag H) added to the diagonal, > 0
  unsigned damp_retries = 4;      ///< on a failed factorization damp *= 10, at most this many times
  std::size_t block_size = 128;   ///< columns per lazy batch update, > 0
  bool act_order = false;         ///< process columns by decreasing H_jj
  bool static_groups = false;     ///< group parameters fixed from the original weights first
  quantize_options fit{};         ///< how a group's scale is chosen (scheme/fit.hpp)
  linalg::gemm_hook gemm{};       ///< replaces quant's GEMM in the block updates (e.g. a BLAS)
};

/// What a GPTQ pass did.
struct report {
  float damp = 0.0f;              ///< the damping fraction finally used
  unsigned damp_retries = 0;      ///< how many times it was raised
  std::size_t dead_columns = 0;   ///< inputs with H_jj == 0 (their weights quantized as zero)
  double loss = 0.0;              ///< sum over weights of (w - q)^2 / U_ii^2 / 2 (the original's "error")
  double factor_seconds = 0.0;    ///< wall time of the damping and factorization of H
  double pass_seconds = 0.0;      ///< of the column passes (quantize, in-block updates)
  double update_seconds = 0.0;    ///< of the lazy block updates (the GEMMs)
  double update_flops = 0.0;      ///< floating-point operations of those GEMMs (2 m n k each)
};

/// The column order gptq::quantize writes for these options: permuted for act-order with groups
/// and without static groups, natural otherwise.
template <class Gran>
constexpr column_order output_order(const options& o) noexcept {
  return o.act_order && !o.static_groups && Gran::kind == granularity_kind::group ? column_order::permuted
                                                                                  : column_order::natural;
}

// ------------------------------------------------------------------------------------------------
// Hessian accumulation

/// Adds the calibration tokens x (tokens x cols) to the running average H (cols x cols, row-major,
/// full symmetric) over `tokens` tokens so far: H <- n/(n+t) H + 2/(n+t) x^T x; tokens += t.
/// Allocates nothing. Throws quant::error for a size mismatch or a non-finite activation.
template <class Exec = inline_executor>
void accumulate_hessian(std::span<float> h, std::size_t& tokens, matrix_view<const float> x, Exec&& exec = {},
                        const linalg::gemm_hook& gemm = {}) {
  const char* who = "quant::gptq::accumulate_hessian";
  const std::size_t cols = x.cols();
  if (x.rows() == 0 || cols == 0) quant::detail::fail(who, ": x is empty (", x.rows(), " x ", cols, ")");
  if (h.size() != cols * cols)
    quant::detail::fail(who, ": h has ", h.size(), " elements, expected cols * cols = ", cols * cols, " for x with ", cols,
                 " columns");
  if (!quant::detail::all_finite<default_isa>(x))  // the SIMD check; the loop only names the culprit
    for (std::size_t r = 0; r < x.rows(); ++r)
      for (std::size_t c = 0; c < cols; ++c)
        if (!std::isfinite(x(r, c))) quant::detail::fail(who, ": x(", r, ", ", c, ") = ", x(r, c), "; activations must be finite");
  const double n = static_cast<double>(tokens), t = static_cast<double>(x.rows());
  const linalg::gemm_problem p{linalg::transpose::yes,
                               cols,
                               cols,
                               x.rows(),
                               static_cast<float>(2.0 / (n + t)),
                               x.data(),
                               x.ld(),
                               x.data(),
                               x.ld(),
                               static_cast<float>(n / (n + t)),
                               h.data(),
                               cols};
  // With no tokens yet beta is 0 and h's old contents are not read.
  if (gemm) gemm(p);
  else linalg::gemm(p, exec);
  tokens += x.rows();
}

/// An owning Hessian accumulator: add() batches of calibration tokens, then pass matrix() to
/// gptq::quantize.
class hessian_accumulator {
 public:
  explicit hessian_accumulator(std::size_t cols) : cols_(cols), h_(cols * cols, 0.0f) {
    if (cols == 0) quant::detail::fail("quant::gptq::hessian_accumulator: cols is 0");
  }
  template <class Exec = inline_executor>
  void add(matrix_view<const float> x, Exec&& exec = {}, const linalg::gemm_hook& gemm = {}) {
    if (x.cols() != cols_)
      quant::detail::fail("quant::gptq::hessian_accumulator::add: x has ", x.cols(), " columns, expected ", cols_);
    accumulate_hessian(std::span<float>(h_), tokens_, x, exec, gemm);
  }
  std::span<const float> matrix() const noexcept { return h_; }
  std::size_t cols() const noexcept { return cols_; }
  std::size_t tokens() const noexcept { return tokens_; }

 private:
  std::size_t cols_ = 0, tokens_ = 0;
  std::vector<float> h_;
};

// ------------------------------------------------------------------------------------------------
// Workspace

namespace detail {

/// The pieces of the workspace, carved in order by workspace_carver (kernels/activations.hpp);
/// with a null base only the size is counted.
struct buffers {
  float* work = nullptr;           ///< rows x cols working copy (none in place)
  float* factor = nullptr;         ///< cols x cols: H, then its factor U
  float* errors = nullptr;         ///< rows x block scaled errors of the current block
  std::uint32_t* perm = nullptr;   ///< the processing order
  std::uint8_t* zeros = nullptr;   ///< one zero point per scale, packed at the end
  double* loss = nullptr;          ///< per row
  float* row = nullptr;            ///< one row of scratch
  std::size_t bytes = 0;
};

inline buffers carve(std::byte* base, std::size_t rows, std::size_t cols, std::size_t block, std::size_t scale_count,
                     bool own_work) noexcept {
  quant::detail::workspace_carver c{base};
  buffers b;
  b.work = c.take<float>(own_work ? rows * cols : 0);
  b.factor = c.take<float>(cols * cols);
  b.errors = c.take<float>(rows * block);
  b.perm = c.take<std::uint32_t>(cols);
  b.zeros = c.take<std::uint8_t>(scale_count);
  b.loss = c.take<double>(rows);
  b.row = c.take<float>(cols);
  b.bytes = c.used;
  return b;
}

template <class F, class Gran>
std::size_t scale_count_of(std::size_t rows, std::size_t cols, const Gran& gran) {
  return storage<F, Gran>(rows, cols, gran).scale_count;
}

}  // namespace detail

/// Bytes of workspace gptq::quantize needs for a rows x cols layer (quantize_in_place: without
/// the working copy of W, in_place = true).
template <class F, class Gran>
std::size_t workspace_size(std::size_t rows, std::size_t cols, const Gran& gran = {}, const options& o = {},
                           bool in_place = false) {
  if (o.block_size == 0) quant::detail::fail("quant::gptq::workspace_size: block_size is 0");
  const std::size_t block = std::min(o.block_size, cols);
  return detail::carve(nullptr, rows, cols, block, detail::scale_count_of<F>(rows, cols, gran), !in_place).bytes;
}

// ------------------------------------------------------------------------------------------------
// The pass

namespace detail {

/// w[0, n) -= e * u[0, n)
QUANT_ALWAYS_INLINE void axpy_sub(float* w, const float* u, float e, std::size_t n) noexcept {
  using batch = xsimd::batch<float>;
  constexpr std::size_t k = batch::size;
  const batch be(e);
  std::size_t j = 0;
  for (; j + k <= n; j += k) xsimd::fnma(be, batch::load_unaligned(u + j), batch::load_unaligned(w + j)).store_unaligned(w + j);
  for (; j < n; ++j) w[j] -= e * u[j];
}

template <class F, class Gran, class Exec>
report run(matrix_view<const float> w_in, float* work, std::size_t ldw, std::span<const float> hessian,
           tensor_view<F, Gran> out, const buffers& b, const options& o, Exec& exec, bool work_holds_w) {
  using Fmt = std::remove_const_t<F>;
  using Scale = typename Gran::scale_type;
  constexpr bool asym = Gran::is_asymmetric;
  constexpr unsigned bits = format_traits<Fmt>::bits;
  const char* who = "quant::gptq::quantize";
  const std::size_t rows = out.rows(), cols = out.cols();
  const scale_grid& g = out.grid();
  const std::size_t block = std::min(o.block_size, cols);
  const bool permuted_out = out.permuted();
  const bool grouped = Gran::kind == granularity_kind::group;

  float* const u = b.factor;
  float* const errs = b.errors;
  std::uint32_t* const perm = b.perm;
  std::uint8_t* const zero_codes = b.zeros;
  double* const loss_rows = b.loss;
  float* const rowbuf = b.row;

  report rep;
  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
  const auto t_factor = clock::now();
  // Dead inputs and the processing order.
  auto diag = [&](std::size_t j) {
    const float d = hessian[j * cols + j];
    return d == 0.0f ? 1.0f : d;
  };
  for (std::size_t j = 0; j < cols; ++j) rep.dead_columns += hessian[j * cols + j] == 0.0f;
  std::iota(perm, perm + cols, std::uint32_t{0});
  if (o.act_order)
    std::stable_sort(perm, perm + cols, [&](std::uint32_t a, std::uint32_t b) { return diag(a) > diag(b); });

  // The factor U of the permuted, damped H; damping raised on failure.
  double mean_diag = 0.0;
  for (std::size_t j = 0; j < cols; ++j) mean_diag += diag(j);
  mean_diag /= static_cast<double>(cols);
  float damp = o.damp;
  for (unsigned attempt = 0;; ++attempt) {
    for (std::size_t i = 0; i < cols; ++i) {
      const float* src = hessian.data() + static_cast<std::size_t>(perm[i]) * cols;
      float* dst = u + i * cols;
      for (std::size_t j = 0; j < cols; ++j) dst[j] = src[perm[j]];
      if (hessian[static_cast<std::size_t>(perm[i]) * cols + perm[i]] == 0.0f) dst[i] = 1.0f;
      dst[i] += static_cast<float>(damp * mean_diag);
    }
    const std::size_t bad = linalg::inverse_upper_factor(cols, u, cols, exec);
    if (bad == cols) break;
    if (attempt == o.damp_retries)
      quant::detail::fail(who, ": the Hessian is not positive definite even with damping ", damp,
                          " * mean(diag H) (mean diag ", mean_diag, ", factorization failed at processed column ", bad,
                          " = input column ", perm[bad], "); more calibration tokens or a larger options::damp help");
    damp *= 10.0f;
    ++rep.damp_retries;
  }
  rep.damp = damp;
  rep.factor_seconds = seconds_since(t_factor);

  // From here on the caller's out is written.
  for (std::size_t r = 0; r < rows; ++r) std::memset(out.row_codes(r), 0, out.requirements().row_bytes);
  std::memset(zero_codes, 0, g.count());
  if (permuted_out)
    for (std::size_t i = 0; i < cols; ++i) out.input_columns()[i] = perm[i];
  auto store_params = [&](std::size_t k, const block_params<Scale>& p) {
    out.scales()[k] = p.stored;
    if constexpr (asym) zero_codes[k] = p.zero;
  };
  auto params_at = [&](std::size_t k) {
    block_params<Scale> p;
    p.stored = out.scales()[k];
    p.scale = out.scale(k);
    p.zero = zero_codes[k];
    return p;
  };
  auto is_dead = [&](std::size_t c) { return hessian[c * cols + c] == 0.0f; };

  // The working copy in processing order, dead columns zeroed.
  for (std::size_t r = 0; r < rows; ++r) {
    float* wr = work + r * ldw;
    if (work_holds_w) std::memcpy(rowbuf, wr, cols * sizeof(float));
    const float* src = work_holds_w ? rowbuf : &w_in(r, 0);
    for (std::size_t i = 0; i < cols; ++i) wr[i] = is_dead(perm[i]) ? 0.0f : src[perm[i]];
  }
  // Per-tensor and static groups: parameters from the original weights, dead columns zeroed.
  if (g.single) store_params(0, fit_block<Fmt, asym, Scale>(matrix_view<const float>(work, rows, cols, ldw), o.fit));
  if (grouped && o.static_groups) {
    for (std::size_t r = 0; r < rows; ++r) {
      const float* wr = work + r * ldw;
      for (std::size_t i = 0; i < cols; ++i) rowbuf[perm[i]] = wr[i];  // natural order, dead zeroed
      for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
        const std::size_t c0 = g.group_begin(gi), c1 = g.group_end(gi);
        store_params(g.index(r, gi), fit_block<Fmt, asym, Scale>(matrix_view<const float>(rowbuf + c0, 1, c1 - c0), o.fit));
      }
    }
  }
  const bool fit_in_pass = !g.single && !(grouped && o.static_groups);

  // The column pass, block by block; rows split over the executor.
  const std::size_t tasks = std::clamp<std::size_t>(rows / 16, 1, 64);
  for (std::size_t r = 0; r < rows; ++r) loss_rows[r] = 0.0;
  for (std::size_t i1 = 0, i2 = 0; i1 < cols; i1 = i2) {
    i2 = std::min(i1 + block, cols);
    if (fit_in_pass && grouped) {
      // A group that starts inside the block must end inside it, or its fit would see columns
      // past the block without this block's updates: such a block ends where that group starts.
      const std::size_t last = (i2 - 1) / g.group * g.group;
      if (last > i1 && std::min(last + g.group, cols) > i2) i2 = last;
    }
    const std::size_t nb = i2 - i1;
    const auto t_pass = clock::now();
    exec(tasks, [&](std::size_t t) {
      const auto [r0, r1] = quant::detail::split_rows(rows, tasks, t);
      // Rows in tiles, column by column across the tile: each row's column steps form one long
      // dependency chain (quantize, error, update of its next weights), and interleaving the
      // independent chains of several rows keeps the core busy. Per row, the same operations in
      // the same order as one row at a time.
      constexpr std::size_t tile = 8;
      for (std::size_t rt = r0; rt < r1; rt += tile) {
        const std::size_t nt = std::min(tile, r1 - rt);
        block_params<Scale> p[tile]{};
        std::size_t current_k[tile];
        double loss[tile];
        for (std::size_t j = 0; j < nt; ++j) current_k[j] = static_cast<std::size_t>(-1), loss[j] = 0.0;
        for (std::size_t i = i1; i < i2; ++i) {
          const float d = u[i * cols + i];
          const float* ui = u + i * cols + i + 1;
          const std::size_t rest = i2 - i - 1;
          const std::size_t code_col = permuted_out ? i : perm[i];
          for (std::size_t j = 0; j < nt; ++j) {
            const std::size_t r = rt + j;
            float* wr = work + r * ldw;
            std::size_t k;
            if (g.single) k = 0;
            else if (!fit_in_pass) k = g.index(r, perm[i] / g.group);
            else {
              const std::size_t gi = i / g.group;
              k = g.index(r, gi);
              if (i == g.group_begin(gi)) {
                const std::size_t c1 = g.group_end(gi);
                store_params(k, fit_block<Fmt, asym, Scale>(matrix_view<const float>(wr + i, 1, c1 - i), o.fit));
              }
            }
            if (k != current_k[j]) p[j] = params_at(k), current_k[j] = k;
            const float wv = wr[i];
            const std::uint8_t code = quant::detail::quantize_value<Fmt, asym>(wv, p[j].scale, p[j].zero);
            const float q = quant::detail::dequantize_value<Fmt, asym>(code, p[j].scale, p[j].zero);
            write_code(out.row_codes(r), code_col, bits, code);
            const float e = (wv - q) / d;
            loss[j] += static_cast<double>(e) * e;
            errs[r * block + (i - i1)] = e;
            wr[i] = q;
            axpy_sub(wr + i + 1, ui, e, rest);
          }
        }
        for (std::size_t j = 0; j < nt; ++j) loss_rows[rt + j] += loss[j] / 2.0;
      }
    });
    rep.pass_seconds += seconds_since(t_pass);
    if (i2 < cols) {  // W[:, i2:] -= E U[i1:i2, i2:]
      const auto t_update = clock::now();
      const linalg::gemm_problem p{linalg::transpose::no, rows, cols - i2, nb, -1.0f, errs, block,
                                   u + i1 * cols + i2, cols, 1.0f, work + i2, ldw};
      if (o.gemm) o.gemm(p);
      else linalg::gemm(p, exec);
      rep.update_seconds += seconds_since(t_update);
      rep.update_flops += 2.0 * static_cast<double>(rows) * static_cast<double>(cols - i2) * static_cast<double>(nb);
    }
  }
  if constexpr (asym)
    for (std::size_t k = 0; k < g.count(); ++k) write_code(out.zeros().data(), k, bits, zero_codes[k]);
  for (std::size_t r = 0; r < rows; ++r) rep.loss += loss_rows[r];
  return rep;
}

template <class F, class Gran>
void check_args(matrix_view<const float> w, std::span<const float> hessian, const tensor_view<F, Gran>& out,
                const options& o, const char* who) {
  if (w.empty()) quant::detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  quant::detail::check_same_shape(w.rows(), w.cols(), out.rows(), out.cols(), who, "w", "out");
  const std::size_t cols = w.cols();
  if (hessian.size() != cols * cols)
    quant::detail::fail(who, ": hessian has ", hessian.size(), " elements, expected cols * cols = ", cols * cols);
  if (!(o.damp > 0.0f) || !std::isfinite(o.damp)) quant::detail::fail(who, ": options::damp is ", o.damp, "; it must be > 0");
  if (o.block_size == 0) quant::detail::fail(who, ": options::block_size is 0");
  quant::detail::check_options(o.fit, who);
  const column_order want = output_order<Gran>(o);
  if ((want == column_order::permuted) != out.permuted())
    quant::detail::fail(who, ": out has a ", out.permuted() ? "permuted" : "natural",
                        " column order, but these options write a ",
                        want == column_order::permuted ? "permuted" : "natural",
                        " one (gptq::output_order; act-order with groups and without static groups is permuted)");
  if (!quant::detail::all_finite<default_isa>(w)) quant::detail::check_finite(w, who);
  for (std::size_t i = 0; i < cols; ++i) {
    const float d = hessian[i * cols + i];
    if (!std::isfinite(d) || d < 0.0f)
      quant::detail::fail(who, ": hessian(", i, ", ", i, ") = ", d, "; the diagonal of X^T X must be finite and >= 0");
  }
  if (!quant::detail::all_finite<default_isa>(matrix_view<const float>(hessian.data(), cols, cols)))
    for (std::size_t i = 0; i < cols; ++i)
      for (std::size_t j = 0; j < cols; ++j)
        if (!std::isfinite(hessian[i * cols + j]))
          quant::detail::fail(who, ": hessian(", i, ", ", j, ") = ", hessian[i * cols + j], "; it must be finite");
}

inline void check_ws(std::span<std::byte> ws, std::size_t need, const char* who) {
  if (ws.size() < need) quant::detail::fail(who, ": workspace has ", ws.size(), " bytes, needs ", need, " (gptq::workspace_size)");
  if (reinterpret_cast<std::uintptr_t>(ws.data()) % 64 != 0) quant::detail::fail(who, ": workspace is not aligned to 64 bytes");
}

}  // namespace detail

/// GPTQ of w (rows x cols, never modified) with the Hessian of its inputs (cols x cols,
/// row-major, e.g. hessian_accumulator::matrix()) into the caller's out (same shape, column order
/// output_order<Gran>(o)), using the caller's workspace (workspace_size<F>(rows, cols, gran, o)
/// bytes, 64-byte aligned). Allocates nothing; nothing is written to out if an argument is
/// rejected or the Hessian cannot be factored.
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
report quantize(matrix_view<const float> w, std::span<const float> hessian, tensor_view<F, Gran> out,
                std::span<std::byte> workspace, const options& o = {}, Exec&& exec = {}) {
  static_assert(!std::is_const_v<F>, "quant::gptq::quantize: out must be a mutable view");
  const char* who = "quant::gptq::quantize";
  detail::check_args(w, hessian, out, o, who);
  const std::size_t block = std::min(o.block_size, w.cols());
  const std::size_t need = detail::carve(nullptr, w.rows(), w.cols(), block, out.grid().count(), true).bytes;
  detail::check_ws(workspace, need, who);
  const detail::buffers b = detail::carve(workspace.data(), w.rows(), w.cols(), block, out.grid().count(), true);
  return detail::run(w, b.work, w.cols(), hessian, out, b, o, exec, false);
}

/// The same with w as the working buffer (no rows x cols copy in the workspace): on return w
/// holds the dequantized result, in its natural column order (what a sequential calibration
/// feeds the next layer with). Workspace: workspace_size<F>(rows, cols, gran, o, true).
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
report quantize_in_place(matrix_view<float> w, std::span<const float> hessian, tensor_view<F, Gran> out,
                         std::span<std::byte> workspace, const options& o = {}, Exec&& exec = {}) {
  static_assert(!std::is_const_v<F>, "quant::gptq::quantize_in_place: out must be a mutable view");
  const char* who = "quant::gptq::quantize_in_place";
  const matrix_view<const float> wc(w.data(), w.rows(), w.cols(), w.ld());
  detail::check_args(wc, hessian, out, o, who);
  const std::size_t block = std::min(o.block_size, w.cols());
  const std::size_t need = detail::carve(nullptr, w.rows(), w.cols(), block, out.grid().count(), false).bytes;
  detail::check_ws(workspace, need, who);
  const detail::buffers b = detail::carve(workspace.data(), w.rows(), w.cols(), block, out.grid().count(), false);
  const report rep = detail::run(wc, w.data(), w.ld(), hessian, out, b, o, exec, true);
  // The working copy holds the dequantized weights in processing order: back to natural order.
  for (std::size_t r = 0; r < w.rows(); ++r) {
    float* wr = w.data() + r * w.ld();
    std::memcpy(b.row, wr, w.cols() * sizeof(float));
    for (std::size_t i = 0; i < w.cols(); ++i) wr[b.perm[i]] = b.row[i];
  }
  return rep;
}

/// Allocating convenience: GPTQ of w into a new tensor that dequantize and gemv take as is.
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
tensor<F, Gran> quantize(matrix_view<const float> w, std::span<const float> hessian, const Gran& gran,
                         const options& o = {}, Exec&& exec = {}, report* rep = nullptr) {
  if (w.empty()) quant::detail::fail("quant::gptq::quantize: w is empty (", w.rows(), " x ", w.cols(), ")");
  tensor<F, Gran> t(w.rows(), w.cols(), gran, output_order<Gran>(o));
  const std::size_t bytes = workspace_size<F>(w.rows(), w.cols(), gran, o);
  quant::detail::heap_workspace ws(bytes);
  const report r = quantize(w, hessian, t.view(), std::span<std::byte>(ws.p, bytes), o, exec);
  if (rep) *rep = r;
  return t;
}
/// The same for a static granularity: gptq::quantize<int4, per_group<128>>(w, hessian, options).
template <class F, class Gran>
tensor<F, Gran> quantize(matrix_view<const float> w, std::span<const float> hessian, const options& o = {}) {
  return quantize<F, Gran>(w, hessian, Gran{}, o);
}

/// The relative output error of an approximation q of w (both rows x cols, e.g. a dequantized
/// tensor) on the calibration inputs whose Hessian is given: ||(W - Q) X^T||^2 / ||W X^T||^2 =
/// tr(D H D^T) / tr(W H W^T), D = W - Q (the scale of H cancels; no damping). This is the error
/// on the calibration tokens that a GPTQ report compares with round-to-nearest, computed without
/// keeping the tokens. Costs 2 rows cols^2 flops (linalg::gemm on exec, or o.gemm when set) and
/// allocates 2 x 128 x cols floats. Returns 0 when W X^T is 0 and q == w. Throws quant::error for
/// mismatched shapes or sizes.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
double output_error(matrix_view<const float> w, matrix_view<const float> q, std::span<const float> hessian,
                    Exec&& exec = {}, const linalg::gemm_hook& gemm = {}) {
  const char* who = "quant::gptq::output_error";
  if (w.empty()) quant::detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  quant::detail::check_same_shape(w.rows(), w.cols(), q.rows(), q.cols(), who, "w", "q");
  const std::size_t rows = w.rows(), cols = w.cols();
  if (hessian.size() != cols * cols)
    quant::detail::fail(who, ": hessian has ", hessian.size(), " elements, expected cols * cols = ", cols * cols);
  constexpr std::size_t rb = 128;  // rows per block: [W rows; D rows] times H in one product
  std::vector<float> a(2 * rb * cols), c(2 * rb * cols);
  double num = 0.0, den = 0.0;
  for (std::size_t r0 = 0; r0 < rows; r0 += rb) {
    const std::size_t n = std::min(rb, rows - r0);
    for (std::size_t i = 0; i < n; ++i) {
      const float* wr = w.data() + (r0 + i) * w.ld();
      const float* qr = q.data() + (r0 + i) * q.ld();
      float* aw = a.data() + i * cols;
      float* ad = a.data() + (n + i) * cols;
      for (std::size_t j = 0; j < cols; ++j) aw[j] = wr[j], ad[j] = wr[j] - qr[j];
    }
    const linalg::gemm_problem p{linalg::transpose::no, 2 * n, cols, cols, 1.0f, a.data(), cols, hessian.data(), cols,
                                 0.0f, c.data(), cols};
    if (gemm)
      gemm(p);
    else
      linalg::gemm(p, exec);
    for (std::size_t i = 0; i < 2 * n; ++i) {
      double s = 0.0;
      const float* ar = a.data() + i * cols;
      const float* cr = c.data() + i * cols;
      for (std::size_t j = 0; j < cols; ++j) s += double{ar[j]} * cr[j];
      (i < n ? den : num) += s;
    }
  }
  if (!(den > 0.0)) return num > 0.0 ? std::numeric_limits<double>::infinity() : 0.0;
  return num / den;
}

/// The same for a quantized tensor (any column order): dequantizes it (rows x cols floats) first.
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
double output_error(matrix_view<const float> w, const tensor<F, Gran>& q, std::span<const float> hessian,
                    Exec&& exec = {}, const linalg::gemm_hook& gemm = {}) {
  quant::detail::check_same_shape(w.rows(), w.cols(), q.rows(), q.cols(), "quant::gptq::output_error", "w", "q");
  std::vector<float> d(q.rows() * q.cols());
  dequantize(q, matrix_view<float>(d.data(), q.rows(), q.cols()));
  return output_error(w, matrix_view<const float>(d.data(), q.rows(), q.cols()), hessian, exec, gemm);
}

}  // namespace gptq
QUANT_NAMESPACE_END
