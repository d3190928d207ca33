// The llama2.c engine of examples/llama2c/llama2c.hpp on the real stories260K checkpoint in
// ../shared/models (skipped, with a message, when the folder is absent), against the reference
// values of that folder's README (an independent numpy implementation): tokenization, logits,
// greedy decoding, perplexity in fp32 and with every linear quantized. Also a synthetic
// checkpoint with a separate classifier, the capture hook, and the errors.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <llama2c/llama2c.hpp>
#include <quant/algorithms/gptq.hpp>

#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;

using qt::sanitized;

struct files {
  fs::path model, tokenizer, text;
};

/// The shared model files, or nullopt (with a message) when any is absent.
std::optional<files> shared_files() {
  const fs::path dir = qt::models_dir();
  files f{dir / "stories260K.bin", dir / "tok512.bin", dir / "tinystories_valid.txt"};
  for (const auto& p : {f.model, f.tokenizer, f.text})
    if (!fs::exists(p)) {
      MESSAGE("skipped: ", p.string(), " not found (the shared models folder is absent)");
      return std::nullopt;
    }
  return f;
}

/// Everything the real-model tests share, loaded once.
struct fixture {
  llama2c::model m;
  llama2c::tokenizer tok;
  std::vector<std::string> stories;
};
fixture& shared(const files& f) {
  static fixture fx{llama2c::model::load(f.model), llama2c::tokenizer(f.tokenizer, 512),
                    llama2c::split_stories(llama2c::read_text(f.text))};
  return fx;
}

/// A unique temporary file removed at scope exit.
struct temp_file {
  fs::path path;
  explicit temp_file(const std::string& stem) {
    static std::atomic<unsigned> counter{0};
    const auto tick = std::chrono::steady_clock::now().time_since_epoch().count();
    path = fs::temp_directory_path() /
           (stem + "_" + std::to_string(tick) + "_" + std::to_string(counter++) + ".bin");
  }
  ~temp_file() {
    std::error_code ec;
    fs::remove(path, ec);
  }
  void write(const std::vector<char>& bytes) const {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
};

std::vector<char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A synthetic llama2.c v0 checkpoint: header, then random tensors (norm weights near 1).
std::vector<char> synthetic_checkpoint(std::int32_t dim, std::int32_t hidden, std::int32_t layers, std::int32_t heads,
                                       std::int32_t kv_heads, std::int32_t vocab, std::int32_t seq_len) {
  const std::int32_t h[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq_len};
  std::vector<char> out(reinterpret_cast<const char*>(h), reinterpret_cast<const char*>(h) + sizeof h);
  qt::rng g(99);
  auto put = [&](std::size_t n, double mean, double sigma) {
    for (std::size_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(mean + sigma * g.normal());
      const char* b = reinterpret_cast<const char*>(&v);
      out.insert(out.end(), b, b + 4);
    }
  };
  const std::size_t d = dim, hd = hidden, L = layers, V = std::abs(vocab), kv = d * kv_heads / heads,
                    hs = d / heads;
  put(V * d, 0, 0.5);       // token_embedding
  put(L * d, 1, 0.1);       // rms_att
  put(L * d * d, 0, 0.2);   // wq
  put(2 * L * kv * d, 0, 0.2);  // wk, wv
  put(L * d * d, 0, 0.2);   // wo
  put(L * d, 1, 0.1);       // rms_ffn
  put(3 * L * d * hd, 0, 0.2);  // w1, w2, w3
  put(d, 1, 0.1);           // rms_final
  put(seq_len * hs, 0, 1);  // freq_cis (ignored)
  if (vocab < 0) put(V * d, 0, 0.5);  // wcls
  return out;
}

}  // namespace

