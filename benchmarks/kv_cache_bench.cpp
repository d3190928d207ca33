// kv_cache_bench: attention of one decode step over a quantized KV cache (quant/kv_cache.hpp)
// against the same attention over an fp32 cache, and against the memory bound.
//
// For every context length and cache format it times quant::attention for one query position of
// a Llama-style layer (default 32 query heads, 8 K/V heads, head_dim 128: scores, softmax and the
// weighted sum of V, all heads) and prints: bytes per token, the bytes one call reads (K and V of
// n tokens, scales and zero points included), microseconds per query, GB/s of those bytes,
// vs_sweep = t(read-only sweep of the same bytes, same threads and regime) / t(call), x_fp32 =
// t(fp32 cache) / t(call) at the same length, and the relative error of the attention output
// against the fp32 cache, ||o - o_fp32|| / ||o_fp32|| over all heads of 8 queries.
//
// Data: synthetic K and V with the structure real ones have. Each head's keys are a shared
// low-rank component (rank 8) plus noise, with 4 fixed channels per head 10-20x larger (the
// outlier channels of real keys); values are a low-rank component plus noise, no outliers.
// Queries share the keys' low-rank structure (so scores depend on the key, as real ones), drawn
// apart from the cached tokens, each query head scaled so that its scores q . k / sqrt(head_dim)
// spread 2.5 (std over tokens); the program prints the resulting softmax's effective number of
// tokens. The static fp8 scale is fitted on 512 other tokens of the same distribution, not on
// the cached ones.
//
// Regimes: cold (default; enough distinct copies of the cache, cycled call by call, that every
// call reads it from DRAM, as gemv_bench does) or hot (one copy).
//
// With --model (default: ../shared/models/stories260K.bin when it exists) it also runs the real
// checkpoint: the attention output error on its real K, V and q (every layer, at the last
// position of each of 20 stories, the whole story cached) and the perplexity of the first 20
// stories with each KV-cache format of the example engine.
//
//   kv_cache_bench [--tokens 4096,8192,16384,32768] [--formats fp32,int8,...] [--heads 32]
//                  [--kv-heads 8] [--head-dim 128] [--threads 1] [--regime cold]
//                  [--model FILE | --no-model] [--csv FILE] [--min-time S] [--min-reps N] [--quick]
#include <fmt/core.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <llama2c/llama2c.hpp>
#include <quant/kv_cache.hpp>

#include "bench_support.hpp"

namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// The formats

template <class F, class G>
struct format_case {
  using format = F;
  using granularity = G;
  std::string_view name;   ///< command-line name
  std::string_view label;  ///< table label
};

const auto all_formats = std::make_tuple(
    format_case<float, quant::per_channel<>>{"fp32", "fp32"},
    format_case<quant::int8, quant::per_channel<>>{"int8", "int8 per token-head"},
    format_case<quant::int8, quant::per_channel<quant::asymmetric>>{"int8_asym", "int8 asym per token-head"},
    format_case<quant::int8, quant::per_group<32>>{"int8_g32", "int8 g32"},
    format_case<quant::fp8_e4m3, quant::per_channel<>>{"fp8_e4m3", "fp8 e4m3 per token-head"},
    format_case<quant::fp8_e5m2, quant::per_channel<>>{"fp8_e5m2", "fp8 e5m2 per token-head"},
    format_case<quant::fp8_e4m3, quant::per_tensor<>>{"fp8_e4m3_static", "fp8 e4m3 static scale"},
    format_case<quant::int4, quant::per_channel<>>{"int4", "int4 per token-head"},
    format_case<quant::int4, quant::per_group<32>>{"int4_g32", "int4 g32"},
    format_case<quant::int4, quant::per_group<32, quant::asymmetric>>{"int4_g32_asym", "int4 g32 asym"});

