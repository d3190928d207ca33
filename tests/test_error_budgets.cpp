// Error budgets per format and scheme: the relative RMS error ||W - Q(W)|| / ||W|| of
// round-to-nearest quantization on Gaussian and on heavy-tailed (Student-t, per-row scale)
// weights, 256 x 1024, fixed seeds. Each budget is the measured value plus ~3% headroom, so a
// regression in any format or scheme fails here. Set QUANT_PRINT_BUDGETS=1 to print the table.
#include <doctest/doctest.h>

#include <cstdlib>
#include <quant/quant.hpp>

#include "test_support.hpp"

namespace {

using namespace quant;
constexpr std::size_t rows = 256, cols = 1024;

const std::vector<float>& gauss_w() {
  static const auto w = qt::gaussian(rows * cols, 11);
  return w;
}
const std::vector<float>& heavy_w() {
  static const auto w = qt::heavy_tailed(rows, cols, 12);
  return w;
}

template <class F, class Gran>
double rtn_error(const std::vector<float>& w, scale_search search = scale_search::minmax) {
  const auto t = quantize<F, Gran>({w.data(), rows, cols}, quantize_options{search});
  std::vector<float> d(w.size());
  dequantize(t, {d.data(), rows, cols});
  return qt::rel_rms(w, d);
}

struct budget {
  const char* name;
  double (*gauss)();
  double (*heavy)();
  double gauss_max, heavy_max;
};

template <class F, class Gran>
budget entry(const char* name, double g, double h) {
  return {name, [] { return rtn_error<F, Gran>(gauss_w()); }, [] { return rtn_error<F, Gran>(heavy_w()); }, g, h};
}

using sym = symmetric;
using asym = asymmetric;

}  // namespace

TEST_CASE("relative RMS error of round-to-nearest stays within each format's budget") {
  const budget table[] = {
      entry<int8, per_tensor<sym>>("int8 per_tensor sym", 0.0104, 0.0715),
      entry<int8, per_channel<sym>>("int8 per_channel sym", 0.00804, 0.019),
      entry<int8, per_channel<asym>>("int8 per_channel asym", 0.0076, 0.0156),
      entry<int8, per_group<32, sym, e8m0>>("int8 g32 sym e8m0", 0.00778, 0.0112),
      entry<int4, per_channel<sym>>("int4 per_channel sym", 0.14, 0.318),
      entry<int4, per_channel<asym>>("int4 per_channel asym", 0.13, 0.263),
      entry<int4, per_group<128, sym>>("int4 g128 sym", 0.115, 0.189),
      entry<int4, per_group<128, asym>>("int4 g128 asym", 0.104, 0.15),
      entry<int4, per_group<32, sym, fp16>>("int4 g32 sym f16", 0.0945, 0.128),
      entry<int4, per_group<32, asym, fp16>>("int4 g32 asym f16", 0.083, 0.0997),
      entry<int4, per_group<128, sym, bf16>>("int4 g128 sym bf16", 0.115, 0.189),
      entry<int3, per_group<128, sym>>("int3 g128 sym", 0.262, 0.392),
      entry<int3, per_group<128, asym>>("int3 g128 asym", 0.222, 0.314),
      entry<int2, per_group<32, sym>>("int2 g32 sym", 0.61, 0.61),
      entry<int2, per_group<32, asym>>("int2 g32 asym", 0.418, 0.461),
      entry<nf4, per_channel<sym>>("nf4 per_channel", 0.108, 0.212),
      entry<nf4, per_group<64, sym, fp16>>("nf4 g64 f16", 0.0946, 0.115),
      entry<fp4_e2m1, per_group<32, sym, e8m0>>("MXFP4 (e2m1 g32 e8m0)", 0.118, 0.136),
      entry<fp4_e2m1, per_group<32, sym, fp16>>("fp4 e2m1 g32 f16", 0.105, 0.107),
      entry<fp8_e4m3, per_channel<sym>>("fp8 e4m3 per_channel", 0.0273, 0.0265),
      entry<fp8_e4m3, per_group<32, sym, e8m0>>("MXFP8 (e4m3 g32 e8m0)", 0.0302, 0.033),
      entry<fp8_e5m2, per_channel<sym>>("fp8 e5m2 per_channel", 0.0541, 0.0526),
      entry<fp8_e4m3, per_tensor<sym>>("fp8 e4m3 per_tensor", 0.0273, 0.0273),
  };
  const bool print = std::getenv("QUANT_PRINT_BUDGETS") != nullptr;
  for (const budget& b : table) {
    const double g = b.gauss(), h = b.heavy();
    if (print) std::printf("%-26s gauss %.5f  heavy %.5f\n", b.name, g, h);
    INFO(b.name, ": gaussian ", g, " (budget ", b.gauss_max, "), heavy-tailed ", h, " (budget ", b.heavy_max, ")");
    CHECK(g <= b.gauss_max);
    CHECK(h <= b.heavy_max);
  }
}