TEST_CASE("llama2c: tokenizer encode and decode match the reference") {
  const auto f = shared_files();
  if (!f) return;
  const auto& fx = shared(*f);
  CHECK(fx.tok.encode("Once upon a time") == std::vector<int>{1, 403, 407, 261, 378});
  CHECK(fx.tok.encode("") == std::vector<int>{1});
  CHECK(fx.tok.encode("Once", false, true) == std::vector<int>{403, 2});

  REQUIRE(fx.stories.size() == 349);
  CHECK(fx.stories[0].rfind("Spot. Spot saw the shiny car", 0) == 0);
  const auto ids = fx.tok.encode(fx.stories[0]);
  CHECK(ids.size() == 171);
  const std::vector<int> head{1, 301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415, 271, 422, 280, 295, 269, 336};
  CHECK(std::vector<int>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(head.size())) == head);

  // decoding: the story round-trips; after BOS the leading space goes; <0xHH> is a raw byte
  std::string text;
  for (std::size_t i = 1; i < ids.size(); ++i) text += fx.tok.decode(ids[i - 1], ids[i]);
  CHECK(text == fx.stories[0]);
  CHECK(fx.tok.decode(1, 403) == "Once");
  CHECK(fx.tok.decode(403, 407) == fx.tok.piece(407));
  CHECK(fx.tok.decode(5, 3 + 'A') == "A");
  // a multi-byte code point is one token when the vocabulary has it (U+20AC), else its UTF-8
  // bytes + 3 (U+4E2D)
  const int space = fx.tok.find(" ");
  REQUIRE(fx.tok.find("\xE2\x82\xAC") >= 0);
  CHECK(fx.tok.encode("\xE2\x82\xAC", false) == std::vector<int>{space, fx.tok.find("\xE2\x82\xAC")});
  REQUIRE(fx.tok.find("\xE4\xB8\xAD") < 0);
  CHECK(fx.tok.encode("\xE4\xB8\xAD", false) == std::vector<int>{space, 0xE4 + 3, 0xB8 + 3, 0xAD + 3});
  CHECK(fx.tok.decode(space, 0xE4 + 3) == "\xE4");
}

TEST_CASE("llama2c: the encoder on the 32000-token Llama 2 tokenizer") {
  const fs::path path = qt::models_dir() / "tokenizer.bin";
  if (!fs::exists(path)) {
    MESSAGE("skipped: ", path.string(), " not found");
    return;
  }
  const llama2c::tokenizer tok(path, 32000);
  CHECK(tok.max_token_length() == 27);
  CHECK(tok.encode("Once upon a time, there was a little girl.") ==
        std::vector<int>{1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 29889});
}

TEST_CASE("llama2c: logits at position 0 and greedy decoding match the reference") {
  const auto f = shared_files();
  if (!f) return;
  const auto& fx = shared(*f);
  const auto& c = fx.m.cfg();
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.shared_classifier);

  llama2c::state s(c);
  const auto logits = llama2c::forward(fx.m, s, 1, 0);
  REQUIRE(logits.size() == 512);
  CHECK(llama2c::argmax(logits) == 403);
  CHECK(std::abs(logits[403] - 17.0235) < 1e-3);
  const double ref[5] = {-6.22291, 8.40434, -6.22374, -6.22254, -6.22195};
  for (int i = 0; i < 5; ++i) {
    INFO("logits[", i, "] = ", logits[static_cast<std::size_t>(i)]);
    CHECK(std::abs(logits[static_cast<std::size_t>(i)] - ref[i]) < 1e-3);
  }

  const auto g = llama2c::generate(fx.m, fx.tok, "", 32);
  const std::vector<int> greedy{403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
                                401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385};
  CHECK(g.prompt_tokens == 1);
  REQUIRE(g.tokens.size() == 33);
  CHECK(std::vector<int>(g.tokens.begin() + 1, g.tokens.end()) == greedy);
  CHECK(g.text.rfind("Once upon a time, there was a little girl named Lily.", 0) == 0);

  // a prompt is teacher-forced, then continued greedily
  const auto p = llama2c::generate(fx.m, fx.tok, "Once upon a time", 8);
  CHECK(p.prompt_tokens == 5);
  REQUIRE(p.tokens.size() == 9);  // positions 0..7 run: 4 of them predict a new token
  CHECK(std::vector<int>(p.tokens.begin() + 5, p.tokens.end()) == std::vector<int>{432, 383, 286, 261});
}