std::vector<std::string_view> format_names() {
  std::vector<std::string_view> names;
  std::apply([&](const auto&... c) { (names.push_back(c.name), ...); }, all_formats);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Options

fs::path default_model() {
#ifdef QUANT_BENCH_MODELS_DIR
  return fs::path(QUANT_BENCH_MODELS_DIR) / "stories260K.bin";
#else
  return fs::path("../shared/models") / "stories260K.bin";
#endif
}

struct options {
  std::vector<std::size_t> tokens{4096, 8192, 16384, 32768};
  std::vector<std::string> formats;  // empty: all
  std::size_t heads = 32, kv_heads = 8, head_dim = 128;
  std::vector<std::size_t> threads{1};
  std::vector<std::string> modes{"exact", "fast"};
  std::vector<std::string> regimes{"cold"};
  std::optional<fs::path> model = default_model();
  std::string csv;
  bench::timing_options timing;
  bool quick = false;
};

void usage(std::FILE* out) {
  fmt::print(out,
             "usage: kv_cache_bench [options]\n"
             "  --tokens 4096,...    context lengths (default 4096,8192,16384,32768)\n"
             "  --formats a,b,...    cache formats (default all; fp32 always runs as the baseline)\n"
             "  --heads N            query heads (default 32)\n"
             "  --kv-heads N         K/V heads (default 8)\n"
             "  --head-dim N         head dimension (default 128)\n"
             "  --threads 1,2        thread counts (default 1)\n"
             "  --mode exact,fast    attention modes (default both; the fp32 cache runs exact only)\n"
             "  --regime cold,hot    regimes (default cold)\n"
             "  --model FILE         llama2.c checkpoint for the real-activation errors and perplexities\n"
             "                       (default <models>/stories260K.bin when it exists)\n"
             "  --no-model           skip the real model\n"
             "  --csv FILE           also write the timing table as CSV\n"
             "  --min-time S         minimum timed seconds per measurement (default 0.2)\n"
             "  --min-reps N         minimum timed calls per measurement (default 5)\n"
             "  --quick              smoke run: 1024 tokens, hot, min time 0.02 s, 3 calls, 4 stories\n"
             "  --list               list the formats and exit\n");
}

options parse(int argc, char** argv) {
  options o;
  std::optional<double> min_time;
  std::optional<std::size_t> min_reps;
  bool tokens_given = false, regimes_given = false;
  const auto names = format_names();
  static constexpr std::string_view regimes[] = {"hot", "cold"};
  static constexpr std::string_view modes[] = {"exact", "fast"};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(bench::message(a, " needs a value"));
      return argv[++i];
    };
    const auto positive = [&](const char* what) {
      const std::size_t n = bench::parse_size(value(), what);
      if (n == 0) throw std::invalid_argument(bench::message(what, ": must be >= 1"));
      return n;
    };
    if (a == "--tokens") {
      o.tokens.clear();
      for (const auto& s : bench::split_list(value())) {
        const std::size_t n = bench::parse_size(s, "--tokens");
        if (n == 0) throw std::invalid_argument("--tokens: lengths must be >= 1");
        o.tokens.push_back(n);
      }
      if (o.tokens.empty()) throw std::invalid_argument("--tokens: empty list");
      tokens_given = true;
    } else if (a == "--formats") {
      o.formats = bench::parse_choices(value(), names, "--formats");
    } else if (a == "--heads") {
      o.heads = positive("--heads");
    } else if (a == "--kv-heads") {
      o.kv_heads = positive("--kv-heads");
    } else if (a == "--head-dim") {
      o.head_dim = positive("--head-dim");
    } else if (a == "--threads") {
      o.threads = bench::parse_threads(value());
    } else if (a == "--regime") {
      o.regimes = bench::parse_choices(value(), regimes, "--regime");
      regimes_given = true;
    } else if (a == "--mode") {
      o.modes = bench::parse_choices(value(), modes, "--mode");
    } else if (a == "--model") {
      o.model = value();
    } else if (a == "--no-model") {
      o.model.reset();
    } else if (a == "--csv") {
      o.csv = value();
    } else if (a == "--min-time") {
      min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--min-reps") {
      min_reps = bench::parse_size(value(), "--min-reps");
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--list") {
      for (auto n : names) fmt::print("{}\n", n);
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "' (--help lists them)"));
    }
  }
  if (o.heads % o.kv_heads != 0)
    throw std::invalid_argument(fmt::format("--heads {} is not a multiple of --kv-heads {}", o.heads, o.kv_heads));
  if (o.quick) {
    o.timing = {.min_time = 0.02, .min_reps = 3, .max_reps = 100000, .warmup = 1};
    if (!tokens_given) o.tokens = {1024};
    if (!regimes_given) o.regimes = {"hot"};
  }
  if (min_time) o.timing.min_time = *min_time;
  if (min_reps) o.timing.min_reps = std::max<std::size_t>(1, *min_reps);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Synthetic K, V and q

