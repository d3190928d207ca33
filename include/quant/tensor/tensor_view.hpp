// quant/tensor/tensor_view.hpp: a non-owning view of a quantized matrix over caller memory.
//
// tensor_view<F, Gran> holds spans over three caller buffers (packed codes, scales, zero
// points) plus the shape and granularity; it is trivially copyable and passed by value, like
// std::mdspan. tensor_view<const F, Gran> is the read-only view (what dequantize and gemv
// accept); a mutable view converts to it. Construction validates every span's size against
// storage<F, Gran>(rows, cols, gran), so a mis-sized buffer is an error at bind time, not a
// wild read later. bind() carves the sections out of one buffer of storage(...).buffer_bytes()
// bytes. A view may carry a column order (tensor/storage.hpp): then codes, scales and zero
// points are in stored-column order, stored column j multiplies x[input_columns()[j]], and
// code(r, j) and value(r, j) index stored columns; dequantize and gemv apply the order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../formats/format_traits.hpp"
#include "../layout/packing.hpp"
#include "../scheme/fit.hpp"
#include "../scheme/granularity.hpp"
#include "storage.hpp"

QUANT_NAMESPACE_BEGIN

/// A matrix shape: rows (output features) x cols (input features).
struct shape {
  std::size_t rows = 0, cols = 0;
  friend constexpr bool operator==(shape, shape) noexcept = default;
};

template <class F, class Gran>
class tensor_view {
  static_assert(check_format<F>());
  static_assert(is_granularity_v<Gran>, "quant::tensor_view: Gran must be per_tensor, per_channel or per_group");
  static_assert(!Gran::is_asymmetric || is_integer_format_v<F>,
                "quant: asymmetric schemes need an integer format (int8/int4/int3/int2 or a format with "
                "is_integer = true); code-table and minifloat formats are symmetric");

  static constexpr bool is_const = std::is_const_v<F>;
  template <class T>
  using maybe_const = std::conditional_t<is_const, const T, T>;

 public:
  using format = std::remove_const_t<F>;
  using granularity_type = Gran;
  using scale_type = typename Gran::scale_type;
  using traits = format_traits<format>;
  using byte_type = maybe_const<std::uint8_t>;
  using scale_element = maybe_const<scale_type>;
  using order_element = maybe_const<std::uint32_t>;
  static constexpr unsigned bits = traits::bits;
  static constexpr bool is_asymmetric = Gran::is_asymmetric;

  tensor_view() = default;

  /// Binds spans whose sizes must equal storage<F, Gran>(rows, cols, gran): codes.size() ==
  /// code_bytes, scales.size() == scale_count, zeros.size() == zero_bytes (empty if symmetric).
  tensor_view(std::span<byte_type> codes, std::span<scale_element> scales, std::span<byte_type> zeros,
              std::size_t rows, std::size_t cols, const Gran& gran = {})
      : req_(storage<format, Gran>(rows, cols, gran)), gran_(gran), codes_(codes.data()), scales_(scales.data()),
        zeros_(zeros.data()) {
    check_size("codes", "bytes", codes.size(), req_.code_bytes, codes.data());
    check_size("scales", "scales", scales.size(), req_.scale_count, scales.data());
    check_size("zeros", "bytes", zeros.size(), req_.zero_bytes, zeros.data());
  }
  /// The same with a permuted column order: order.size() == cols, every entry < cols (a
  /// permutation of [0, cols); gemv and dequantize read x and write out through it).
  tensor_view(std::span<byte_type> codes, std::span<scale_element> scales, std::span<byte_type> zeros,
              std::span<order_element> order, std::size_t rows, std::size_t cols, const Gran& gran = {})
      : req_(storage<format, Gran>(rows, cols, gran, column_order::permuted)), gran_(gran), codes_(codes.data()),
        scales_(scales.data()), zeros_(zeros.data()), order_(order.data()) {
    check_size("codes", "bytes", codes.size(), req_.code_bytes, codes.data());
    check_size("scales", "scales", scales.size(), req_.scale_count, scales.data());
    check_size("zeros", "bytes", zeros.size(), req_.zero_bytes, zeros.data());
    if (order.size() != cols)
      detail::fail("quant::tensor_view: column order has ", order.size(), " entries, expected cols = ", cols);
    if (order.data() == nullptr) detail::fail("quant::tensor_view: column order is null");
    for (std::size_t j = 0; j < cols; ++j)
      if (order[j] >= cols)
        detail::fail("quant::tensor_view: column order[", j, "] = ", order[j], " is not a column (cols = ", cols, ")");
  }

