// Round-to-nearest quantize / dequantize / gemv (kernels/api.hpp, kernels/reference/,
// scheme/fit.hpp): the codes and scales follow the documented rules (re-derived here
// independently), groups and tails, strides, the MX scale rule, the clip search, and both GEMV
// modes against a double-precision matvec.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <quant/quant.hpp>

#include "test_support.hpp"

using namespace quant;

namespace {
template <class F, class Gran>
std::vector<float> roundtrip(const std::vector<float>& w, std::size_t rows, std::size_t cols, const Gran& g = {},
                             const quantize_options& o = {}) {
  const auto t = quantize<F>({w.data(), rows, cols}, g, o);
  std::vector<float> d(w.size());
  dequantize(t, {d.data(), rows, cols});
  return d;
}
}  // namespace

TEST_CASE("int4 g32 asymmetric fp16: codes, scales and zero points follow the documented rule") {
  const std::size_t rows = 8, cols = 172;  // 172 = 5 groups of 32 + a tail of 12, as the real w2 rows
  const auto w = qt::heavy_tailed(rows, cols, 3);
  const auto t = quantize<int4, per_group<32, asymmetric, fp16>>({w.data(), rows, cols});
  REQUIRE(t.view().grid().groups_per_row == 6);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < 6; ++g) {
      const std::size_t c0 = g * 32, c1 = std::min(cols, c0 + 32);
      float lo = 0.0f, hi = 0.0f;  // the range always includes zero
      for (std::size_t c = c0; c < c1; ++c) lo = std::min(lo, w[r * cols + c]), hi = std::max(hi, w[r * cols + c]);
      const float s = fp16::from_float((hi - lo) / 15.0f).to_float();
      const float z = std::clamp(std::nearbyint(-lo / s), 0.0f, 15.0f);
      const std::size_t k = r * 6 + g;
      CHECK(t.view().scales()[k] == fp16::from_float((hi - lo) / 15.0f));
      CHECK(t.view().zero(k) == static_cast<int>(z));
      for (std::size_t c = c0; c < c1; ++c) {
        const float q = std::clamp(std::nearbyint(w[r * cols + c] / s) + z, 0.0f, 15.0f);
        INFO("r=", r, " c=", c);
        CHECK(t.view().code(r, c) == static_cast<int>(q));
        CHECK(t.view().value(r, c) == s * (q - z));
      }
    }
}

TEST_CASE("symmetric integer scales use both ends of the signed range") {
  // Extreme positive: s = wmax / 7. Extreme negative: s = |wmin| / 8, so it becomes code -8.
  const std::vector<float> pos{0.7f, -0.2f, 0.1f, 0.0f}, neg{-0.8f, 0.3f, 0.1f, 0.0f};
  const auto tp = quantize<int4, per_channel<>>({pos.data(), 1, 4});
  const auto tn = quantize<int4, per_channel<>>({neg.data(), 1, 4});
  CHECK(tp.view().scale(0) == doctest::Approx(0.1f));
  CHECK(format_traits<int4>::decode(tp.view().code(0, 0)) == 7.0f);
  CHECK(tn.view().scale(0) == doctest::Approx(0.1f));
  CHECK(format_traits<int4>::decode(tn.view().code(0, 0)) == -8.0f);
}

TEST_CASE("every element is within half a quantization step for integer formats (no clipping)") {
  const std::size_t rows = 16, cols = 300;
  const auto w = qt::heavy_tailed(rows, cols, 5);
  auto check = [&]<class F, class Gran>(F*, Gran g) {
    const auto t = quantize<F>({w.data(), rows, cols}, g);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const float s = t.view().scale(t.view().grid().index(r, c / t.view().grid().group));
        INFO(format_traits<F>::name, " r=", r, " c=", c);
        CHECK(std::fabs(w[r * cols + c] - t.view().value(r, c)) <= 0.5f * s * (1 + 1e-5f));
      }
  };
  check(static_cast<int8*>(nullptr), per_channel<>{});
  check(static_cast<int4*>(nullptr), per_group<64, asymmetric>{});
  check(static_cast<int3*>(nullptr), per_group<dynamic_group, symmetric>{40});
  check(static_cast<int2*>(nullptr), per_tensor<asymmetric>{});
  check(static_cast<int4*>(nullptr), per_group<32, asymmetric, e8m0>{});  // power-of-two scale rounds up
}