/// Tokens of one layer's K (or V, or q), token after token, heads * head_dim each: per head a
/// low-rank component over a fixed basis plus noise, and for keys 4 fixed outlier channels per
/// head scaled 10-20x. The basis and the outlier channels are fixed by the seed; draw() gives
/// new tokens of the same distribution.
class kv_source {
 public:
  /// The basis and outlier channels come from `seed`, the tokens drawn from `stream`.
  kv_source(std::size_t heads, std::size_t head_dim, bool keys, std::uint64_t seed, std::uint64_t stream)
      : heads_(heads), dim_(head_dim), gen_(seed), basis_(heads * rank * head_dim), chan_(heads * head_dim, 1.0f) {
    for (auto& b : basis_) b = gen_.gaussian() / std::sqrt(static_cast<float>(rank));
    if (keys)
      for (std::size_t h = 0; h < heads; ++h)
        for (int j = 0; j < 4; ++j) chan_[h * head_dim + gen_.next() % head_dim] = 10.0f + 10.0f * gen_.uniform();
    noise_ = keys ? 0.3f : 0.5f;
    gen_ = bench::rng(stream);
  }
  /// n new tokens, n x heads * head_dim.
  std::vector<float> draw(std::size_t n, float scale = 1.0f) {
    std::vector<float> x(n * heads_ * dim_);
    float coef[rank];
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t h = 0; h < heads_; ++h) {
        for (auto& c : coef) c = gen_.gaussian();
        float* o = x.data() + (t * heads_ + h) * dim_;
        const float* b = basis_.data() + h * rank * dim_;
        for (std::size_t d = 0; d < dim_; ++d) {
          float v = noise_ * gen_.gaussian();
          for (std::size_t k = 0; k < rank; ++k) v += coef[k] * b[k * dim_ + d];
          o[d] = scale * v * chan_[h * dim_ + d];
        }
      }
    return x;
  }

 private:
  static constexpr std::size_t rank = 8;
  std::size_t heads_, dim_;
  bench::rng gen_;
  std::vector<float> basis_, chan_;
  float noise_ = 0.3f;
};

// ---------------------------------------------------------------------------------------------
// Output

struct row {
  std::size_t tokens = 0;
  std::string format, mode, regime;
  std::size_t threads = 1, bytes_per_token = 0, bytes = 0;
  bench::timing t;
  double vs_sweep = NAN, x_fp32 = NAN, x_fp32_min = NAN, error = NAN;
};

class table {
 public:
  explicit table(const std::string& csv_path) {
    if (!csv_path.empty()) {
      csv_ = std::fopen(csv_path.c_str(), "w");
      if (csv_ == nullptr) throw std::runtime_error(bench::message("cannot write ", csv_path));
      fmt::print(csv_, "tokens,format,mode,threads,regime,bytes_per_token,bytes,median_us,min_us,reps,gbps,vs_sweep,x_fp32,"
                       "x_fp32_min,rel_error\n");
    }
  }
  table(const table&) = delete;
  table& operator=(const table&) = delete;
  ~table() {
    if (csv_ != nullptr) std::fclose(csv_);
  }
  void header() const {
    fmt::print("{:>6} {:<26} {:<5} {:>3} {:<4} {:>7} {:>7} {:>9} {:>9} {:>6} {:>8} {:>6} {:>7} {:>8}\n", "tokens", "format",
               "mode", "thr", "reg", "B/token", "MB", "us/query", "us min", "GB/s", "vs_sweep", "x_fp32", "x (min)",
               "rel err");
  }
  void add(const row& r) {
    const double us = r.t.median * 1e6, gbps = static_cast<double>(r.bytes) / r.t.median * 1e-9;
    const auto opt = [](double v, int p) { return std::isnan(v) ? std::string("-") : fmt::format("{:.{}f}", v, p); };
    fmt::print("{:>6} {:<26} {:<5} {:>3} {:<4} {:>7} {:>7.2f} {:>9.1f} {:>9.1f} {:>6.2f} {:>8} {:>6} {:>7} {:>8}\n", r.tokens,
               r.format, r.mode, r.threads, r.regime, r.bytes_per_token, static_cast<double>(r.bytes) * 1e-6, us,
               r.t.min * 1e6, gbps, opt(r.vs_sweep, 2), opt(r.x_fp32, 2), opt(r.x_fp32_min, 2),
               std::isnan(r.error) ? std::string("-") : fmt::format("{:.5f}", r.error));
    std::fflush(stdout);
    if (csv_ != nullptr) {
      fmt::print(csv_, "{},{},{},{},{},{},{},{:.3f},{:.3f},{},{:.4f},{:.4f},{:.4f},{:.4f},{:.6f}\n", r.tokens, r.format, r.mode,
                 r.threads, r.regime, r.bytes_per_token, r.bytes, us, r.t.min * 1e6, r.t.reps, gbps, r.vs_sweep, r.x_fp32,
                 r.x_fp32_min, r.error);
      std::fflush(csv_);
    }
  }

