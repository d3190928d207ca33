// SIMD kernels (kernels/simd/) against the scalar reference (kernels/reference/): every built-in
// format and scheme, group sizes that are and are not multiples of the vector chunks, row lengths
// with tails, both GEMV modes, row ranges, caller workspaces and executors; dequantize bit-exact.
// This file is compiled once per ISA tier the compiler supports (tests/CMakeLists.txt), and each
// build checks that it ran the best path its tier has.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <quant/quant.hpp>
#include <string>

#include "test_support.hpp"

using namespace quant;

namespace {

// Shapes: row lengths around the 32/64/128-column chunks, with and without tails.
constexpr std::size_t shapes[][2] = {{5, 128}, {7, 256}, {3, 4096}, {9, 172}, {4, 33}, {6, 300}, {2, 1}, {13, 640}};

template <class F, class Gran>
tensor<F, Gran> make(std::size_t rows, std::size_t cols, const Gran& g, std::uint64_t seed) {
  const auto w = qt::heavy_tailed(rows, cols, seed);
  return quantize<F>({w.data(), rows, cols}, g);
}

// The bound a float kernel must meet against the double reference: fp32 rounding of the
// products and sums (relative to sum |w x|), plus the unsigned-offset form of the integer paths
// (relative to sum s_g * 256 * |x|, the largest offset or zero point).
template <class F, class Gran>
std::vector<double> tolerance(const tensor<F, Gran>& t, const std::vector<float>& x) {
  const auto v = t.cview();
  std::vector<double> tol(v.rows());
  for (std::size_t r = 0; r < v.rows(); ++r) {
    double a = 0.0, b = 0.0;
    for (std::size_t c = 0; c < v.cols(); ++c) {
      const std::size_t k = v.grid().index(r, c / v.grid().group);
      a += std::fabs(static_cast<double>(v.value(r, c)) * x[c]);
      b += std::fabs(static_cast<double>(v.scale(k)) * x[c]);
    }
    tol[r] = 2e-6 * a + 1e-6 * 256.0 * b + 1e-30;
  }
  return tol;
}

template <class F, class Gran, class Mode>
void check_gemv(const tensor<F, Gran>& t, const std::vector<float>& x, Mode mode, const std::string& what) {
  const std::size_t rows = t.shape().rows;
  std::vector<float> y(rows, -1.0f), ref(rows);
  if constexpr (std::is_same_v<Mode, fast_t>) reference::gemv_fast(t.cview(), x, ref);
  else reference::gemv(t.cview(), x, ref);
  gemv(t, x, y, mode);
  const auto tol = tolerance(t, x);
  for (std::size_t r = 0; r < rows; ++r) {
    INFO(what, " row ", r, ": ", y[r], " vs ", ref[r], " tol ", tol[r]);
    REQUIRE(std::fabs(static_cast<double>(y[r]) - ref[r]) <= tol[r]);
  }
}

template <class F, class Gran>
void check_all(const Gran& g, const char* name) {
  std::uint64_t seed = 100;
  for (const auto& s : shapes) {
    const std::size_t rows = s[0], cols = s[1];
    const auto t = make<F>(rows, cols, g, ++seed);
    const auto x = qt::activations(1, cols, ++seed);
    const std::string what = std::string(name) + " " + std::to_string(rows) + "x" + std::to_string(cols);
    check_gemv(t, x, exact, what + " exact");
    check_gemv(t, x, fast, what + " fast");
    // dequantize is bit-exact with the reference, with a row stride in the output
    const std::size_t ld = cols + 3;
    std::vector<float> d(rows * ld, 7.0f), dr(rows * ld, 7.0f);
    dequantize(t, {d.data(), rows, cols, ld});
    reference::dequantize(t.cview(), {dr.data(), rows, cols, ld});
    INFO(what, " dequantize");
    REQUIRE(std::memcmp(d.data(), dr.data(), d.size() * sizeof(float)) == 0);
    // by row ranges, in two pieces
    std::vector<float> dp(rows * ld, 7.0f);
    dequantize(t, {dp.data(), rows, cols, ld}, row_range{rows / 2, rows});
    CHECK(dp[0] == (rows / 2 > 0 ? 7.0f : dr[0]));
    dequantize(t, {dp.data(), rows, cols, ld}, row_range{0, rows / 2});
    REQUIRE(std::memcmp(dp.data(), dr.data(), dp.size() * sizeof(float)) == 0);
  }
}

}  // namespace

