// quant-report: the quantization report. Methods x formats side by side: bits per weight, bytes,
// quality and speed, as a table (stdout), CSV (--csv) and a plot of quality against bits per
// weight with its Pareto front (--svg).
//
//   quant-report                       synthetic layers shaped like one transformer block at dim
//                                      1024 (q 1024x1024, up 2816x1024, down 1024x2816):
//                                      heavy-tailed weights, inputs with a correlated low-rank
//                                      component and 1% outlier channels x20; calibration on
//                                      2 x cols tokens, errors on 256 held-out tokens
//   quant-report --model M [--tokenizer T --text F]
//                                      a llama2.c checkpoint (tokenizer and text default to the
//                                      files next to it): sequential calibration on stories
//                                      [--calib-first, +--calib-stories), perplexity, agreement of
//                                      greedy next-token predictions with fp32 and decode speed
//                                      on the first --eval-stories stories
//   methods: rtn, gptq, awq (each x every format), sq-w8a8 (SmoothQuant, alpha 0.5: int8 weights
//   and int8 per-token activations; next to W8A8 without smoothing)
//   options: --methods rtn,gptq,awq,sq-w8a8  --formats int8,int4-g128-asym,... (or all)  --csv FILE  --svg FILE
//            --fast (fast GEMV mode)  --mse (clip search in the scale fits)  --true-sequential
//            --act-order  --list  --mixed LOW,HIGH,BITS (model: sensitivity-guided mixed precision)
//            --kv-cache FORMAT [--kv-fast] (model: the attention KV cache of every evaluation, fp32 default)
#include <quant/algorithms/awq.hpp>
#include <quant/algorithms/gptq.hpp>
#include <quant/io/fmt.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "llama2c/awq.hpp"
#include "llama2c/calibrate.hpp"
#include "llama2c/llama2c.hpp"
#include "report/formats.hpp"
#include "report/mixed.hpp"
#include "report/svg.hpp"

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

const std::vector<std::string> all_methods{"rtn", "gptq", "awq", "sq-w8a8"};

struct args {
  fs::path model, tokenizer, text, csv, svg;
  std::vector<std::string> methods = all_methods, formats;
  bool fast = false, true_sequential = false, act_order = false;
  quant::quantize_options fit;  ///< --mse: the clip search
  std::size_t calib_first = 200, calib_stories = 32, eval_stories = 20;
  std::string mixed_low, mixed_high;  ///< --mixed LOW,HIGH,BUDGET (model mode)
  double mixed_budget = 0.0;
  llama2c::kv_config kv{llama2c::kv_format::fp32};  ///< --kv-cache, --kv-fast (model mode)
};

const char* usage =
    "usage: quant-report [--model M [--tokenizer T --text F]] [--methods rtn,gptq,awq,sq-w8a8] [--formats a,b,...|all]\n"
    "                    [--csv FILE] [--svg FILE] [--fast] [--mse] [--true-sequential] [--act-order]\n"
    "                    [--calib-first 200] [--calib-stories 32] [--eval-stories 20] [--list]\n"
    "                    [--mixed LOW,HIGH,BITS]  (with --model: per-layer sensitivity and allocation)\n"
    "                    [--kv-cache fp32|fp32-kernels|int8|int4|int4-asym|fp8-e4m3|fp8-e5m2 [--kv-fast]]  (with --model)\n"
    "without --model: synthetic layers of one transformer block (dim 1024); --list: the formats";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = s.find(',', b);
    if (e > b) out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