 private:
  std::FILE* csv_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The benchmark

double rel_error(const std::vector<float>& ref, const std::vector<float>& y) {
  double e = 0.0, s = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(ref[i]) - y[i];
    e += d * d;
    s += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(e / s);
}

/// The bytes a call over n tokens reads (capacity = n): every section of both parts.
template <class F, class G>
std::vector<bench::region> regions_of(const quant::kv_cache<F, G>& c) {
  const auto v = c.cview();
  const auto& r = v.requirements();
  const std::byte* b = v.buffer().data();
  std::vector<bench::region> out;
  for (quant::kv_part p : {quant::kv_part::k, quant::kv_part::v}) {
    out.push_back({b + r.code_offset(p), r.code_bytes()});
    if (r.scale_bytes()) out.push_back({b + r.scale_offset(p), r.scale_bytes()});
    if (r.zero_bytes()) out.push_back({b + r.zero_offset(p), r.zero_bytes()});
  }
  return out;
}

constexpr std::size_t n_queries = 8;
/// The spread (std over tokens) of the scaled scores the synthetic queries are given.
constexpr double score_spread = 2.5;

class runner {
 public:
  explicit runner(options o) : o_(std::move(o)), table_(o_.csv), threshold_(bench::cold_threshold()) {}

  void run() {
    print_header();
    table_.header();
    for (const std::size_t n : o_.tokens) run_length(n);
    if (o_.model) run_model(*o_.model);
  }

 private:
  bool wanted(std::string_view name) const {
    return name == "fp32" || o_.formats.empty() || bench::contains(o_.formats, name);
  }

  void print_header() const {
    fmt::print("quant {} KV-cache attention benchmark\n", quant::version_string);
    fmt::print("attention kernels: {}; read sweep: {}\n", quant::isa_name(quant::compiled_isa()), bench::simd_name());
    fmt::print("CPU: {}, {} hardware threads, L3 of cpu0 {} MiB\n", bench::cpu_model(), std::thread::hardware_concurrency(),
               bench::l3_bytes() >> 20);
    fmt::print("layer: {} query heads, {} K/V heads, head_dim {}; one query position per call (scores, softmax, V)\n",
               o_.heads, o_.kv_heads, o_.head_dim);
    fmt::print("cold: N distinct copies of the cache, N x bytes > {} MiB, cycled call by call; hot: one copy\n",
               threshold_ >> 20);
    fmt::print("timing: median per call over >= {} calls and >= {} s, after {} warm-up calls\n", o_.timing.min_reps,
               o_.timing.min_time, o_.timing.warmup);
    fmt::print(
        "B/token = cache bytes per token (K and V of every head, scales included); MB = bytes one call reads;\n"
        "vs_sweep = t(read sweep of the same bytes) / t(call); x_fp32 = t(fp32 cache) / t(call), medians;\n"
        "x (min) = the same ratio of the fastest calls (less exposed to other jobs on a shared machine);\n"
        "rel err = ||o - o_fp32|| / ||o_fp32|| of the attention output, {} queries x {} heads\n\n",
        n_queries, o_.heads);
    std::fflush(stdout);
  }

