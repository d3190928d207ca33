// quant/qat.hpp: quantization-aware training (QAT) primitives on buffers the caller owns: fake
// quantization for the forward pass of a training graph, the straight-through gradients for the
// backward pass, learnable scales and zero points (LSQ, Esser et al. 2019; LSQ+), and the export
// of trained weights into a quant tensor.
//
// Forward with the library's scale rules (scheme/fit.hpp, quantize_options included):
//   fake_quantize<F>(w, out, gran, options)  writes dequantize(quantize<F>(w, gran, options)) bit
//   for bit (each stored scale rounded to Gran's scale type, as a tensor holds it), in one pass
//   and without a tensor; fit<F>(...) or the overload with `used` give the parameters as floats.
// Forward with caller-given (learnable) parameters, one per block of the scale grid:
//   s' = scale_traits<Scale>::decode(encode(s))     the scale as the tensor would store it
//   z' = clamp(rne(z), 0, 2^bits - 1)                 the integer zero point (asymmetric only)
//   symmetric:   u = w / s',  code = encode(u),                  w_hat = s' * decode(code)
//   asymmetric:  u = w / s',  q = clamp(rne(u) + z', 0, 2^bits - 1), w_hat = s' * (q - z')
//   (s' = 0: u = 0, as quantize does for an all-zero block). Equal, bit for bit, to
//   dequantize(qat::quantize<F>(w, params, gran)), and to fake_quantize when the parameters are
//   the ones fit<F> returns.
// Backward: with v = w_hat / s' the value in scale units (decode(code), or q - z') and the range
//   [lo, hi] = [min code value, max code value] of the format (format_range<F>(): [-8, 7] for
//   int4, [-1, 1] for nf4, [-448, 448] for e4m3), or [-z', 2^bits - 1 - z'] for asymmetric
//   schemes, a weight is inside when lo <= u <= hi (u itself, not rounded: LSQ's definition;
//   code-table and minifloat formats included; the edges are widened by edge_slack = 2^-20 of
//   their magnitude, so that the extremes of a min-max block, which the float quotient w / s' can
//   put an ulp beyond hi, count as inside). Then, for dL/dw_hat = g:
//   dL/dw = g * [inside]                                    (straight-through estimator)
//   dL/ds = sum over the block of g * (v - u * [inside])    (inside: v - u, the rounding's
//           residual; outside: v, which is the clipped edge value lo or hi because encode saturates)
//   dL/dz = -s' * sum over the block of g * [outside]       (asymmetric: zero inside, -s' outside)
//   each of dL/ds and dL/dz times 1/sqrt(n * q_max) with backward_options::lsq_grad_scale (n the
//   weights of the block, q_max = lsq_qmax<F, Gran>(): hi of a symmetric format, 2^bits - 1 for
//   asymmetric). These are the exact derivatives of the surrogate in which rne and encode are
//   replaced, around the current point, by the identity plus their constant residual, with the
//   clamp kept: where a weight is clipped, the true piecewise derivative; the rounding of s and z
//   to s' and z' is passed straight through as well.
// Training with these gradients alone, latent weights that the loss pushes towards a rounding
// threshold cross it, the code jumps a whole step, the gradient turns, and they oscillate around
// it; a term lambda ||W' - sg(w_hat)||^2 in the loss (oscillation dampening, Nagel et al. 2022)
// keeps a weight on its code unless moving it pays for the step. examples/qat_demo.cpp uses the
// loss's own curvature for lambda and measures what it gives against RTN and GPTQ.
//
// Every function validates its arguments first (shapes, sizes, finite weights and gradients,
// finite non-negative scales, finite zero points, overlapping buffers) and throws quant::error
// naming the argument and the values; nothing is written before. Outputs may be the very buffer
// of an input (same data and ld: in place), never a partial overlap. The kernels run on the SIMD
// tier of the build (kernels/isa.hpp) through the quantizer's own encoders
// (kernels/simd/quantize.hpp); qat::reference holds the scalar oracle. Single-threaded.
//
//   std::vector<float> s(qat::param_count(rows, cols, G{})), z(s.size());
//   qat::fit<int4, G>(w, {s, z});                                  // LSQ initialization
//   qat::fake_quantize_with<int4, G>(w, {s, z}, w_hat);            // forward
//   qat::backward<int4, G>(w, {s, z}, g, grad_w, {grad_s, grad_z}); // backward
//   auto t = qat::quantize<int4, G>(w, {s, z});                    // the trained layer, stored
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "config.hpp"
#include "core/error.hpp"
#include "core/matrix_view.hpp"
#include "core/scalar_types.hpp"
#include "formats/format_traits.hpp"
#include "kernels/api.hpp"
#include "kernels/isa.hpp"
#include "kernels/simd/quantize.hpp"
#include "layout/packing.hpp"
#include "scheme/fit.hpp"
#include "scheme/granularity.hpp"
#include "tensor/tensor.hpp"
#include "tensor/tensor_view.hpp"

