// llama2c.hpp: a small llama2.c inference engine whose every linear layer runs through quant.
//
// It reads llama2.c "v0" checkpoints (the 7 x int32 header, then fp32 tensors) and their
// tokenizers, and runs the llama2.c forward pass (RMSNorm, RoPE, grouped-query causal
// attention, SiLU-gated FFN) one token at a time. Each of the 7 linear layers of each
// transformer layer (wq, wk, wv, wo, w1, w2, w3) is a `linear` object: fp32 (`dense_linear`) or
// any quant::tensor<F, Gran> with exact or fast GEMV (`quantized_linear`), chosen per layer. The
// model keeps the fp32 source weights, so a caller can quantize every layer with any method
// (round-to-nearest, GPTQ with inputs captured by state::capture, ...) and install the result.
//
//   auto m = llama2c::model::load("stories260K.bin");
//   llama2c::tokenizer tok("tok512.bin", m.cfg().vocab_size);
//   llama2c::quantize_all<quant::int4, quant::per_group<32, quant::asymmetric, quant::fp16>>(m);
//   auto stories = llama2c::split_stories(llama2c::read_text("tinystories_valid.txt"));
//   auto r = llama2c::perplexity(m, tok, stories, 0, 20);   // r.ppl
//
// Single-threaded; uses only the standard library and quant. Every error is a llama2c::error
// (an std::runtime_error) or a quant::error whose message names the file or argument and values.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <quant/kv_cache.hpp>
#include <quant/quant.hpp>
#include <xsimd/xsimd.hpp>

namespace llama2c {

// ---- errors -----------------------------------------------------------------------------------

/// The exception every function of this header throws for bad files and bad arguments.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw error(cat(args...));
}
/// a * b, throwing when it overflows 64 bits (sizes derived from an untrusted header).
inline std::uint64_t mul(std::uint64_t a, std::uint64_t b, const std::string& file) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    fail(file, ": the checkpoint header describes a model too large to address");
  return a * b;
}
inline std::uint64_t add(std::uint64_t a, std::uint64_t b, const std::string& file) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a)
    fail(file, ": the checkpoint header describes a model too large to address");
  return a + b;
}
}  // namespace detail

// ---- configuration and fp32 weights ------------------------------------------------------------

/// The hyperparameters of a llama2.c checkpoint (its 7 x int32 header).
struct config {
  std::size_t dim = 0;         ///< model width d
  std::size_t hidden_dim = 0;  ///< FFN width h
  std::size_t n_layers = 0;
  std::size_t n_heads = 0;
  std::size_t n_kv_heads = 0;  ///< K/V heads (grouped-query attention when < n_heads)
  std::size_t vocab_size = 0;
  std::size_t seq_len = 0;     ///< maximum context length
  bool shared_classifier = true;  ///< the classifier is the token embedding (header vocab_size > 0)

  /// dim / n_heads; the width of K and V (dim * n_kv_heads / n_heads); query heads per K/V head.
  std::size_t head_size() const noexcept { return dim / n_heads; }
  std::size_t kv_dim() const noexcept { return dim * n_kv_heads / n_heads; }
  std::size_t kv_mul() const noexcept { return n_heads / n_kv_heads; }
};

/// The 7 linear layers of a transformer layer, in checkpoint order.
enum class kind { wq, wk, wv, wo, w1, w2, w3 };
/// Every kind, in checkpoint order.
inline constexpr std::array<kind, 7> all_kinds = {kind::wq, kind::wk, kind::wv, kind::wo,
                                                  kind::w1, kind::w2, kind::w3};
/// "wq", "wk", "wv", "wo", "w1" (gate), "w2" (down), "w3" (up).
constexpr std::string_view name(kind k) noexcept {
  constexpr std::array<std::string_view, 7> names = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  return names[static_cast<std::size_t>(k)];
}
/// Output features (rows) of a linear of kind k.
inline std::size_t rows_of(const config& c, kind k) noexcept {
  switch (k) {
    case kind::wk:
    case kind::wv: return c.kv_dim();
    case kind::w1:
    case kind::w3: return c.hidden_dim;
    default: return c.dim;
  }
}
/// Input features (cols) of a linear of kind k.
inline std::size_t cols_of(const config& c, kind k) noexcept { return k == kind::w2 ? c.hidden_dim : c.dim; }

/// The fp32 tensors of a checkpoint, as stored: each linear kind holds all layers back to back
/// (layer outermost), each matrix row-major [out][in] as a PyTorch nn.Linear weight.
struct weights {
  config cfg;
  std::vector<float> token_embedding;  ///< vocab x dim
  std::vector<float> rms_att;          ///< n_layers x dim
  std::array<std::vector<float>, 7> linear;  ///< by kind: n_layers x rows_of(kind) x cols_of(kind)
  std::vector<float> rms_ffn;          ///< n_layers x dim
  std::vector<float> rms_final;        ///< dim
  std::vector<float> wcls;             ///< vocab x dim; empty when the classifier is shared

  /// The fp32 matrix of linear (layer, k). Throws llama2c::error for a layer out of range, or when
  /// the linears of kind k are absent (a model assembled from quantized parts keeps none).
  quant::matrix_view<const float> matrix(std::size_t layer, kind k) const {
    if (layer >= cfg.n_layers) detail::fail("llama2c: layer ", layer, " out of range (n_layers = ", cfg.n_layers, ")");
    const std::size_t r = rows_of(cfg, k), c = cols_of(cfg, k);
    if (linear[static_cast<std::size_t>(k)].size() < (layer + 1) * r * c)
      detail::fail("llama2c: no fp32 weights of ", name(k), ".", layer,
                   " (the model was assembled from its linears, without fp32 sources)");
    return {linear[static_cast<std::size_t>(k)].data() + layer * r * c, r, c};
  }
  /// The same, writable.
  quant::matrix_view<float> matrix_mutable(std::size_t layer, kind k) {
    const auto v = matrix(layer, k);
    return {linear[static_cast<std::size_t>(k)].data() + (v.data() - linear[static_cast<std::size_t>(k)].data()), v.rows(),
            v.cols()};
  }
  /// The classifier matrix (vocab x dim): the token embedding when shared, else wcls.
  quant::matrix_view<const float> classifier() const {
    const auto& w = cfg.shared_classifier ? token_embedding : wcls;
    if (w.size() != cfg.vocab_size * cfg.dim)
      detail::fail("llama2c: no fp32 classifier weights (", cfg.shared_classifier ? "token_embedding" : "wcls", " has ",
                   w.size(), " elements, expected vocab_size x dim = ", cfg.vocab_size * cfg.dim, ")");
    return {w.data(), cfg.vocab_size, cfg.dim};
  }
};

/// Checks a configuration read from a header: positive sizes, dim % n_heads == 0,
/// n_heads % n_kv_heads == 0 and an even head size (RoPE rotates pairs). `who` names the file.
inline void validate(const config& c, const std::string& who) {
  auto positive = [&](std::size_t v, const char* what) {
    if (v == 0) detail::fail(who, ": ", what, " must be positive, the header has 0");
  };
  positive(c.dim, "dim");
  positive(c.hidden_dim, "hidden_dim");
  positive(c.n_layers, "n_layers");
  positive(c.n_heads, "n_heads");
  positive(c.n_kv_heads, "n_kv_heads");
  positive(c.vocab_size, "vocab_size");
  positive(c.seq_len, "seq_len");
  if (c.dim % c.n_heads != 0) detail::fail(who, ": dim = ", c.dim, " is not a multiple of n_heads = ", c.n_heads);
  if (c.n_heads % c.n_kv_heads != 0)
    detail::fail(who, ": n_heads = ", c.n_heads, " is not a multiple of n_kv_heads = ", c.n_kv_heads);
  if (c.head_size() % 2 != 0)
    detail::fail(who, ": head size dim / n_heads = ", c.head_size(), " is odd; RoPE rotates pairs of elements");
}