TEST_CASE("each group's scale depends only on its own columns, the short tail group included") {
  const std::size_t rows = 2, cols = 172;
  auto w = qt::gaussian(rows * cols, 7);
  const auto base = quantize<int4, per_group<32>>({w.data(), rows, cols});
  w[1 * cols + 170] = 5.0f;  // an outlier in row 1's tail group (columns 160..171)
  const auto t = quantize<int4, per_group<32>>({w.data(), rows, cols});
  for (std::size_t k = 0; k < t.view().grid().count(); ++k) {
    INFO("scale ", k);
    if (k == 1 * 6 + 5)
      CHECK(t.view().scale(k) == doctest::Approx(5.0f / 7.0f));
    else
      CHECK(t.view().scale(k) == base.view().scale(k));
  }
}

TEST_CASE("per_tensor uses one scale; per_channel one per row") {
  const auto w = qt::heavy_tailed(4, 64, 9);
  const auto tt = quantize<int8, per_tensor<>>({w.data(), 4, 64});
  const auto tc = quantize<int8, per_channel<>>({w.data(), 4, 64});
  CHECK(tt.view().scales().size() == 1);
  CHECK(tc.view().scales().size() == 4);
  const float amax = std::fabs(*std::max_element(w.begin(), w.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); }));
  CHECK(tt.view().scale(0) >= amax / 128.0f * (1 - 1e-6f));
  CHECK(tt.view().scale(0) <= amax / 127.0f * (1 + 1e-6f));
}

TEST_CASE("a strided input gives the same tensor as a contiguous one") {
  const std::size_t rows = 5, cols = 70, ld = 96;
  const auto w = qt::gaussian(rows * cols, 13);
  std::vector<float> strided(rows * ld, 1e30f);  // padding would wreck the scales if it were read
  for (std::size_t r = 0; r < rows; ++r) std::copy_n(&w[r * cols], cols, &strided[r * ld]);
  const auto a = quantize<nf4, per_group<32, symmetric, fp16>>({w.data(), rows, cols});
  const auto b = quantize<nf4, per_group<32, symmetric, fp16>>({strided.data(), rows, cols, ld});
  CHECK(std::equal(a.view().codes().begin(), a.view().codes().end(), b.view().codes().begin()));
  CHECK(std::equal(a.view().scales().begin(), a.view().scales().end(), b.view().scales().begin()));
  std::vector<float> out(rows * ld, -7.0f);  // dequantize into a strided output leaves the padding alone
  dequantize(a, {out.data(), rows, cols, ld});
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) CHECK(out[r * ld + c] == a.view().value(r, c));
    for (std::size_t c = cols; c < ld; ++c) CHECK(out[r * ld + c] == -7.0f);
  }
}

TEST_CASE("a run-time group size gives the same bytes as the static one") {
  const auto w = qt::heavy_tailed(6, 200, 17);
  const auto s = quantize<int3, per_group<64, asymmetric, bf16>>({w.data(), 6, 200});
  const auto d = quantize<int3>({w.data(), 6, 200}, per_group<dynamic_group, asymmetric, bf16>{64});
  CHECK(std::equal(s.view().codes().begin(), s.view().codes().end(), d.view().codes().begin()));
  CHECK(std::equal(s.view().scales().begin(), s.view().scales().end(), d.view().scales().begin()));
  CHECK(std::equal(s.view().zeros().begin(), s.view().zeros().end(), d.view().zeros().begin()));
}