TEST_CASE("llama2c: perplexity on the first 20 stories, fp32 and quantized") {
  const auto f = shared_files();
  if (!f) return;
  auto& fx = shared(*f);
  llama2c::model& m = fx.m;

  const auto fp32 = llama2c::perplexity(m, fx.tok, fx.stories, 0, 20);
  MESSAGE("fp32 ppl ", fp32.ppl, " over ", fp32.tokens, " tokens");
  CHECK(fp32.tokens == 6496);
  CHECK(std::abs(fp32.ppl - 3.4917) < 5e-4);
  CHECK(std::abs(fp32.nll_sum / static_cast<double>(fp32.tokens) - 1.25039) < 2e-4);
  const auto fp32_2 = llama2c::perplexity(m, fx.tok, fx.stories, 0, 2);

  // The quantized variants run on all 20 stories and are checked against the reference values;
  // under the sanitizers (where quant's kernels run ~20x slower) on the first 2 stories only,
  // checked against fp32 on the same stories.
  const std::size_t n = sanitized ? 2 : 20, first_slice = sanitized ? 2 : 5;
  const auto& fp32_n = sanitized ? fp32_2 : fp32;

  using namespace quant;
  llama2c::quantize_all<int8, per_channel<symmetric>>(m);
  CHECK(m.get(2, llama2c::kind::w2).describe() == "int8 per_channel<sym, f32> [64 x 172] exact");
  CHECK(m.linear_bytes() < 240000);
  const auto i8 = llama2c::perplexity(m, fx.tok, fx.stories, 0, n);
  MESSAGE("int8 per-channel sym ppl ", i8.ppl, " (", n, " stories)");
  CHECK(std::abs(i8.ppl / fp32_n.ppl - 1) < 0.005);
  if (!sanitized) CHECK(std::abs(i8.ppl / 3.4915 - 1) < 0.002);

  // int4 g32 asym: exact mode on [0, n) as two slices (their sums add up), the fast mode on the
  // first slice only
  using g32 = per_group<32, asymmetric, fp16>;
  llama2c::quantize_all<int4, g32>(m);
  const auto i4a = llama2c::perplexity(m, fx.tok, fx.stories, 0, first_slice);
  const auto i4b = llama2c::perplexity(m, fx.tok, fx.stories, first_slice, n - first_slice);
  CHECK(i4a.tokens + i4b.tokens == fp32_n.tokens);
  const double i4 = std::exp((i4a.nll_sum + i4b.nll_sum) / static_cast<double>(fp32_n.tokens));
  llama2c::quantize_all<int4, g32>(m, llama2c::gemv_mode::fast);
  CHECK(m.get(0, llama2c::kind::wq).describe() == "int4 per_group<32, asym, f16> [64 x 64] fast");
  const auto i4f = llama2c::perplexity(m, fx.tok, fx.stories, 0, first_slice);
  MESSAGE("int4 g32 asym ppl ", i4, " (", n, " stories); first ", first_slice, " stories: exact ", i4a.ppl,
          ", fast ", i4f.ppl);
  CHECK(i4 > fp32_n.ppl);
  CHECK(i4 < 1.25 * fp32_n.ppl);
  if (!sanitized) CHECK(std::abs(i4 / 3.7861 - 1) < 0.03);
  CHECK(i4f.tokens == i4a.tokens);
  CHECK(std::abs(i4f.ppl / i4a.ppl - 1) < 0.01);

  // per layer: quantizing only layer 0's FFN changes the result, by less than all of them
  m.reset_fp32();
  for (auto k : {llama2c::kind::w1, llama2c::kind::w2, llama2c::kind::w3})
    m.set(0, k, llama2c::make_quantized<int4, g32>(m.source(0, k)));
  CHECK(m.get(0, llama2c::kind::w1).bytes() < m.get(1, llama2c::kind::w1).bytes() / 6);
  const auto part = llama2c::perplexity(m, fx.tok, fx.stories, 0, 2);
  m.reset_fp32();
  CHECK(part.ppl != fp32_2.ppl);
  CHECK(std::abs(part.ppl / fp32_2.ppl - 1) < 0.05);
}