TEST_CASE("gemv and dequantize match the reference: integer formats") {
  check_all<int4>(per_group<128>{}, "int4 g128");
  check_all<int4>(per_group<32>{}, "int4 g32");
  check_all<int4>(per_group<64, asymmetric, fp16>{}, "int4 g64 asym f16");
  check_all<int4>(per_group<128, asymmetric>{}, "int4 g128 asym");
  check_all<int4>(per_channel<>{}, "int4 per-channel");
  check_all<int4>(per_tensor<asymmetric>{}, "int4 per-tensor asym");
  check_all<int4>(per_group<dynamic_group>{96}, "int4 g96");
  check_all<int4>(per_group<dynamic_group>{16}, "int4 g16");
  check_all<int8>(per_channel<>{}, "int8 per-channel");
  check_all<int8>(per_channel<asymmetric, bf16>{}, "int8 per-channel asym bf16");
  check_all<int8>(per_group<32>{}, "int8 g32");
  check_all<int8>(per_group<128, asymmetric>{}, "int8 g128 asym");
  check_all<int3>(per_group<128, asymmetric>{}, "int3 g128 asym");
  check_all<int3>(per_channel<>{}, "int3 per-channel");
  check_all<int2>(per_group<64, asymmetric>{}, "int2 g64 asym");
  check_all<int2>(per_group<32>{}, "int2 g32");
  check_all<int2>(per_group<128>{}, "int2 g128");
  check_all<int2>(per_channel<asymmetric>{}, "int2 per-channel asym");
  check_all<int3>(per_group<256>{}, "int3 g256");
  check_all<int3>(per_group<64>{}, "int3 g64");
}

TEST_CASE("gemv and dequantize match the reference: code-table and minifloat formats") {
  check_all<nf4>(per_group<64>{}, "nf4 g64");
  check_all<nf4>(per_group<32, symmetric, fp16>{}, "nf4 g32 f16");
  check_all<nf4>(per_channel<>{}, "nf4 per-channel");
  check_all<fp4_e2m1>(per_group<32>{}, "e2m1 g32");
  check_all<fp4_e2m1>(per_group<32, symmetric, e8m0>{}, "MXFP4");
  check_all<fp4_e2m1>(per_group<128>{}, "e2m1 g128");
  check_all<fp8_e4m3>(per_channel<>{}, "e4m3 per-channel");
  check_all<fp8_e4m3>(per_group<32, symmetric, e8m0>{}, "MXFP8");
  check_all<fp8_e5m2>(per_channel<>{}, "e5m2 per-channel");
  check_all<fp8_e5m2>(per_group<64, symmetric, fp16>{}, "e5m2 g64 f16");
}

