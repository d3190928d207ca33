// Real weights: every linear layer of the llama2.c stories260K checkpoint in ../shared/models
// (skipped, with a message, when the folder is absent). The FFN down projection w2 has rows of
// 172 = 5 x 32 + 12, so groups of 32 end in a short tail group on real data.
#include <doctest/doctest.h>

#include <quant/quant.hpp>

#include "test_support.hpp"

using namespace quant;

namespace {
template <class F, class Gran>
double model_error(const std::vector<qt::llama2c_linear>& layers, double per_layer_max) {
  double e = 0, s = 0;
  for (const auto& l : layers) {
    const auto t = quantize<F, Gran>({l.w.data(), l.rows, l.cols});
    std::vector<float> d(l.w.size());
    dequantize(t, {d.data(), l.rows, l.cols});
    const double rel = qt::rel_rms(l.w, d);
    INFO(l.name, " (", l.rows, " x ", l.cols, "): ", rel);
    CHECK(rel <= per_layer_max);
    for (std::size_t i = 0; i < d.size(); ++i) e += (d[i] - l.w[i]) * double(d[i] - l.w[i]), s += l.w[i] * double(l.w[i]);
  }
  return std::sqrt(e / s);
}
}  // namespace

TEST_CASE("stories260K: every linear layer quantizes within budget, the 172-wide rows included") {
  const auto path = qt::models_dir() / "stories260K.bin";
  const auto layers = qt::load_llama2c_linears(path);
  if (!layers) {
    MESSAGE("skipped: ", path.string(), " not found (the shared models folder is absent)");
    return;
  }
  REQUIRE(layers->size() == 35);  // 7 linear kinds x 5 layers
  std::size_t tail_layers = 0;
  for (const auto& l : *layers) tail_layers += l.cols % 32 != 0;
  CHECK(tail_layers == 5);  // w2.0 .. w2.4, 172 columns

  // budgets: the measured model-wide error plus ~3%, and a per-layer ceiling
  CHECK(model_error<int8, per_channel<symmetric>>(*layers, 0.009) <= 0.0062);
  CHECK(model_error<int4, per_group<32, asymmetric, fp16>>(*layers, 0.11) <= 0.0817);
  CHECK(model_error<int4, per_group<128, symmetric, fp16>>(*layers, 0.13) <= 0.1049);
  CHECK(model_error<nf4, per_group<64, symmetric, fp16>>(*layers, 0.12) <= 0.0941);
  CHECK(model_error<fp4_e2m1, per_group<32, symmetric, e8m0>>(*layers, 0.14) <= 0.1189);
  CHECK(model_error<fp8_e4m3, per_channel<symmetric>>(*layers, 0.03) <= 0.0262);
  CHECK(model_error<int3, per_group<128, asymmetric, fp16>>(*layers, 0.24) <= 0.2007);
}