QUANT_NAMESPACE_BEGIN
namespace qat {

/// Fake-quantization parameters as floats, one entry per scale of the grid (row-major by (row,
/// group); param_count() entries): the scales, and for asymmetric schemes the zero points (empty
/// for symmetric ones). T is float (written) or const float (read); a mutable view converts.
template <class T>
struct param_view {
  std::span<T> scale;
  std::span<T> zero;

  constexpr param_view() noexcept = default;
  constexpr param_view(std::span<T> scales, std::span<T> zeros = {}) noexcept : scale(scales), zero(zeros) {}
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr param_view(param_view<U> other) noexcept : scale(other.scale), zero(other.zero) {}
};

/// Options of backward().
struct backward_options {
  /// Multiply dL/ds and dL/dz by LSQ's gradient scale 1/sqrt(n * q_max) (n: weights of the block).
  bool lsq_grad_scale = false;
};

/// Entries a param_view needs for a rows x cols matrix: 1 per tensor, rows per channel,
/// rows * ceil(cols / G) per group. Throws quant::error for an empty shape or a zero group size.
template <class Gran>
std::size_t param_count(std::size_t rows, std::size_t cols, const Gran& gran = {}) {
  return grid_of(gran, rows, cols, "quant::qat::param_count").count();
}

/// The relative widening of the range's edges in the inside test: 2^-20, a few float roundings.
inline constexpr float edge_slack = 9.5367431640625e-07f;

namespace detail {
using quant::detail::fail;

/// The parameters of one block from caller-given floats: s rounded to Scale, z to its integer code.
template <class F, bool Asym, class Scale>
block_params<Scale> rounded_params(float s, float z) noexcept {
  block_params<Scale> p;
  p.stored = scale_traits<Scale>::encode(s);
  p.scale = scale_traits<Scale>::decode(p.stored);
  if constexpr (Asym) {
    constexpr float qmax = static_cast<float>((1u << format_traits<F>::bits) - 1u);
    const float r = std::nearbyint(z);
    p.zero = static_cast<std::uint8_t>(r < 0.0f ? 0.0f : (r > qmax ? qmax : r));
  }
  (void)z;
  return p;
}

/// [lo, hi]: the values of u = w / s' that count as inside (see the top of this header), each
/// widened by edge_slack of its magnitude.
template <class F, bool Asym>
std::pair<float, float> inside_range(std::uint8_t z) noexcept {
  float lo = format_range<F>().min, hi = format_range<F>().max;
  if constexpr (Asym) lo = -static_cast<float>(z), hi = static_cast<float>((1u << format_traits<F>::bits) - 1u) - z;
  return {lo - std::fabs(lo) * edge_slack, hi + std::fabs(hi) * edge_slack};
}

/// The sums backward() makes over one block.
struct block_sums {
  double ds = 0.0;        ///< sum g * (v - u [inside])
  double outside = 0.0;   ///< sum g [outside]
  std::size_t clipped = 0;
};

/// One weight of backward(), the scalar definition every path follows: writes dL/dw to gw and
/// adds to the block's sums.
template <class F, bool Asym, class Scale>
QUANT_ALWAYS_INLINE void backward_one(float w, float g, const block_params<Scale>& p, float lo, float hi, float& gw,
                                      float& ds, float& outside, std::size_t& clipped) noexcept {
  const float u = p.scale == 0.0f ? 0.0f : w / p.scale;
  const std::uint8_t c = quant::detail::quantize_value<F, Asym>(w, p.scale, p.zero);
  const float v = Asym ? static_cast<float>(c) - static_cast<float>(p.zero) : format_traits<F>::decode(c);
  const bool in = u >= lo && u <= hi;
  gw = in ? g : 0.0f;
  ds += g * (v - (in ? u : 0.0f));
  if (!in) outside += g, ++clipped;
}

/// The block kernels on tier Isa, built on the quantizer's encoders (quantize_kernel).
template <class F, bool Asym, class Scale, class Isa>
struct kernel {
  using qk = quant::detail::quantize_kernel<F, Asym, Scale, Isa>;
  using fbatch = typename qk::fbatch;
  static constexpr std::size_t lanes = qk::lanes;
  static constexpr unsigned bits = format_traits<F>::bits;