args parse(int argc, char** argv, const report::format_list& list) {
  const auto& formats = list.entries;
  args a;
  for (std::size_t i = 0; i < list.defaults; ++i) a.formats.push_back(formats[i].key);
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(f + ": missing value");
      return argv[++i];
    };
    if (f == "--model") a.model = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "--text") a.text = value();
    else if (f == "--csv") a.csv = value();
    else if (f == "--svg") a.svg = value();
    else if (f == "--fast") a.fast = true;
    else if (f == "--mse") a.fit.search = quant::scale_search::mse;
    else if (f == "--true-sequential") a.true_sequential = true;
    else if (f == "--act-order") a.act_order = true;
    else if (f == "--kv-cache") a.kv.format = llama2c::parse_kv_format(value());
    else if (f == "--kv-fast") a.kv.mode = quant::attention_mode::fast;
    else if (f == "--calib-first") a.calib_first = cli::parse_count(value(), f);
    else if (f == "--calib-stories") a.calib_stories = cli::parse_count(value(), f);
    else if (f == "--eval-stories") a.eval_stories = cli::parse_count(value(), f);
    else if (f == "--mixed") {
      const auto v = split(value());
      if (v.size() != 3) throw std::invalid_argument("--mixed: expected LOW,HIGH,BITS, e.g. int3-g128,int4-g32-asym,3.8");
      a.mixed_low = v[0], a.mixed_high = v[1];
      std::size_t used = 0;
      try {
        a.mixed_budget = std::stod(v[2], &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v[2].size() || !(a.mixed_budget > 0.0)) throw std::invalid_argument("--mixed: bad bit budget '" + v[2] + "'");
      for (const auto& k : {a.mixed_low, a.mixed_high})
        if (std::none_of(formats.begin(), formats.end(), [&](const auto& e) { return e.key == k; }))
          throw std::invalid_argument("--mixed: unknown format '" + k + "' (--list names them)");
    }
    else if (f == "--methods") {
      a.methods = split(value());
      for (const auto& m : a.methods)
        if (std::find(all_methods.begin(), all_methods.end(), m) == all_methods.end())
          throw std::invalid_argument("--methods: unknown method '" + m + "' (known: rtn, gptq, awq, sq-w8a8)");
    } else if (f == "--formats") {
      a.formats = split(value());
      if (a.formats == std::vector<std::string>{"all"}) {
        a.formats.clear();
        for (const auto& e : formats) a.formats.push_back(e.key);
      }
      for (const auto& k : a.formats)
        if (std::none_of(formats.begin(), formats.end(), [&](const auto& e) { return e.key == k; }))
          throw std::invalid_argument("--formats: unknown format '" + k + "' (--list names them)");
    } else if (f == "--list") {
      for (std::size_t j = 0; j < formats.size(); ++j)
        fmt::print("{:<16} {}{}\n", formats[j].key, formats[j].name, j < list.defaults ? "" : " (not in the default set)");
      std::exit(0);
    } else if (f == "--help" || f == "-h") {
      std::puts(usage);
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + f + "\n" + usage);
  }
  if (a.methods.empty() || a.formats.empty()) throw std::invalid_argument("nothing to do: no methods or no formats");
  if (!a.mixed_low.empty() && a.model.empty()) throw std::invalid_argument("--mixed needs --model");
  if ((a.kv.format != llama2c::kv_format::fp32 || a.kv.mode != quant::attention_mode::exact) && a.model.empty())
    throw std::invalid_argument("--kv-cache and --kv-fast need --model");
  if (!a.model.empty()) {
    // the tokenizer and the text default to the files next to the checkpoint (../shared/models)
    const fs::path dir = a.model.parent_path();
    if (a.tokenizer.empty())
      for (const char* name : {"tok512.bin", "tokenizer.bin"})
        if (a.tokenizer.empty() && fs::exists(dir / name)) a.tokenizer = dir / name;
    if (a.text.empty() && fs::exists(dir / "tinystories_valid.txt")) a.text = dir / "tinystories_valid.txt";
    if (a.tokenizer.empty() || a.text.empty())
      throw std::invalid_argument("--model needs --tokenizer and --text (none found next to " + a.model.string() + ")");
    if (a.eval_stories == 0 || a.calib_stories == 0) throw std::invalid_argument("--eval-stories and --calib-stories must be >= 1");
    if (a.calib_first < a.eval_stories)
      throw std::invalid_argument(fmt::format("--calib-first {} overlaps the {} evaluation stories", a.calib_first,
                                              a.eval_stories));
  }
  return a;
}

/// One line of the report.
struct row {
  std::string method, format;
  double bits = 0.0;           ///< bits per weight of the quantized linears (scales included)
  std::size_t bytes = 0;       ///< bytes of the linears (synthetic) or of the whole model
  double quality = 0.0;        ///< synthetic: relative output error; model: perplexity
  double quality_fast = 0.0;   ///< synthetic: the same in fast mode
  double agree = 0.0;          ///< model: agreement of greedy predictions with fp32
  double speed = 0.0;          ///< synthetic: us per token for the layers; model: tokens/s
  double quant_seconds = 0.0;  ///< quantization (and calibration) time
};

/// Says plainly which rows of the calibrated methods (gptq, awq) are not better than
/// round-to-nearest of the same format (lower quality is better: error or perplexity).
void print_not_better_than_rtn(const std::vector<row>& rows, const char* quality) {
  std::vector<std::string> worse;
  std::size_t compared = 0;
  for (const auto& r : rows) {
    if (r.method != "gptq" && r.method != "awq") continue;
    const auto rtn = std::find_if(rows.begin(), rows.end(), [&](const row& o) { return o.method == "rtn" && o.format == r.format; });
    if (rtn == rows.end()) continue;
    ++compared;
    if (!(r.quality < rtn->quality))
      worse.push_back(fmt::format("{} {} ({:.5g} vs rtn {:.5g})", r.method, r.format, r.quality, rtn->quality));
  }
  if (compared == 0) return;
  if (worse.empty()) fmt::print("every gptq/awq row has a lower {} than rtn of its format\n", quality);
  else {
    fmt::print("not better than rtn of the same format ({}):\n", quality);
    for (const auto& w : worse) fmt::print("  {}\n", w);
  }
}

