// llama2c_run: runs a llama2.c checkpoint with every linear layer quantized by quant
// (round-to-nearest), and prints its perplexity on TinyStories text and/or a greedy generation.
//
//   llama2c_run [--model M] [--tokenizer T] [--text F] [--stories N] [--prompt P] [--steps S]
//               [--format fp32|int8|int4-g32|int4-g128|nf4|mxfp4|e4m3] [--fast] [--mse]
//               [--kv-cache fp32|fp32-kernels|int8|int4|int4-asym|fp8-e4m3|fp8-e5m2] [--kv-fast]
//
// The engine is examples/llama2c/llama2c.hpp. Without --model/--tokenizer/--text the files of
// ../shared/models (QUANT_EXAMPLE_MODELS_DIR) are used. --stories N scores the first N stories
// (the protocol of ../shared/models/README.md); --prompt/--steps generate greedily; with neither,
// a 128-step generation from BOS runs. --kv-cache keeps K and V in a quant::kv_cache of that
// format and runs quant::attention over it (quant/kv_cache.hpp); --kv-fast its fast mode.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "cli.hpp"
#include "llama2c/llama2c.hpp"

namespace {

namespace fs = std::filesystem;

constexpr std::string_view usage =
    "usage: llama2c_run [--model M] [--tokenizer T] [--text F] [--stories N] [--prompt P] [--steps S]\n"
    "                   [--format fp32|int8|int4-g32|int4-g128|nf4|mxfp4|e4m3] [--fast] [--mse]\n"
    "                   [--kv-cache fp32|fp32-kernels|int8|int4|int4-asym|fp8-e4m3|fp8-e5m2] [--kv-fast]\n"
    "  --model M       llama2.c checkpoint (default: <models>/stories260K.bin)\n"
    "  --tokenizer T   llama2.c tokenizer (default: <models>/tok512.bin)\n"
    "  --text F        stories separated by <|endoftext|> (default: <models>/tinystories_valid.txt)\n"
    "  --stories N     perplexity over the first N stories\n"
    "  --prompt P      greedy generation after prompt P (default \"\")\n"
    "  --steps S       positions to run for the generation (default 128, at most seq_len)\n"
    "  --format F      quantize every linear with round-to-nearest (default fp32):\n"
    "                  int8 (per-channel sym), int4-g32 / int4-g128 (asym, f16 scales),\n"
    "                  nf4 (g64, f16 scales), mxfp4 (e2m1 g32, e8m0 scales), e4m3 (fp8, per-channel)\n"
    "  --fast          fast GEMV mode (int8 activations) instead of exact\n"
    "  --mse           mse clipping search instead of min-max scales\n"
    "  --kv-cache K    KV-cache format (default fp32, the engine's own cache): fp32-kernels (fp32 rows through\n"
    "                  quant::attention), int8 (a scale per token and head), int4 / int4-asym (a scale, and a\n"
    "                  zero point, per token and 32 dims of a head), fp8-e4m3 / fp8-e5m2 (a scale per token and head)\n"
    "  --kv-fast       the attention's fast mode (int8 q, integer and bf16 dot products) instead of exact\n";

struct bad_usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::size_t parse_count(std::string_view flag, std::string_view v) {
  std::size_t n = 0;
  const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || p != v.data() + v.size() || n == 0)
    throw bad_usage(fmt::format("{} needs a positive integer, got '{}'", flag, v));
  return n;
}

