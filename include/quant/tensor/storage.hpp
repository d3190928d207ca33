// quant/tensor/storage.hpp: how many bytes a quantized matrix needs, so a caller can allocate
// first and bind a tensor_view after ("size, then bind").
//
// A tensor has three sections: packed codes (each row its own bit stream starting on a byte
// boundary, layout/packing.hpp), scales (grid.count() values of the Scale type, row-major by
// (row, group)), and for asymmetric schemes zero points (grid.count() codes of `bits` bits in
// one stream, in the same order as the scales). A tensor with a permuted column order (GPTQ's
// act-order with groups in processing order) has a fourth: cols uint32 input-column indices,
// stored column j multiplying x[order[j]]. bind() places each section at a multiple of
// `alignment` bytes from the start of one buffer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../formats/format_traits.hpp"
#include "../layout/packing.hpp"
#include "../scheme/granularity.hpp"

QUANT_NAMESPACE_BEGIN

/// How a tensor's stored columns map to the input columns: in order, or through a stored
/// permutation (stored column j holds the weights of input column order[j], so that groups can
/// be runs of consecutive stored columns in any input order).
enum class column_order : bool { natural = false, permuted = true };

/// The sizes of the sections of a quantized rows x cols matrix.
struct storage_requirements {
  static constexpr std::size_t alignment = 64;  ///< section alignment in a bound buffer

  scale_grid grid;
  unsigned bits = 0;
  std::size_t row_bytes = 0;    ///< packed bytes of one row of codes
  std::size_t code_bytes = 0;   ///< rows * row_bytes
  std::size_t scale_count = 0;  ///< = zero_count for asymmetric schemes
  std::size_t scale_bytes = 0;
  std::size_t zero_count = 0;   ///< 0 for symmetric schemes
  std::size_t zero_bytes = 0;
  std::size_t order_count = 0;  ///< cols with a permuted column order, else 0
  std::size_t order_bytes = 0;  ///< order_count * 4

  /// The payload: code, scale, zero-point and column-order bytes (what a model file stores).
  constexpr std::size_t bytes() const noexcept { return code_bytes + scale_bytes + zero_bytes + order_bytes; }
  /// Offsets of the sections inside a buffer bound with bind(), and its total size.
  constexpr std::size_t scale_offset() const noexcept { return round_up(code_bytes); }
  constexpr std::size_t zero_offset() const noexcept { return scale_offset() + round_up(scale_bytes); }
  constexpr std::size_t order_offset() const noexcept { return zero_offset() + round_up(zero_bytes); }
  constexpr std::size_t buffer_bytes() const noexcept { return order_offset() + round_up(order_bytes); }
  /// Payload bits per weight, scales and zero points included.
  constexpr double bits_per_weight() const noexcept {
    return 8.0 * static_cast<double>(bytes()) / static_cast<double>(grid.rows * grid.cols);
  }

 private:
  static constexpr std::size_t round_up(std::size_t n) noexcept { return (n + alignment - 1) / alignment * alignment; }
};

/// The storage a quantize<F, Gran> result of a rows x cols matrix needs (with a permuted column
/// order: what gptq::quantize with act-order returns). Throws quant::error for
/// an empty shape or a zero group size.
template <class F, class Gran>
storage_requirements storage(std::size_t rows, std::size_t cols, const Gran& gran = {},
                             column_order order = column_order::natural) {
  static_assert(check_format<F>());
  static_assert(is_granularity_v<Gran>, "quant::storage: Gran must be per_tensor, per_channel or per_group");
  storage_requirements s;
  s.grid = grid_of(gran, rows, cols, "quant::storage");
  s.bits = format_traits<std::remove_cv_t<F>>::bits;
  s.row_bytes = packed_bytes(cols, s.bits);
  s.code_bytes = rows * s.row_bytes;
  s.scale_count = s.grid.count();
  s.scale_bytes = s.scale_count * sizeof(typename Gran::scale_type);
  if constexpr (Gran::is_asymmetric) {
    s.zero_count = s.scale_count;
    s.zero_bytes = packed_bytes(s.zero_count, s.bits);
  }
  if (order == column_order::permuted) {
    s.order_count = cols;
    s.order_bytes = cols * sizeof(std::uint32_t);
  }
  return s;
}

QUANT_NAMESPACE_END