TEST_CASE("llama2c: the capture hook sees the input of every linear, 4 calls per layer per token") {
  const auto f = shared_files();
  if (!f) return;
  auto& fx = shared(*f);
  const auto& c = fx.m.cfg();
  llama2c::state s(c);
  std::map<std::pair<std::size_t, llama2c::kind>, std::size_t> calls;
  bool sizes_ok = true;
  std::vector<float> wq_input;
  s.capture = [&](std::size_t layer, llama2c::kind k, std::span<const float> in) {
    ++calls[{layer, k}];
    sizes_ok = sizes_ok && in.size() == (k == llama2c::kind::w2 ? c.hidden_dim : c.dim);
    if (layer == 4 && k == llama2c::kind::wq) wq_input.assign(in.begin(), in.end());
  };
  const int tokens[3] = {1, 403, 407};
  for (std::size_t pos = 0; pos < 3; ++pos) llama2c::forward(fx.m, s, tokens[pos], pos);
  CHECK(sizes_ok);
  CHECK(calls.size() == 4 * c.n_layers);
  for (std::size_t l = 0; l < c.n_layers; ++l)
    for (auto k : {llama2c::kind::wq, llama2c::kind::wo, llama2c::kind::w1, llama2c::kind::w2})
      CHECK(calls[{l, k}] == 3);

  // the captured input is what the layer multiplies: wq of layer 4 applied to it reproduces q
  std::vector<float> q(c.dim), q_ref(c.dim, 0.0f);
  fx.m.get(4, llama2c::kind::wq).forward(wq_input, q);
  const auto w = fx.m.source(4, llama2c::kind::wq);
  for (std::size_t r = 0; r < c.dim; ++r)
    for (std::size_t j = 0; j < c.dim; ++j) q_ref[r] += w(r, j) * wq_input[j];
  for (std::size_t r = 0; r < c.dim; ++r) CHECK(q[r] == doctest::Approx(q_ref[r]).epsilon(1e-4));

  // a state without a hook gives the same logits as one with it
  llama2c::state plain(c);
  for (std::size_t pos = 0; pos < 3; ++pos) llama2c::forward(fx.m, plain, tokens[pos], pos);
  CHECK(std::equal(plain.logits.begin(), plain.logits.end(), s.logits.begin()));
}

TEST_CASE("llama2c: captured inputs calibrate GPTQ, whose layer then beats round-to-nearest on them") {
  const auto f = shared_files();
  if (!f) return;
  auto& fx = shared(*f);
  const auto& c = fx.m.cfg();
  // the inputs of w2 in layer 1 on a story outside the perplexity slice
  std::vector<float> inputs;
  llama2c::state s(c);
  s.capture = [&](std::size_t layer, llama2c::kind k, std::span<const float> in) {
    if (layer == 1 && k == llama2c::kind::w2) inputs.insert(inputs.end(), in.begin(), in.end());
  };
  const auto ids = fx.tok.encode(fx.stories[30]);
  const std::size_t n = std::min<std::size_t>(ids.size(), 128);
  for (std::size_t pos = 0; pos < n; ++pos) llama2c::forward(fx.m, s, ids[pos], pos);
  REQUIRE(inputs.size() == n * c.hidden_dim);

  using namespace quant;
  using g32 = per_group<32, asymmetric, fp16>;
  const auto w = fx.m.source(1, llama2c::kind::w2);
  gptq::hessian_accumulator h(w.cols());
  h.add({inputs.data(), n, w.cols()});
  llama2c::quantized_linear<int4, g32> by_gptq(gptq::quantize<int4, g32>(w, h.matrix()));
  llama2c::quantized_linear<int4, g32> by_rtn(quantize<int4, g32>(w));
  auto output_error = [&](const llama2c::linear& q) {
    double e = 0;
    std::vector<float> y(w.rows()), y_ref(w.rows());
    for (std::size_t t = 0; t < n; ++t) {
      const std::span<const float> x(inputs.data() + t * w.cols(), w.cols());
      fx.m.get(1, llama2c::kind::w2).forward(x, y_ref);
      q.forward(x, y);
      for (std::size_t r = 0; r < w.rows(); ++r) e += (y[r] - y_ref[r]) * double(y[r] - y_ref[r]);
    }
    return e;
  };
  const double e_gptq = output_error(by_gptq), e_rtn = output_error(by_rtn);
  MESSAGE("w2.1 output squared error on its calibration inputs: gptq ", e_gptq, ", rtn ", e_rtn);
  CHECK(e_gptq < 0.9 * e_rtn);
}