/// Quantizes every linear of m with quant::quantize<F, Gran>; returns the milliseconds it took.
template <class F, class Gran>
double quantize_model(llama2c::model& m, llama2c::gemv_mode mode, const quant::quantize_options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  llama2c::quantize_all<F, Gran>(m, mode, Gran{}, o);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int run(int argc, char** argv) {
  fs::path model_path = cli::models_dir() / "stories260K.bin", tok_path = cli::models_dir() / "tok512.bin",
           text_path = cli::models_dir() / "tinystories_valid.txt";
  std::optional<std::size_t> stories, steps;
  std::optional<std::string> prompt;
  std::string format = "fp32";
  bool fast = false, mse = false, kv_fast = false;
  std::string kv_cache = "fp32";

  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw bad_usage(fmt::format("{} needs a value", a));
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      fmt::print("{}", usage);
      return 0;
    } else if (a == "--model") model_path = value();
    else if (a == "--tokenizer") tok_path = value();
    else if (a == "--text") text_path = value();
    else if (a == "--stories") stories = parse_count(a, value());
    else if (a == "--prompt") prompt = std::string(value());
    else if (a == "--steps") steps = parse_count(a, value());
    else if (a == "--format") format = value();
    else if (a == "--fast") fast = true;
    else if (a == "--mse") mse = true;
    else if (a == "--kv-cache") kv_cache = value();
    else if (a == "--kv-fast") kv_fast = true;
    else throw bad_usage(fmt::format("unknown argument '{}'", a));
  }

  constexpr std::string_view formats[] = {"fp32", "int8", "int4-g32", "int4-g128", "nf4", "mxfp4", "e4m3"};
  if (std::find(std::begin(formats), std::end(formats), format) == std::end(formats))
    throw bad_usage(fmt::format("unknown --format '{}'", format));
  if (format == "fp32" && (fast || mse)) throw bad_usage("--fast and --mse need a quantized --format");
  llama2c::kv_config kv;
  try {
    kv = llama2c::kv_config(llama2c::parse_kv_format(kv_cache),
                            kv_fast ? quant::attention_mode::fast : quant::attention_mode::exact);
  } catch (const llama2c::error& e) {
    throw bad_usage(fmt::format("--kv-cache: {}", e.what()));
  }
  if (kv_fast && kv.format == llama2c::kv_format::fp32)
    throw bad_usage("--kv-fast needs a --kv-cache other than fp32 (the engine's own cache has one mode)");

  auto m = llama2c::model::load(model_path);
  const auto& c = m.cfg();
  const llama2c::tokenizer tok(tok_path, c.vocab_size);
  fmt::print("{}: dim {}, hidden_dim {}, {} layers, {} heads ({} kv), vocab {}, seq_len {}, {} classifier\n",
             model_path.string(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
             c.shared_classifier ? "shared" : "separate");

  using namespace quant;
  const auto mode = fast ? llama2c::gemv_mode::fast : llama2c::gemv_mode::exact;
  const quantize_options opts{mse ? scale_search::mse : scale_search::minmax};
  const std::size_t fp32_bytes = m.linear_bytes();
  double ms = 0;
  if (format == "int8") ms = quantize_model<int8, per_channel<symmetric>>(m, mode, opts);
  else if (format == "int4-g32") ms = quantize_model<int4, per_group<32, asymmetric, fp16>>(m, mode, opts);
  else if (format == "int4-g128") ms = quantize_model<int4, per_group<128, asymmetric, fp16>>(m, mode, opts);
  else if (format == "nf4") ms = quantize_model<nf4, per_group<64, symmetric, fp16>>(m, mode, opts);
  else if (format == "mxfp4") ms = quantize_model<fp4_e2m1, per_group<32, symmetric, e8m0>>(m, mode, opts);
  else if (format == "e4m3") ms = quantize_model<fp8_e4m3, per_channel<symmetric>>(m, mode, opts);
  fmt::print("linears: {} ({}), {} bytes ({:.3f} bits/weight; fp32 {} bytes){}\n", format,
             m.get(0, llama2c::kind::wq).describe(), m.linear_bytes(),
             8.0 * static_cast<double>(m.linear_bytes()) / static_cast<double>(fp32_bytes / 4), fp32_bytes,
             format == "fp32" ? std::string() : fmt::format(", quantized in {:.1f} ms", ms));

  {
    const llama2c::state probe(c, kv);
    fmt::print("KV cache: {}\n", probe.kv ? probe.kv->describe()
                                          : fmt::format("fp32 (the engine's own), {} bytes per position",
                                                        2 * c.n_layers * c.kv_dim() * sizeof(float)));
  }

  if (stories) {
    const auto all = llama2c::split_stories(llama2c::read_text(text_path));
    if (*stories > all.size())
      throw bad_usage(fmt::format("--stories {}: {} has {} stories", *stories, text_path.string(), all.size()));
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = llama2c::perplexity(m, tok, all, 0, *stories, kv);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("perplexity over the first {} stories: {:.4f} (nll {:.5f} over {} tokens, {:.0f} tokens/s)\n",
               *stories, r.ppl, r.nll_sum / static_cast<double>(r.tokens), r.tokens,
               static_cast<double>(r.tokens) / s);
  }
  if (prompt || steps || !stories) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto g = llama2c::generate(m, tok, prompt.value_or(""), steps.value_or(128), kv);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("greedy ({} prompt tokens, {} generated, {:.0f} tokens/s):\n{}\n", g.prompt_tokens,
               g.tokens.size() - g.prompt_tokens, static_cast<double>(g.tokens.size() - 1) / s, g.text);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const bad_usage& e) {
    fmt::print(stderr, "llama2c_run: {}\n{}", e.what(), usage);
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "llama2c_run: {}\n", e.what());
    return 1;
  }
}