  void run_length(std::size_t n) {
    fp32_min_.clear();
    const quant::kv_dims d{o_.kv_heads, o_.head_dim, n};
    kv_source ks(o_.kv_heads, o_.head_dim, true, 0x6b657973, 1), vs(o_.kv_heads, o_.head_dim, false, 0x76616c73, 2);
    // queries: the keys' low-rank structure (same basis) without their outlier channels, a
    // stream of their own, each query head rescaled below so that its scaled scores spread 2.5
    kv_source qs(o_.kv_heads, o_.head_dim, false, 0x6b657973, 3);
    const auto calib_k = ks.draw(512), calib_v = vs.draw(512);
    const auto k = ks.draw(n), v = vs.draw(n);
    std::vector<float> q;
    {
      const std::size_t g = o_.heads / o_.kv_heads;
      const auto base = qs.draw(n_queries * g);
      q.resize(n_queries * o_.heads * o_.head_dim);
      const std::size_t sample = std::min<std::size_t>(n, 1024), hd = o_.head_dim;
      for (std::size_t j = 0; j < n_queries; ++j)
        for (std::size_t i = 0; i < o_.heads; ++i) {  // query head i reads K/V head i / g
          const std::size_t kh = i / g;
          float* qi = q.data() + (j * o_.heads + i) * hd;
          std::copy_n(base.data() + ((j * g + i % g) * o_.kv_heads + kh) * hd, hd, qi);
          double sum = 0.0, sq = 0.0;  // the spread of q . k / sqrt(hd) over the first keys
          for (std::size_t t = 0; t < sample; ++t) {
            double dot = 0.0;
            for (std::size_t e = 0; e < hd; ++e) dot += double(qi[e]) * k[(t * o_.kv_heads + kh) * hd + e];
            dot /= std::sqrt(double(hd));
            sum += dot, sq += dot * dot;
          }
          const double mean = sum / double(sample), sd = std::sqrt(std::max(sq / double(sample) - mean * mean, 1e-30));
          for (std::size_t e = 0; e < hd; ++e) qi[e] = static_cast<float>(qi[e] * (score_spread / sd));
        }
    }
    quant::kv_options stat;
    const std::size_t ts = d.token_size();
    stat.k_scale = quant::kv_static_scale<quant::fp8_e4m3>({calib_k.data(), 512, ts});
    stat.v_scale = quant::kv_static_scale<quant::fp8_e4m3>({calib_v.data(), 512, ts});
    fmt::print(stderr, "[{} tokens] data ready\n", n);

    std::vector<float> ref;  // fp32 outputs of the queries
    std::map<std::pair<std::string, std::size_t>, double> fp32_time;  // (regime, threads) -> s
    std::apply(
        [&](const auto&... c) {
          (run_format(c, n, d, k, v, q, c.name == "fp8_e4m3_static" ? stat : quant::kv_options{}, ref, fp32_time), ...);
        },
        all_formats);
  }

