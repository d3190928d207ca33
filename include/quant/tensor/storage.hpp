// quant/tensor/storage.hpp: how many bytes a quantized matrix needs, so a caller can allocate
// first and bind a tensor_view after ("size, then bind").
//
// A tensor has three sections: packed codes (each row its own bit stream starting on a byte
// boundary, layout/packing.hpp), scales (grid.count() values of the Scale type, row-major by
// (row, group)), and for asymmetric schemes zero points (grid.count() codes of `bits` bits in
// one stream, in the same order as the scales). bind() places each section at a multiple of
// `alignment` bytes from the start of one buffer.
#pragma once

#include <cstddef>

#include "../config.hpp"
#include "../formats/format_traits.hpp"
#include "../layout/packing.hpp"
#include "../scheme/granularity.hpp"

QUANT_NAMESPACE_BEGIN

/// The sizes of the three sections of a quantized rows x cols matrix.
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

  /// The payload: code, scale and zero-point bytes (what a model file stores).
  constexpr std::size_t bytes() const noexcept { return code_bytes + scale_bytes + zero_bytes; }
  /// Offsets of the sections inside a buffer bound with bind(), and its total size.
  constexpr std::size_t scale_offset() const noexcept { return round_up(code_bytes); }
  constexpr std::size_t zero_offset() const noexcept { return scale_offset() + round_up(scale_bytes); }
  constexpr std::size_t buffer_bytes() const noexcept { return zero_offset() + round_up(zero_bytes); }
  /// Payload bits per weight, scales and zero points included.
  constexpr double bits_per_weight() const noexcept {
    return 8.0 * static_cast<double>(bytes()) / static_cast<double>(grid.rows * grid.cols);
  }

 private:
  static constexpr std::size_t round_up(std::size_t n) noexcept { return (n + alignment - 1) / alignment * alignment; }
};

/// The storage a quantize<F, Gran> result of a rows x cols matrix needs. Throws quant::error for
/// an empty shape or a zero group size.
template <class F, class Gran>
storage_requirements storage(std::size_t rows, std::size_t cols, const Gran& gran = {}) {
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
  return s;
}

QUANT_NAMESPACE_END