/// The exact size in bytes of a v0 checkpoint file with configuration c (the formula of the
/// llama2.c layout: header, embedding, norms, linears, final norm, freq_cis tables, optional wcls).
inline std::uint64_t checkpoint_bytes(const config& c, const std::string& who = "llama2c") {
  using detail::add;
  using detail::mul;
  const std::uint64_t d = c.dim, h = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim();
  std::uint64_t floats = mul(V, d, who);                            // token embedding
  floats = add(floats, mul(L, d, who), who);                        // rms_att
  floats = add(floats, mul(mul(L, d, who), d, who), who);           // wq
  floats = add(floats, mul(mul(2 * L, kv, who), d, who), who);      // wk, wv
  floats = add(floats, mul(mul(L, d, who), d, who), who);           // wo
  floats = add(floats, mul(L, d, who), who);                        // rms_ffn
  floats = add(floats, mul(mul(3 * L, d, who), h, who), who);       // w1, w2, w3
  floats = add(floats, d, who);                                     // rms_final
  floats = add(floats, mul(c.seq_len, c.head_size(), who), who);    // freq_cis real + imag
  if (!c.shared_classifier) floats = add(floats, mul(V, d, who), who);  // wcls
  return add(28, mul(floats, 4, who), who);
}

/// Reads a llama2.c v0 checkpoint into fp32 weights. Validates the header (see validate) and the
/// exact file size against checkpoint_bytes; throws llama2c::error naming the file and the values.
/// The freq_cis tables are skipped: forward computes RoPE on the fly.
inline weights load_checkpoint(const std::filesystem::path& path) {
  const std::string who = path.string();
  std::error_code ec;
  const std::uintmax_t actual = std::filesystem::file_size(path, ec);
  if (ec) detail::fail(who, ": cannot open the checkpoint (", ec.message(), ")");
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail(who, ": cannot open the checkpoint for reading");
  std::int32_t h[7];
  if (actual < sizeof h || !in.read(reinterpret_cast<char*>(h), sizeof h))
    detail::fail(who, ": file has ", actual, " bytes, too short for the 28-byte checkpoint header");
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    const bool separate_classifier = i == 5 && h[i] < 0 && h[i] != std::numeric_limits<std::int32_t>::min();
    if (h[i] <= 0 && !separate_classifier)
      detail::fail(who, ": header field ", names[i], " = ", h[i], " must be positive",
                   i == 5 ? " (or negative for a separate classifier)" : "");
  }
  weights w;
  config& c = w.cfg;
  c.dim = static_cast<std::size_t>(h[0]);
  c.hidden_dim = static_cast<std::size_t>(h[1]);
  c.n_layers = static_cast<std::size_t>(h[2]);
  c.n_heads = static_cast<std::size_t>(h[3]);
  c.n_kv_heads = static_cast<std::size_t>(h[4]);
  c.shared_classifier = h[5] > 0;
  c.vocab_size = static_cast<std::size_t>(h[5] > 0 ? h[5] : -h[5]);
  c.seq_len = static_cast<std::size_t>(h[6]);
  validate(c, who);
  const std::uint64_t expected = checkpoint_bytes(c, who);
  if (expected != actual)
    detail::fail(who, ": file has ", actual, " bytes, but the header (dim ", c.dim, ", hidden_dim ", c.hidden_dim,
                 ", n_layers ", c.n_layers, ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads, ", vocab_size ",
                 h[5], ", seq_len ", c.seq_len, ") implies ", expected, " bytes");
  auto read = [&](std::vector<float>& v, std::size_t n, std::string_view what) {
    v.resize(n);
    if (!in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float))))
      detail::fail(who, ": read error in tensor ", what);
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(v[i])) detail::fail(who, ": tensor ", what, " element ", i, " is not finite (", v[i], ")");
  };
  const std::size_t d = c.dim, L = c.n_layers;
  read(w.token_embedding, c.vocab_size * d, "token_embedding");
  read(w.rms_att, L * d, "rms_att");
  for (kind k : {kind::wq, kind::wk, kind::wv, kind::wo})
    read(w.linear[static_cast<std::size_t>(k)], L * rows_of(c, k) * cols_of(c, k), name(k));
  read(w.rms_ffn, L * d, "rms_ffn");
  for (kind k : {kind::w1, kind::w2, kind::w3})
    read(w.linear[static_cast<std::size_t>(k)], L * rows_of(c, k) * cols_of(c, k), name(k));
  read(w.rms_final, d, "rms_final");
  in.seekg(static_cast<std::streamoff>(c.seq_len * c.head_size() * sizeof(float)), std::ios::cur);  // freq_cis
  if (!c.shared_classifier) read(w.wcls, c.vocab_size * d, "wcls");
  return w;
}

// ---- linear layers ----------------------------------------------------------------------------

/// One linear layer y = W x (W: rows x cols), in whatever representation. forward takes x of
/// cols() elements and writes y of rows() elements (separate buffers).
struct linear {
  virtual ~linear() = default;
  /// y = W x. Throws llama2c::error (or quant::error) when x or y has the wrong length.
  virtual void forward(std::span<const float> x, std::span<float> y) const = 0;
  /// Bytes of the weights as stored (fp32: 4 per weight; quantized: codes + scales + zero points).
  virtual std::size_t bytes() const = 0;
  /// A one-line description, e.g. "fp32 [64 x 64]" or "int4 per_group<32, asym, f16> [64 x 64] fast".
  virtual std::string describe() const = 0;
  /// Output features (length of y) and input features (length of x).
  virtual std::size_t rows() const = 0;
  virtual std::size_t cols() const = 0;

 protected:
  void check_io(std::span<const float> x, std::span<float> y) const {
    if (x.size() != cols() || y.size() != rows())
      detail::fail("llama2c::linear::forward: x has ", x.size(), " elements and y ", y.size(), ", expected ", cols(),
                   " and ", rows(), " for ", describe());
  }
};

/// An fp32 linear layer, row-major. Owns its weights, or views weights the caller keeps alive
/// (the model's own fp32 source weights).
class dense_linear final : public linear {
 public:
  /// Owns w (rows x cols, row-major).
  dense_linear(std::vector<float> w, std::size_t rows, std::size_t cols)
      : owned_(std::move(w)), w_(owned_.data()), rows_(rows), cols_(cols) {
    if (rows == 0 || cols == 0 || owned_.size() != rows * cols)
      detail::fail("llama2c::dense_linear: ", owned_.size(), " weights for a ", rows, " x ", cols, " matrix");
  }
  /// Views w (contiguous rows: ld == cols), which must outlive this object.
  explicit dense_linear(quant::matrix_view<const float> w) : w_(w.data()), rows_(w.rows()), cols_(w.cols()) {
    if (w.empty() || w.ld() != w.cols())
      detail::fail("llama2c::dense_linear: the view must be a non-empty contiguous matrix (", w.rows(), " x ",
                   w.cols(), ", ld ", w.ld(), ")");
  }
  void forward(std::span<const float> x, std::span<float> y) const override {
    check_io(x, y);
    for (std::size_t r = 0; r < rows_; ++r) y[r] = dot(w_ + r * cols_, x.data(), cols_);
  }
  std::size_t bytes() const override { return rows_ * cols_ * sizeof(float); }
  std::string describe() const override { return detail::cat("fp32 [", rows_, " x ", cols_, "]"); }
  std::size_t rows() const override { return rows_; }
  std::size_t cols() const override { return cols_; }