  template <class Case>
  void run_format(const Case& fc, std::size_t n, const quant::kv_dims& d, const std::vector<float>& k,
                  const std::vector<float>& v, const std::vector<float>& q, const quant::kv_options& opts,
                  std::vector<float>& ref, std::map<std::pair<std::string, std::size_t>, double>& fp32_time) {
    using F = typename Case::format;
    using G = typename Case::granularity;
    using cache_t = quant::kv_cache<F, G>;
    if (!wanted(fc.name)) return;
    const auto t0 = bench::clock::now();
    cache_t c(d, G{}, opts);
    const std::size_t ts = d.token_size();
    for (std::size_t t = 0; t < n; t += 1024) {
      const std::size_t m = std::min<std::size_t>(1024, n - t);
      c.append(quant::matrix_view<const float>(k.data() + t * ts, m, ts), quant::matrix_view<const float>(v.data() + t * ts, m, ts));
    }
    fmt::print(stderr, "[{} tokens] {}: appended in {:.2f} s\n", n, fc.name, bench::seconds_since(t0));

    const bool is_fp32 = std::is_same_v<F, float>;
    const std::size_t qn = o_.heads * o_.head_dim;
    std::vector<float> out(n_queries * qn);
    const std::vector<bench::region> regions = regions_of(c);
    std::size_t bytes = 0;
    for (const auto& r : regions) bytes += r.size;
    const bool any_cold = bench::contains(o_.regimes, "cold");
    bench::cold_set<cache_t> cold;
    std::vector<std::vector<bench::region>> cold_regions;
    if (any_cold) {
      cold = bench::cold_set<cache_t>(c, bench::cold_copies(bytes, threshold_));
      for (std::size_t i = 0; i < cold.size(); ++i) cold_regions.push_back(regions_of(cold.next()));
    }
    std::vector<std::byte> ws_raw(quant::attention_workspace_size(c.cview(), o_.heads, n) + 64);
    std::byte* ws = ws_raw.data() + (64 - reinterpret_cast<std::uintptr_t>(ws_raw.data()) % 64) % 64;
    const std::span<std::byte> wspan(ws, ws_raw.size() - 64);
    const quant::matrix_view<const float> q0(q.data(), o_.heads, o_.head_dim);
    const quant::matrix_view<float> o0(out.data(), o_.heads, o_.head_dim);

    // the baseline runs once, exact: fp32 rows, fp32 q
    const std::vector<std::string> modes = is_fp32 ? std::vector<std::string>{"exact"} : o_.modes;
    for (const auto& mode_name : modes) {
      const quant::attention_options ao{0.0f, mode_name == "fast" ? quant::attention_mode::fast : quant::attention_mode::exact};
      // error of the attention output against fp32 over the queries
      for (std::size_t j = 0; j < n_queries; ++j)
        quant::attention(c, quant::matrix_view<const float>(q.data() + j * qn, o_.heads, o_.head_dim),
                         quant::matrix_view<float>(out.data() + j * qn, o_.heads, o_.head_dim), ao);
      if (is_fp32) {
        ref = out;
        describe_scores(c.cview(), q, n);
      }
      const double err = is_fp32 ? NAN : rel_error(ref, out);

      for (const auto& regime : o_.regimes) {
        const bool is_cold = regime == "cold";
        std::size_t cursor = 0;
        const auto next = [&]() -> const cache_t& { return is_cold ? cold.next() : c; };
        const auto next_regions = [&]() -> std::span<const bench::region> {
          if (!is_cold) return regions;
          const auto& r = cold_regions[cursor];
          cursor = cursor + 1 == cold_regions.size() ? 0 : cursor + 1;
          return r;
        };
        for (const std::size_t threads : o_.threads) {
          const bench::timing sw = bench::with_executor(ps_, threads, [&](auto& exec) {
            return bench::measure([&] { (void)bench::read_sweep(next_regions(), exec); }, o_.timing);
          });
          const bench::timing t = bench::with_executor(ps_, threads, [&](auto& exec) {
            return bench::measure([&] { quant::attention(next().cview(), q0, n, o0, wspan, ao, exec); }, o_.timing);
          });
          row r{n, std::string(fc.label), mode_name, regime, threads, c.bytes_per_token(), bytes, t};
          r.vs_sweep = sw.median / t.median;
          r.error = err;
          const auto key = std::pair{regime, threads};
          if (is_fp32) fp32_time[key] = t.median, fp32_min_[key] = t.min;
          if (fp32_time.count(key)) r.x_fp32 = fp32_time[key] / t.median, r.x_fp32_min = fp32_min_[key] / t.min;
          table_.add(r);
        }
      }
    }
  }

  /// One line on how peaked the synthetic attention is (what the errors depend on): the spread of
  /// the scaled scores and the effective number of attended tokens, exp(entropy of softmax),
  /// means over the query heads of the queries.
  template <class V>
  void describe_scores(const V& c, const std::vector<float>& q, std::size_t n) const {
    const std::size_t qn = o_.heads * o_.head_dim;
    std::vector<float> s(o_.heads * n);
    double spread = 0.0, tokens = 0.0;
    for (std::size_t j = 0; j < n_queries; ++j) {
      quant::attention_scores(c, quant::matrix_view<const float>(q.data() + j * qn, o_.heads, o_.head_dim), n,
                              quant::matrix_view<float>(s.data(), o_.heads, n));
      for (std::size_t i = 0; i < o_.heads; ++i) {
        const float* r = s.data() + i * n;
        double mean = 0.0, var = 0.0, mx = r[0];
        for (std::size_t t = 0; t < n; ++t) mean += r[t], mx = std::max<double>(mx, r[t]);
        mean /= static_cast<double>(n);
        double z = 0.0, ent = 0.0;
        for (std::size_t t = 0; t < n; ++t) var += (r[t] - mean) * (r[t] - mean), z += std::exp(r[t] - mx);
        for (std::size_t t = 0; t < n; ++t) {
          const double p = std::exp(r[t] - mx) / z;
          if (p > 0) ent -= p * std::log(p);
        }
        spread += std::sqrt(var / static_cast<double>(n));
        tokens += std::exp(ent);
      }
    }
    const double m = static_cast<double>(n_queries * o_.heads);
    fmt::print("{:>6} tokens: scores (scaled by 1/sqrt(head_dim)) spread {:.2f} (std over tokens), softmax over an "
               "effective {:.0f} tokens (exp entropy), means over {} queries x {} heads\n",
               n, spread / m, tokens / m, n_queries, o_.heads);
  }