  /// v = w_hat / s' of a batch (u = w / s', s' > 0), exactly what the quantizer's encode gives.
  QUANT_ALWAYS_INLINE static fbatch values(const typename qk::encoder& e, fbatch w, fbatch u, fbatch z) noexcept {
    using quant::detail::encode_path;
    if constexpr (Asym) {
      constexpr float qmax = static_cast<float>((1u << bits) - 1u);
      return xsimd::min(xsimd::max(xsimd::nearbyint(u) + z, fbatch(0.0f)), fbatch(qmax)) - z;
    } else if constexpr (qk::path == encode_path::integer) {  // integer_traits::encode, then decode
      constexpr float lo = -static_cast<float>(1u << (bits - 1)), hi = static_cast<float>((1u << (bits - 1)) - 1u);
      fbatch r = xsimd::nearbyint(u);
      r = xsimd::select(r == r, r, fbatch(0.0f));
      return xsimd::min(xsimd::max(r, fbatch(lo)), fbatch(hi));
    } else {
      (void)u, (void)z;
      return quant::detail::lookup_values<(std::size_t{1} << bits)>(e.codes(w),
                                                                     quant::detail::code_value_table<F>().data());
    }
  }

  /// dL/dw of n weights of one block into gw, the block's sums into acc.
  static void backward(const float* w, const float* g, std::size_t n, const block_params<Scale>& p, float* gw,
                       bool scalar, block_sums& acc) noexcept {
    const auto [lo, hi] = inside_range<F, Asym>(p.zero);
    std::size_t i = 0;
    if (p.scale != 0.0f && !scalar) {
      const typename qk::encoder e(p);
      const fbatch s(p.scale), z(static_cast<float>(p.zero)), vlo(lo), vhi(hi), zero(0.0f), one(1.0f);
      constexpr std::size_t chunk = 2048;  // float partial sums stay short; their totals go to double
      while (i + lanes <= n) {
        const std::size_t end = n - i > chunk ? i + chunk : n;
        fbatch a_ds(0.0f), a_out(0.0f), a_cnt(0.0f);
        for (; i + lanes <= end; i += lanes) {
          const fbatch wv = fbatch::load_unaligned(w + i), gv = fbatch::load_unaligned(g + i);
          const fbatch u = wv / s;
          const fbatch v = values(e, wv, u, z);
          const auto in = (u >= vlo) & (u <= vhi);
          xsimd::select(in, gv, zero).store_unaligned(gw + i);
          a_ds = xsimd::fma(gv, v - xsimd::select(in, u, zero), a_ds);
          a_out += xsimd::select(in, zero, gv);
          a_cnt += xsimd::select(in, zero, one);
        }
        acc.ds += static_cast<double>(xsimd::hadd(a_ds));
        acc.outside += static_cast<double>(xsimd::hadd(a_out));
        acc.clipped += static_cast<std::size_t>(xsimd::hadd(a_cnt));
      }
    }
    float ds = 0.0f, out = 0.0f;
    for (; i < n; ++i) backward_one<F, Asym>(w[i], g[i], p, lo, hi, gw[i], ds, out, acc.clipped);
    acc.ds += ds, acc.outside += out;
  }
};

inline void check_same_shape(matrix_view<const float> a, std::size_t rows, std::size_t cols, const char* who,
                             const char* arg) {
  if (a.rows() != rows || a.cols() != cols)
    fail(who, ": ", arg, " is ", a.rows(), " x ", a.cols(), ", expected the shape of w, ", rows, " x ", cols);
}

/// Rejects a partial overlap of two matrices; the very same memory (data and ld) is allowed.
inline void check_overlap(matrix_view<const float> a, matrix_view<const float> b, const char* who, const char* an,
                          const char* bn) {
  const float *a0 = a.data(), *a1 = a0 + (a.rows() - 1) * a.ld() + a.cols();
  const float *b0 = b.data(), *b1 = b0 + (b.rows() - 1) * b.ld() + b.cols();
  if (a0 == b0 && a.ld() == b.ld()) return;
  if (a0 < b1 && b0 < a1)
    fail(who, ": ", an, " overlaps ", bn, " without being the same buffer; pass the same memory (same data and ld) "
         "for in-place use, or separate buffers");
}

template <class T>
bool spans_overlap(std::span<T> a, std::span<const float> b) noexcept {
  return !a.empty() && !b.empty() && a.data() < b.data() + b.size() && b.data() < a.data() + a.size();
}

inline void check_finite(matrix_view<const float> m, const char* who, const char* arg) {
  if (quant::detail::all_finite<default_isa>(m)) return;
  for (std::size_t r = 0; r < m.rows(); ++r)
    for (std::size_t c = 0; c < m.cols(); ++c)
      if (!std::isfinite(m(r, c))) fail(who, ": ", arg, "(", r, ", ", c, ") = ", m(r, c), "; it must be finite");
}

/// Sizes of a param_view: `count` scales; `count` zero points for asymmetric schemes, none else.
template <bool Asym, class T>
void check_param_sizes(param_view<T> p, std::size_t count, const char* who, const char* arg, bool optional) {
  if (!(optional && p.scale.empty()) && p.scale.size() != count)
    fail(who, ": ", arg, ".scale has ", p.scale.size(), " entries, expected ", count, " (one per scale of the grid)");
  if constexpr (Asym) {
    if (!(optional && p.zero.empty()) && p.zero.size() != count)
      fail(who, ": ", arg, ".zero has ", p.zero.size(), " entries, expected ", count, " (one per scale of the grid)");
  } else if (!p.zero.empty()) {
    fail(who, ": ", arg, ".zero has ", p.zero.size(), " entries; a symmetric scheme has no zero points");
  }
}

/// Caller-given parameters: sizes, scales finite and >= 0, zero points finite.
template <bool Asym>
void check_params(param_view<const float> p, std::size_t count, const char* who) {
  check_param_sizes<Asym>(p, count, who, "params", false);
  for (std::size_t k = 0; k < count; ++k)
    if (!(p.scale[k] >= 0.0f && std::isfinite(p.scale[k])))
      fail(who, ": params.scale[", k, "] = ", p.scale[k], "; scales must be finite and >= 0");
  if constexpr (Asym)
    for (std::size_t k = 0; k < count; ++k)
      if (!std::isfinite(p.zero[k])) fail(who, ": params.zero[", k, "] = ", p.zero[k], "; zero points must be finite");
}

/// The common checks of w and an output of its shape.
inline void check_w_out(matrix_view<const float> w, matrix_view<const float> out, const char* who, const char* arg) {
  if (w.empty()) fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  check_same_shape(out, w.rows(), w.cols(), who, arg);
  check_overlap(out, w, who, arg, "w");
}

/// One block of the scale grid: rows [r, r + nr), columns [c0, c0 + n), scale index k.
struct block {
  std::size_t r, nr, c0, n;
};
inline block block_at(const scale_grid& g, std::size_t k) noexcept {
  if (g.single) return {0, g.rows, 0, g.cols};
  const std::size_t gi = k % g.groups_per_row;
  return {k / g.groups_per_row, 1, g.group_begin(gi), g.group_end(gi) - g.group_begin(gi)};
}

/// q_max of LSQ's gradient scale (lsq_qmax).
template <class F, bool Asym>
float qmax_of() noexcept {
  if constexpr (Asym) return static_cast<float>((1u << format_traits<F>::bits) - 1u);
  else return format_range<F>().max > 0.0f ? format_range<F>().max : format_range<F>().max_abs();
}

/// The functions of this header on tier Isa, for validated arguments. They depend on the format,
/// the symmetry and the scale type only; the granularity reaches them as the scale grid.
template <class F, bool Asym, class Scale, class Isa>
struct driver {
  using K = kernel<F, Asym, Scale, Isa>;
  using qk = typename K::qk;