TEST_CASE("MXFP4 and MXFP8 follow the OCP scale rule and cost 4.25 / 8.25 bits per weight") {
  const std::size_t rows = 4, cols = 256;
  const auto w = qt::heavy_tailed(rows, cols, 19);
  const auto t4 = quantize<fp4_e2m1, per_group<32, symmetric, e8m0>>({w.data(), rows, cols});
  const auto t8 = quantize<fp8_e4m3, per_group<32, symmetric, e8m0>>({w.data(), rows, cols});
  CHECK(t4.bits_per_weight() == 4.25);
  CHECK(t8.bits_per_weight() == 8.25);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < cols / 32; ++g) {
      float amax = 0;
      for (std::size_t c = g * 32; c < g * 32 + 32; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const int e = static_cast<int>(std::floor(std::log2(amax)));
      CHECK(t4.view().scales()[r * 8 + g].exponent() == e - 2);  // emax(e2m1) = 2
      CHECK(t8.view().scales()[r * 8 + g].exponent() == e - 8);  // emax(e4m3) = 8
    }
}

TEST_CASE("the mse clip search never loses to minmax, and wins clearly at 3 and 4 bits") {
  const std::size_t rows = 64, cols = 512;
  const auto w = qt::heavy_tailed(rows, cols, 23);
  const quantize_options mse{scale_search::mse};
  auto gain = [&]<class F, class Gran>(F*, Gran g) {
    const double a = qt::rel_rms(w, roundtrip<F>(w, rows, cols, g));
    const double b = qt::rel_rms(w, roundtrip<F>(w, rows, cols, g, mse));
    INFO(format_traits<F>::name, ": minmax ", a, ", mse ", b);
    CHECK(b <= a);
    return 1.0 - b / a;
  };
  CHECK(gain(static_cast<int3*>(nullptr), per_group<128>{}) > 0.15);
  CHECK(gain(static_cast<int4*>(nullptr), per_group<128>{}) > 0.05);
  CHECK(gain(static_cast<int4*>(nullptr), per_group<128, asymmetric>{}) > 0.02);
  CHECK(gain(static_cast<nf4*>(nullptr), per_group<64>{}) > 0.02);
  CHECK(gain(static_cast<fp4_e2m1*>(nullptr), per_group<32, symmetric, e8m0>{}) > 0.01);
  CHECK(gain(static_cast<int8*>(nullptr), per_channel<>{}) >= 0.0);
}

TEST_CASE("an all-zero block quantizes to zeros and dequantizes to exact zeros") {
  std::vector<float> w(2 * 64, 0.0f);
  for (std::size_t c = 32; c < 64; ++c) w[c] = 0.5f;  // row 0: group 0 zero, group 1 not
  auto check = [&]<class F, class Gran>(F*, Gran) {
    const auto d = roundtrip<F, Gran>(w, 2, 64);
    for (std::size_t i = 0; i < w.size(); ++i) {
      INFO(format_traits<F>::name, " i=", i);
      CHECK(d[i] == doctest::Approx(w[i]).epsilon(0.01));
      if (w[i] == 0.0f) CHECK(d[i] == 0.0f);
    }
  };
  check(static_cast<int4*>(nullptr), per_group<32, asymmetric>{});
  check(static_cast<nf4*>(nullptr), per_group<32>{});
  check(static_cast<fp4_e2m1*>(nullptr), per_group<32, symmetric, e8m0>{});
  check(static_cast<fp8_e5m2*>(nullptr), per_group<32, symmetric, fp16>{});
}

TEST_CASE("quantize into a caller-bound view gives the same bytes as the owning tensor") {
  const std::size_t rows = 9, cols = 77;
  const auto w = qt::heavy_tailed(rows, cols, 29);
  using G = per_group<16, asymmetric, fp16>;
  const storage_requirements req = storage<int4, G>(rows, cols);
  std::vector<std::byte> buffer(req.buffer_bytes(), std::byte{0xAB});
  auto v = tensor_view<int4, G>::bind(buffer, rows, cols);
  quantize({w.data(), rows, cols}, v);
  const auto t = quantize<int4, G>({w.data(), rows, cols});
  CHECK(std::equal(v.codes().begin(), v.codes().end(), t.view().codes().begin()));
  CHECK(std::equal(v.scales().begin(), v.scales().end(), t.view().scales().begin()));
  CHECK(std::equal(v.zeros().begin(), v.zeros().end(), t.view().zeros().begin()));
  // the canonical layout has zero tail bits: 77 int4 codes use 38.5 bytes, the last nibble is 0
  for (std::size_t r = 0; r < rows; ++r) CHECK((v.row_codes(r)[38] >> 4) == 0);
}