TEST_CASE("llama2c: any v0 checkpoint loads, a separate classifier included") {
  temp_file file("llama2c_synthetic");
  file.write(synthetic_checkpoint(16, 24, 2, 4, 2, -40, 8));  // negative vocab: separate wcls
  const auto m = llama2c::model::load(file.path);
  const auto& c = m.cfg();
  CHECK(c.dim == 16);
  CHECK(c.hidden_dim == 24);
  CHECK(c.kv_dim() == 8);
  CHECK(c.vocab_size == 40);
  CHECK_FALSE(c.shared_classifier);
  CHECK(m.source().wcls.size() == 40 * 16);
  CHECK(m.get(1, llama2c::kind::wk).rows() == 8);
  CHECK(m.get(1, llama2c::kind::w2).cols() == 24);

  llama2c::state s(c);
  for (std::size_t pos = 0; pos < c.seq_len; ++pos) {
    const auto logits = llama2c::forward(m, s, static_cast<int>(pos * 5 % 40), pos);
    bool finite = true;
    for (float v : logits) finite = finite && std::isfinite(v);
    CHECK(finite);
  }
  // the logits are wcls times the final hidden state (left in s.x)
  for (std::size_t i = 0; i < c.vocab_size; ++i) {
    float ref = 0;
    for (std::size_t j = 0; j < c.dim; ++j) ref += m.source().wcls[i * c.dim + j] * s.x[j];
    CHECK(s.logits[i] == doctest::Approx(ref).epsilon(1e-4));
  }
  CHECK_THROWS_WITH_AS(llama2c::forward(m, s, 0, c.seq_len), doctest::Contains("position 8 >= seq_len = 8"),
                       llama2c::error);
}

TEST_CASE("llama2c: bad files and bad arguments throw with clear messages") {
  // checkpoint headers
  temp_file bad("llama2c_bad");
  bad.write(synthetic_checkpoint(16, 24, 2, 3, 1, 40, 8));  // dim 16 not a multiple of 3 heads
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("not a multiple of n_heads = 3"),
                       llama2c::error);
  bad.write(synthetic_checkpoint(16, 24, 2, 4, 3, 40, 8));
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("n_kv_heads = 3"), llama2c::error);
  bad.write(synthetic_checkpoint(16, 0, 2, 4, 2, 40, 8));
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("hidden_dim = 0 must be positive"),
                       llama2c::error);
  bad.write({'a', 'b'});
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("too short"), llama2c::error);
  auto extra = synthetic_checkpoint(16, 24, 2, 4, 2, 40, 8);
  extra.push_back(0);
  bad.write(extra);
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("implies"), llama2c::error);
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint("/nonexistent/model.bin"), doctest::Contains("/nonexistent/model.bin"),
                       llama2c::error);
  auto nan = synthetic_checkpoint(16, 24, 2, 4, 2, 40, 8);
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan.data() + 28 + 4 * 7, &qnan, 4);
  bad.write(nan);
  CHECK_THROWS_WITH_AS(llama2c::load_checkpoint(bad.path), doctest::Contains("token_embedding element 7"),
                       llama2c::error);

  const auto f = shared_files();
  if (!f) return;
  // the real checkpoint, truncated by one float: the message names the file and both sizes
  auto bytes = read_bytes(f->model);
  REQUIRE(bytes.size() == 1056540);
  bytes.resize(bytes.size() - 4);
  temp_file truncated("llama2c_truncated");
  truncated.write(bytes);
  std::string msg;
  try {
    llama2c::load_checkpoint(truncated.path);
  } catch (const llama2c::error& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK(msg.find(truncated.path.string() + ": file has 1056536 bytes") != std::string::npos);
  CHECK(msg.find("implies 1056540 bytes") != std::string::npos);
  // a tokenizer read with the wrong vocabulary size
  CHECK_THROWS_WITH_AS(llama2c::tokenizer(f->tokenizer, 500), doctest::Contains("bytes left after 500 tokens"),
                       llama2c::error);
  CHECK_THROWS_WITH_AS(llama2c::tokenizer(f->tokenizer, 600), doctest::Contains("wrong vocab_size"), llama2c::error);
  CHECK_THROWS_AS(llama2c::tokenizer("/nonexistent/tok.bin", 512), llama2c::error);

  auto& fx = shared(*f);
  llama2c::state s(fx.m.cfg());
  CHECK_THROWS_WITH_AS(llama2c::forward(fx.m, s, 512, 0), doctest::Contains("token id 512 out of range [0, 512)"),
                       llama2c::error);
  CHECK_THROWS_AS(llama2c::forward(fx.m, s, -1, 0), llama2c::error);
  CHECK_THROWS_WITH_AS(llama2c::forward(fx.m, s, 1, 512), doctest::Contains("position 512 >= seq_len = 512"),
                       llama2c::error);
  CHECK_THROWS_AS(fx.tok.decode(1, 512), llama2c::error);
  CHECK_THROWS_AS(fx.m.get(5, llama2c::kind::wq), llama2c::error);
  CHECK_THROWS_WITH_AS(fx.m.source(5, llama2c::kind::wq), doctest::Contains("layer 5 out of range"), llama2c::error);

  // replacing a linear: the shape must match, null is rejected
  using namespace quant;
  CHECK_THROWS_WITH_AS(
      fx.m.set(0, llama2c::kind::wk, llama2c::make_quantized<int8, per_channel<symmetric>>(fx.m.source(0, llama2c::kind::wq))),
      doctest::Contains("wk.0 must be 32 x 64"), llama2c::error);
  CHECK_THROWS_AS(fx.m.set(0, llama2c::kind::wk, nullptr), llama2c::error);
  std::vector<float> x(63), y(64);
  CHECK_THROWS_AS(fx.m.get(0, llama2c::kind::wq).forward(x, y), llama2c::error);

  CHECK_THROWS_WITH_AS(llama2c::perplexity(fx.m, fx.tok, fx.stories, 340, 10), doctest::Contains("outside the 349"),
                       llama2c::error);
  llama2c::state other(llama2c::config{16, 24, 2, 4, 2, 40, 8, true});
  CHECK_THROWS_WITH_AS(llama2c::forward(fx.m, other, 1, 0), doctest::Contains("another model config"), llama2c::error);
}

