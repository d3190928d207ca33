// report/formats.hpp: the formats quant-report compares, each with what every method needs to
// produce a llama2c::linear in that format: round-to-nearest from the weights, GPTQ from the
// weights and the Hessian of the layer's inputs, AWQ from the weights of the layers that share an
// input and their calibration inputs.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <quant/algorithms/awq.hpp>
#include <quant/algorithms/gptq.hpp>
#include <quant/algorithms/smoothquant.hpp>
#include <quant/quant.hpp>

#include "../llama2c/awq.hpp"
#include "../llama2c/llama2c.hpp"
#include "../llama2c/save.hpp"

namespace report {

/// One format x granularity of the report.
struct format_entry {
  std::string name;  ///< as printed: "int4 g128 asym"
  std::string key;   ///< as given to --formats: "int4-g128-asym"
  /// Round-to-nearest of w.
  std::function<std::unique_ptr<llama2c::linear>(quant::matrix_view<const float> w, llama2c::gemv_mode,
                                                 const quant::quantize_options&)>
      rtn;
  /// GPTQ of w with the Hessian of its inputs (cols x cols).
  std::function<std::unique_ptr<llama2c::linear>(quant::matrix_view<const float> w, std::span<const float> h,
                                                 llama2c::gemv_mode, const quant::gptq::options&)>
      gptq;
  /// AWQ of the layers that share the calibration inputs x (tokens x cols): their linears, for
  /// the input x / s, and s.
  std::function<llama2c::awq_group_result(std::span<const quant::matrix_view<const float>> layers,
                                          quant::matrix_view<const float> x, llama2c::gemv_mode,
                                          const quant::awq::options&)>
      awq;
};

template <class F, class Gran>
format_entry make_format(std::string name, std::string key, Gran gran = Gran{}) {
  format_entry e;
  e.name = std::move(name);
  e.key = std::move(key);
  e.rtn = [gran](quant::matrix_view<const float> w, llama2c::gemv_mode mode,
                 const quant::quantize_options& o) -> std::unique_ptr<llama2c::linear> {
    return std::make_unique<llama2c::quantized_linear<F, Gran>>(quant::quantize<F>(w, gran, o), mode);
  };
  e.gptq = [gran](quant::matrix_view<const float> w, std::span<const float> h, llama2c::gemv_mode mode,
                  const quant::gptq::options& o) -> std::unique_ptr<llama2c::linear> {
    return std::make_unique<llama2c::quantized_linear<F, Gran>>(quant::gptq::quantize<F>(w, h, gran, o), mode);
  };
  e.awq = [gran](std::span<const quant::matrix_view<const float>> layers, quant::matrix_view<const float> x,
                 llama2c::gemv_mode mode, const quant::awq::options& o) {
    quant::awq::result<F, Gran> res = quant::awq::quantize<F>(layers, x, gran, o);
    llama2c::awq_group_result r;
    for (auto& t : res.tensors) r.linears.push_back(std::make_unique<llama2c::quantized_linear<F, Gran>>(std::move(t), mode));
    r.scales = std::move(res.scales);
    r.rep = res.rep;
    return r;
  };
  return e;
}

/// A W8A8 linear layer (SmoothQuant's path): int8 per-channel weights of W diag(s), the input
/// divided by s when the scales could not be folded into the operation before (llama2c/save.hpp
/// defines it, so that models with W8A8 layers can be saved).
using w8a8_linear = llama2c::w8a8_linear;

/// A linear layer whose input is divided by s before the inner layer runs (AWQ's scales where there
/// is no operation before the layer to fold them into, as for the report's synthetic layers).
class scaled_input_linear final : public llama2c::linear {
 public:
  scaled_input_linear(std::unique_ptr<llama2c::linear> inner, std::span<const float> s)
      : inner_(std::move(inner)), inv_(s.size()) {
    if (!inner_ || inner_->cols() != s.size())
      llama2c::detail::fail("report::scaled_input_linear: s has ", s.size(), " elements, expected the layer's cols");
    for (std::size_t j = 0; j < s.size(); ++j) inv_[j] = 1.0f / s[j];
  }
  void forward(std::span<const float> x, std::span<float> y) const override {
    check_io(x, y);
    thread_local std::vector<float> xs;
    xs.resize(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) xs[j] = x[j] * inv_[j];
    inner_->forward(xs, y);
  }
  std::size_t bytes() const override { return inner_->bytes() + inv_.size() * sizeof(float); }
  std::size_t rows() const override { return inner_->rows(); }
  std::size_t cols() const override { return inner_->cols(); }
  std::string describe() const override { return inner_->describe() + ", input / s"; }

 private:
  std::unique_ptr<llama2c::linear> inner_;
  std::vector<float> inv_;
};

/// The formats of the report, from 8 bits down to 3: the default set first (`extra` false), then
/// the others a user may ask for by key (--formats all, or by name).
struct format_list {
  std::vector<format_entry> entries;
  std::size_t defaults = 0;  ///< entries[0, defaults) are the default set
};

inline format_list all_formats() {
  using namespace quant;
  std::vector<format_entry> f;
  f.push_back(make_format<int8, per_channel<symmetric>>("int8 per-channel", "int8"));
  f.push_back(make_format<fp8_e4m3, per_channel<symmetric>>("fp8 e4m3 per-channel", "e4m3"));
  f.push_back(make_format<int4, per_group<32, symmetric, fp16>>("int4 g32 sym", "int4-g32-sym"));
  f.push_back(make_format<int4, per_group<32, asymmetric, fp16>>("int4 g32 asym", "int4-g32-asym"));
  f.push_back(make_format<int4, per_group<128, symmetric, fp16>>("int4 g128 sym", "int4-g128-sym"));
  f.push_back(make_format<int4, per_group<128, asymmetric, fp16>>("int4 g128 asym", "int4-g128-asym"));
  f.push_back(make_format<nf4, per_group<64, symmetric, fp16>>("nf4 g64", "nf4"));
  f.push_back(make_format<fp4_e2m1, per_group<32, symmetric, e8m0>>("MXFP4", "mxfp4"));
  f.push_back(make_format<int3, per_group<128, asymmetric, fp16>>("int3 g128 asym", "int3-g128"));
  const std::size_t defaults = f.size();
  f.push_back(make_format<int8, per_channel<asymmetric>>("int8 per-channel asym", "int8-asym"));
  f.push_back(make_format<int8, per_tensor<symmetric>>("int8 per-tensor", "int8-tensor"));
  f.push_back(make_format<fp8_e5m2, per_channel<symmetric>>("fp8 e5m2 per-channel", "e5m2"));
  f.push_back(make_format<fp8_e4m3, per_group<32, symmetric, e8m0>>("MXFP8", "mxfp8"));
  f.push_back(make_format<int4, per_channel<asymmetric>>("int4 per-channel asym", "int4-channel"));
  f.push_back(make_format<fp4_e2m1, per_group<32, symmetric, fp16>>("fp4 e2m1 g32 f16", "fp4-g32"));
  f.push_back(make_format<int3, per_group<128, symmetric, fp16>>("int3 g128 sym", "int3-g128-sym"));
  f.push_back(make_format<int2, per_group<32, asymmetric, fp16>>("int2 g32 asym", "int2-g32"));
  return {std::move(f), defaults};
}

}  // namespace report