  static block_params<Scale> params(param_view<const float> p, std::size_t k) noexcept {
    return rounded_params<F, Asym, Scale>(p.scale[k], Asym ? p.zero[k] : 0.0f);
  }

  /// The library's parameters of every block into `used` (where not empty) and, when out is
  /// not empty, the fake-quantized weights.
  static void fake_quantize(matrix_view<const float> w, matrix_view<float> out, param_view<float> used,
                            const scale_grid& g, const quantize_options& o) {
    const bool scalar = qk::use_scalar();
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const block_params<Scale> p = qk::fit(&w(b.r, b.c0), w.ld(), b.nr, b.n, o, scalar);
      if (!used.scale.empty()) used.scale[k] = p.scale;
      if (!used.zero.empty()) used.zero[k] = static_cast<float>(p.zero);
      if (!out.empty())
        for (std::size_t i = 0; i < b.nr; ++i) qk::dequantize(&w(b.r + i, b.c0), b.n, p, &out(b.r + i, b.c0), scalar);
    }
  }

  static void fake_quantize_with(matrix_view<const float> w, param_view<const float> p, matrix_view<float> out,
                                 const scale_grid& g) {
    const bool scalar = qk::use_scalar();
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const block_params<Scale> bp = params(p, k);
      for (std::size_t i = 0; i < b.nr; ++i) qk::dequantize(&w(b.r + i, b.c0), b.n, bp, &out(b.r + i, b.c0), scalar);
    }
  }

