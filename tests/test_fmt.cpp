// quant/io/fmt.hpp: the one-line summary of a tensor (format, scheme, shape, bytes, bits/weight).
#include <doctest/doctest.h>

#include <quant/io/fmt.hpp>

#include "test_support.hpp"

using namespace quant;

TEST_CASE("a tensor prints format, granularity, shape, payload size and bits per weight") {
  const auto w = qt::gaussian(64 * 172, 1);
  const auto t = quantize<int4, per_group<128, asymmetric, fp16>>({w.data(), 64, 172});
  // 64 rows x 86 code bytes + 128 fp16 scales + 128 4-bit zero points = 5504 + 256 + 64 bytes
  CHECK(fmt::format("{}", t) == "int4 per_group<128, asym, f16> [64 x 172] 5.82 kB, 4.233 bits/weight");
  CHECK(fmt::format("{}", t.view()) == fmt::format("{}", t));
  const auto m = quantize<fp4_e2m1, per_group<32, symmetric, e8m0>>({w.data(), 64, 172});
  CHECK(fmt::format("{}", m) == "fp4_e2m1 per_group<32, sym, e8m0> [64 x 172] 5.89 kB, 4.279 bits/weight");
  const auto c = quantize<int8, per_channel<>>({w.data(), 64, 172});
  CHECK(fmt::format("{}", c) == "int8 per_channel<sym, f32> [64 x 172] 11.3 kB, 8.186 bits/weight");
  CHECK(fmt::format("{}", tensor<nf4, per_tensor<>>{}) == "nf4 (empty tensor)");
  CHECK(fmt::format("{}", per_group<dynamic_group, symmetric, bf16>{48}) == "per_group<48, sym, bf16>");
}