  /// sum a[i] b[i] in float: four independent SIMD accumulators of the build's widest vectors
  /// (xsimd's default arch; enough chains to hide the FMA latency), then a fixed-order reduction.
  static float dot(const float* a, const float* b, std::size_t n) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    batch s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
    std::size_t i = 0;
    for (; i + 4 * w <= n; i += 4 * w) {
      s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
      s1 = xsimd::fma(batch::load_unaligned(a + i + w), batch::load_unaligned(b + i + w), s1);
      s2 = xsimd::fma(batch::load_unaligned(a + i + 2 * w), batch::load_unaligned(b + i + 2 * w), s2);
      s3 = xsimd::fma(batch::load_unaligned(a + i + 3 * w), batch::load_unaligned(b + i + 3 * w), s3);
    }
    for (; i + w <= n; i += w) s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
    float tail = 0;
    for (; i < n; ++i) tail += a[i] * b[i];
    return xsimd::hadd((s0 + s1) + (s2 + s3)) + tail;
  }

 private:
  std::vector<float> owned_;
  const float* w_ = nullptr;
  std::size_t rows_ = 0, cols_ = 0;
};

/// Which quant::gemv mode a quantized layer runs: exact (fp32 activations) or fast (int8
/// activations per block of 32, integer dot products).
enum class gemv_mode { exact, fast };

/// The name of a granularity, e.g. "per_channel<sym, f32>" or "per_group<32, asym, f16>".
template <class Gran>
std::string granularity_name(const Gran& g) {
  const std::string_view sym = Gran::symmetry::name, scale = quant::scale_traits<typename Gran::scale_type>::name;
  if constexpr (Gran::kind == quant::granularity_kind::tensor) return detail::cat("per_tensor<", sym, ", ", scale, ">");
  else if constexpr (Gran::kind == quant::granularity_kind::channel)
    return detail::cat("per_channel<", sym, ", ", scale, ">");
  else return detail::cat("per_group<", g.group_size(), ", ", sym, ", ", scale, ">");
}

/// A linear layer held as a quant::tensor<F, Gran>, multiplied by quant::gemv in the given mode.
template <class F, class Gran>
class quantized_linear final : public linear {
 public:
  quantized_linear(quant::tensor<F, Gran> t, gemv_mode mode = gemv_mode::exact) : t_(std::move(t)), mode_(mode) {
    if (t_.empty()) detail::fail("llama2c::quantized_linear: the tensor is empty");
  }
  void forward(std::span<const float> x, std::span<float> y) const override {
    check_io(x, y);
    if (mode_ == gemv_mode::fast) quant::gemv(t_, x, y, quant::fast);
    else quant::gemv(t_, x, y);
  }
  std::size_t bytes() const override { return t_.bytes(); }
  std::string describe() const override {
    return detail::cat(quant::format_traits<F>::name, " ", granularity_name(t_.cview().granularity()), " [", rows(),
                       " x ", cols(), "]", t_.permuted() ? " permuted" : "",
                       mode_ == gemv_mode::fast ? " fast" : " exact");
  }
  std::size_t rows() const override { return t_.rows(); }
  std::size_t cols() const override { return t_.cols(); }
  /// The quantized weights and the GEMV mode forward uses.
  const quant::tensor<F, Gran>& tensor() const noexcept { return t_; }
  gemv_mode mode() const noexcept { return mode_; }

 private:
  quant::tensor<F, Gran> t_;
  gemv_mode mode_;
};

/// Round-to-nearest quantization of w into a quantized_linear (quant::quantize<F, Gran>).
template <class F, class Gran>
std::unique_ptr<linear> make_quantized(quant::matrix_view<const float> w, gemv_mode mode = gemv_mode::exact,
                                       const Gran& gran = Gran{}, const quant::quantize_options& options = {}) {
  return std::make_unique<quantized_linear<F, Gran>>(quant::quantize<F, Gran>(w, gran, options), mode);
}

// ---- the model --------------------------------------------------------------------------------

/// A llama2.c transformer: the fp32 weights plus one replaceable `linear` per (layer, kind) and
/// a replaceable classifier. Initially every linear is fp32 and views the fp32 weights, which
/// the model keeps (source()) so that callers can quantize layers and install the results. A
/// model can also be assembled from its linears alone, without fp32 sources (what
/// llama2c/save.hpp loads a saved quantized model into). Movable, not copyable.
class model {
 public:
  /// Takes the weights (checked against their config); every linear starts as a dense_linear
  /// over them.
  explicit model(weights w) : w_(std::move(w)) {
    validate(w_.cfg, "llama2c::model");
    check_common(true);
    check_linear_sources();
    reset_fp32();
  }
  /// load_checkpoint(path), then the model.
  static model load(const std::filesystem::path& path) { return model(load_checkpoint(path)); }

