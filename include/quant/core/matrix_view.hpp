// quant/core/matrix_view.hpp: a non-owning, row-major 2-D view with a row stride.
//
// matrix_view<T> is how every function of the library receives a dense matrix (weights,
// dequantized output, calibration activations). A weight matrix W has rows = output features
// and cols = input features, as a PyTorch nn.Linear weight; element (r, c) is at
// data[r * ld + c], with ld >= cols. Views are trivially copyable and passed by value.
#pragma once

#include <cstddef>
#include <span>
#include <type_traits>

#include "../config.hpp"
#include "error.hpp"

QUANT_NAMESPACE_BEGIN

template <class T>
class matrix_view {
 public:
  using element_type = T;

  constexpr matrix_view() noexcept = default;

  /// A view of rows x cols elements at data, row r starting at data + r * ld.
  /// Throws quant::error if ld < cols, or if data is null while the view is not empty.
  constexpr matrix_view(T* data, std::size_t rows, std::size_t cols, std::size_t ld)
      : data_(data), rows_(rows), cols_(cols), ld_(ld) {
    if (ld < cols)
      detail::fail("quant::matrix_view: row stride ld = ", ld, " is smaller than cols = ", cols);
    if (data == nullptr && rows != 0 && cols != 0)
      detail::fail("quant::matrix_view: data is null for a ", rows, " x ", cols, " view");
  }
  /// A contiguous view (ld = cols).
  constexpr matrix_view(T* data, std::size_t rows, std::size_t cols) : matrix_view(data, rows, cols, cols) {}

  /// A view of const elements from a view of mutable ones.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr matrix_view(matrix_view<U> other) noexcept
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), ld_(other.ld()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t rows() const noexcept { return rows_; }
  constexpr std::size_t cols() const noexcept { return cols_; }
  constexpr std::size_t ld() const noexcept { return ld_; }
  constexpr std::size_t size() const noexcept { return rows_ * cols_; }
  constexpr bool empty() const noexcept { return rows_ == 0 || cols_ == 0; }

  constexpr T& operator()(std::size_t r, std::size_t c) const noexcept { return data_[r * ld_ + c]; }
  /// Row r as a span of cols elements.
  constexpr std::span<T> row(std::size_t r) const noexcept { return {data_ + r * ld_, cols_}; }

 private:
  T* data_ = nullptr;
  std::size_t rows_ = 0, cols_ = 0, ld_ = 0;
};

template <class T>
matrix_view(T*, std::size_t, std::size_t) -> matrix_view<T>;
template <class T>
matrix_view(T*, std::size_t, std::size_t, std::size_t) -> matrix_view<T>;

QUANT_NAMESPACE_END
