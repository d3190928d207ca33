// llama2c/awq.hpp: AWQ of a whole llama2c::model, layer by layer, with the scales folded into the
// model so that the quantized model needs no extra operation at run time.
//
// For every layer, in order, the inputs of its four input groups are captured on the calibration
// text through the model as quantized so far (the layers before are already quantized: sequential
// calibration, as for GPTQ). The groups of the layer are then processed last to first, each with
// quant::awq::quantize (scale search, clip search, quantization of W diag(s)), and 1/s is folded
// into the operation before the group:
//   w2 (down)        1/s into the rows of w3 (up): h = silu(w1 x) * (w3 x) becomes h / s
//   w1, w3 (gate/up) 1/s into the FFN's RMSNorm weight
//   wo               1/s into the rows of wv when n_kv_heads == n_heads (each attention output
//                    channel is a weighted sum of one channel of v); with grouped-query attention
//                    wv has fewer rows than wo has inputs and there is nothing to fold into, so wo
//                    gets the clip search only (alpha = 0, s = 1), as the original does
//   wq, wk, wv       1/s into the attention's RMSNorm weight (queries and keys are not clipped)
// Last to first because a group's fold rewrites the fp32 weights of an earlier group of the same
// layer (w3, wv), which must not be quantized yet. All four captures are taken before the layer is
// touched, as the original searches every group of a block on the inputs of the fp block; each
// fold keeps the fp function of the block unchanged, so those captures stay the groups' inputs.
//
// The original (llm-awq) searches the scales of all blocks on the fp16 model and quantizes at the
// end; here each layer is calibrated on the outputs of the quantized layers before it, as the
// end-to-end issue asks of every method. Its scale search scores the output of the parent module
// (attention, MLP); quant::awq scores the outputs of the group's own layers (awq.hpp's header).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include <quant/algorithms/awq.hpp>
#include <quant/quant.hpp>

#include "calibrate.hpp"
#include "llama2c.hpp"

namespace llama2c {

/// What an AWQ quantizer gives for the layers of one input group: their linears (computing
/// W diag(s) (x / s) from the input x / s) and s.
struct awq_group_result {
  std::vector<std::unique_ptr<linear>> linears;
  std::vector<float> scales;
  quant::awq::report rep;
};
/// AWQ of the layers sharing the calibration inputs x, in a format of the caller's choice.
using awq_group_fn = std::function<awq_group_result(std::span<const quant::matrix_view<const float>> layers,
                                                    quant::matrix_view<const float> x, const quant::awq::options&)>;

/// What awq_sequential shows an observer for each group, before installing it: the weights AWQ
/// was given (the group's fp32 weights, including the folds of the later groups of the layer),
/// its inputs, s, and the quantized linears, which compute W x from x / s.
struct awq_group_info {
  std::size_t layer;
  const input_group& group;
  const activations& calib;
  const activations& eval;
  std::span<const quant::matrix_view<const float>> weights;
  std::span<const std::unique_ptr<linear>> linears;
  std::span<const float> scales;
  bool scaled;  ///< false: nothing to fold into (wo with grouped-query attention), clip search only
  const quant::awq::report& rep;
};
using awq_observer = std::function<void(const awq_group_info&)>;

/// AWQ of every linear of m (see the header comment): quantize does one group, o are the options of
/// every search (its query_key_layers is set here for wq and wk; the other fields are used as
/// given). The fp32 norms and weights of m are rewritten by the folds (norms and the previous rows
/// divided by s, the group's columns multiplied by it), which keep the fp32 function of the model;
/// the quantized linears are installed.
/// eval: held-out sequences whose captures are handed to observe (empty: none are taken).
template <class Exec = quant::inline_executor>
void awq_sequential(model& m, const std::vector<std::vector<int>>& calib, const std::vector<std::vector<int>>& eval,
                    const awq_group_fn& quantize, const quant::awq::options& o = {}, const awq_observer& observe = {},
                    Exec&& exec = {}) {
  if (calib.empty()) detail::fail("llama2c::awq_sequential: no calibration sequences");
  if (!quantize) detail::fail("llama2c::awq_sequential: no quantizer given");
  const config& c = m.cfg();
  const bool fold_into_v = c.n_kv_heads == c.n_heads;
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    const std::array<activations, 4> xc = capture_layer(m, calib, l, exec);
    std::array<activations, 4> xe;
    if (!eval.empty()) xe = capture_layer(m, eval, l, exec);
    for (std::size_t g = 4; g-- > 0;) {
      const input_group& group = input_groups()[g];
      std::vector<quant::matrix_view<const float>> ws;
      for (kind k : group.members) ws.push_back(m.source(l, k));
      quant::awq::options og = o;
      og.query_key_layers = group.input == kind::wq ? 0b011u : 0u;  // members wq, wk, wv
      const bool scaled = group.input != kind::wo || fold_into_v;
      if (!scaled) og.n_grid = 1;  // alpha = 0 only: s = 1
      awq_group_result r = quantize(std::span<const quant::matrix_view<const float>>(ws), xc[g].view(), og);
      if (r.linears.size() != group.members.size() || r.scales.size() != xc[g].cols)
        detail::fail("llama2c::awq_sequential: the quantizer returned ", r.linears.size(), " linears and ",
                     r.scales.size(), " scales for ", group.members.size(), " layers of ", xc[g].cols, " inputs");
      if (observe)
        observe(awq_group_info{l, group, xc[g], xe[g], ws, std::span<const std::unique_ptr<linear>>(r.linears),
                               r.scales, scaled, r.rep});
      switch (group.input) {
        case kind::w2: quant::awq::fold_into_rows(m.source_mutable(l, kind::w3), r.scales); break;
        case kind::w1: quant::awq::fold_into_norm(m.rms_ffn_mutable(l), r.scales); break;
        case kind::wo:
          if (scaled) quant::awq::fold_into_rows(m.source_mutable(l, kind::wv), r.scales);
          break;
        default: quant::awq::fold_into_norm(m.rms_att_mutable(l), r.scales); break;
      }
      // the fp32 sources become W diag(s), so that they and the folded operation before still compute
      // the original function (what source() and reset_fp32() give)
      for (kind k : group.members) quant::awq::scale_columns(m.source_mutable(l, k), r.scales);
      for (std::size_t i = 0; i < group.members.size(); ++i) m.set(l, group.members[i], std::move(r.linears[i]));
    }
  }
}

}  // namespace llama2c