  // ---- the real model -----------------------------------------------------------------------

  /// Records K and V of every layer and position, and the q of the latest position, in fp32
  /// (and attends with the engine's numbers through an fp32 quant cache).
  struct recorder final : llama2c::kv_store {
    explicit recorder(const llama2c::config& c) : cfg(c), k(c.n_layers), v(c.n_layers), q(c.n_layers) {
      inner = llama2c::make_kv_store(llama2c::kv_format::fp32_kernels, c);
    }
    void store(std::size_t layer, std::size_t pos, std::span<const float> kk, std::span<const float> vv) override {
      const std::size_t kd = cfg.kv_dim();
      k[layer].resize((pos + 1) * kd);
      v[layer].resize((pos + 1) * kd);
      std::copy(kk.begin(), kk.end(), k[layer].begin() + pos * kd);
      std::copy(vv.begin(), vv.end(), v[layer].begin() + pos * kd);
      inner->store(layer, pos, kk, vv);
    }
    void attend(std::size_t layer, std::span<const float> qq, std::size_t n, std::span<float> out) override {
      q[layer].assign(qq.begin(), qq.end());
      inner->attend(layer, qq, n, out);
    }
    std::size_t bytes_per_token() const override { return inner->bytes_per_token(); }
    std::string describe() const override { return "recorder"; }
    std::unique_ptr<llama2c::kv_store> clone() const override { return std::make_unique<recorder>(*this); }
    recorder(const recorder& o) : cfg(o.cfg), k(o.k), v(o.v), q(o.q), inner(o.inner->clone()) {}

    llama2c::config cfg;
    std::vector<std::vector<float>> k, v, q;  // per layer
    std::unique_ptr<llama2c::kv_store> inner;
  };

  /// Attention output of every layer at the recorded position over the recorded tokens, with a
  /// cache of the case's format; returns sum ||o - o_ref||^2 and sum ||o_ref||^2 (ref: fp32).
  template <class Case>
  void model_errors(const Case& fc, const recorder& rec, std::size_t n, std::map<std::string, std::pair<double, double>>& acc,
                    std::vector<std::vector<float>>& ref) {
    using F = typename Case::format;
    using G = typename Case::granularity;
    if (!wanted(fc.name) || std::string_view(fc.name) == "fp8_e4m3_static") return;
    const llama2c::config& cfg = rec.cfg;
    const quant::kv_dims d{cfg.n_kv_heads, cfg.head_size(), n};
    for (std::size_t l = 0; l < cfg.n_layers; ++l) {
      quant::kv_cache<F, G> c(d);
      c.append(quant::matrix_view<const float>(rec.k[l].data(), n, cfg.kv_dim()),
               quant::matrix_view<const float>(rec.v[l].data(), n, cfg.kv_dim()));
      std::vector<float> out(cfg.dim);
      for (const auto& mode : o_.modes) {
        if (std::is_same_v<F, float> && mode == "fast") continue;
        quant::attention(c, quant::matrix_view<const float>(rec.q[l].data(), cfg.n_heads, cfg.head_size()),
                         quant::matrix_view<float>(out.data(), cfg.n_heads, cfg.head_size()),
                         {0.0f, mode == "fast" ? quant::attention_mode::fast : quant::attention_mode::exact});
        if (std::is_same_v<F, float>) {
          ref[l] = out;
          continue;
        }
        auto& [e, s] = acc[fmt::format("{:<26} {}", fc.label, mode)];
        for (std::size_t i = 0; i < out.size(); ++i) {
          e += (double(out[i]) - ref[l][i]) * (double(out[i]) - ref[l][i]);
          s += double(ref[l][i]) * ref[l][i];
        }
      }
    }
  }

