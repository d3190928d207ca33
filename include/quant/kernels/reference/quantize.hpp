// quant/kernels/reference/quantize.hpp: scalar reference round-to-nearest quantization and
// dequantization, the oracle the SIMD kernels are tested against.
//
// These functions assume validated arguments (quant::quantize / quant::dequantize in
// kernels/api.hpp check them first) and are kept as plain loops on purpose: every rule lives
// in scheme/fit.hpp and layout/packing.hpp, and this file only walks the scale grid.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../config.hpp"
#include "../../core/matrix_view.hpp"
#include "../../layout/packing.hpp"
#include "../../scheme/fit.hpp"
#include "../../tensor/tensor_view.hpp"

QUANT_NAMESPACE_BEGIN
namespace reference {

/// Quantizes w (finite, same shape as out) into out.
template <class F, class Gran>
void quantize(matrix_view<const float> w, tensor_view<F, Gran> out, const quantize_options& o) {
  using Fmt = std::remove_const_t<F>;
  using Scale = typename Gran::scale_type;
  constexpr bool asym = Gran::is_asymmetric;
  constexpr unsigned bits = format_traits<Fmt>::bits;
  const scale_grid& g = out.grid();

  auto store = [&](std::size_t k, const block_params<Scale>& p) {
    out.scales()[k] = p.stored;
    if constexpr (asym) write_code(out.zeros().data(), k, bits, p.zero);
  };
  auto encode_row_range = [&](std::size_t r, std::size_t c0, std::size_t c1, const block_params<Scale>& p) {
    std::uint8_t* row = out.row_codes(r);
    for (std::size_t c = c0; c < c1; ++c) write_code(row, c, bits, detail::quantize_value<Fmt, asym>(w(r, c), p.scale, p.zero));
  };

  for (std::size_t r = 0; r < g.rows; ++r)  // canonical layout: unused tail bits are zero
    for (std::size_t b = 0; b < out.requirements().row_bytes; ++b) out.row_codes(r)[b] = 0;
  if constexpr (asym)
    for (auto& z : out.zeros()) z = 0;

  if (g.single) {
    const block_params<Scale> p = fit_block<Fmt, asym, Scale>(w, o);
    store(0, p);
    for (std::size_t r = 0; r < g.rows; ++r) encode_row_range(r, 0, g.cols, p);
    return;
  }
  for (std::size_t r = 0; r < g.rows; ++r)
    for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
      const std::size_t c0 = g.group_begin(gi), c1 = g.group_end(gi);
      const matrix_view<const float> block(&w(r, c0), 1, c1 - c0);
      const block_params<Scale> p = fit_block<Fmt, asym, Scale>(block, o);
      store(g.index(r, gi), p);
      encode_row_range(r, c0, c1, p);
    }
}

/// Writes the dequantized matrix of t into out (same shape).
template <class F, class Gran>
void dequantize(tensor_view<F, Gran> t, matrix_view<float> out) {
  using Fmt = std::remove_const_t<F>;
  constexpr bool asym = Gran::is_asymmetric;
  constexpr unsigned bits = format_traits<Fmt>::bits;
  const scale_grid& g = t.grid();
  for (std::size_t r = 0; r < g.rows; ++r) {
    const std::uint8_t* row = t.row_codes(r);
    for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
      const std::size_t k = g.index(r, gi);
      const float s = t.scale(k);
      const std::uint8_t z = t.zero(k);
      for (std::size_t c = g.group_begin(gi); c < g.group_end(gi); ++c)
        out(r, t.permuted() ? t.input_columns()[c] : c) = detail::dequantize_value<Fmt, asym>(read_code(row, c, bits), s, z);
    }
  }
}

}  // namespace reference
QUANT_NAMESPACE_END