  /// One linear of a model assembled from parts: a linear to install (op), or, with op null, fp32
  /// weights (rows x cols, row-major) that the model keeps and runs as a dense_linear.
  struct part {
    std::unique_ptr<linear> op;
    std::vector<float> fp32;
  };
  /// A model assembled from its linears, with no fp32 linear sources (what a saved quantized model
  /// loads into: it runs without the checkpoint). w holds the configuration, the embedding and
  /// the norms, and w.linear is empty (or complete, as for the constructor above); parts holds
  /// n_layers x 7 linears, layer-major in all_kinds order; the classifier is `classifier`, or fp32
  /// over w.classifier() (the embedding when shared, else w.wcls) when null. Throws llama2c::error
  /// for a size or shape that does not match the configuration.
  model(weights w, std::vector<part> parts, std::unique_ptr<linear> classifier = nullptr) : w_(std::move(w)) {
    validate(w_.cfg, "llama2c::model");
    const config& c = w_.cfg;
    check_common(classifier == nullptr);
    const bool none = std::all_of(w_.linear.begin(), w_.linear.end(), [](const auto& v) { return v.empty(); });
    if (!none) check_linear_sources();
    if (parts.size() != c.n_layers * all_kinds.size())
      detail::fail("llama2c::model: ", parts.size(), " linears given, the config needs n_layers x 7 = ",
                   c.n_layers * all_kinds.size());
    linears_.resize(parts.size());
    fp32_.assign(parts.size(), nullptr);
    owned_.resize(parts.size());
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const std::size_t l = i / all_kinds.size();
      const kind k = all_kinds[i % all_kinds.size()];
      if (parts[i].op) set(l, k, std::move(parts[i].op));
      else set_fp32(l, k, std::move(parts[i].fp32));
    }
    if (classifier) {
      set_classifier(std::move(classifier));
    } else {
      classifier_ = std::make_unique<dense_linear>(w_.classifier());
      own_classifier_ = true;
    }
  }

  /// The hyperparameters.
  const config& cfg() const noexcept { return w_.cfg; }
  /// The fp32 weights the model was built from (unchanged by set()).
  const weights& source() const noexcept { return w_; }
  /// The fp32 source matrix of linear (layer, k): what to quantize. Throws llama2c::error when
  /// the model has no fp32 sources (has_source()).
  quant::matrix_view<const float> source(std::size_t layer, kind k) const { return w_.matrix(layer, k); }
  /// False for a model assembled from parts without fp32 linear sources.
  bool has_source() const noexcept { return !w_.linear[0].empty(); }

  /// The linear (layer, k) the forward pass runs.
  const linear& get(std::size_t layer, kind k) const { return *linears_[index(layer, k)]; }
  /// Replaces linear (layer, k); it must be non-null with the shape of the source matrix.
  void set(std::size_t layer, kind k, std::unique_ptr<linear> l) {
    const std::size_t i = index(layer, k);
    check_shape(l, rows_of(cfg(), k), cols_of(cfg(), k), detail::cat(name(k), ".", layer));
    linears_[i] = std::move(l);
    fp32_[i] = nullptr;
  }
  /// Makes linear (layer, k) fp32 over its source weights (as reset_fp32 does for all).
  void set_fp32(std::size_t layer, kind k) {
    const auto w = source(layer, k);
    set(layer, k, std::make_unique<dense_linear>(w));
    fp32_[index(layer, k)] = w.data();
  }
  /// Makes linear (layer, k) fp32 with weights w (rows x cols, row-major), which the model keeps
  /// (replacing what an earlier call of this kind kept for the slot).
  void set_fp32(std::size_t layer, kind k, std::vector<float> w) {
    const std::size_t i = index(layer, k), r = rows_of(cfg(), k), c = cols_of(cfg(), k);
    if (w.size() != r * c)
      detail::fail("llama2c::model::set_fp32: ", name(k), ".", layer, " has ", w.size(), " weights, expected ", r, " x ",
                   c);
    auto l = std::make_unique<dense_linear>(quant::matrix_view<const float>(w.data(), r, c));
    linears_[i] = std::move(l);
    owned_[i] = std::move(w);  // the heap buffer (and the view) stay where they are
    fp32_[i] = owned_[i].data();
  }
  /// The fp32 weights of linear (layer, k) when it is one of the model's own fp32 linears (set
  /// by reset_fp32, set_fp32 or an fp32 part; not a dense_linear installed with set()), else an
  /// empty view. What a saver reads.
  quant::matrix_view<const float> fp32_weights(std::size_t layer, kind k) const {
    const float* p = fp32_[index(layer, k)];
    if (!p) return {};
    return {p, rows_of(cfg(), k), cols_of(cfg(), k)};
  }
  /// The classifier (vocab x dim), fp32 over the source weights unless replaced.
  const linear& classifier() const noexcept { return *classifier_; }
  void set_classifier(std::unique_ptr<linear> l) {
    check_shape(l, cfg().vocab_size, cfg().dim, "classifier");
    classifier_ = std::move(l);
    own_classifier_ = false;
  }
  /// True while the classifier is the model's own fp32 one over source().classifier() (the
  /// token embedding when shared, else wcls), not one installed with set_classifier().
  bool fp32_classifier() const noexcept { return own_classifier_; }
  /// Every linear and the classifier back to fp32 (dense views of the source weights). Throws
  /// llama2c::error when the model has no fp32 sources.
  void reset_fp32() {
    if (!has_source())
      detail::fail("llama2c::model::reset_fp32: the model has no fp32 sources (it was assembled from its linears)");
    linears_.clear();
    fp32_.clear();
    owned_.assign(cfg().n_layers * all_kinds.size(), {});
    for (std::size_t l = 0; l < cfg().n_layers; ++l)
      for (kind k : all_kinds) {
        linears_.push_back(std::make_unique<dense_linear>(source(l, k)));
        fp32_.push_back(source(l, k).data());
      }
    classifier_ = std::make_unique<dense_linear>(w_.classifier());
    own_classifier_ = true;
  }
  /// Bytes of the 7 x n_layers linears as currently stored (the classifier not included).
  std::size_t linear_bytes() const {
    std::size_t b = 0;
    for (const auto& l : linears_) b += l->bytes();
    return b;
  }

  /// The token embedding table (vocab x dim, row-major).
  const std::vector<float>& token_embedding() const noexcept { return w_.token_embedding; }
  /// The RMSNorm weights (dim) before attention / before the FFN of a layer, and the final one.
  std::span<const float> rms_att(std::size_t layer) const { return norm(w_.rms_att, layer); }
  std::span<const float> rms_ffn(std::size_t layer) const { return norm(w_.rms_ffn, layer); }

  /// Write access to the fp32 weights, for methods that fold scales into them (AWQ, SmoothQuant:
  /// 1/s into a norm or the previous linear's rows, s into the next linear's columns). fp32
  /// linears see the change at once; a quantized linear keeps what it was quantized from, so
  /// fold first, then quantize.
  std::span<float> rms_att_mutable(std::size_t layer) { return norm_mutable(w_.rms_att, layer); }
  std::span<float> rms_ffn_mutable(std::size_t layer) { return norm_mutable(w_.rms_ffn, layer); }
  quant::matrix_view<float> source_mutable(std::size_t layer, kind k) { return w_.matrix_mutable(layer, k); }
  std::span<const float> rms_final() const noexcept { return w_.rms_final; }

 private:
  std::size_t index(std::size_t layer, kind k) const {
    if (layer >= cfg().n_layers)
      detail::fail("llama2c::model: layer ", layer, " out of range (n_layers = ", cfg().n_layers, ")");
    const auto ki = static_cast<std::size_t>(k);
    if (ki >= all_kinds.size()) detail::fail("llama2c::model: invalid linear kind ", ki);
    return layer * all_kinds.size() + ki;
  }
  std::span<float> norm_mutable(std::vector<float>& v, std::size_t layer) {
    const auto c = norm(v, layer);  // validates layer
    return {v.data() + (c.data() - v.data()), c.size()};
  }
  std::span<const float> norm(const std::vector<float>& v, std::size_t layer) const {
    if (layer >= cfg().n_layers)
      detail::fail("llama2c::model: layer ", layer, " out of range (n_layers = ", cfg().n_layers, ")");
    return {v.data() + layer * cfg().dim, cfg().dim};
  }
  static void need(const std::vector<float>& v, std::size_t n, std::string_view what) {
    if (v.size() != n) detail::fail("llama2c::model: tensor ", what, " has ", v.size(), " elements, the config needs ", n);
  }
  // The embedding and norms, and wcls when the fp32 classifier needs it (or when present).
  void check_common(bool fp32_classifier) const {
    const config& c = w_.cfg;
    need(w_.token_embedding, c.vocab_size * c.dim, "token_embedding");
    need(w_.rms_att, c.n_layers * c.dim, "rms_att");
    need(w_.rms_ffn, c.n_layers * c.dim, "rms_ffn");
    need(w_.rms_final, c.dim, "rms_final");
    if ((!c.shared_classifier && fp32_classifier) || !w_.wcls.empty()) need(w_.wcls, c.vocab_size * c.dim, "wcls");
  }
  void check_linear_sources() const {
    const config& c = w_.cfg;
    for (kind k : all_kinds)
      need(w_.linear[static_cast<std::size_t>(k)], c.n_layers * rows_of(c, k) * cols_of(c, k), name(k));
  }
  static void check_shape(const std::unique_ptr<linear>& l, std::size_t rows, std::size_t cols, const std::string& what) {
    if (!l) detail::fail("llama2c::model: null linear for ", what);
    if (l->rows() != rows || l->cols() != cols)
      detail::fail("llama2c::model: ", what, " must be ", rows, " x ", cols, ", got ", l->describe());
  }

  weights w_;
  std::vector<std::unique_ptr<linear>> linears_;  // layer-major, 7 per layer
  std::vector<const float*> fp32_;                // per linear: its weights when one of our own fp32 linears
  std::vector<std::vector<float>> owned_;         // per linear: fp32 weights kept by set_fp32(l, k, w)
  std::unique_ptr<linear> classifier_;
  bool own_classifier_ = false;                   // classifier_ is fp32 over w_.classifier()
};

/// Round-to-nearest quantization of every linear (wq..w3 of every layer) of m into
/// quantized_linear<F, Gran>, from the fp32 source weights. The classifier is not changed.
template <class F, class Gran>
void quantize_all(model& m, gemv_mode mode = gemv_mode::exact, const Gran& gran = Gran{},
                  const quant::quantize_options& options = {}) {
  for (std::size_t l = 0; l < m.cfg().n_layers; ++l)
    for (kind k : all_kinds) m.set(l, k, make_quantized<F, Gran>(m.source(l, k), mode, gran, options));
}

// ---- the forward pass -------------------------------------------------------------------------

/// Called by forward with the input vector of the linears of a layer, 4 times per layer per
/// token: k = wq (the input of wq, wk and wv), wo, w1 (the input of w1 and w3), w2. The span is
/// valid only during the call. This is what GPTQ/AWQ calibration records.
using capture_fn = std::function<void(std::size_t layer, kind k, std::span<const float> input)>;

// ---- the KV cache ------------------------------------------------------------------------------