void progress(std::size_t i, std::size_t n, const std::string& what, clock_type::time_point t0) {
  fmt::print(stderr, "[{}/{}] {} ({:.1f} s so far)\n", i, n, what, seconds_since(t0));
}

// ---- synthetic layers ---------------------------------------------------------------------------

struct rng {
  std::uint64_t s;
  double uniform() {
    s += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (static_cast<double>((z ^ (z >> 31)) >> 11) + 0.5) * 0x1.0p-53;
  }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

struct synthetic_layer {
  std::string name;
  std::size_t rows, cols;
  std::vector<float> w, xc, xe, h;  // weights, calibration and held-out tokens, Hessian of xc
  std::vector<float> ye;            // fp32 outputs on xe (tokens x rows)
};

synthetic_layer make_layer(std::string name, std::size_t rows, std::size_t cols, std::size_t eval, std::uint64_t seed) {
  synthetic_layer l{std::move(name), rows, cols, std::vector<float>(rows * cols), {}, {}, {}, {}};
  rng g{seed};
  for (std::size_t r = 0; r < rows; ++r) {  // Student-t(5) with a per-row scale
    const double scale = 0.02 * std::exp(0.3 * g.normal());
    for (std::size_t c = 0; c < cols; ++c) {
      double chi2 = 0.0;
      for (int k = 0; k < 5; ++k) {
        const double z = g.normal();
        chi2 += z * z;
      }
      l.w[r * cols + c] = static_cast<float>(scale * g.normal() / std::sqrt(chi2 / 5.0) / std::sqrt(5.0 / 3.0));
    }
  }
  // inputs: rank-16 component + noise 0.3, per-channel scale, 1% of channels x20 (fixed per layer)
  constexpr std::size_t rank = 16;
  std::vector<float> mix(rank * cols), chan(cols);
  for (auto& m : mix) m = static_cast<float>(g.normal() / 4.0);
  for (auto& c : chan) c = static_cast<float>(std::exp(0.5 * g.normal()));
  for (std::size_t i = 0; i < (cols + 99) / 100; ++i) chan[static_cast<std::size_t>(g.uniform() * cols)] *= 20.0f;
  auto sample = [&](std::size_t tokens) {
    std::vector<float> x(tokens * cols);
    for (std::size_t t = 0; t < tokens; ++t) {
      float z[rank];
      for (auto& v : z) v = static_cast<float>(g.normal());
      for (std::size_t c = 0; c < cols; ++c) {
        float v = static_cast<float>(0.3 * g.normal());
        for (std::size_t k = 0; k < rank; ++k) v += z[k] * mix[k * cols + c];
        x[t * cols + c] = v * chan[c];
      }
    }
    return x;
  };
  l.xc = sample(2 * cols);
  l.xe = sample(eval);
  quant::gptq::hessian_accumulator acc(cols);
  acc.add(quant::matrix_view<const float>(l.xc.data(), 2 * cols, cols));
  l.h.assign(acc.matrix().begin(), acc.matrix().end());
  llama2c::dense_linear ref(quant::matrix_view<const float>(l.w.data(), rows, cols));
  l.ye.resize(eval * rows);
  for (std::size_t t = 0; t < eval; ++t)
    ref.forward({l.xe.data() + t * cols, cols}, {l.ye.data() + t * rows, rows});
  return l;
}

/// Sum of squared output errors of op against the fp32 outputs, and the time per token.
struct layer_eval {
  double err = 0.0, ref = 0.0, seconds = 0.0;
};
layer_eval evaluate(const llama2c::linear& op, const synthetic_layer& l) {
  const std::size_t tokens = l.xe.size() / l.cols;
  std::vector<float> y(l.rows);
  layer_eval e;
  const auto t0 = clock_type::now();
  for (std::size_t t = 0; t < tokens; ++t) {
    op.forward({l.xe.data() + t * l.cols, l.cols}, y);
    for (std::size_t r = 0; r < l.rows; ++r) {
      const double d = static_cast<double>(y[r]) - l.ye[t * l.rows + r];
      e.err += d * d;
      e.ref += static_cast<double>(l.ye[t * l.rows + r]) * l.ye[t * l.rows + r];
    }
  }
  e.seconds = seconds_since(t0) / static_cast<double>(tokens);
  return e;
}

std::vector<row> run_synthetic(const args& a, const std::vector<report::format_entry>& formats) {
  const auto t0 = clock_type::now();
  fmt::print("quant {} report: synthetic layers of one transformer block at dim 1024\n", quant::version_string);
  fmt::print("layers: q 1024x1024, up 2816x1024, down 1024x2816; Student-t weights; inputs rank 16 + noise with 1% "
             "channels x20;\ncalibration 2 x cols tokens; error = ||Y - Y'|| / ||Y|| on 256 held-out tokens, all "
             "layers together\n\n");
  std::vector<synthetic_layer> layers;
  layers.push_back(make_layer("q", 1024, 1024, 256, 11));
  layers.push_back(make_layer("up", 2816, 1024, 256, 12));
  layers.push_back(make_layer("down", 1024, 2816, 256, 13));
  std::size_t weights = 0;
  double fp32_us = 0.0;
  for (const auto& l : layers) {
    weights += l.rows * l.cols;
    fp32_us += 1e6 * evaluate(llama2c::dense_linear(quant::matrix_view<const float>(l.w.data(), l.rows, l.cols)), l).seconds;
  }
  fmt::print(stderr, "layers ready ({:.1f} s)\n", seconds_since(t0));
  std::vector<row> rows;
  rows.push_back({"fp32", "fp32", 32.0, 4 * weights, 0.0, 0.0, 0.0, fp32_us, 0.0});
  const bool sq = std::find(a.methods.begin(), a.methods.end(), "sq-w8a8") != a.methods.end();
  const std::size_t per_format = a.methods.size() - (sq ? 1 : 0);
  const std::size_t total = per_format * a.formats.size() + (sq ? 1 : 0);
  std::size_t done = 0;
  if (sq) {  // W8A8 with SmoothQuant's factors (applied to the activations: no norm to fold into here)
    progress(++done, total, "sq-w8a8", t0);
    for (const bool smooth : {false, true}) {
      row r{smooth ? "sq" : "w8a8", smooth ? "W8A8 smoothed a=0.5" : "W8A8 not smoothed"};
      layer_eval ex;
      for (const auto& l : layers) {
        const quant::matrix_view<const float> w(l.w.data(), l.rows, l.cols);
        const auto t1 = clock_type::now();
        std::vector<float> s;
        if (smooth) {
          quant::smoothquant::activation_stats st(l.cols);
          st.add(quant::matrix_view<const float>(l.xc.data(), l.xc.size() / l.cols, l.cols));
          s = quant::smoothquant::factors(st.max_abs(), {w});
        }
        const report::w8a8_linear op(w, std::move(s));
        r.quant_seconds += seconds_since(t1);
        r.bytes += op.bytes();
        const layer_eval e = evaluate(op, l);
        ex.err += e.err, ex.ref += e.ref, ex.seconds += e.seconds;
      }
      r.bits = 8.0 * static_cast<double>(r.bytes) / static_cast<double>(weights);
      r.quality = r.quality_fast = std::sqrt(ex.err / ex.ref);
      r.speed = 1e6 * ex.seconds;
      rows.push_back(r);
    }
  }
  for (const auto& m : a.methods)
    for (const auto& key : a.formats) {
      if (m == "sq-w8a8") continue;
      const auto& f = *std::find_if(formats.begin(), formats.end(), [&](const auto& e) { return e.key == key; });
      progress(++done, total, m + " " + f.name, t0);
      row r{m, f.name};
      layer_eval ex, fa;
      quant::gptq::options o;
      o.act_order = a.act_order;
      o.fit = a.fit;
      quant::awq::options ao;
      ao.fit = a.fit;
      for (const auto& l : layers) {
        const quant::matrix_view<const float> w(l.w.data(), l.rows, l.cols);
        // AWQ: nothing before these layers to fold 1/s into, so the layer divides its input by s
        auto quantize = [&](llama2c::gemv_mode mode) -> std::unique_ptr<llama2c::linear> {
          if (m == "gptq") return f.gptq(w, l.h, mode, o);
          if (m == "rtn") return f.rtn(w, mode, a.fit);
          const quant::matrix_view<const float> xc(l.xc.data(), l.xc.size() / l.cols, l.cols);
          auto q = f.awq(std::span<const quant::matrix_view<const float>>(&w, 1), xc, mode, ao);
          return std::make_unique<report::scaled_input_linear>(std::move(q.linears[0]), q.scales);
        };
        const auto t1 = clock_type::now();
        auto op = quantize(llama2c::gemv_mode::exact);
        r.quant_seconds += seconds_since(t1);
        r.bytes += op->bytes();
        const layer_eval e = evaluate(*op, l);
        ex.err += e.err, ex.ref += e.ref;
        auto opf = quantize(llama2c::gemv_mode::fast);
        const layer_eval e2 = evaluate(*opf, l);
        fa.err += e2.err, fa.ref += e2.ref, fa.seconds += e2.seconds;
      }
      r.bits = 8.0 * static_cast<double>(r.bytes) / static_cast<double>(weights);
      r.quality = std::sqrt(ex.err / ex.ref);
      r.quality_fast = std::sqrt(fa.err / fa.ref);
      r.speed = 1e6 * fa.seconds;
      rows.push_back(r);
    }
  fmt::print("{:<6} {:<20} {:>7} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8}\n", "method", "format", "bits/w", "bytes",
             "err exact", "err fast", "us/token", "x fp32", "quant s");
  for (const auto& r : rows)
    fmt::print("{:<6} {:<20} {:>7.3f} {:>10} {:>10.5f} {:>10.5f} {:>10.1f} {:>7.2f} {:>8.2f}\n", r.method, r.format,
               r.bits, r.bytes, r.quality, r.quality_fast, r.speed, fp32_us / r.speed, r.quant_seconds);
  fmt::print("\nus/token: the three layers' GEMVs for one token in fast mode, one thread (fp32: our dense GEMV; W8A8: "
             "its int8 x int8 GEMV, the one mode it has)\n");
  if (std::find(a.methods.begin(), a.methods.end(), "awq") != a.methods.end())
    fmt::print("awq: the synthetic layers have no operation before them to fold 1/s into: each divides its input by s "
               "(its bytes count s)\n");
  print_not_better_than_rtn(rows, "held-out error in exact mode");
  fmt::print("total {:.1f} s\n", seconds_since(t0));
  return rows;
}

// ---- a real checkpoint --------------------------------------------------------------------------

struct eval_result {
  double ppl = 0.0, agree = 0.0, tokens_per_s = 0.0;
  std::vector<int> argmax;  ///< the greedy prediction at every scored position
};

/// Teacher-forced evaluation of the sequences: perplexity, the greedy prediction at every
/// position (compared with `reference` when given) and the forward passes per second.
eval_result evaluate(const llama2c::model& m, const std::vector<std::vector<int>>& seqs, const std::vector<int>* reference,
                     const llama2c::kv_config& kv) {
  eval_result r;
  llama2c::state s(m.cfg(), kv);
  double nll = 0.0;
  std::size_t n = 0, same = 0;
  const auto t0 = clock_type::now();
  for (const auto& seq : seqs)
    for (std::size_t pos = 0; pos + 1 < seq.size(); ++pos) {
      const auto logits = llama2c::forward(m, s, seq[pos], pos);
      double mx = -std::numeric_limits<double>::infinity();
      for (float v : logits) mx = std::max(mx, static_cast<double>(v));
      double sum = 0.0;
      for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
      nll += mx + std::log(sum) - logits[static_cast<std::size_t>(seq[pos + 1])];
      const int am = llama2c::argmax(logits);
      r.argmax.push_back(am);
      if (reference) same += (*reference)[n] == am;
      ++n;
    }
  const double secs = seconds_since(t0);
  r.ppl = std::exp(nll / static_cast<double>(n));
  r.agree = reference ? static_cast<double>(same) / static_cast<double>(n) : 1.0;
  r.tokens_per_s = static_cast<double>(n + seqs.size()) / secs;  // every forward pass, BOS included
  return r;
}

/// Mixed precision under a bit budget (round-to-nearest): each linear's sensitivity is the rise
/// of the mean NLL on calibration stories when it alone is quantized to LOW (the others fp32);
/// starting from all LOW, the linears with the largest sensitivity per extra byte are widened to
/// HIGH while the budget allows. Compared, at the same budget, with widening in model order.
void mixed_precision(const args& a, const std::vector<report::format_entry>& formats, llama2c::model& m,
                     const std::vector<std::vector<int>>& calib, const std::vector<std::vector<int>>& eval,
                     const eval_result& ref, std::size_t linear_weights, std::size_t other_bytes, std::vector<row>& rows) {
  const auto t0 = clock_type::now();
  auto find = [&](const std::string& k) -> const report::format_entry& {
    return *std::find_if(formats.begin(), formats.end(), [&](const auto& e) { return e.key == k; });
  };
  const report::format_entry &lo = find(a.mixed_low), &hi = find(a.mixed_high);
  const llama2c::gemv_mode mode = a.fast ? llama2c::gemv_mode::fast : llama2c::gemv_mode::exact;
  const auto& c = m.cfg();
  struct item {
    std::size_t layer;
    llama2c::kind k;
  };
  std::vector<item> items;
  std::vector<report::layer_cost> costs;
  const std::vector<std::vector<int>> probe(calib.begin(), calib.begin() + std::min<std::size_t>(8, calib.size()));
  m.reset_fp32();
  const double base = std::log(evaluate(m, probe, nullptr, {}).ppl);
  std::size_t lo_total = 0, hi_total = 0;
  for (std::size_t l = 0; l < c.n_layers; ++l)
    for (auto k : llama2c::all_kinds) {
      auto q = lo.rtn(m.source(l, k), mode, a.fit);
      const std::size_t lb = q->bytes(), hb = hi.rtn(m.source(l, k), mode, a.fit)->bytes();
      m.set(l, k, std::move(q));
      items.push_back({l, k});
      costs.push_back({std::log(evaluate(m, probe, nullptr, {}).ppl) - base, lb, hb});
      m.set(l, k, std::make_unique<llama2c::dense_linear>(m.source(l, k)));
      lo_total += lb, hi_total += hb;
    }
  const double lo_bits = 8.0 * static_cast<double>(lo_total) / static_cast<double>(linear_weights);
  const double hi_bits = 8.0 * static_cast<double>(hi_total) / static_cast<double>(linear_weights);
  if (!(a.mixed_budget > lo_bits && a.mixed_budget < hi_bits))
    throw std::invalid_argument(fmt::format("--mixed: the budget {} bits/weight must lie between {} ({:.3f}) and {} ({:.3f})",
                                            a.mixed_budget, lo.name, lo_bits, hi.name, hi_bits));
  const auto budget = static_cast<std::size_t>(a.mixed_budget / 8.0 * static_cast<double>(linear_weights));
  const auto order = report::by_sensitivity(costs);
  fmt::print("mixed precision: {} / {} under {} bits/weight (all {}: {:.3f}, all {}: {:.3f}); sensitivity = rise "
             "of the mean NLL on {} calibration stories with one linear at {}, in the order of widening (by rise per "
             "extra byte):\n",
             lo.name, hi.name, a.mixed_budget, lo.name, lo_bits, hi.name, hi_bits, probe.size(), lo.name);
  for (std::size_t j = 0; j < order.size(); ++j)
    fmt::print("  {:>5}.{:<2} {:+.5f}{}", llama2c::name(items[order[j]].k), items[order[j]].layer, costs[order[j]].sensitivity,
               j % 5 == 4 || j + 1 == order.size() ? "\n" : "");
  fmt::print("(sensitivity pass {:.1f} s)\n\n", seconds_since(t0));
  for (const auto& [label, wide] : {std::pair{std::string("by sensitivity"), report::allocate_by_sensitivity(costs, budget)},
                                    std::pair{std::string("in model order"), report::allocate_in_model_order(costs, budget)}}) {
    const auto t1 = clock_type::now();
    std::size_t n_wide = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      m.set(items[i].layer, items[i].k, (wide[i] ? hi : lo).rtn(m.source(items[i].layer, items[i].k), mode, a.fit));
      n_wide += wide[i];
    }
    row r{"mixed", fmt::format("{} {}/{}", label, n_wide, items.size())};
    r.quant_seconds = seconds_since(t1);
    r.bits = 8.0 * static_cast<double>(m.linear_bytes()) / static_cast<double>(linear_weights);
    r.bytes = m.linear_bytes() + other_bytes;
    const eval_result e = evaluate(m, eval, &ref.argmax, a.kv);
    r.quality = e.ppl, r.agree = e.agree, r.speed = e.tokens_per_s;
    rows.push_back(r);
  }
  m.reset_fp32();
}

