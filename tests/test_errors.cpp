// Every bad input the design lists throws quant::error (an std::invalid_argument) whose message
// names the argument and the values, and nothing is written to the caller's output buffers.
#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <quant/quant.hpp>
#include <string>

#include "test_support.hpp"

using namespace quant;

namespace {
/// Runs f, requires a quant::error whose message contains every piece of `parts`.
void expect_error(const std::function<void()>& f, std::initializer_list<const char*> parts) {
  std::string what;
  try {
    f();
  } catch (const quant::error& e) {
    what = e.what();
  }
  INFO("message: \"", what, "\"");
  REQUIRE_FALSE(what.empty());
  for (const char* p : parts) CHECK(what.find(p) != std::string::npos);
}

constexpr std::uint8_t sentinel = 0x5A;

template <class F, class G>
struct sentinel_buffers {  // a caller-owned output tensor filled with a sentinel
  storage_requirements req;
  std::vector<std::byte> buf;
  tensor_view<F, G> view;
  sentinel_buffers(std::size_t rows, std::size_t cols)
      : req(storage<F, G>(rows, cols)), buf(req.buffer_bytes(), std::byte{sentinel}), view(tensor_view<F, G>::bind(buf, rows, cols)) {}
  bool untouched() const {
    return std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{sentinel}; });
  }
};
}  // namespace

static_assert(std::is_base_of_v<std::invalid_argument, quant::error>);

TEST_CASE("quantize: shape mismatch between w and out") {
  const auto w = qt::gaussian(4 * 8, 1);
  sentinel_buffers<int4, per_group<4, asymmetric>> out(4, 9);
  expect_error([&] { quantize({w.data(), 4, 8}, out.view); }, {"quant::quantize", "w is 4 x 8", "out is 4 x 9"});
  CHECK(out.untouched());
}

TEST_CASE("quantize: NaN or Inf weights are rejected before anything is written") {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto w = qt::gaussian(3 * 16, 2);
    w.back() = bad;  // the very last weight: a late check would already have written the rest
    sentinel_buffers<nf4, per_group<8>> out(3, 16);
    expect_error([&] { quantize({w.data(), 3, 16}, out.view); }, {"quant::quantize", "w(2, 15)", "finite"});
    CHECK(out.untouched());
    expect_error([&] { (void)quantize<int8, per_channel<>>({w.data(), 3, 16}); }, {"w(2, 15)"});
  }
}

TEST_CASE("zero-size input") {
  const std::vector<float> w(8, 1.0f);
  expect_error([&] { (void)quantize<int4, per_channel<>>({w.data(), 0, 8}); }, {"quant::quantize", "empty", "0 x 8"});
  expect_error([&] { (void)quantize<int4, per_channel<>>({w.data(), 8, 0}); }, {"empty", "8 x 0"});
  expect_error([&] { (void)storage<int4, per_channel<>>(0, 8); }, {"quant::storage", "empty"});
  tensor_view<int4, per_channel<>> empty_out;
  expect_error([&] { quantize({w.data(), 1, 8}, empty_out); }, {"out is empty"});
  std::vector<float> x(8), y(1, -1.0f);
  expect_error([&] { gemv(tensor_view<const int4, per_channel<>>{}, x, y); }, {"quant::gemv", "w is empty"});
  CHECK(y[0] == -1.0f);
}

TEST_CASE("zero group size") {
  const auto w = qt::gaussian(2 * 8, 3);
  using G = per_group<dynamic_group>;
  expect_error([&] { (void)quantize<int4>({w.data(), 2, 8}, G{0}); }, {"group size is 0"});
  expect_error([&] { (void)storage<int4, G>(2, 8, G{0}); }, {"quant::storage", "group size is 0"});
  expect_error([&] { (void)tensor<int4, G>(2, 8, G{}); }, {"group size is 0"});
}