/// The KV-cache formats forward can run with. fp32 (the default) is the engine's own fp32 cache
/// and attention loop; every other format keeps the K and V of all layers in one buffer, a
/// quant::kv_cache_view per layer over it, and runs quant::attention (quant/kv_cache.hpp):
///   fp32_kernels  fp32 rows through quant's attention kernels (what the others are compared with)
///   int8          int8, one scale per token and head
///   int4          int4, symmetric, one scale per token and per 32 dims of a head
///   int4_asym     the same with a zero point per scale
///   fp8_e4m3      fp8 e4m3, one scale per token and head
///   fp8_e5m2      fp8 e5m2, one scale per token and head
/// Scales are float.
enum class kv_format { fp32, fp32_kernels, int8, int4, int4_asym, fp8_e4m3, fp8_e5m2 };
/// Every KV-cache format, default first.
inline constexpr std::array<kv_format, 7> all_kv_formats = {kv_format::fp32,     kv_format::fp32_kernels,
                                                            kv_format::int8,     kv_format::int4,
                                                            kv_format::int4_asym, kv_format::fp8_e4m3,
                                                            kv_format::fp8_e5m2};
/// "fp32", "fp32-kernels", "int8", "int4", "int4-asym", "fp8-e4m3", "fp8-e5m2".
constexpr std::string_view name(kv_format f) noexcept {
  constexpr std::array<std::string_view, 7> names = {"fp32", "fp32-kernels", "int8", "int4", "int4-asym", "fp8-e4m3",
                                                     "fp8-e5m2"};
  return names[static_cast<std::size_t>(f)];
}
/// The format named s (as name() spells it). Throws llama2c::error listing the names otherwise.
inline kv_format parse_kv_format(std::string_view s) {
  for (kv_format f : all_kv_formats)
    if (name(f) == s) return f;
  std::string names;
  for (kv_format f : all_kv_formats) names += detail::cat(names.empty() ? "" : ", ", name(f));
  detail::fail("llama2c: unknown KV-cache format '", s, "' (one of ", names, ")");
}

/// A KV-cache format and the arithmetic of quant's attention kernels over it (exact: fp32 q and
/// float dot products; fast: int8 q and integer / bf16 dot products, quant::attention_mode).
/// Made implicitly from a kv_format (exact).
struct kv_config {
  kv_format format = kv_format::fp32;
  quant::attention_mode mode = quant::attention_mode::exact;
  kv_config() = default;
  kv_config(kv_format f, quant::attention_mode m = quant::attention_mode::exact) : format(f), mode(m) {}  // NOLINT
};

/// Where forward keeps K and V when the state has a quantized cache: store the current
/// position's K and V of a layer, attend over the first n positions.
struct kv_store {
  virtual ~kv_store() = default;
  /// Writes K and V (kv_dim floats each, RoPE applied to K) of position pos of a layer.
  virtual void store(std::size_t layer, std::size_t pos, std::span<const float> k, std::span<const float> v) = 0;
  /// out (dim) = causal attention of q (dim, RoPE applied; n_heads query heads) over positions
  /// [0, n) of a layer, head after head.
  virtual void attend(std::size_t layer, std::span<const float> q, std::size_t n, std::span<float> out) = 0;
  /// Bytes one position occupies (K and V of every layer, scales included).
  virtual std::size_t bytes_per_token() const = 0;
  /// E.g. "int8 per_channel<sym, f32> KV cache, 5 layers x 512 positions".
  virtual std::string describe() const = 0;
  /// A copy with its own cache (copied).
  virtual std::unique_ptr<kv_store> clone() const = 0;
};

/// A kv_store over quant::kv_cache_view<F, Gran>: one 64-byte-aligned buffer for all layers
/// (each layer's view at a multiple of its buffer size), and the attention workspace for up to
/// seq_len positions; nothing is allocated per token.
template <class F, class Gran>
class quant_kv_store final : public kv_store {
 public:
  explicit quant_kv_store(const config& c, quant::attention_mode mode = quant::attention_mode::exact,
                          const Gran& gran = {})
      : cfg_(c), dims_{c.n_kv_heads, c.head_size(), c.seq_len}, gran_(gran), mode_(mode) {
    layer_bytes_ = quant::kv_storage<F, Gran>(dims_, gran_).buffer_bytes();
    buf_ = aligned(layer_bytes_ * c.n_layers);
    bind();
  }
  quant_kv_store(const quant_kv_store& o)
      : cfg_(o.cfg_), dims_(o.dims_), gran_(o.gran_), mode_(o.mode_), layer_bytes_(o.layer_bytes_) {
    buf_ = aligned(layer_bytes_ * cfg_.n_layers);
    std::memcpy(buf_.get(), o.buf_.get(), layer_bytes_ * cfg_.n_layers);
    bind();
  }
  quant_kv_store& operator=(const quant_kv_store&) = delete;

  void store(std::size_t layer, std::size_t pos, std::span<const float> k, std::span<const float> v) override {
    views_.at(layer).write(pos, k, v);
  }
  void attend(std::size_t layer, std::span<const float> q, std::size_t n, std::span<float> out) override {
    const std::size_t hs = cfg_.head_size();
    quant::attention(views_.at(layer), quant::matrix_view<const float>(q.data(), cfg_.n_heads, hs), n,
                     quant::matrix_view<float>(out.data(), cfg_.n_heads, hs), std::span<std::byte>(ws_.get(), ws_bytes_),
                     {0.0f, mode_});
  }
  std::size_t bytes_per_token() const override {
    return cfg_.n_layers * quant::kv_storage<F, Gran>(dims_, gran_).bytes_per_token();
  }
  std::string describe() const override {
    std::string what = "fp32";
    if constexpr (!std::is_same_v<F, float>) what = detail::cat(quant::format_traits<F>::name, " ", granularity_name(gran_));
    return detail::cat(what, " KV cache (quant::attention, ",
                       mode_ == quant::attention_mode::fast ? "fast" : "exact", "), ", cfg_.n_layers, " layers x ",
                       cfg_.seq_len, " positions, ", bytes_per_token(), " bytes per position");
  }
  std::unique_ptr<kv_store> clone() const override { return std::make_unique<quant_kv_store>(*this); }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
  };
  using buffer = std::unique_ptr<std::byte[], aligned_delete>;
  static buffer aligned(std::size_t n) {
    buffer b(static_cast<std::byte*>(::operator new[](n, std::align_val_t{64})));
    std::memset(b.get(), 0, n);
    return b;
  }
  void bind() {
    views_.clear();
    for (std::size_t l = 0; l < cfg_.n_layers; ++l)
      views_.push_back(quant::kv_cache_view<F, Gran>::bind({buf_.get() + l * layer_bytes_, layer_bytes_}, dims_, gran_));
    ws_bytes_ = quant::attention_workspace_size(views_[0], cfg_.n_heads, cfg_.seq_len);
    ws_ = aligned(ws_bytes_);
  }

  config cfg_;
  quant::kv_dims dims_;
  Gran gran_;
  quant::attention_mode mode_;
  std::size_t layer_bytes_ = 0, ws_bytes_ = 0;
  buffer buf_, ws_;
  std::vector<quant::kv_cache_view<F, Gran>> views_;
};

/// The store of kv.format for configuration c, running kv.mode; null for kv_format::fp32 (the
/// engine's own cache).
inline std::unique_ptr<kv_store> make_kv_store(kv_config kv, const config& c) {
  using namespace quant;
  const attention_mode m = kv.mode;
  switch (kv.format) {
    case kv_format::fp32: return nullptr;
    case kv_format::fp32_kernels: return std::make_unique<quant_kv_store<float, per_channel<>>>(c, m);
    case kv_format::int8: return std::make_unique<quant_kv_store<int8, per_channel<>>>(c, m);
    case kv_format::int4: return std::make_unique<quant_kv_store<int4, per_group<32>>>(c, m);
    case kv_format::int4_asym: return std::make_unique<quant_kv_store<int4, per_group<32, asymmetric>>>(c, m);
    case kv_format::fp8_e4m3: return std::make_unique<quant_kv_store<fp8_e4m3, per_channel<>>>(c, m);
    case kv_format::fp8_e5m2: return std::make_unique<quant_kv_store<fp8_e5m2, per_channel<>>>(c, m);
  }
  detail::fail("llama2c::make_kv_store: invalid kv_format ", static_cast<int>(kv.format));
}

