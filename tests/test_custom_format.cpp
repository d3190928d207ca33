// User-defined formats through format_traits only: a code table (lut_traits), a format written
// member by member, a user integer width (integer_traits, with the asymmetric scheme) and a
// user minifloat (minifloat_traits). Each goes through quantize, dequantize and gemv.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <quant/quant.hpp>

#include "test_support.hpp"
#include "user_formats.hpp"

using namespace quant;

namespace {
template <class F, class Gran>
void exercise(double max_rel_error) {
  const std::size_t rows = 24, cols = 150;
  const auto w = qt::heavy_tailed(rows, cols, 77);
  const auto x = qt::activations(1, cols, 78);
  const auto t = quantize<F, Gran>({w.data(), rows, cols});
  std::vector<float> d(w.size()), y(rows);
  dequantize(t, {d.data(), rows, cols});
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {  // every value is scale * (decode(code) - zero)
      const std::size_t k = t.view().grid().index(r, c / t.view().grid().group);
      const float v = Gran::is_asymmetric
                          ? t.view().scale(k) * (static_cast<float>(t.view().code(r, c)) - t.view().zero(k))
                          : t.view().scale(k) * format_traits<F>::decode(t.view().code(r, c));
      REQUIRE(d[r * cols + c] == v);
    }
  const double err = qt::rel_rms(w, d);
  INFO(format_traits<F>::name, " relative RMS error ", err);
  CHECK(err < max_rel_error);
  CHECK(err > 0.0);
  gemv(t, x, y);
  const auto ref = qt::matvec(d, rows, cols, x.data());
  for (std::size_t r = 0; r < rows; ++r) CHECK(y[r] == doctest::Approx(ref[r]).epsilon(1e-4).scale(1e-3));
}
}  // namespace

TEST_CASE("user formats run through quantize, dequantize and gemv unchanged") {
  static_assert(check_format<user::nf3>() && check_format<user::sm3>() && check_format<user::int6>() &&
                check_format<user::e3m2>());
  static_assert(is_code_table_format_v<user::nf3> && !is_code_table_format_v<user::sm3>);
  static_assert(is_integer_format_v<user::int6> && !is_integer_format_v<user::sm3>);
  CHECK(format_range<user::e3m2>().max == 28.0f);  // bias 3: 1.75 * 2^4
  CHECK(format_range<user::sm3>().min == -3.0f);
  exercise<user::nf3, per_group<32, symmetric, fp16>>(0.30);
  exercise<user::sm3, per_group<32>>(0.55);
  exercise<user::int6, per_group<32, asymmetric, bf16>>(0.03);
  exercise<user::e3m2, per_channel<>>(0.10);
}

TEST_CASE("a user code table beats the integer format of the same width on heavy-tailed weights") {
  const std::size_t rows = 64, cols = 512;
  const auto w = qt::heavy_tailed(rows, cols, 79);
  auto err = [&]<class F>(F*) {
    const auto t = quantize<F, per_group<64>>({w.data(), rows, cols});
    std::vector<float> d(w.size());
    dequantize(t, {d.data(), rows, cols});
    return qt::rel_rms(w, d);
  };
  CHECK(err(static_cast<user::nf3*>(nullptr)) < err(static_cast<int3*>(nullptr)));
}
