// llama2c/save.hpp: a quantized llama2c::model saved as a quant archive (quant/io/archive.hpp)
// and loaded back into a model that runs without the fp32 checkpoint, with bit-identical logits.
//
//   llama2c::save_model(m, "stories260K-int4.qmodel");             // after quantizing m's linears
//   llama2c::model q = llama2c::load_model("stories260K-int4.qmodel");
//
// Every linear is saved as it is installed: a quantized_linear<F, Gran> of one of the
// saved_tensor_types (every format of quant-report, `--formats all` included) with its GEMV mode,
// one of the model's own fp32 linears (model::fp32_weights), or a W8A8 layer (w8a8_linear below:
// its int8 per-channel codes and float scales as an int8 per_channel<symmetric, float> tensor,
// and the input scales 1/s when it divides its input by s). The classifier likewise (fp32 over the
// embedding when shared). Records of the archive:
//   metadata  model = "llama2c", llama2c.layout = "1" (this file's layout; load_model refuses
//             another), config.dim, config.hidden_dim, config.n_layers, config.n_heads,
//             config.n_kv_heads, config.vocab_size, config.seq_len (decimal), config.shared_classifier
//             ("1" or "0"), and per linear NAME.type = "quantized exact" | "quantized fast" | "fp32"
//             | "w8a8"
//   arrays    token_embedding (vocab x dim), rms_att and rms_ffn (n_layers x dim), rms_final (1 x dim)
//   linears   layers.L.K (K = wq, wk, wv, wo, w1, w2, w3) and classifier: a tensor record
//             (quantized, w8a8) or an fp32 array (fp32; no record for a shared fp32 classifier);
//             NAME.input_scale_inv (1 x cols) for a w8a8 layer that scales its input
// The tokenizer is a separate file, as for checkpoints. Errors: quant::error for a damaged or
// refused archive (quant/io/archive.hpp verifies everything first), llama2c::error for a valid
// archive that is not a model this loader reads (missing records, wrong shapes, unknown types).
#pragma once

#include <charconv>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <quant/algorithms/smoothquant.hpp>
#include <quant/io/archive.hpp>
#include <quant/kernels/w8a8.hpp>
#include <quant/quant.hpp>

#include "llama2c.hpp"

namespace llama2c {

/// A W8A8 linear layer (SmoothQuant's path): int8 per-channel weights of W diag(s), and per call
/// the input divided by s (when the scales could not be folded into the operation before) and
/// quantized per token to int8, then an int8 x int8 product (quant/kernels/w8a8.hpp).
class w8a8_linear final : public linear {
 public:
  /// Quantizes w (times s per column when s is not empty; then forward divides x by s).
  explicit w8a8_linear(quant::matrix_view<const float> w, std::span<const float> s = {})
      : w_(s.empty() ? quant::w8a8::quantize_weights(w) : quant::smoothquant::quantize(w, s)), inv_(s.size()) {
    for (std::size_t j = 0; j < s.size(); ++j) inv_[j] = 1.0f / s[j];
  }
  /// From parts: the weights and the multipliers of the input (1/s; empty for none).
  w8a8_linear(quant::w8a8::weights w, std::vector<float> input_scale_inv) : w_(std::move(w)), inv_(std::move(input_scale_inv)) {
    if (w_.empty()) detail::fail("llama2c::w8a8_linear: the weights are empty");
    if (!inv_.empty() && inv_.size() != w_.cols())
      detail::fail("llama2c::w8a8_linear: ", inv_.size(), " input scales for ", w_.cols(), " columns");
  }
  void forward(std::span<const float> x, std::span<float> y) const override {
    check_io(x, y);
    if (inv_.empty()) return quant::w8a8::gemv(w_, x, y);
    thread_local std::vector<float> xs;
    xs.resize(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) xs[j] = x[j] * inv_[j];
    quant::w8a8::gemv(w_, xs, y);
  }
  std::size_t bytes() const override { return w_.bytes() + inv_.size() * sizeof(float); }
  std::size_t rows() const override { return w_.rows(); }
  std::size_t cols() const override { return w_.cols(); }
  std::string describe() const override {
    return detail::cat("W8A8 int8 per-channel, int8 per-token activations [", rows(), " x ", cols(), "]",
                       inv_.empty() ? "" : ", input / s");
  }
  /// The weights, and the input multipliers 1/s (empty when the input is not scaled).
  const quant::w8a8::weights& weights() const noexcept { return w_; }
  std::span<const float> input_scale_inv() const noexcept { return inv_; }