  /// Returns the number of clipped weights.
  static std::size_t backward(matrix_view<const float> w, param_view<const float> p, matrix_view<const float> grad_out,
                              matrix_view<float> grad_w, param_view<float> grad_p, const scale_grid& g, bool lsq) {
    const bool scalar = qk::use_scalar();
    std::size_t clipped = 0;
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const block_params<Scale> bp = params(p, k);
      block_sums s;
      for (std::size_t i = 0; i < b.nr; ++i)
        K::backward(&w(b.r + i, b.c0), &grad_out(b.r + i, b.c0), b.n, bp, &grad_w(b.r + i, b.c0), scalar, s);
      clipped += s.clipped;
      const double f = lsq ? 1.0 / std::sqrt(static_cast<double>(b.nr * b.n) * qmax_of<F, Asym>()) : 1.0;
      if (!grad_p.scale.empty()) grad_p.scale[k] = static_cast<float>(s.ds * f);
      if (!grad_p.zero.empty()) grad_p.zero[k] = static_cast<float>(-static_cast<double>(bp.scale) * s.outside * f);
    }
    return clipped;
  }

  /// Codes, scales and zero points of w under p into the sections of a tensor (row_bytes per row).
  static void quantize(matrix_view<const float> w, param_view<const float> p, std::uint8_t* codes,
                       std::size_t row_bytes, Scale* scales, std::span<std::uint8_t> zeros, const scale_grid& g) {
    const bool scalar = qk::use_scalar();
    std::vector<std::uint8_t> row(g.cols);  // one row, a byte per code (allocated before any write)
    if (!zeros.empty()) std::memset(zeros.data(), 0, zeros.size());
    for (std::size_t r = 0; r < g.rows; ++r) {
      for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
        const std::size_t c0 = g.group_begin(gi), k = g.index(r, gi);
        const block_params<Scale> bp = params(p, k);
        scales[k] = bp.stored;
        if constexpr (Asym) write_code(zeros.data(), k, format_traits<F>::bits, bp.zero);
        qk::encode(&w(r, c0), g.group_end(gi) - c0, bp, row.data() + c0, scalar);
      }
      quant::detail::pack_row<format_traits<F>::bits, Isa>(row.data(), g.cols, codes + r * row_bytes);
    }
  }
};