TEST_CASE("gemv: exact mode equals a double-precision product with the dequantized weights") {
  const std::size_t rows = 48, cols = 172;
  const auto w = qt::heavy_tailed(rows, cols, 31);
  const auto x = qt::activations(1, cols, 32);
  auto check = [&]<class F, class Gran>(F*, Gran g) {
    const auto t = quantize<F>({w.data(), rows, cols}, g);
    std::vector<float> d(w.size()), y(rows);
    dequantize(t, {d.data(), rows, cols});
    const auto ref = qt::matvec(d, rows, cols, x.data());
    gemv(t, x, y);
    for (std::size_t r = 0; r < rows; ++r) {
      double mag = 0;  // sum |w x|: the scale of the rounding a float product may carry
      for (std::size_t c = 0; c < cols; ++c) mag += std::fabs(static_cast<double>(d[r * cols + c]) * x[c]);
      INFO(format_traits<F>::name, " row ", r, ": ", y[r], " vs ", ref[r]);
      CHECK(std::fabs(y[r] - ref[r]) <= 1e-6 * mag);
    }
  };
  check(static_cast<int8*>(nullptr), per_channel<>{});
  check(static_cast<int4*>(nullptr), per_group<32, asymmetric, fp16>{});
  check(static_cast<int3*>(nullptr), per_group<128, asymmetric>{});
  check(static_cast<int2*>(nullptr), per_tensor<>{});
  check(static_cast<nf4*>(nullptr), per_group<64, symmetric, bf16>{});
  check(static_cast<fp8_e4m3*>(nullptr), per_group<32, symmetric, e8m0>{});
  check(static_cast<fp8_e5m2*>(nullptr), per_channel<>{});
  check(static_cast<fp4_e2m1*>(nullptr), per_group<32, symmetric, e8m0>{});
}

TEST_CASE("gemv: fast mode is the documented int8-activation product, close to exact") {
  const std::size_t rows = 32, cols = 172;
  const auto w = qt::heavy_tailed(rows, cols, 37);
  const auto x = qt::activations(1, cols, 38);
  const auto t = quantize<int4, per_group<32, asymmetric>>({w.data(), rows, cols});
  // independent fast-mode product: int8 activations per block of 32, integer dots per group
  std::vector<double> ref(rows, 0.0);
  for (std::size_t b0 = 0; b0 < cols; b0 += 32) {
    const std::size_t n = std::min<std::size_t>(32, cols - b0);
    float amax = 0;
    for (std::size_t c = b0; c < b0 + n; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float sx = amax / 127.0f;
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t k = r * 6 + b0 / 32;  // group and block coincide for g32
      long long dot = 0;
      for (std::size_t c = b0; c < b0 + n; ++c)
        dot += (t.view().code(r, c) - t.view().zero(k)) * static_cast<long long>(std::nearbyint(x[c] / sx));
      ref[r] += static_cast<double>(t.view().scale(k)) * sx * static_cast<double>(dot);
    }
  }
  std::vector<float> yf(rows), ye(rows);
  gemv(t, x, yf, fast);
  gemv(t.view(), x, ye, exact);
  double err = 0, norm = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    CHECK(yf[r] == doctest::Approx(ref[r]).epsilon(1e-5).scale(1e-6));
    err += (yf[r] - ye[r]) * (yf[r] - ye[r]);
    norm += ye[r] * ye[r];
  }
  INFO("fast vs exact relative error ", std::sqrt(err / norm));
  CHECK(std::sqrt(err / norm) < 0.02);
  CHECK(std::sqrt(err / norm) > 0.0);  // the activations really were rounded
}
