// Storage requirements, tensor_view binding and tensor ownership (tensor/).
#include <doctest/doctest.h>

#include <algorithm>
#include <quant/quant.hpp>
#include <type_traits>

#include "test_support.hpp"

using namespace quant;

TEST_CASE("storage() sizes: codes per row on a byte boundary, scales, packed zero points") {
  const auto a = storage<int4, per_group<128, asymmetric, fp16>>(4096, 4096);
  CHECK(a.row_bytes == 2048);
  CHECK(a.code_bytes == 4096u * 2048u);
  CHECK(a.scale_count == 4096u * 32u);
  CHECK(a.scale_bytes == 4096u * 32u * 2u);
  CHECK(a.zero_count == a.scale_count);
  CHECK(a.zero_bytes == 4096u * 32u / 2u);
  CHECK(a.bits_per_weight() == doctest::Approx(4.0 + 16.0 / 128 + 4.0 / 128));

  const auto b = storage<int3, per_group<32>>(64, 172);  // 172 * 3 bits = 64.5 bytes per row
  CHECK(b.row_bytes == 65);
  CHECK(b.grid.groups_per_row == 6);
  CHECK(b.scale_count == 64u * 6u);
  CHECK(b.zero_bytes == 0);

  const auto c = storage<int8, per_tensor<>>(3, 5);
  CHECK(c.scale_count == 1);
  CHECK(c.bytes() == 15 + 4);

  const auto d = storage<int2, per_channel<asymmetric, bf16>>(7, 9);
  CHECK(d.row_bytes == 3);
  CHECK(d.zero_bytes == 2);  // 7 zero points of 2 bits
  CHECK(d.scale_offset() == 64);
  CHECK(d.zero_offset() == 128);
  CHECK(d.buffer_bytes() == 192);
}

TEST_CASE("tensor_view binds caller spans of exactly the required sizes") {
  using G = per_group<32, asymmetric, fp16>;
  const auto req = storage<int4, G>(3, 70);
  std::vector<std::uint8_t> codes(req.code_bytes), zeros(req.zero_bytes);
  std::vector<fp16> scales(req.scale_count);
  tensor_view<int4, G> v(codes, scales, zeros, 3, 70);
  CHECK(v.rows() == 3);
  CHECK(v.cols() == 70);
  CHECK(v.codes().data() == codes.data());
  CHECK(v.scales().data() == scales.data());
  CHECK(v.row_codes(2) == codes.data() + 2 * 35);
  tensor_view<const int4, G> cv = v;  // mutable converts to read-only
  CHECK(cv.codes().data() == codes.data());
  static_assert(std::is_trivially_copyable_v<tensor_view<int4, G>>);
  static_assert(std::is_same_v<decltype(cv.codes()), std::span<const std::uint8_t>>);
  static_assert(!std::is_convertible_v<tensor_view<const int4, G>, tensor_view<int4, G>>);
}

TEST_CASE("bind() places the sections at 64-byte offsets of one buffer") {
  using G = per_group<64, asymmetric, float>;
  const auto req = storage<int3, G>(5, 100);
  std::vector<std::byte> buf(req.buffer_bytes());
  auto v = tensor_view<int3, G>::bind(buf, 5, 100);
  CHECK(reinterpret_cast<std::byte*>(v.codes().data()) == buf.data());
  CHECK(reinterpret_cast<std::byte*>(v.scales().data()) == buf.data() + req.scale_offset());
  CHECK(reinterpret_cast<std::byte*>(v.zeros().data()) == buf.data() + req.zero_offset());
  CHECK(req.scale_offset() % 64 == 0);
  CHECK(req.zero_offset() % 64 == 0);
  CHECK(req.scale_offset() >= req.code_bytes);
  CHECK(req.zero_offset() >= req.scale_offset() + req.scale_bytes);
}

TEST_CASE("tensor: owning, deep copies, moves leave the source empty, buffer 64-byte aligned") {
  const auto w = qt::gaussian(10 * 40, 3);
  auto t = quantize<nf4, per_group<16, symmetric, bf16>>({w.data(), 10, 40});
  CHECK(reinterpret_cast<std::uintptr_t>(t.view().codes().data()) % 64 == 0);
  CHECK(t.shape() == shape{10, 40});
  CHECK(t.bytes() == 10 * 20 + 10 * 3 * 2);

  auto copy = t;
  CHECK(copy.view().codes().data() != t.view().codes().data());
  CHECK(std::equal(copy.view().codes().begin(), copy.view().codes().end(), t.view().codes().begin()));
  copy.view().codes()[0] ^= 0xFF;  // the copy is independent
  CHECK(copy.view().codes()[0] != t.view().codes()[0]);

  const auto* codes = t.view().codes().data();
  auto moved = std::move(t);
  CHECK(moved.view().codes().data() == codes);
  CHECK(t.empty());  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  CHECK(t.bytes() == 0);
  CHECK(t.rows() == 0);

  copy = moved;
  CHECK(std::equal(copy.view().codes().begin(), copy.view().codes().end(), moved.view().codes().begin()));
  tensor<int4, per_channel<>> zero(3, 8);
  CHECK(std::all_of(zero.view().codes().begin(), zero.view().codes().end(), [](auto b) { return b == 0; }));
}

TEST_CASE("matrix_view: strides, rows, const conversion") {
  std::vector<float> a(3 * 8);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  matrix_view<float> m(a.data(), 3, 5, 8);
  CHECK(m(2, 4) == 20.0f);
  CHECK(m.row(1)[0] == 8.0f);
  CHECK(m.row(1).size() == 5);
  matrix_view<const float> c = m;
  CHECK(c(1, 1) == 9.0f);
  static_assert(std::is_trivially_copyable_v<matrix_view<float>>);
  static_assert(!std::is_convertible_v<matrix_view<const float>, matrix_view<float>>);
}