std::vector<row> run_model(const args& a, const std::vector<report::format_entry>& formats) {
  const auto t0 = clock_type::now();
  llama2c::model m = llama2c::model::load(a.model);
  llama2c::tokenizer tok;
  tok.load(a.tokenizer, m.cfg().vocab_size);
  const auto [calib, eval] =
      llama2c::split_text(tok, a.text, a.calib_first, a.calib_stories, a.eval_stories, m.cfg().seq_len);
  const auto& c = m.cfg();
  std::size_t linear_weights = 0;
  for (std::size_t l = 0; l < c.n_layers; ++l)
    for (auto k : llama2c::all_kinds) linear_weights += llama2c::rows_of(c, k) * llama2c::cols_of(c, k);
  const std::size_t other_bytes = fs::file_size(a.model) - 4 * linear_weights;  // embeddings, norms: fp32
  fmt::print("quant {} report: {} (dim {}, hidden {}, {} layers, {} linear weights), {} GEMV\n", quant::version_string,
             a.model.filename().string(), c.dim, c.hidden_dim, c.n_layers, linear_weights, a.fast ? "fast" : "exact");
  fmt::print("evaluation: stories [0, {}) of {}, {} tokens; calibration (GPTQ, AWQ, SmoothQuant): stories [{}, {}), {} tokens{}\n",
             a.eval_stories, a.text.filename().string(), llama2c::token_count(eval), a.calib_first,
             a.calib_first + a.calib_stories, llama2c::token_count(calib),
             a.true_sequential ? ", true-sequential" : ", one capture per layer");
  fmt::print("agree: greedy next-token prediction equal to fp32's; model bytes: linears as quantized + the rest in "
             "fp32\n");
  {
    const llama2c::state st(c, a.kv);
    fmt::print("KV cache: {}{}\n\n", st.kv ? st.kv->describe() : "fp32 (the engine's own)",
               a.kv.format == llama2c::kv_format::fp32 ? "" : "; the fp32 row keeps the fp32 cache, every other row uses this one");
  }
  const llama2c::gemv_mode mode = a.fast ? llama2c::gemv_mode::fast : llama2c::gemv_mode::exact;
  const eval_result ref = evaluate(m, eval, nullptr, {});  // fp32 weights and KV cache
  std::vector<row> rows;
  rows.push_back({"fp32", "fp32", 32.0, m.linear_bytes() + other_bytes, ref.ppl, 0.0, 1.0, ref.tokens_per_s, 0.0});
  if (a.kv.format != llama2c::kv_format::fp32 || a.kv.mode != quant::attention_mode::exact) {
    // the KV cache alone: fp32 weights (every row below runs with this cache)
    const eval_result e = evaluate(m, eval, &ref.argmax, a.kv);
    rows.push_back({"kv", fmt::format("{} KV{}", llama2c::name(a.kv.format), a.kv.mode == quant::attention_mode::fast ? " fast" : ""),
                    32.0, m.linear_bytes() + other_bytes, e.ppl, 0.0, e.agree, e.tokens_per_s, 0.0});
  }
  const bool sq = std::find(a.methods.begin(), a.methods.end(), "sq-w8a8") != a.methods.end();
  const std::size_t total = (a.methods.size() - (sq ? 1 : 0)) * a.formats.size() + (sq ? 1 : 0);
  std::size_t done = 0;
  quant::thread_pool pool;
  if (sq) {
    progress(++done, total, "sq-w8a8", t0);
    for (const bool smooth : {false, true}) {
      // a fresh copy: smoothing rewrites the fp32 norms and weights
      llama2c::model ms = llama2c::model::load(a.model);
      const auto t1 = clock_type::now();
      if (smooth) {
        // SmoothQuant's statistics: max |x| per channel of the inputs of q/k/v and of w1/w3, on the
        // calibration stories, through the fp32 model (one pass)
        std::vector<quant::smoothquant::activation_stats> att, ffn;
        for (std::size_t l = 0; l < c.n_layers; ++l) att.emplace_back(c.dim), ffn.emplace_back(c.dim);
        llama2c::state st(c);
        st.capture = [&](std::size_t l, llama2c::kind k, std::span<const float> in) {
          const quant::matrix_view<const float> x(in.data(), 1, in.size());
          if (k == llama2c::kind::wq) att[l].add(x);
          if (k == llama2c::kind::w1) ffn[l].add(x);
        };
        for (const auto& seq : calib)
          for (std::size_t pos = 0; pos < seq.size(); ++pos) llama2c::forward(ms, st, seq[pos], pos);
        for (std::size_t l = 0; l < c.n_layers; ++l) {
          using K = llama2c::kind;
          auto fold = [&](std::span<float> norm, const quant::smoothquant::activation_stats& stats, std::initializer_list<K> ks) {
            std::vector<quant::matrix_view<float>> ws;
            std::vector<quant::matrix_view<const float>> cws;
            for (K k : ks) ws.push_back(ms.source_mutable(l, k)), cws.push_back(ms.source(l, k));
            std::vector<float> s(norm.size());
            quant::smoothquant::factors(stats.max_abs(), cws, s);
            quant::smoothquant::smooth(norm, {}, ws, s);
          };
          fold(ms.rms_att_mutable(l), att[l], {K::wq, K::wk, K::wv});
          fold(ms.rms_ffn_mutable(l), ffn[l], {K::w1, K::w3});
        }
      }
      for (std::size_t l = 0; l < c.n_layers; ++l)
        for (auto k : llama2c::all_kinds) ms.set(l, k, std::make_unique<report::w8a8_linear>(ms.source(l, k)));
      row r{smooth ? "sq" : "w8a8", smooth ? "W8A8 smoothed a=0.5" : "W8A8 not smoothed"};
      r.quant_seconds = seconds_since(t1);
      r.bits = 8.0 * static_cast<double>(ms.linear_bytes()) / static_cast<double>(linear_weights);
      r.bytes = ms.linear_bytes() + other_bytes;
      const eval_result e = evaluate(ms, eval, &ref.argmax, a.kv);
      r.quality = e.ppl, r.agree = e.agree, r.speed = e.tokens_per_s;
      rows.push_back(r);
    }
  }
  for (const auto& meth : a.methods)
    for (const auto& key : a.formats) {
      if (meth == "sq-w8a8") continue;
      const auto& f = *std::find_if(formats.begin(), formats.end(), [&](const auto& e) { return e.key == key; });
      progress(++done, total, meth + " " + f.name, t0);
      m.reset_fp32();
      std::optional<llama2c::model> folded;  // AWQ folds 1/s into the fp32 norms and weights: a copy of its own
      llama2c::model& mq = meth == "awq" ? folded.emplace(llama2c::model::load(a.model)) : m;
      const auto t1 = clock_type::now();
      if (meth == "rtn") {
        for (std::size_t l = 0; l < c.n_layers; ++l)
          for (auto k : llama2c::all_kinds) m.set(l, k, f.rtn(m.source(l, k), mode, a.fit));
      } else if (meth == "awq") {
        quant::awq::options o;
        o.fit = a.fit;
        o.search_tokens = 0;  // the scale search on every calibration token, as the original
        llama2c::awq_sequential(
            mq, calib, {},
            [&](std::span<const quant::matrix_view<const float>> layers, quant::matrix_view<const float> x,
                const quant::awq::options& og) { return f.awq(layers, x, mode, og); },
            o, {}, pool);
      } else {
        quant::gptq::options o;
        o.act_order = a.act_order;
        o.fit = a.fit;
        llama2c::calibrate_sequential(
            m, calib, {}, a.true_sequential,
            [&](const llama2c::group_job& job) {
              quant::gptq::hessian_accumulator h(job.calib.cols);
              h.add(job.calib.view());
              for (auto k : job.group.members) job.m.set(job.layer, k, f.gptq(job.m.source(job.layer, k), h.matrix(), mode, o));
            },
            pool);
      }
      row r{meth, f.name};
      r.quant_seconds = seconds_since(t1);
      r.bits = 8.0 * static_cast<double>(mq.linear_bytes()) / static_cast<double>(linear_weights);
      r.bytes = mq.linear_bytes() + other_bytes;
      const eval_result e = evaluate(mq, eval, &ref.argmax, a.kv);
      r.quality = e.ppl;
      r.agree = e.agree;
      r.speed = e.tokens_per_s;
      rows.push_back(r);
    }
  if (!a.mixed_low.empty()) mixed_precision(a, formats, m, calib, eval, ref, linear_weights, other_bytes, rows);
  fmt::print("{:<6} {:<20} {:>7} {:>10} {:>9} {:>8} {:>7} {:>8} {:>8}\n", "method", "format", "bits/w", "model B",
             "ppl", "dppl %", "agree", "tok/s", "quant s");
  for (const auto& r : rows)
    fmt::print("{:<6} {:<20} {:>7.3f} {:>10} {:>9.4f} {:>+8.2f} {:>6.1f}% {:>8.0f} {:>8.2f}\n", r.method, r.format,
               r.bits, r.bytes, r.quality, 100.0 * (r.quality / ref.ppl - 1.0), 100.0 * r.agree, r.speed,
               r.quant_seconds);
  fmt::print("\ntok/s: teacher-forced forward passes per second over the evaluation text, one thread\n");
  print_not_better_than_rtn(rows, "perplexity");
  fmt::print("total {:.1f} s\n", seconds_since(t0));
  return rows;
}