/// Owns a kv_store; a copy clones it, so a copied state has a cache of its own.
class kv_store_ptr {
 public:
  kv_store_ptr() = default;
  explicit kv_store_ptr(std::unique_ptr<kv_store> p) noexcept : p_(std::move(p)) {}
  kv_store_ptr(const kv_store_ptr& o) : p_(o.p_ ? o.p_->clone() : nullptr) {}
  kv_store_ptr(kv_store_ptr&&) noexcept = default;
  kv_store_ptr& operator=(const kv_store_ptr& o) {
    if (this != &o) p_ = o.p_ ? o.p_->clone() : nullptr;
    return *this;
  }
  kv_store_ptr& operator=(kv_store_ptr&&) noexcept = default;
  ~kv_store_ptr() = default;
  kv_store* get() const noexcept { return p_.get(); }
  kv_store* operator->() const noexcept { return p_.get(); }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  std::unique_ptr<kv_store> p_;
};

/// The activations of one sequence: the KV cache (n_layers x seq_len x kv_dim, for K and V) and
/// the scratch buffers of forward. Positions must be fed in order 0, 1, 2, ... (forward at pos
/// reads the cache rows 0..pos); start again at 0 for a new sequence.
struct state {
  explicit state(const config& c)
      : cfg(c), x(c.dim), xb(c.dim), xb2(c.dim), hb(c.hidden_dim), hb2(c.hidden_dim), q(c.dim), att(c.seq_len),
        rope_cos(c.head_size() / 2), rope_sin(c.head_size() / 2), logits(c.vocab_size),
        key_cache(c.n_layers * c.seq_len * c.kv_dim()), value_cache(c.n_layers * c.seq_len * c.kv_dim()) {}
  /// The same with a KV cache of format f.format: fp32 is the constructor above; any other format
  /// keeps K and V in kv (make_kv_store, attention in f.mode) and leaves key_cache and value_cache
  /// empty.
  state(const config& c, kv_config f) : state(c) {
    kv = kv_store_ptr(make_kv_store(f, c));
    if (kv) {
      std::vector<float>().swap(key_cache);
      std::vector<float>().swap(value_cache);
      k_now.resize(c.kv_dim());
      v_now.resize(c.kv_dim());
    }
  }

  config cfg;  ///< the configuration the buffers are sized for
  /// Scratch: x the residual stream (after forward: the final normalized hidden state), xb/xb2
  /// (dim) and hb/hb2 (hidden_dim) the layer inputs and outputs, q, att (attention weights of one
  /// head), the RoPE cos/sin of the position, logits (vocab) the result of forward.
  std::vector<float> x, xb, xb2, hb, hb2, q, att, rope_cos, rope_sin, logits;
  /// K and V of every layer and position so far: n_layers x seq_len x kv_dim each (fp32 cache).
  std::vector<float> key_cache, value_cache;
  capture_fn capture;                     ///< optional: sees the input of every linear
  /// A quantized (or fp32-kernels) KV cache; null: the fp32 cache above. Set by state(c, f), or
  /// by hand with any kv_store (e.g. one that records K, V and q).
  kv_store_ptr kv;
  /// With kv: K and V of the current position (kv_dim each) before they are stored.
  std::vector<float> k_now, v_now;
};

namespace detail {
/// o = w * x / sqrt(mean(x^2) + 1e-5)
inline void rmsnorm(float* o, const float* x, const float* w, std::size_t n) {
  float ss = 0.0f;
  for (std::size_t j = 0; j < n; ++j) ss += x[j] * x[j];
  ss /= static_cast<float>(n);
  ss += 1e-5f;
  ss = 1.0f / std::sqrt(ss);
  for (std::size_t j = 0; j < n; ++j) o[j] = w[j] * (ss * x[j]);
}
inline bool same_shape(const config& a, const config& b) {
  return a.dim == b.dim && a.hidden_dim == b.hidden_dim && a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
         a.n_kv_heads == b.n_kv_heads && a.vocab_size == b.vocab_size && a.seq_len == b.seq_len;
}
}  // namespace detail

/// Runs token `token` at position pos (0-based; positions 0..pos-1 already run in this state)
/// and returns the logits (vocab_size, valid until the next call on s). With `layers` below
/// n_layers only the first `layers` transformer layers run (what capturing the inputs of an early
/// layer needs) and the result is empty. Throws llama2c::error for a token outside
/// [0, vocab_size), pos >= seq_len, or a state sized for another config.
inline std::span<const float> forward(const model& m, state& s, int token, std::size_t pos,
                                      std::size_t layers = static_cast<std::size_t>(-1)) {
  const config& c = m.cfg();
  if (!detail::same_shape(c, s.cfg)) detail::fail("llama2c::forward: the state was made for another model config");
  if (token < 0 || static_cast<std::size_t>(token) >= c.vocab_size)
    detail::fail("llama2c::forward: token id ", token, " out of range [0, ", c.vocab_size, ")");
  if (pos >= c.seq_len) detail::fail("llama2c::forward: position ", pos, " >= seq_len = ", c.seq_len);

  const std::size_t dim = c.dim, hidden = c.hidden_dim, hs = c.head_size(), kv_dim = c.kv_dim(), kv_mul = c.kv_mul();
  float* x = s.x.data();
  std::copy_n(m.token_embedding().data() + static_cast<std::size_t>(token) * dim, dim, x);

  // RoPE angles for this position: pair (i, i+1) of a head rotates by pos * 10000^(-i/head_size).
  for (std::size_t i = 0; i < hs; i += 2) {
    const float freq = 1.0f / std::pow(10000.0f, static_cast<float>(i) / static_cast<float>(hs));
    const float val = static_cast<float>(pos) * freq;
    s.rope_cos[i / 2] = std::cos(val);
    s.rope_sin[i / 2] = std::sin(val);
  }
  const float inv_sqrt_hs = 1.0f / std::sqrt(static_cast<float>(hs));

  const std::size_t run_layers = std::min(layers, c.n_layers);
  for (std::size_t l = 0; l < run_layers; ++l) {
    // attention
    detail::rmsnorm(s.xb.data(), x, m.rms_att(l).data(), dim);
    const std::span<const float> xb(s.xb);
    if (s.capture) s.capture(l, kind::wq, xb);
    const std::size_t cache_off = l * c.seq_len * kv_dim;
    if (s.kv && s.k_now.size() != kv_dim) s.k_now.resize(kv_dim), s.v_now.resize(kv_dim);
    float* k = s.kv ? s.k_now.data() : s.key_cache.data() + cache_off + pos * kv_dim;
    float* v = s.kv ? s.v_now.data() : s.value_cache.data() + cache_off + pos * kv_dim;
    m.get(l, kind::wq).forward(xb, s.q);
    m.get(l, kind::wk).forward(xb, {k, kv_dim});
    m.get(l, kind::wv).forward(xb, {v, kv_dim});
    for (std::size_t i = 0; i < dim; i += 2) {
      const float fc = s.rope_cos[(i % hs) / 2], fs = s.rope_sin[(i % hs) / 2];
      const float q0 = s.q[i], q1 = s.q[i + 1];
      s.q[i] = q0 * fc - q1 * fs;
      s.q[i + 1] = q0 * fs + q1 * fc;
      if (i < kv_dim) {
        const float k0 = k[i], k1 = k[i + 1];
        k[i] = k0 * fc - k1 * fs;
        k[i + 1] = k0 * fs + k1 * fc;
      }
    }
    if (s.kv) {  // a quant KV cache: store this position, attend over positions 0..pos
      s.kv->store(l, pos, {k, kv_dim}, {v, kv_dim});
      s.kv->attend(l, s.q, pos + 1, s.xb);
    }
    // otherwise the engine's own fp32 cache and loop (no iteration with a kv store)
    for (std::size_t h = 0; h < (s.kv ? 0 : c.n_heads); ++h) {
      const float* qh = s.q.data() + h * hs;
      const std::size_t kv_off = cache_off + (h / kv_mul) * hs;
      float* att = s.att.data();
      float mx = -std::numeric_limits<float>::infinity();
      for (std::size_t t = 0; t <= pos; ++t) {
        const float* kt = s.key_cache.data() + kv_off + t * kv_dim;
        float score = 0.0f;
        for (std::size_t i = 0; i < hs; ++i) score += qh[i] * kt[i];
        att[t] = score * inv_sqrt_hs;
        mx = std::max(mx, att[t]);
      }
      float sum = 0.0f;
      for (std::size_t t = 0; t <= pos; ++t) {
        att[t] = std::exp(att[t] - mx);
        sum += att[t];
      }
      float* out = s.xb.data() + h * hs;
      std::fill_n(out, hs, 0.0f);
      for (std::size_t t = 0; t <= pos; ++t) {
        const float* vt = s.value_cache.data() + kv_off + t * kv_dim;
        const float a = att[t] / sum;
        for (std::size_t i = 0; i < hs; ++i) out[i] += a * vt[i];
      }
    }
    if (s.capture) s.capture(l, kind::wo, std::span<const float>(s.xb));
    m.get(l, kind::wo).forward(s.xb, s.xb2);
    for (std::size_t i = 0; i < dim; ++i) x[i] += s.xb2[i];

    // feed-forward
    detail::rmsnorm(s.xb.data(), x, m.rms_ffn(l).data(), dim);
    if (s.capture) s.capture(l, kind::w1, xb);
    m.get(l, kind::w1).forward(xb, s.hb);
    m.get(l, kind::w3).forward(xb, s.hb2);
    for (std::size_t i = 0; i < hidden; ++i) {
      const float g = s.hb[i];
      s.hb[i] = g / (1.0f + std::exp(-g)) * s.hb2[i];
    }
    if (s.capture) s.capture(l, kind::w2, std::span<const float>(s.hb));
    m.get(l, kind::w2).forward(s.hb, s.xb2);
    for (std::size_t i = 0; i < dim; ++i) x[i] += s.xb2[i];
  }
  if (run_layers < c.n_layers) return {};
  detail::rmsnorm(x, x, m.rms_final().data(), dim);
  m.classifier().forward(s.x, s.logits);
  return s.logits;
}

