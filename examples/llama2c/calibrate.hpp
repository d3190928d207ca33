// llama2c/calibrate.hpp: calibration of a llama2c::model for the post-training quantization
// methods (GPTQ now; AWQ and SmoothQuant use the same capture): the inputs of each layer's linear
// layers on calibration text, recorded layer by layer while the layers before are already
// quantized (sequential calibration, as the methods prescribe).
//
// Linears that read the same vector (q/k/v; the FFN's gate w1 and up w3) form one input group and
// are calibrated on the same activations. With `true_sequential`, every group of a layer is
// captured after the groups before it in the same layer were quantized (4 passes per layer, as
// GPTQ's --true-sequential); otherwise the four inputs of a layer are captured in one pass.
#pragma once

#include <algorithm>
#include <array>
#include <filesystem>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <quant/quant.hpp>

#include "llama2c.hpp"

namespace llama2c {

/// Linears that read the same input, in the order a layer's forward pass reaches them: the kind
/// forward's capture hook reports (`input`) and the linears that read it.
struct input_group {
  kind input;
  std::vector<kind> members;
};

/// The four input groups of a transformer layer.
inline const std::array<input_group, 4>& input_groups() {
  static const std::array<input_group, 4> groups{{{kind::wq, {kind::wq, kind::wk, kind::wv}},
                                                  {kind::wo, {kind::wo}},
                                                  {kind::w1, {kind::w1, kind::w3}},
                                                  {kind::w2, {kind::w2}}}};
  return groups;
}

/// Index of the input group that kind k belongs to.
inline std::size_t group_of(kind k) noexcept {
  switch (k) {
    case kind::wq: case kind::wk: case kind::wv: return 0;
    case kind::wo: return 1;
    case kind::w1: case kind::w3: return 2;
    case kind::w2: return 3;
  }
  return 0;
}

/// Activations of one input: tokens x cols, row-major.
struct activations {
  std::size_t tokens = 0, cols = 0;
  std::vector<float> x;
  quant::matrix_view<const float> view() const { return {x.data(), tokens, cols}; }
};

/// Token sequences for calibration or evaluation: stories[first, first + count), each
/// BOS + encode(story) truncated to seq_len (the same tokens perplexity() scores).
inline std::vector<std::vector<int>> encode_stories(const tokenizer& tok, const std::vector<std::string>& stories,
                                                    std::size_t first, std::size_t count, std::size_t seq_len) {
  if (first > stories.size() || count > stories.size() - first)
    detail::fail("llama2c::encode_stories: stories [", first, ", ", first + count, ") are outside the ",
                 stories.size(), " stories given");
  std::vector<std::vector<int>> seqs;
  for (std::size_t i = first; i < first + count; ++i) {
    auto ids = tok.encode(stories[i], true);
    if (ids.size() > seq_len) ids.resize(seq_len);
    seqs.push_back(std::move(ids));
  }
  return seqs;
}

/// The token sequences of a calibration / evaluation split of a story file: evaluation on
/// stories [0, eval_count), calibration on [calib_first, calib_first + calib_count), which must not
/// overlap it.
struct text_split {
  std::vector<std::vector<int>> calib, eval;
};
inline text_split split_text(const tokenizer& tok, const std::filesystem::path& text, std::size_t calib_first,
                             std::size_t calib_count, std::size_t eval_count, std::size_t seq_len) {
  const auto stories = split_stories(read_text(text));
  if (calib_first < eval_count)
    detail::fail("llama2c::split_text: calibration stories from ", calib_first, " overlap the ", eval_count,
                 " evaluation stories");
  if (calib_first + calib_count > stories.size() || eval_count > stories.size())
    detail::fail("llama2c::split_text: ", text.string(), " has ", stories.size(), " stories, too few for calibration [",
                 calib_first, ", ", calib_first + calib_count, ") and evaluation [0, ", eval_count, ")");
  return {encode_stories(tok, stories, calib_first, calib_count, seq_len), encode_stories(tok, stories, 0, eval_count, seq_len)};
}

/// Total tokens of a set of sequences.
inline std::size_t token_count(const std::vector<std::vector<int>>& seqs) noexcept {
  std::size_t n = 0;
  for (const auto& s : seqs) n += s.size();
  return n;
}

/// Runs m over every sequence (a fresh context each, every token) and returns the inputs of the
/// four input groups of `layer` (index: input_groups()), in sequence order. The sequences are
/// split over the tasks of exec (any quant::executor; each task has its own state), so the
/// result does not depend on the number of threads.
template <class Exec = quant::inline_executor>
std::array<activations, 4> capture_layer(const model& m, const std::vector<std::vector<int>>& seqs, std::size_t layer,
                                         Exec&& exec = {}) {
  if (layer >= m.cfg().n_layers)
    detail::fail("llama2c::capture_layer: layer ", layer, " out of range (n_layers = ", m.cfg().n_layers, ")");
  const std::size_t tasks = std::max<std::size_t>(1, std::min<std::size_t>(seqs.size(), 16));
  std::vector<std::array<activations, 4>> parts(tasks);
  exec(tasks, [&](std::size_t t) {
    const std::size_t s0 = seqs.size() * t / tasks, s1 = seqs.size() * (t + 1) / tasks;
    std::array<activations, 4>& out = parts[t];
    state s(m.cfg());
    s.capture = [&](std::size_t l, kind k, std::span<const float> in) {
      if (l != layer) return;
      activations& a = out[group_of(k)];
      a.x.insert(a.x.end(), in.begin(), in.end());
      ++a.tokens;
    };
    for (std::size_t i = s0; i < s1; ++i)  // the layers after `layer` and the classifier are not needed
      for (std::size_t pos = 0; pos < seqs[i].size(); ++pos) forward(m, s, seqs[i][pos], pos, layer + 1);
  });
  std::array<activations, 4> out;
  for (std::size_t g = 0; g < 4; ++g) {
    out[g].cols = cols_of(m.cfg(), input_groups()[g].input);
    for (const auto& p : parts) {
      out[g].x.insert(out[g].x.end(), p[g].x.begin(), p[g].x.end());
      out[g].tokens += p[g].tokens;
    }
  }
  return out;
}

/// What sequential calibration hands a method for one input group of one layer: the model (the
/// layers before already quantized), the group, and its inputs on the calibration tokens and on
/// held-out tokens (empty when no evaluation sequences were given). The method installs the
/// quantized linears of the group with m.set().
struct group_job {
  model& m;
  std::size_t layer;
  const input_group& group;
  const activations& calib;
  const activations& eval;
};
using group_fn = std::function<void(const group_job&)>;

/// Sequential calibration: for each layer in order, capture the inputs of its input groups on
/// the calibration sequences (and on the evaluation sequences, for held-out measurements) with
/// the model as quantized so far, and let fn quantize each group. The captures run on exec.
template <class Exec = quant::inline_executor>
void calibrate_sequential(model& m, const std::vector<std::vector<int>>& calib,
                          const std::vector<std::vector<int>>& eval, bool true_sequential, const group_fn& fn,
                          Exec&& exec = {}) {
  if (calib.empty()) detail::fail("llama2c::calibrate_sequential: no calibration sequences");
  for (std::size_t l = 0; l < m.cfg().n_layers; ++l) {
    std::array<activations, 4> c = capture_layer(m, calib, l, exec), e;
    if (!eval.empty()) e = capture_layer(m, eval, l, exec);
    for (std::size_t g = 0; g < 4; ++g) {
      if (true_sequential && g > 0) {  // inputs that depend on the groups just quantized
        c[g] = std::move(capture_layer(m, calib, l, exec)[g]);
        if (!eval.empty()) e[g] = std::move(capture_layer(m, eval, l, exec)[g]);
      }
      fn(group_job{m, l, input_groups()[g], c[g], e[g]});
    }
  }
}

}  // namespace llama2c