void write_outputs(const args& a, const std::vector<row>& rows, bool model) {
  if (!a.csv.empty()) {
    std::ofstream out(a.csv);
    out << (model ? "method,format,bits_per_weight,model_bytes,perplexity,agreement,tokens_per_s,quant_seconds\n"
                  : "method,format,bits_per_weight,bytes,error_exact,error_fast,us_per_token,quant_seconds\n");
    for (const auto& r : rows)
      out << (model ? fmt::format("{},{},{:.4f},{},{:.6f},{:.6f},{:.1f},{:.3f}\n", r.method, r.format, r.bits, r.bytes,
                                  r.quality, r.agree, r.speed, r.quant_seconds)
                    : fmt::format("{},{},{:.4f},{},{:.6g},{:.6g},{:.2f},{:.3f}\n", r.method, r.format, r.bits, r.bytes,
                                  r.quality, r.quality_fast, r.speed, r.quant_seconds));
    if (!out) throw std::runtime_error("cannot write " + a.csv.string());
    fmt::print("wrote {}\n", a.csv.string());
  }
  if (!a.svg.empty()) {
    std::vector<report::plot_point> pts;
    for (const auto& r : rows)
      if (r.method != "fp32" && r.method != "kv") pts.push_back({r.method, r.format, r.bits, r.quality});
    const std::string svg = report::scatter_svg(
        model ? "perplexity against bits per weight" : "layer output error against bits per weight", "bits per weight",
        model ? "perplexity" : "relative output error (held-out)", pts, true);
    std::ofstream out(a.svg);
    out << svg;
    if (!out) throw std::runtime_error("cannot write " + a.svg.string());
    fmt::print("wrote {}\n", a.svg.string());
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const auto formats = report::all_formats();
  const args a = parse(argc, argv, formats);
  const bool model = !a.model.empty();
  const auto rows = model ? run_model(a, formats.entries) : run_synthetic(a, formats.entries);
  write_outputs(a, rows, model);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "quant-report: %s\n", e.what());
  return 1;
}