/// The index of the largest logit (the first one on ties).
inline int argmax(std::span<const float> v) {
  if (v.empty()) detail::fail("llama2c::argmax: empty vector");
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

// ---- tokenizer --------------------------------------------------------------------------------

/// The llama2.c tokenizer: a vocabulary of byte strings with merge scores. Id 0 is <unk>, 1 BOS,
/// 2 EOS, 3..258 the byte-fallback tokens <0x00>..<0xFF>.
class tokenizer {
 public:
  static constexpr int bos = 1, eos = 2;

  /// An empty tokenizer (load() it before use).
  tokenizer() = default;
  /// load(path, vocab_size).
  tokenizer(const std::filesystem::path& path, std::size_t vocab_size) { load(path, vocab_size); }

  /// Reads a llama2.c tokenizer file: int32 max_token_length, then per token float32 score,
  /// int32 length and the bytes. The vocabulary size comes from the model. Throws llama2c::error
  /// naming the file for a missing file, a truncated entry, a negative length or trailing bytes
  /// (a wrong vocab_size).
  void load(const std::filesystem::path& path, std::size_t vocab_size) {
    const std::string who = path.string();
    if (vocab_size < 3) detail::fail(who, ": vocab_size = ", vocab_size, "; a llama2.c vocabulary has at least 3 tokens");
    std::ifstream in(path, std::ios::binary);
    if (!in) detail::fail(who, ": cannot open the tokenizer");
    std::int32_t max_len = 0;
    if (!in.read(reinterpret_cast<char*>(&max_len), 4)) detail::fail(who, ": file too short for the tokenizer header");
    if (max_len <= 0) detail::fail(who, ": max_token_length = ", max_len, " must be positive");
    std::vector<std::string> vocab(vocab_size);
    std::vector<float> scores(vocab_size);
    for (std::size_t i = 0; i < vocab_size; ++i) {
      std::int32_t len = 0;
      if (!in.read(reinterpret_cast<char*>(&scores[i]), 4) || !in.read(reinterpret_cast<char*>(&len), 4))
        detail::fail(who, ": file ends at token ", i, " of ", vocab_size, " (wrong vocab_size?)");
      if (len < 0 || len > (1 << 20)) detail::fail(who, ": token ", i, " has length ", len);
      if (!std::isfinite(scores[i])) detail::fail(who, ": token ", i, " has a non-finite score");
      vocab[i].resize(static_cast<std::size_t>(len));
      if (len > 0 && !in.read(vocab[i].data(), len))
        detail::fail(who, ": file ends inside token ", i, " of ", vocab_size, " (wrong vocab_size?)");
    }
    if (in.peek() != std::char_traits<char>::eof())
      detail::fail(who, ": bytes left after ", vocab_size, " tokens; the tokenizer does not match vocab_size = ",
                   vocab_size);
    std::unordered_map<std::string, int> lookup;
    lookup.reserve(vocab_size);
    for (std::size_t i = 0; i < vocab_size; ++i) lookup.emplace(vocab[i], static_cast<int>(i));  // first id wins
    vocab_ = std::move(vocab);
    scores_ = std::move(scores);
    lookup_ = std::move(lookup);
    max_token_length_ = static_cast<std::size_t>(max_len);
  }

  /// Tokens in the vocabulary (0 before load), and the longest token in bytes (from the file).
  std::size_t vocab_size() const noexcept { return vocab_.size(); }
  std::size_t max_token_length() const noexcept { return max_token_length_; }
  /// The byte string of a token (SentencePiece's U+2581 stored as a space).
  const std::string& piece(int id) const { return vocab_[check(id)]; }
  /// The merge score of a token (higher merges first).
  float score(int id) const { return scores_[check(id)]; }
  /// The id of an exact byte string, or -1.
  int find(std::string_view s) const {
    const auto it = lookup_.find(std::string(s));
    return it == lookup_.end() ? -1 : it->second;
  }

  /// The llama2.c encoder: [BOS if bos], then for non-empty text the dummy-prefix token " ",
  /// one token per UTF-8 code point (its bytes + 3 when the code point is not in the vocabulary),
  /// then repeatedly the adjacent pair whose concatenation is a token with the highest score
  /// (the leftmost on ties) is merged, until none is. [EOS if eos].
  std::vector<int> encode(std::string_view text, bool bos_token = true, bool eos_token = false) const {
    if (vocab_.empty()) detail::fail("llama2c::tokenizer::encode: no tokenizer loaded");
    std::vector<int> t;
    t.reserve(text.size() + 3);
    if (!text.empty()) {
      const int space = find(" ");
      if (space < 0) detail::fail("llama2c::tokenizer::encode: the vocabulary has no \" \" token for the dummy prefix");
      t.push_back(space);
    }
    for (std::size_t i = 0; i < text.size();) {
      // a code point: a byte and up to 3 continuation bytes (10xxxxxx)
      std::size_t n = 1;
      while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      const int id = find(text.substr(i, n));
      if (id >= 0) {
        t.push_back(id);
      } else {
        for (std::size_t j = 0; j < n; ++j) {
          const std::size_t b = static_cast<unsigned char>(text[i + j]) + 3u;
          if (b >= vocab_.size()) detail::fail("llama2c::tokenizer::encode: byte-fallback token ", b, " >= vocab_size");
          t.push_back(static_cast<int>(b));
        }
      }
      i += n;
    }
    merge(t);
    if (bos_token) t.insert(t.begin(), bos);
    if (eos_token) t.push_back(eos);
    return t;
  }

  /// The text of `token` following `prev_token`: after BOS one leading space is dropped; a piece
  /// "<0xHH>" is the raw byte HH.
  std::string decode(int prev_token, int token) const {
    std::string_view p = piece(token);
    if (prev_token == bos && !p.empty() && p.front() == ' ') p.remove_prefix(1);
    if (p.size() == 6 && p.substr(0, 3) == "<0x" && p[5] == '>') {
      const int hi = hex(p[3]), lo = hex(p[4]);
      if (hi >= 0 && lo >= 0) return std::string(1, static_cast<char>(hi * 16 + lo));
    }
    return std::string(p);
  }

 private:
  std::size_t check(int id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= vocab_.size())
      detail::fail("llama2c::tokenizer: token id ", id, " out of range [0, ", vocab_.size(), ")");
    return static_cast<std::size_t>(id);
  }
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }
  /// The merge candidate of pair (a, b): its token id or -1.
  int pair_id(int a, int b, std::string& buf) const {
    buf.assign(vocab_[static_cast<std::size_t>(a)]);
    buf.append(vocab_[static_cast<std::size_t>(b)]);
    const auto it = lookup_.find(buf);
    return it == lookup_.end() ? -1 : it->second;
  }
  /// Greedy merges; the score of each adjacent pair is cached and refreshed next to a merge,
  /// which picks the same pair at every step as rescanning all pairs.
  void merge(std::vector<int>& t) const {
    if (t.size() < 2) return;
    std::string buf;
    std::vector<int> cand(t.size() - 1);
    for (std::size_t i = 0; i + 1 < t.size(); ++i) cand[i] = pair_id(t[i], t[i + 1], buf);
    for (;;) {
      float best = -1e10f;
      std::size_t at = cand.size();
      for (std::size_t i = 0; i < cand.size(); ++i)
        if (cand[i] >= 0 && scores_[static_cast<std::size_t>(cand[i])] > best)
          best = scores_[static_cast<std::size_t>(cand[i])], at = i;
      if (at == cand.size()) break;
      t[at] = cand[at];
      t.erase(t.begin() + static_cast<std::ptrdiff_t>(at) + 1);
      cand.erase(cand.begin() + static_cast<std::ptrdiff_t>(at));
      if (at < cand.size()) cand[at] = pair_id(t[at], t[at + 1], buf);
      if (at > 0) cand[at - 1] = pair_id(t[at - 1], t[at], buf);
    }
  }

  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
  std::size_t max_token_length_ = 0;
};