/// The scalar oracle on the grid (qat::reference's bodies).
template <class F, bool Asym, class Scale>
struct reference_driver {
  static void fake_quantize_with(matrix_view<const float> w, param_view<const float> p, matrix_view<float> out,
                                 const scale_grid& g) {
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const auto bp = rounded_params<F, Asym, Scale>(p.scale[k], Asym ? p.zero[k] : 0.0f);
      for (std::size_t r = b.r; r < b.r + b.nr; ++r)
        for (std::size_t c = b.c0; c < b.c0 + b.n; ++c)
          out(r, c) = quant::detail::dequantize_value<F, Asym>(
              quant::detail::quantize_value<F, Asym>(w(r, c), bp.scale, bp.zero), bp.scale, bp.zero);
    }
  }
  static void fake_quantize(matrix_view<const float> w, matrix_view<float> out, const scale_grid& g,
                            const quantize_options& o) {
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const block_params<Scale> p = fit_block<F, Asym, Scale>({&w(b.r, b.c0), b.nr, b.n, w.ld()}, o);
      for (std::size_t r = b.r; r < b.r + b.nr; ++r)
        for (std::size_t c = b.c0; c < b.c0 + b.n; ++c)
          out(r, c) = quant::detail::dequantize_value<F, Asym>(
              quant::detail::quantize_value<F, Asym>(w(r, c), p.scale, p.zero), p.scale, p.zero);
    }
  }
  static std::size_t backward(matrix_view<const float> w, param_view<const float> p, matrix_view<const float> grad_out,
                              matrix_view<float> grad_w, param_view<float> grad_p, const scale_grid& g, bool lsq) {
    std::size_t clipped = 0;
    for (std::size_t k = 0; k < g.count(); ++k) {
      const block b = block_at(g, k);
      const auto bp = rounded_params<F, Asym, Scale>(p.scale[k], Asym ? p.zero[k] : 0.0f);
      const auto [lo, hi] = inside_range<F, Asym>(bp.zero);
      double ds = 0.0, outside = 0.0;
      for (std::size_t r = b.r; r < b.r + b.nr; ++r)
        for (std::size_t c = b.c0; c < b.c0 + b.n; ++c) {
          float d = 0.0f, o = 0.0f;
          backward_one<F, Asym>(w(r, c), grad_out(r, c), bp, lo, hi, grad_w(r, c), d, o, clipped);
          ds += d, outside += o;
        }
      const double f = lsq ? 1.0 / std::sqrt(static_cast<double>(b.nr * b.n) * qmax_of<F, Asym>()) : 1.0;
      if (!grad_p.scale.empty()) grad_p.scale[k] = static_cast<float>(ds * f);
      if (!grad_p.zero.empty()) grad_p.zero[k] = static_cast<float>(-static_cast<double>(bp.scale) * outside * f);
    }
    return clipped;
  }
};

template <class F, class Gran, class Isa = default_isa>
using driver_for = driver<F, Gran::is_asymmetric, typename Gran::scale_type, Isa>;
template <class F, class Gran>
using reference_for = reference_driver<F, Gran::is_asymmetric, typename Gran::scale_type>;

}  // namespace detail

/// q_max of LSQ's gradient scale: the largest code value of a symmetric format (7 for int4, 1 for
/// nf4, 6 for e2m1, 448 for e4m3; its largest magnitude if no code is positive), 2^bits - 1 for an
/// asymmetric scheme.
template <class F, class Gran>
float lsq_qmax() noexcept {
  return detail::qmax_of<F, Gran::is_asymmetric>();
}

