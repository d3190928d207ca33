// quant/kernels/reference/gemv.hpp: scalar reference y = W x for a quantized W, in both modes.
//
// exact: y[r] = sum_g s_g * sum_{c in g} (decode(q_rc) - z_g) * x[c], accumulated in double, so
//        the oracle is more accurate than any fp32 kernel it checks.
// fast:  x is first quantized per block of fast_block_size = 32 consecutive elements (blocks
//        start at column 0): s_b = max|x_b| / 127, xq = clamp(rne(x / s_b), -127, 127). Then
//        y[r] = sum_c s_g(c) * s_b(c) * (v(q_rc) - z) * xq[c], where v is the fast-mode value of a
//        code (kernels/values.hpp: the code itself for integer formats, an exact or rounded int8
//        table for 4-bit tables, the exact value otherwise). For integer weight values each
//        (group, block) partial sum is an exact integer dot product, which is what the SIMD
//        kernels compute with VNNI / maddubs. The README measures what the rounding costs.
// Arguments are assumed validated (kernels/api.hpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "../../config.hpp"
#include "../../layout/packing.hpp"
#include "../../scheme/fit.hpp"
#include "../../tensor/tensor_view.hpp"
#include "../activations.hpp"
#include "../values.hpp"

QUANT_NAMESPACE_BEGIN

namespace reference {

/// Quantizes one activation block (at most fast_block_size values) to int8; returns its scale.
inline float quantize_activation_block(std::span<const float> x, std::int8_t* q) noexcept {
  float amax = 0.0f;
  for (float v : x) amax = std::fabs(v) > amax ? std::fabs(v) : amax;
  const float s = amax / 127.0f;
  for (std::size_t i = 0; i < x.size(); ++i) {
    float v = s == 0.0f ? 0.0f : std::nearbyint(x[i] / s);
    v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
    q[i] = static_cast<std::int8_t>(v);
  }
  return s;
}

/// x in t's stored-column order (a copy when the columns are permuted).
template <class F, class Gran>
std::vector<float> stored_order_x(const tensor_view<F, Gran>& t, std::span<const float> x) {
  std::vector<float> v(x.begin(), x.end());
  if (t.permuted())
    for (std::size_t j = 0; j < v.size(); ++j) v[j] = x[t.input_columns()[j]];
  return v;
}

/// y = W x with fp32 activations.
template <class F, class Gran>
void gemv(tensor_view<F, Gran> t, std::span<const float> x_in, std::span<float> y) {
  using Fmt = std::remove_const_t<F>;
  constexpr bool asym = Gran::is_asymmetric;
  const scale_grid& g = t.grid();
  const std::vector<float> xv = stored_order_x(t, x_in);
  const std::span<const float> x(xv);
  for (std::size_t r = 0; r < g.rows; ++r) {
    const std::uint8_t* row = t.row_codes(r);
    double acc = 0.0;
    for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
      const std::size_t k = g.index(r, gi);
      const std::uint8_t z = t.zero(k);
      double part = 0.0;
      for (std::size_t c = g.group_begin(gi); c < g.group_end(gi); ++c)
        part += static_cast<double>(detail::dequantize_value<Fmt, asym>(read_code(row, c, t.bits), 1.0f, z)) * x[c];
      acc += static_cast<double>(t.scale(k)) * part;
    }
    y[r] = static_cast<float>(acc);
  }
}

/// y = W x with activations quantized to int8 per block of fast_block_size (blocks of x in the
/// tensor's stored-column order).
template <class F, class Gran>
void gemv_fast(tensor_view<F, Gran> t, std::span<const float> x_in, std::span<float> y) {
  using Fmt = std::remove_const_t<F>;
  constexpr bool asym = Gran::is_asymmetric;
  const scale_grid& g = t.grid();
  const std::vector<float> xv = stored_order_x(t, x_in);
  const std::span<const float> x(xv);
  const auto& values = detail::code_values<Fmt, asym>::get();
  for (std::size_t r = 0; r < g.rows; ++r) {
    const std::uint8_t* row = t.row_codes(r);
    double acc = 0.0;
    std::int8_t xq[fast_block_size];
    for (std::size_t b0 = 0; b0 < g.cols; b0 += fast_block_size) {
      const std::size_t n = g.cols - b0 < fast_block_size ? g.cols - b0 : fast_block_size;
      const double sx = quantize_activation_block(x.subspan(b0, n), xq);
      for (std::size_t c = b0; c < b0 + n; ++c) {
        const std::size_t k = g.index(r, c / g.group);
        const float v = values.fast[read_code(row, c, t.bits)];
        const float wv = asym ? v - static_cast<float>(t.zero(k)) : v;
        acc += static_cast<double>(t.scale(k)) * sx * static_cast<double>(wv) * xq[c - b0];
      }
    }
    y[r] = static_cast<float>(acc);
  }
}

}  // namespace reference
QUANT_NAMESPACE_END