// ---- text utilities ---------------------------------------------------------------------------

/// The whole content of a text file. Throws llama2c::error when it cannot be read.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail(path.string(), ": cannot open the text file");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) detail::fail(path.string(), ": read error");
  return s.str();
}

/// The stories of a TinyStories text: split on "<|endoftext|>", each stripped of surrounding
/// whitespace, in file order, empty ones skipped.
inline std::vector<std::string> split_stories(std::string_view text) {
  constexpr std::string_view sep = "<|endoftext|>", ws = " \t\n\r\f\v";
  std::vector<std::string> out;
  for (std::size_t b = 0;;) {
    const std::size_t e = text.find(sep, b);
    std::string_view story = text.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b);
    const std::size_t f = story.find_first_not_of(ws);
    if (f != std::string_view::npos) out.emplace_back(story.substr(f, story.find_last_not_of(ws) - f + 1));
    if (e == std::string_view::npos) break;
    b = e + sep.size();
  }
  return out;
}

/// The result of perplexity: the summed negative log-likelihood (nats), the number of predicted
/// tokens and exp(nll_sum / tokens).
struct perplexity_result {
  double nll_sum = 0.0;
  std::size_t tokens = 0;
  double ppl = 0.0;
};

/// Teacher-forced perplexity over stories[first, first + count): each story is BOS + encode(story),
/// truncated to seq_len tokens, run in a fresh context; every position after BOS is scored (the
/// log-softmax is computed in double), with a KV cache of format kv (state(cfg, kv)). Throws
/// llama2c::error when the range is outside stories.
inline perplexity_result perplexity(const model& m, const tokenizer& tok, const std::vector<std::string>& stories,
                                    std::size_t first, std::size_t count, kv_config kv = {}) {
  if (first > stories.size() || count > stories.size() - first)
    detail::fail("llama2c::perplexity: stories [", first, ", ", first + count, ") are outside the ", stories.size(),
                 " stories given");
  if (tok.vocab_size() != m.cfg().vocab_size)
    detail::fail("llama2c::perplexity: tokenizer vocab_size ", tok.vocab_size(), " != model vocab_size ",
                 m.cfg().vocab_size);
  state s(m.cfg(), kv);
  perplexity_result r;
  for (std::size_t i = first; i < first + count; ++i) {
    std::vector<int> ids = tok.encode(stories[i], true);
    if (ids.size() > m.cfg().seq_len) ids.resize(m.cfg().seq_len);
    for (std::size_t pos = 0; pos + 1 < ids.size(); ++pos) {
      const auto logits = forward(m, s, ids[pos], pos);
      double mx = -std::numeric_limits<double>::infinity();
      for (float v : logits) mx = std::max(mx, static_cast<double>(v));
      double sum = 0.0;
      for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
      r.nll_sum += mx + std::log(sum) - logits[static_cast<std::size_t>(ids[pos + 1])];
      ++r.tokens;
    }
  }
  r.ppl = r.tokens ? std::exp(r.nll_sum / static_cast<double>(r.tokens)) : 0.0;
  return r;
}

/// A greedy generation: every token (prompt included, BOS first), how many came from the prompt,
/// and the decoded text of everything after BOS.
struct generation {
  std::vector<int> tokens;
  std::size_t prompt_tokens = 0;
  std::string text;
};

/// Greedy decoding: runs BOS + encode(prompt) through the model, then appends the argmax token
/// until `steps` positions have run (at most seq_len) or BOS/EOS is predicted. As llama2.c's
/// generate: with an empty prompt, steps = n gives n new tokens. kv: the KV-cache format.
inline generation generate(const model& m, const tokenizer& tok, std::string_view prompt, std::size_t steps,
                           kv_config kv = {}) {
  if (tok.vocab_size() != m.cfg().vocab_size)
    detail::fail("llama2c::generate: tokenizer vocab_size ", tok.vocab_size(), " != model vocab_size ",
                 m.cfg().vocab_size);
  generation g;
  g.tokens = tok.encode(prompt, true);
  g.prompt_tokens = g.tokens.size();
  if (g.prompt_tokens > m.cfg().seq_len)
    detail::fail("llama2c::generate: the prompt has ", g.prompt_tokens, " tokens, more than seq_len = ", m.cfg().seq_len);
  for (std::size_t i = 1; i < g.tokens.size(); ++i) g.text += tok.decode(g.tokens[i - 1], g.tokens[i]);
  steps = std::min(steps, m.cfg().seq_len);
  state s(m.cfg(), kv);
  for (std::size_t pos = 0; pos < steps; ++pos) {
    const auto logits = forward(m, s, g.tokens[pos], pos);
    if (pos + 1 < g.tokens.size()) continue;  // still inside the prompt
    const int next = argmax(logits);
    if (next == tokenizer::bos || next == tokenizer::eos) break;
    g.text += tok.decode(g.tokens.back(), next);
    g.tokens.push_back(next);
  }
  return g;
}

}  // namespace llama2c