TEST_CASE("fp8 kernels decode every code as the reference does, NaN codes included") {
  // A tensor whose codes are all 256 values (written by hand): the fp16 rebuild of e4m3/e5m2
  // must agree with the table, including subnormals, infinities and NaNs.
  auto run = []<class F>(F) {
    const std::size_t rows = 1, cols = 256;
    tensor<F, per_channel<>> t(rows, cols, per_channel<>{});
    for (std::size_t c = 0; c < cols; ++c) t.view().codes()[c] = static_cast<std::uint8_t>(c);
    t.view().scales()[0] = 0.5f;
    std::vector<float> d(cols), dr(cols);
    dequantize(t, {d.data(), rows, cols});
    reference::dequantize(t.cview(), {dr.data(), rows, cols});
    REQUIRE(std::memcmp(d.data(), dr.data(), d.size() * sizeof(float)) == 0);
    // GEMV: row c holds code c once among zeros (at a column that moves across the lanes),
    // x is all ones, so y[c] is the code's value (NaN and infinity included).
    const std::size_t n = 96;  // three 32-column chunks
    tensor<F, per_channel<>> u(cols, n, per_channel<>{});
    std::fill(u.view().codes().begin(), u.view().codes().end(), std::uint8_t{0});
    for (std::size_t r = 0; r < cols; ++r) {
      u.view().codes()[r * n + (r * 7) % n] = static_cast<std::uint8_t>(r);
      u.view().scales()[r] = 1.0f;
    }
    std::vector<float> x(n, 1.0f), y(cols), yr(cols), yf(cols);
    reference::gemv(u.cview(), x, yr);
    reference::gemv_fast(u.cview(), x, yf);
    for (std::size_t c = 0; c < cols; ++c) {
      // x = 1 quantizes exactly, so fast gives the same values, except e4m3's subnormal codes,
      // zero in fast mode (kernels/values.hpp)
      const bool flushed = std::is_same_v<F, fp8_e4m3> && (c & 0x78) == 0;
      INFO(format_traits<F>::name, " code ", c);
      if (std::isnan(yr[c])) CHECK(std::isnan(yf[c]));
      else CHECK(yf[c] == (flushed ? 0.0f : yr[c]));
    }
    for (int m = 0; m < 2; ++m) {
      if (m == 0) gemv(u, x, y);
      else gemv(u, x, y, fast), yr = yf;
      for (std::size_t c = 0; c < cols; ++c) {
        INFO(format_traits<F>::name, " code ", c, ": ", y[c], " vs ", yr[c], " mode ", m);
        if (std::isnan(yr[c])) CHECK(std::isnan(y[c]));
        else CHECK(y[c] == yr[c]);
      }
    }
  };
  run(fp8_e4m3{});
  run(fp8_e5m2{});
}

TEST_CASE("gemv: row ranges, workspaces and executors give the same y as one call") {
  const std::size_t rows = 203, cols = 512;
  const auto t = make<int4>(rows, cols, per_group<128>{}, 7);
  const auto x = qt::activations(1, cols, 8);
  for (int fast_mode = 0; fast_mode < 2; ++fast_mode) {
    std::vector<float> y(rows), y2(rows, 0.0f), y3(rows), y4(rows);
    auto run = [&](auto mode) {
      gemv(t, x, y, mode);
      // row ranges: a caller's own partition; rows outside a range stay untouched
      gemv(t, x, y2, mode, row_range{0, 100});
      CHECK(y2[150] == 0.0f);
      gemv(t, x, y2, mode, row_range{100, rows});
      // a caller-owned workspace
      std::vector<std::byte> ws(gemv_workspace_size(t, mode) + 64);
      auto* base = ws.data() + (64 - reinterpret_cast<std::uintptr_t>(ws.data()) % 64) % 64;
      gemv(t, x, y3, mode, std::span<std::byte>(base, gemv_workspace_size(t, mode)));
      // the default pool and a caller's executor
      thread_pool pool(2);
      gemv(t, x, y4, mode, pool);
      CHECK(y4 == y);
      std::size_t calls = 0;
      gemv(t, x, y4, mode, [&](std::size_t n, auto&& task) {
        for (std::size_t i = n; i-- > 0;) task(i), ++calls;  // any order
      });
      CHECK(calls > 1);
    };
    if (fast_mode) run(fast);
    else run(exact);
    CHECK(y2 == y);
    CHECK(y3 == y);
    CHECK(y4 == y);
  }
}