  /// Binds the three sections inside one buffer of at least storage(...).buffer_bytes() bytes,
  /// aligned to alignof(scale_type).
  static tensor_view bind(std::span<maybe_const<std::byte>> buffer, std::size_t rows, std::size_t cols,
                          const Gran& gran = {}, column_order order = column_order::natural) {
    const storage_requirements r = storage<format, Gran>(rows, cols, gran, order);
    if (buffer.size() < r.buffer_bytes())
      detail::fail("quant::tensor_view::bind: buffer has ", buffer.size(), " bytes, needs ", r.buffer_bytes(),
                   " for ", rows, " x ", cols);
    if (reinterpret_cast<std::uintptr_t>(buffer.data()) % alignof(scale_type) != 0)
      detail::fail("quant::tensor_view::bind: buffer is not aligned to ", alignof(scale_type), " bytes");
    auto* base = reinterpret_cast<byte_type*>(buffer.data());
    if (order == column_order::permuted)
      return tensor_view({base, r.code_bytes}, {reinterpret_cast<scale_element*>(base + r.scale_offset()), r.scale_count},
                         {base + r.zero_offset(), r.zero_bytes},
                         {reinterpret_cast<order_element*>(base + r.order_offset()), r.order_count}, rows, cols, gran);
    return tensor_view({base, r.code_bytes}, {reinterpret_cast<scale_element*>(base + r.scale_offset()), r.scale_count},
                       {base + r.zero_offset(), r.zero_bytes}, rows, cols, gran);
  }

  /// The read-only view of the same memory.
  operator tensor_view<const format, Gran>() const noexcept
    requires(!is_const)
  {
    return tensor_view<const format, Gran>::from_parts(req_, gran_, codes_, scales_, zeros_, order_);
  }

  std::size_t rows() const noexcept { return req_.grid.rows; }
  std::size_t cols() const noexcept { return req_.grid.cols; }
  quant::shape shape() const noexcept { return {rows(), cols()}; }
  const Gran& granularity() const noexcept { return gran_; }
  const scale_grid& grid() const noexcept { return req_.grid; }
  const storage_requirements& requirements() const noexcept { return req_; }
  /// Payload bytes (codes + scales + zero points) and bits per weight.
  std::size_t bytes() const noexcept { return req_.bytes(); }
  double bits_per_weight() const noexcept { return req_.bits_per_weight(); }

  std::span<byte_type> codes() const noexcept { return {codes_, req_.code_bytes}; }
  std::span<scale_element> scales() const noexcept { return {scales_, req_.scale_count}; }
  std::span<byte_type> zeros() const noexcept { return {zeros_, req_.zero_bytes}; }
  /// The input column of each stored column; empty for the natural order.
  std::span<order_element> input_columns() const noexcept { return {order_, req_.order_count}; }
  /// True when the stored columns are permuted (input_columns() is not empty).
  bool permuted() const noexcept { return req_.order_count != 0; }
  /// The packed code stream of row r.
  byte_type* row_codes(std::size_t r) const noexcept { return codes_ + r * req_.row_bytes; }

  /// Code of weight (r, c), scale and zero point of scale index k (for tests and tools; kernels
  /// walk the streams directly).
  std::uint8_t code(std::size_t r, std::size_t c) const noexcept { return read_code(row_codes(r), c, bits); }
  float scale(std::size_t k) const noexcept { return scale_traits<scale_type>::decode(scales_[k]); }
  std::uint8_t zero(std::size_t k) const noexcept {
    if constexpr (is_asymmetric) return read_code(zeros_, k, bits);
    else return 0;
  }
  /// The dequantized value of weight (r, c).
  float value(std::size_t r, std::size_t c) const noexcept {
    const std::size_t k = req_.grid.index(r, c / req_.grid.group);
    return detail::dequantize_value<format, is_asymmetric>(code(r, c), scale(k), zero(k));
  }

 private:
  template <class, class>
  friend class tensor_view;

  // Rebinds already validated parts (the mutable-to-const conversion).
  static tensor_view from_parts(const storage_requirements& req, const Gran& gran, byte_type* codes,
                                scale_element* scales, byte_type* zeros, order_element* order) noexcept {
    tensor_view v;
    v.req_ = req;
    v.gran_ = gran;
    v.codes_ = codes;
    v.scales_ = scales;
    v.zeros_ = zeros;
    v.order_ = order;
    return v;
  }

  void check_size(const char* arg, const char* unit, std::size_t got, std::size_t want, const void* data) const {
    if (got != want)
      detail::fail("quant::tensor_view: ", arg, " has ", got, ' ', unit, ", expected ", want, " for a ", rows(), " x ",
                   cols(), ' ', traits::name, " tensor with ", req_.scale_count, " scales");
    if (want != 0 && data == nullptr) detail::fail("quant::tensor_view: ", arg, " is null");
  }

  storage_requirements req_{};
  [[no_unique_address]] Gran gran_{};
  byte_type* codes_ = nullptr;
  scale_element* scales_ = nullptr;
  byte_type* zeros_ = nullptr;
  order_element* order_ = nullptr;
};

QUANT_NAMESPACE_END