TEST_CASE("llama2c: split_stories") {
  CHECK(llama2c::split_stories("  a b \n<|endoftext|>\n\n<|endoftext|>c<|endoftext|>\n") ==
        std::vector<std::string>{"a b", "c"});
  CHECK(llama2c::split_stories("").empty());
  CHECK(llama2c::split_stories("one") == std::vector<std::string>{"one"});
}

TEST_CASE("llama2c: scales folded through the writable weights leave the model's function unchanged") {
  // What AWQ and SmoothQuant do: 1/s into the norm before q/k/v (and before w1/w3), s into the
  // columns of the linears that read it; 1/s into w3's rows, s into w2's columns.
  const temp_file f("folding");
  f.write(synthetic_checkpoint(32, 48, 2, 4, 2, 64, 16));
  llama2c::model m = llama2c::model::load(f.path);
  const auto& c = m.cfg();
  auto logits = [&] {
    llama2c::state s(c);
    std::vector<float> all;
    for (std::size_t pos = 0; pos < 6; ++pos) {
      const auto l = llama2c::forward(m, s, static_cast<int>(3 + 5 * pos), pos);
      all.insert(all.end(), l.begin(), l.end());
    }
    return all;
  };
  const auto before = logits();
  qt::rng g(5);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    auto fold = [&](std::span<float> prev, std::initializer_list<llama2c::kind> next) {
      for (std::size_t j = 0; j < prev.size(); ++j) {
        const float s = static_cast<float>(std::exp(g.normal()));
        prev[j] /= s;
        for (auto k : next) {
          auto w = m.source_mutable(l, k);
          for (std::size_t r = 0; r < w.rows(); ++r) w(r, j) *= s;
        }
      }
    };
    fold(m.rms_att_mutable(l), {llama2c::kind::wq, llama2c::kind::wk, llama2c::kind::wv});
    fold(m.rms_ffn_mutable(l), {llama2c::kind::w1, llama2c::kind::w3});
    auto w3 = m.source_mutable(l, llama2c::kind::w3);  // rows of w3 feed w2's columns (through silu(w1 x) * w3 x)
    auto w2 = m.source_mutable(l, llama2c::kind::w2);
    for (std::size_t j = 0; j < w3.rows(); ++j) {
      const float s = static_cast<float>(std::exp(g.normal()));
      for (std::size_t i = 0; i < w3.cols(); ++i) w3(j, i) /= s;
      for (std::size_t r = 0; r < w2.rows(); ++r) w2(r, j) *= s;
    }
  }
  const auto after = logits();
  REQUIRE(after.size() == before.size());
  double e = 0.0, n = 0.0;
  for (std::size_t i = 0; i < after.size(); ++i) e += (after[i] - before[i]) * double(after[i] - before[i]), n += before[i] * double(before[i]);
  CHECK(std::sqrt(e / n) < 1e-5);
  CHECK_THROWS_AS(m.rms_att_mutable(c.n_layers), llama2c::error);
  CHECK_THROWS_AS(m.source_mutable(c.n_layers, llama2c::kind::wq), llama2c::error);
}