 private:
  quant::w8a8::weights w_;
  std::vector<float> inv_;
};

/// The quantized tensor types a model's linears may have to be saved (and are loaded as): every
/// format of quant-report (report/formats.hpp, default set and `--formats all`).
using saved_tensor_types = std::tuple<
    quant::tensor<quant::int8, quant::per_channel<quant::symmetric>>,
    quant::tensor<quant::fp8_e4m3, quant::per_channel<quant::symmetric>>,
    quant::tensor<quant::int4, quant::per_group<32, quant::symmetric, quant::fp16>>,
    quant::tensor<quant::int4, quant::per_group<32, quant::asymmetric, quant::fp16>>,
    quant::tensor<quant::int4, quant::per_group<128, quant::symmetric, quant::fp16>>,
    quant::tensor<quant::int4, quant::per_group<128, quant::asymmetric, quant::fp16>>,
    quant::tensor<quant::nf4, quant::per_group<64, quant::symmetric, quant::fp16>>,
    quant::tensor<quant::fp4_e2m1, quant::per_group<32, quant::symmetric, quant::e8m0>>,
    quant::tensor<quant::int3, quant::per_group<128, quant::asymmetric, quant::fp16>>,
    quant::tensor<quant::int8, quant::per_channel<quant::asymmetric>>,
    quant::tensor<quant::int8, quant::per_tensor<quant::symmetric>>,
    quant::tensor<quant::fp8_e5m2, quant::per_channel<quant::symmetric>>,
    quant::tensor<quant::fp8_e4m3, quant::per_group<32, quant::symmetric, quant::e8m0>>,
    quant::tensor<quant::int4, quant::per_channel<quant::asymmetric>>,
    quant::tensor<quant::fp4_e2m1, quant::per_group<32, quant::symmetric, quant::fp16>>,
    quant::tensor<quant::int3, quant::per_group<128, quant::symmetric, quant::fp16>>,
    quant::tensor<quant::int2, quant::per_group<32, quant::asymmetric, quant::fp16>>>;

/// The layout of the records above; load_model reads this one only.
inline constexpr std::string_view saved_layout = "1";

namespace detail {
/// W8A8 weights in the canonical layout of an int8 per_channel<symmetric, float> tensor.
using w8a8_tensor = quant::tensor<quant::int8, quant::per_channel<quant::symmetric>>;

template <class T>
struct saved_types;
template <class... Ts>
struct saved_types<std::tuple<Ts...>> {
  /// Adds l as record name when it is a quantized_linear of one of the types; its type string.
  static std::string add(quant::archive::writer& w, const std::string& name, const linear& l) {
    std::string type;
    (void)(try_add<Ts>(w, name, l, type) || ...);
    return type;
  }
  template <class T>
  static bool try_add(quant::archive::writer& w, const std::string& name, const linear& l, std::string& type) {
    using F = typename quant::archive::detail::tensor_type<T>::format;
    using Gran = typename quant::archive::detail::tensor_type<T>::granularity;
    const auto* q = dynamic_cast<const quantized_linear<F, Gran>*>(&l);
    if (!q) return false;
    w.add(name, q->tensor());
    type = q->mode() == gemv_mode::fast ? "quantized fast" : "quantized exact";
    return true;
  }
  /// Reads tensor record name as whichever type it has, into a quantized_linear.
  static std::unique_ptr<linear> read(const quant::archive::reader& r, const std::string& name, gemv_mode mode) {
    return r.visit<Ts...>(name, [&]<class F, class Gran>(quant::tensor<F, Gran>&& t) -> std::unique_ptr<linear> {
      return std::make_unique<quantized_linear<F, Gran>>(std::move(t), mode);
    });
  }
};

inline std::string slot_name(std::size_t layer, kind k) { return cat("layers.", layer, ".", name(k)); }
}  // namespace detail

/// A model's archive, ready to write: the writer (with views of the model's data: the model must
/// outlive this object and stay unchanged) and the W8A8 weights converted to the canonical layout.
/// Throws llama2c::error naming the linear when one is of a type the saver does not know, or is a
/// dense_linear installed with model::set() (its weights cannot be read: use model::set_fp32).
class model_archive {
 public:
  explicit model_archive(const model& m) {
    const config& c = m.cfg();
    w_.add_metadata("model", "llama2c");
    w_.add_metadata("llama2c.layout", saved_layout);
    const std::pair<const char*, std::size_t> fields[] = {
        {"dim", c.dim},           {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
        {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size}, {"seq_len", c.seq_len}};
    for (const auto& [key, v] : fields) w_.add_metadata(detail::cat("config.", key), std::to_string(v));
    w_.add_metadata("config.shared_classifier", c.shared_classifier ? "1" : "0");
    const weights& src = m.source();
    w_.add_array("token_embedding", src.token_embedding, c.vocab_size, c.dim);
    w_.add_array("rms_att", src.rms_att, c.n_layers, c.dim);
    w_.add_array("rms_ffn", src.rms_ffn, c.n_layers, c.dim);
    w_.add_array("rms_final", src.rms_final, 1, c.dim);
    for (std::size_t l = 0; l < c.n_layers; ++l)
      for (kind k : all_kinds) {
        const auto fp32 = m.fp32_weights(l, k);
        add_linear(detail::slot_name(l, k), m.get(l, k), fp32.empty() ? std::span<const float>{}
                                                                        : std::span<const float>(fp32.data(), fp32.size()));
      }
    if (m.fp32_classifier()) {
      w_.add_metadata("classifier.type", "fp32");
      if (!c.shared_classifier) w_.add_array("classifier", src.wcls, c.vocab_size, c.dim);
    } else {
      add_linear("classifier", m.classifier(), {});
    }
  }
  model_archive(const model_archive&) = delete;
  model_archive& operator=(const model_archive&) = delete;

  const quant::archive::writer& writer() const noexcept { return w_; }
  /// The archive's size, the archive in memory, and the archive written to a file (through a
  /// temporary name, quant::archive::writer::save).
  std::size_t file_bytes() const { return w_.file_bytes(); }
  quant::archive::buffer to_buffer() const { return w_.to_buffer(); }
  void save(const std::filesystem::path& path) const { w_.save(path); }

 private:
  void add_linear(const std::string& name, const linear& l, std::span<const float> fp32) {
    std::string type = detail::saved_types<saved_tensor_types>::add(w_, name, l);
    if (type.empty()) {
      if (const auto* q = dynamic_cast<const w8a8_linear*>(&l)) {
        type = "w8a8";
        const auto wv = q->weights().cview();
        detail::w8a8_tensor t(wv.rows(), wv.cols());
        const auto tv = t.view();
        for (std::size_t r = 0; r < wv.rows(); ++r) {
          for (std::size_t col = 0; col < wv.cols(); ++col)
            tv.row_codes(r)[col] = static_cast<std::uint8_t>(wv.at(r, col));
          tv.scales()[r] = wv.scales()[r];
        }
        converted_.push_back(std::make_unique<detail::w8a8_tensor>(std::move(t)));
        w_.add(name, *converted_.back());
        if (!q->input_scale_inv().empty()) w_.add_array(name + ".input_scale_inv", q->input_scale_inv());
      } else if (!fp32.empty()) {
        type = "fp32";
        w_.add_array(name, fp32, l.rows(), l.cols());
      } else if (dynamic_cast<const dense_linear*>(&l)) {
        detail::fail("llama2c::save_model: ", name, " (", l.describe(),
                     ") is a dense_linear installed with model::set(), whose weights cannot be read; install fp32 "
                     "linears with model::set_fp32()");
      } else {
        detail::fail("llama2c::save_model: ", name, " (", l.describe(),
                     ") is not a linear type the saver knows (quantized_linear of saved_tensor_types, w8a8_linear, "
                     "the model's own fp32 linears)");
      }
    }
    w_.add_metadata(name + ".type", type);
  }

  quant::archive::writer w_;
  std::vector<std::unique_ptr<detail::w8a8_tensor>> converted_;
};

/// Saves m to path (model_archive(m).save(path)).
inline void save_model(const model& m, const std::filesystem::path& path) { model_archive(m).save(path); }

namespace detail {
inline std::size_t config_field(const quant::archive::reader& r, std::string_view field) {
  const std::string key = cat("config.", field);
  const std::string_view v = r.metadata(key);
  std::uint64_t n = 0;
  const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc{} || p != v.data() + v.size() || n == 0 || n > 0x7fffffffu)
    fail("llama2c::load_model: metadata ", key, " = '", v, "' is not a count from 1 to 2^31 - 1");
  return static_cast<std::size_t>(n);
}
/// Array record name, which must be rows x cols.
inline std::vector<float> shaped_array(const quant::archive::reader& r, const std::string& name, std::size_t rows,
                                       std::size_t cols) {
  const quant::archive::record_info& info = r.at(name);
  if (info.kind != quant::archive::record_kind::array || info.rows != rows || info.cols != cols)
    fail("llama2c::load_model: record ", name, " must be an fp32 array of ", rows, " x ", cols, ", it is ",
         info.kind == quant::archive::record_kind::array ? cat("an array of ", info.rows, " x ", info.cols)
                                                         : std::string("not an array"));
  return r.read_array(name);
}
/// The linear record name of a model assembled from parts.
inline model::part read_linear(const quant::archive::reader& r, const std::string& name, std::size_t rows,
                               std::size_t cols) {
  const std::string_view type = r.metadata(name + ".type");
  model::part p;
  if (type == "fp32") {
    p.fp32 = shaped_array(r, name, rows, cols);
  } else if (type == "quantized exact" || type == "quantized fast") {
    p.op = saved_types<saved_tensor_types>::read(r, name, type == "quantized fast" ? gemv_mode::fast : gemv_mode::exact);
  } else if (type == "w8a8") {
    const w8a8_tensor t = r.read<quant::int8, quant::per_channel<quant::symmetric>>(name);
    if (t.rows() != rows || t.cols() != cols)
      fail("llama2c::load_model: ", name, " is ", t.rows(), " x ", t.cols(), ", expected ", rows, " x ", cols);
    quant::w8a8::weights w(rows, cols);
    quant::w8a8::convert(t.cview(), w.view());
    std::vector<float> inv;
    if (r.find(name + ".input_scale_inv")) inv = shaped_array(r, name + ".input_scale_inv", 1, cols);
    p.op = std::make_unique<w8a8_linear>(std::move(w), std::move(inv));
  } else {
    fail("llama2c::load_model: ", name, ".type = '", type, "' is not a linear type of layout ", saved_layout,
         " (quantized exact, quantized fast, fp32, w8a8)");
  }
  if (p.op && (p.op->rows() != rows || p.op->cols() != cols))
    fail("llama2c::load_model: ", name, " is ", p.op->describe(), ", expected ", rows, " x ", cols);
  return p;
}
}  // namespace detail

/// The model saved in archive r (see the top of this header), runnable without the checkpoint.
inline model load_model(const quant::archive::reader& r) {
  const auto kind_of = r.find_metadata("model");
  if (!kind_of || *kind_of != "llama2c")
    detail::fail("llama2c::load_model: the archive is not a saved llama2c model (metadata model = '",
                 kind_of ? *kind_of : std::string_view("(absent)"), "')");
  const std::string_view layout = r.metadata("llama2c.layout");
  if (layout != saved_layout)
    detail::fail("llama2c::load_model: the model was saved with layout ", layout, "; this loader reads layout ",
                 saved_layout);
  weights w;
  config& c = w.cfg;
  c.dim = detail::config_field(r, "dim");
  c.hidden_dim = detail::config_field(r, "hidden_dim");
  c.n_layers = detail::config_field(r, "n_layers");
  c.n_heads = detail::config_field(r, "n_heads");
  c.n_kv_heads = detail::config_field(r, "n_kv_heads");
  c.vocab_size = detail::config_field(r, "vocab_size");
  c.seq_len = detail::config_field(r, "seq_len");
  const std::string_view shared = r.metadata("config.shared_classifier");
  if (shared != "0" && shared != "1")
    detail::fail("llama2c::load_model: metadata config.shared_classifier = '", shared, "' (expected 0 or 1)");
  c.shared_classifier = shared == "1";
  validate(c, "llama2c::load_model");
  w.token_embedding = detail::shaped_array(r, "token_embedding", c.vocab_size, c.dim);
  w.rms_att = detail::shaped_array(r, "rms_att", c.n_layers, c.dim);
  w.rms_ffn = detail::shaped_array(r, "rms_ffn", c.n_layers, c.dim);
  w.rms_final = detail::shaped_array(r, "rms_final", 1, c.dim);
  std::vector<model::part> parts;
  for (std::size_t l = 0; l < c.n_layers; ++l)
    for (kind k : all_kinds) parts.push_back(detail::read_linear(r, detail::slot_name(l, k), rows_of(c, k), cols_of(c, k)));
  std::unique_ptr<linear> classifier;
  if (r.metadata("classifier.type") == "fp32") {
    if (!c.shared_classifier) w.wcls = detail::shaped_array(r, "classifier", c.vocab_size, c.dim);
  } else {
    classifier = detail::read_linear(r, "classifier", c.vocab_size, c.dim).op;
  }
  return model(std::move(w), std::move(parts), std::move(classifier));
}
/// Reads and verifies the archive at path, then load_model.
inline model load_model(const std::filesystem::path& path) { return load_model(quant::archive::reader::open(path)); }

}  // namespace llama2c