TEST_CASE("gemv rejects a bad row range, a short or misaligned workspace") {
  const auto t = make<int4>(8, 64, per_group<32>{}, 1);
  std::vector<float> x(64, 1.0f), y(8);
  CHECK_THROWS_WITH_AS(gemv(t, x, y, exact, row_range{4, 9}), doctest::Contains("row range [4, 9)"), error);
  CHECK_THROWS_WITH_AS(gemv(t, x, y, exact, row_range{5, 4}), doctest::Contains("row range"), error);
  alignas(64) std::byte ws[64];
  const std::size_t need = gemv_workspace_size(t, fast);
  REQUIRE(need > 64);
  CHECK_THROWS_WITH_AS(gemv(t, x, y, fast, std::span<std::byte>(ws, 64)), doctest::Contains("needs"), error);
  std::vector<std::byte> big(need + 128);
  auto* odd = big.data() + (64 - reinterpret_cast<std::uintptr_t>(big.data()) % 64) % 64 + 1;
  CHECK_THROWS_WITH_AS(gemv(t, x, y, fast, std::span<std::byte>(odd, need)), doctest::Contains("aligned"), error);
}

TEST_CASE("thread_pool runs every task once and rethrows a task's exception") {
  thread_pool pool(2);
  CHECK(pool.size() == 2);
  std::vector<int> hits(1000, 0);
  pool(hits.size(), [&](std::size_t i) { ++hits[i]; });
  CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  CHECK_THROWS_AS(pool(10, [](std::size_t i) { if (i == 3) throw error("task 3"); }), error);
  pool(4, [&](std::size_t i) { hits[i] = 5; });  // still usable
  CHECK(hits[3] == 5);
}

TEST_CASE("the kernels this build runs are the best its ISA tier has") {
  const auto t4 = make<int4>(4, 256, per_group<128>{}, 3);
  const auto t8 = make<int8>(4, 256, per_channel<>{}, 4);
  const auto tn = make<nf4>(4, 256, per_group<64>{}, 5);
  const auto t3 = make<int3>(4, 256, per_group<128>{}, 6);
  const auto t2 = make<int2>(4, 256, per_group<64, asymmetric>{}, 7);
  const auto te = make<fp8_e4m3>(4, 256, per_channel<>{}, 8);
  MESSAGE("compiled for ", active_isa_name(), "; this CPU's best tier is ", isa_name(best_cpu_isa()));
  const isa tier = compiled_isa();
  CHECK(gemv_kernel(t4, fast).tier == tier);
  if (tier >= isa::avx2) {
    CHECK(gemv_kernel(t4, exact).path == gemv_path_kind::nibble);
    CHECK(gemv_kernel(t4, fast).path == gemv_path_kind::nibble);
    CHECK(gemv_kernel(t4, fast).integer);
    CHECK(gemv_kernel(t8, fast).path == gemv_path_kind::byte);
    CHECK(gemv_kernel(t8, fast).integer);  // vpdpbusd, or vpmaddubsw on |w| and x * sign(w)
    // nf4's unsigned table bytes reach 254: vpmaddubsw would saturate, so only VNNI runs it as integers
    CHECK(gemv_kernel(tn, fast).integer == (tier >= isa::avx512_vnni));
    CHECK(gemv_kernel(t3, exact).path == gemv_path_kind::narrow);
    CHECK(gemv_kernel(t2, fast).path == gemv_path_kind::narrow);
    CHECK(gemv_kernel(te, fast).path == gemv_path_kind::byte);
#if defined(QUANT_ISA_AVX512_BF16)
    CHECK(gemv_kernel(te, fast).integer);  // vdpbf16ps on the codes rebuilt as bf16
#else
    CHECK(!gemv_kernel(te, fast).integer);
#endif
  } else {
    CHECK(gemv_kernel(t4, fast).path == gemv_path_kind::generic);
  }
#if defined(QUANT_TEST_NATIVE)
  // The -march=native build must be the best tier this CPU has: a missed flag or a broken
  // detection would silently leave speed on the table.
  CHECK(tier == best_cpu_isa());
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx512bf16")) CHECK(gemv_kernel(te, fast).integer);
#endif
#endif
}
