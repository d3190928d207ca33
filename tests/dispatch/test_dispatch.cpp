// The runtime-dispatch mode: this file is compiled with the baseline flags (no -m), linked with a
// dispatch library whose per-ISA translation units were built with SSE4.2 up to AVX-512 VNNI
// flags. It checks that the tier chosen is the best this CPU has, that results match the
// reference, and that a custom format still runs (through the header kernels).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <quant/quant.hpp>

#include "../test_support.hpp"

using namespace quant;

static_assert(detail::runtime_dispatch, "this test must be built with QUANT_RUNTIME_DISPATCH");

TEST_CASE("runtime dispatch picks the best tier of this CPU and matches the reference") {
  MESSAGE("dispatched to ", active_isa_name(), "; this translation unit is compiled for ", isa_name(compiled_isa()));
  CHECK(active_isa() == best_cpu_isa());
  const std::size_t rows = 37, cols = 300;
  const auto w = qt::heavy_tailed(rows, cols, 11);
  const auto x = qt::activations(1, cols, 12);
  auto check = [&](const auto& t) {
    std::vector<float> y(rows), yr(rows), yf(rows), yfr(rows);
    gemv(t, x, y);
    reference::gemv(t.cview(), x, yr);
    gemv(t, x, yf, fast);
    reference::gemv_fast(t.cview(), x, yfr);
    thread_pool pool(2);
    std::vector<float> yp(rows);
    gemv(t, x, yp, fast, pool);
    CHECK(yp == yf);
    for (std::size_t r = 0; r < rows; ++r) {
      CHECK(std::fabs(y[r] - yr[r]) <= 1e-4 * (std::fabs(yr[r]) + 1e-2));
      CHECK(std::fabs(yf[r] - yfr[r]) <= 1e-4 * (std::fabs(yfr[r]) + 1e-2));
    }
    std::vector<float> d(rows * cols), dr(rows * cols);
    dequantize(t, {d.data(), rows, cols});
    reference::dequantize(t.cview(), {dr.data(), rows, cols});
    CHECK(std::memcmp(d.data(), dr.data(), d.size() * sizeof(float)) == 0);
  };
  check(quantize<int4, per_group<128>>({w.data(), rows, cols}));
  check(quantize<int4, per_group<32, asymmetric, fp16>>({w.data(), rows, cols}));
  check(quantize<int8, per_channel<>>({w.data(), rows, cols}));
  check(quantize<nf4, per_group<64>>({w.data(), rows, cols}));
  check(quantize<fp4_e2m1, per_group<32, symmetric, e8m0>>({w.data(), rows, cols}));
  check(quantize<fp8_e4m3, per_channel<>>({w.data(), rows, cols}));
  if (best_cpu_isa() >= isa::avx512) {
    const auto t = quantize<int4, per_group<128>>({w.data(), rows, cols});
    CHECK(gemv_kernel(t, fast).path == gemv_path_kind::nibble);
  }
}