  void run_model(const fs::path& path) {
    const fs::path dir = path.parent_path();
    const fs::path tok_path = dir / "tok512.bin", text_path = dir / "tinystories_valid.txt";
    if (!fs::exists(path) || !fs::exists(tok_path) || !fs::exists(text_path)) {
      fmt::print("\nreal model: skipped ({} with tok512.bin and tinystories_valid.txt next to it not found)\n",
                 path.string());
      return;
    }
    const auto m = llama2c::model::load(path);
    const llama2c::tokenizer tok(tok_path, m.cfg().vocab_size);
    const auto stories = llama2c::split_stories(llama2c::read_text(text_path));
    const std::size_t count = o_.quick ? 4 : 20;
    const auto& c = m.cfg();
    fmt::print("\nreal model: {} (dim {}, {} layers, {} heads, {} K/V heads, head_dim {}), stories [0, {}) of {}\n",
               path.filename().string(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_size(), count,
               text_path.filename().string());

    // attention output errors on real K, V, q: every layer at the last position of each story
    std::map<std::string, std::pair<double, double>> acc;
    std::size_t positions = 0;
    for (std::size_t s = 0; s < count; ++s) {
      std::vector<int> ids = tok.encode(stories[s], true);
      if (ids.size() > c.seq_len) ids.resize(c.seq_len);
      llama2c::state st(c);
      st.kv = llama2c::kv_store_ptr(std::make_unique<recorder>(c));
      for (std::size_t pos = 0; pos < ids.size(); ++pos) llama2c::forward(m, st, ids[pos], pos);
      const auto& rec = static_cast<const recorder&>(*st.kv.get());
      std::vector<std::vector<float>> ref(c.n_layers);
      std::apply([&](const auto&... fc) { (model_errors(fc, rec, ids.size(), acc, ref), ...); }, all_formats);
      positions += ids.size();
    }
    fmt::print("attention output error on real activations (every layer, last position of each story, {} cached positions in all):\n",
               positions);
    for (const auto& [label, es] : acc) fmt::print("  {:<26} {:.5f}\n", label, std::sqrt(es.first / es.second));

    // perplexity with every KV format of the engine
    fmt::print("perplexity of stories [0, {}) with the engine's KV-cache formats (fp32 = the engine's own cache):\n", count);
    fmt::print("  {:<14} {:<5} {:>9} {:>8} {:>8}\n", "kv format", "mode", "ppl", "dppl %", "B/pos");
    double base = 0.0;
    for (const auto f : llama2c::all_kv_formats)
      for (const auto& mode : o_.modes) {
        const bool fp32 = f == llama2c::kv_format::fp32 || f == llama2c::kv_format::fp32_kernels;
        if (fp32 && mode == "fast") continue;  // one mode
        const llama2c::kv_config kv(f, mode == "fast" ? quant::attention_mode::fast : quant::attention_mode::exact);
        const auto r = llama2c::perplexity(m, tok, stories, 0, count, kv);
        if (f == llama2c::kv_format::fp32) base = r.ppl;
        const llama2c::state st(c, kv);
        const std::size_t bpp = st.kv ? st.kv->bytes_per_token() : 2 * c.n_layers * c.kv_dim() * sizeof(float);
        fmt::print("  {:<14} {:<5} {:>9.4f} {:>+8.3f} {:>8}\n", llama2c::name(f), fp32 ? "-" : mode, r.ppl,
                   100.0 * (r.ppl / base - 1.0), bpp);
        std::fflush(stdout);
      }
  }

  options o_;
  table table_;
  std::size_t threshold_;
  bench::pools ps_;
  std::map<std::pair<std::string, std::size_t>, double> fp32_min_;  ///< (regime, threads) -> s, this length
};

}  // namespace

int main(int argc, char** argv) {
  try {
    runner(parse(argc, argv)).run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "kv_cache_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