/// The parameters the library's quantizer chooses for every block of w (scheme/fit.hpp, with
/// options: min-max or the mse search) into out, as floats: each scale rounded to Gran's scale
/// type and decoded, each zero point the integer code (asymmetric). LSQ's initialization, and the
/// parameters fake_quantize uses.
template <class F, class Gran>
void fit(matrix_view<const float> w, param_view<float> out, const Gran& gran = Gran{},
         const quantize_options& options = {}) {
  const char* who = "quant::qat::fit";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  const scale_grid g = grid_of(gran, w.rows(), w.cols(), who);
  detail::check_param_sizes<Gran::is_asymmetric>(out, g.count(), who, "out", false);
  quant::detail::check_options(options, who);
  detail::check_finite(w, who, "w");
  detail::driver_for<F, Gran>::fake_quantize(w, {}, out, g, options);
}

/// Fake quantization with the library's scale rules: out = dequantize(quantize<F>(w, gran,
/// options)) bit for bit, without building the tensor. out has the shape of w (or is w itself).
template <class F, class Gran>
void fake_quantize(matrix_view<const float> w, matrix_view<float> out, const Gran& gran = Gran{},
                   const quantize_options& options = {}) {
  const char* who = "quant::qat::fake_quantize";
  detail::check_w_out(w, out, who, "out");
  const scale_grid g = grid_of(gran, w.rows(), w.cols(), who);
  quant::detail::check_options(options, who);
  detail::check_finite(w, who, "w");
  detail::driver_for<F, Gran>::fake_quantize(w, out, {}, g, options);
}

/// The same, also writing the parameters it used (what fit returns) into `used`, for backward().
template <class F, class Gran>
void fake_quantize(matrix_view<const float> w, matrix_view<float> out, param_view<float> used,
                   const Gran& gran = Gran{}, const quantize_options& options = {}) {
  const char* who = "quant::qat::fake_quantize";
  detail::check_w_out(w, out, who, "out");
  const scale_grid g = grid_of(gran, w.rows(), w.cols(), who);
  detail::check_param_sizes<Gran::is_asymmetric>(used, g.count(), who, "used", false);
  quant::detail::check_options(options, who);
  detail::check_finite(w, who, "w");
  detail::driver_for<F, Gran>::fake_quantize(w, out, used, g, options);
}

/// Fake quantization with caller-given (learnable) scales and zero points, as defined at the top
/// of this header: out = s' * decode(encode(w / s')), or s' * (q - z'). out has the shape of w (or
/// is w itself).
template <class F, class Gran>
void fake_quantize_with(matrix_view<const float> w, param_view<const float> params, matrix_view<float> out,
                        const Gran& gran = Gran{}) {
  const char* who = "quant::qat::fake_quantize_with";
  detail::check_w_out(w, out, who, "out");
  const scale_grid g = grid_of(gran, w.rows(), w.cols(), who);
  detail::check_params<Gran::is_asymmetric>(params, g.count(), who);
  detail::check_finite(w, who, "w");
  detail::driver_for<F, Gran>::fake_quantize_with(w, params, out, g);
}

/// The backward pass of fake_quantize_with (and of fake_quantize, given the parameters it used):
/// from grad_out = dL/dw_hat writes grad_w = dL/dw (the straight-through estimator with the
/// clipping mask), and, where grad_params has non-empty spans, dL/ds and dL/dz per block
/// (overwritten, not accumulated), as defined at the top of this header. grad_w may be grad_out
/// itself. Returns the number of weights outside the range (whose gradient was zeroed).
template <class F, class Gran>
std::size_t backward(matrix_view<const float> w, param_view<const float> params, matrix_view<const float> grad_out,
                     matrix_view<float> grad_w, param_view<float> grad_params = {}, const Gran& gran = Gran{},
                     const backward_options& options = {}) {
  const char* who = "quant::qat::backward";
  detail::check_w_out(w, grad_out, who, "grad_out");
  detail::check_same_shape(grad_w, w.rows(), w.cols(), who, "grad_w");
  detail::check_overlap(grad_w, w, who, "grad_w", "w");
  detail::check_overlap(grad_w, grad_out, who, "grad_w", "grad_out");
  const scale_grid g = grid_of(gran, w.rows(), w.cols(), who);
  detail::check_params<Gran::is_asymmetric>(params, g.count(), who);
  detail::check_param_sizes<Gran::is_asymmetric>(grad_params, g.count(), who, "grad_params", true);
  for (auto out : {grad_params.scale, grad_params.zero})
    for (auto in : {params.scale, params.zero})
      if (detail::spans_overlap(out, in)) detail::fail(who, ": grad_params overlaps params; use separate buffers");
  if (detail::spans_overlap(grad_params.scale, grad_params.zero))
    detail::fail(who, ": grad_params.scale overlaps grad_params.zero");
  detail::check_finite(w, who, "w");
  detail::check_finite(grad_out, who, "grad_out");
  return detail::driver_for<F, Gran>::backward(w, params, grad_out, grad_w, grad_params, g, options.lsq_grad_scale);
}