TEST_CASE("a row stride smaller than the row, or null data") {
  std::vector<float> w(64);
  expect_error([&] { (void)matrix_view<const float>(w.data(), 4, 16, 15); }, {"quant::matrix_view", "ld = 15", "cols = 16"});
  expect_error([&] { (void)matrix_view<const float>(nullptr, 4, 16); }, {"data is null", "4 x 16"});
}

TEST_CASE("tensor_view: wrong buffer sizes and mismatched scale counts") {
  using G = per_group<32, asymmetric, fp16>;
  const auto req = storage<int4, G>(4, 100);  // 50 code bytes per row, 4 groups per row
  std::vector<std::uint8_t> codes(req.code_bytes), zeros(req.zero_bytes);
  std::vector<fp16> scales(req.scale_count);
  std::vector<std::uint8_t> short_codes(req.code_bytes - 1), long_zeros(req.zero_bytes + 1);
  std::vector<fp16> few_scales(req.scale_count - 1);
  expect_error([&] { tensor_view<int4, G>(short_codes, scales, zeros, 4, 100); },
               {"codes has 199 bytes", "expected 200", "4 x 100"});
  expect_error([&] { tensor_view<int4, G>(codes, few_scales, zeros, 4, 100); }, {"scales has 15 scales", "expected 16"});
  expect_error([&] { tensor_view<int4, G>(codes, scales, long_zeros, 4, 100); }, {"zeros has 9 bytes", "expected 8"});
  using S = per_group<32, symmetric, fp16>;
  expect_error([&] { tensor_view<int4, S>(codes, scales, zeros, 4, 100); }, {"zeros has 8 bytes", "expected 0"});

  std::vector<std::byte> small(req.buffer_bytes() - 1);
  expect_error([&] { (void)tensor_view<int4, G>::bind(small, 4, 100); }, {"bind", "has 383 bytes", "needs 384"});
  std::vector<std::byte> big(storage<int4, per_channel<>>(4, 100).buffer_bytes() + 1);
  expect_error([&] { (void)tensor_view<int4, per_channel<>>::bind(std::span(big).subspan(1), 4, 100); }, {"aligned to 4"});
}

TEST_CASE("gemv: x or y of the wrong length, and y overlapping x") {
  const auto w = qt::gaussian(6 * 10, 4);
  const auto t = quantize<int8, per_channel<>>({w.data(), 6, 10});
  std::vector<float> x(10, 1.0f), y(6, -1.0f), x_short(9), y_long(7, -1.0f);
  expect_error([&] { gemv(t, x_short, y); }, {"quant::gemv", "x has 9 elements", "cols = 10"});
  expect_error([&] { gemv(t, x, y_long, fast); }, {"quant::gemv", "y has 7 elements", "rows = 6"});
  CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == -1.0f; }));
  CHECK(std::all_of(y_long.begin(), y_long.end(), [](float v) { return v == -1.0f; }));
  std::vector<float> both(12, 1.0f);
  expect_error([&] { gemv(t, std::span<const float>(both).first(10), std::span<float>(both).subspan(4, 6)); }, {"overlaps"});
}

TEST_CASE("dequantize: output of the wrong shape") {
  const auto w = qt::gaussian(6 * 10, 5);
  const auto t = quantize<fp8_e4m3, per_channel<>>({w.data(), 6, 10});
  std::vector<float> out(6 * 11, -3.0f);
  expect_error([&] { dequantize(t, {out.data(), 6, 11}); }, {"quant::dequantize", "t is 6 x 10", "out is 6 x 11"});
  CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == -3.0f; }));
}

TEST_CASE("quantize: invalid clip-search options") {
  const auto w = qt::gaussian(2 * 8, 6);
  sentinel_buffers<int4, per_channel<>> out(2, 8);
  expect_error([&] { quantize({w.data(), 2, 8}, out.view, {scale_search::mse, 0}); }, {"clip_grid is 0"});
  expect_error([&] { quantize({w.data(), 2, 8}, out.view, {scale_search::mse, 20, 1.0f}); },
               {"clip_max_shrink = 1", "[0, 1)"});
  CHECK(out.untouched());
}
