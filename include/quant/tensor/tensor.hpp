// quant/tensor/tensor.hpp: the owning quantized matrix.
//
// tensor<F, Gran> owns one 64-byte-aligned buffer laid out as storage(...) describes and hands
// out views of it: view() is mutable, view() const and cview() are read-only. It is a regular
// value type: copies are deep, moves steal the buffer (the moved-from tensor is empty).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "../config.hpp"
#include "storage.hpp"
#include "tensor_view.hpp"

QUANT_NAMESPACE_BEGIN

template <class F, class Gran>
class tensor {
  static_assert(!std::is_const_v<F>, "quant::tensor: the format must not be const (use tensor_view<const F, Gran>)");

 public:
  using format = F;
  using granularity_type = Gran;
  using scale_type = typename Gran::scale_type;
  using view_type = tensor_view<F, Gran>;
  using const_view_type = tensor_view<const F, Gran>;

  tensor() = default;

  /// A zero-filled rows x cols tensor. Throws quant::error for an empty shape or a zero group size.
  /// With column_order::permuted the column order starts as the identity.
  tensor(std::size_t rows, std::size_t cols, const Gran& gran = {}, column_order order = column_order::natural) {
    const storage_requirements r = storage<F, Gran>(rows, cols, gran, order);
    allocate(r.buffer_bytes());
    view_ = view_type::bind({buffer_.get(), size_}, rows, cols, gran, order);
    const auto o = view_.input_columns();
    for (std::size_t j = 0; j < o.size(); ++j) o[j] = static_cast<std::uint32_t>(j);
  }

  tensor(const tensor& other) : tensor() {
    if (other.size_ == 0) return;
    allocate(other.size_);
    std::memcpy(buffer_.get(), other.buffer_.get(), size_);
    view_ = view_type::bind({buffer_.get(), size_}, other.rows(), other.cols(), other.view_.granularity(),
                            other.permuted() ? column_order::permuted : column_order::natural);
  }
  tensor(tensor&& other) noexcept
      : buffer_(std::move(other.buffer_)), size_(std::exchange(other.size_, 0)), view_(std::exchange(other.view_, {})) {}
  tensor& operator=(const tensor& other) {
    if (this != &other) *this = tensor(other);
    return *this;
  }
  tensor& operator=(tensor&& other) noexcept {
    buffer_ = std::move(other.buffer_);
    size_ = std::exchange(other.size_, 0);
    view_ = std::exchange(other.view_, {});
    return *this;
  }
  ~tensor() = default;

  view_type view() noexcept { return view_; }
  const_view_type view() const noexcept { return view_; }
  const_view_type cview() const noexcept { return view_; }
  operator const_view_type() const noexcept { return view_; }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t rows() const noexcept { return view_.rows(); }
  std::size_t cols() const noexcept { return view_.cols(); }
  quant::shape shape() const noexcept { return view_.shape(); }
  /// True when the stored columns are permuted (see tensor_view::input_columns()).
  bool permuted() const noexcept { return view_.permuted(); }
  /// Payload bytes: codes + scales + zero points (alignment padding not counted).
  std::size_t bytes() const noexcept { return empty() ? 0 : view_.bytes(); }
  double bits_per_weight() const noexcept { return empty() ? 0.0 : view_.bits_per_weight(); }
  const storage_requirements& requirements() const noexcept { return view_.requirements(); }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{storage_requirements::alignment}); }
  };
  void allocate(std::size_t n) {
    buffer_.reset(static_cast<std::byte*>(::operator new[](n, std::align_val_t{storage_requirements::alignment})));
    std::memset(buffer_.get(), 0, n);
    size_ = n;
  }

  std::unique_ptr<std::byte[], aligned_delete> buffer_;
  std::size_t size_ = 0;
  view_type view_{};
};

QUANT_NAMESPACE_END