/// The trained layer as a quant tensor: codes encode(w / s') (or clamp(rne(w / s') + z')), scales
/// stored as Gran's scale type, zero points z', into the caller's view. dequantize(out) then equals
/// fake_quantize_with(w, params) bit for bit.
template <class F, class Gran>
void quantize(matrix_view<const float> w, param_view<const float> params, tensor_view<F, Gran> out) {
  static_assert(!std::is_const_v<F>, "quant::qat::quantize: out must be a mutable view");
  const char* who = "quant::qat::quantize";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  quant::detail::check_tensor(out, who, "out");
  quant::detail::check_same_shape(w.rows(), w.cols(), out.rows(), out.cols(), who, "w", "out");
  if (out.permuted()) detail::fail(who, ": out has a permuted column order; this writes natural-order tensors");
  detail::check_params<Gran::is_asymmetric>(params, out.grid().count(), who);
  detail::check_finite(w, who, "w");
  detail::driver_for<F, Gran>::quantize(w, params, out.codes().data(), out.requirements().row_bytes,
                                        out.scales().data(), out.zeros(), out.grid());
}

/// The same into a new tensor of granularity gran.
template <class F, class Gran>
tensor<F, Gran> quantize(matrix_view<const float> w, param_view<const float> params, const Gran& gran = Gran{}) {
  if (w.empty()) detail::fail("quant::qat::quantize: w is empty (", w.rows(), " x ", w.cols(), ")");
  tensor<F, Gran> t(w.rows(), w.cols(), gran);
  quantize(w, params, t.view());
  return t;
}

/// The scalar oracle of the functions above (the same definitions, plain loops, no validation):
/// what the tests and the benchmark compare the SIMD kernels with.
namespace reference {

/// fake_quantize_with, one weight at a time.
template <class F, class Gran>
void fake_quantize_with(matrix_view<const float> w, param_view<const float> params, matrix_view<float> out,
                        const Gran& gran = Gran{}) {
  detail::reference_for<F, Gran>::fake_quantize_with(w, params, out, grid_of(gran, w.rows(), w.cols(), "reference"));
}

/// fake_quantize: the scalar fit (fit_block) and element rules of scheme/fit.hpp, block by block.
template <class F, class Gran>
void fake_quantize(matrix_view<const float> w, matrix_view<float> out, const Gran& gran = Gran{},
                   const quantize_options& options = {}) {
  detail::reference_for<F, Gran>::fake_quantize(w, out, grid_of(gran, w.rows(), w.cols(), "reference"), options);
}

/// backward, one weight at a time (sums in double).
template <class F, class Gran>
std::size_t backward(matrix_view<const float> w, param_view<const float> params, matrix_view<const float> grad_out,
                     matrix_view<float> grad_w, param_view<float> grad_params = {}, const Gran& gran = Gran{},
                     const backward_options& options = {}) {
  return detail::reference_for<F, Gran>::backward(w, params, grad_out, grad_w, grad_params,
                                                  grid_of(gran, w.rows(), w.cols(), "reference"),
                                                  options.lsq_grad_scale);
}

}  // namespace reference
}  // namespace qat
QUANT_NAMESPACE_END
