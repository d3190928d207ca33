// quantize_model: quantizes a llama2.c checkpoint and saves it as a quant archive
// (llama2c/save.hpp, quant/io/archive.hpp), or loads a saved model and evaluates it without the
// checkpoint.
//
//   quantize_model --model M.bin --format int4-g32-asym [--method rtn|gptq] [--act-order] [--fast]
//                  [--mse] -o OUT.qmodel [--tokenizer T --text F] [--calib-first 200]
//                  [--calib-stories 32] [--eval-stories 20]
//   quantize_model --load OUT.qmodel [--tokenizer T --text F] [--eval-stories 20]
//   quantize_model --list
//
// Formats: the keys of quant-report (--list), and w8a8 (int8 weights and per-token int8
// activations; rtn only). GPTQ calibrates sequentially on stories [--calib-first, +--calib-stories)
// of the text, as quant-report does. Perplexity follows the protocol of the models README
// (llama2c::perplexity on the first --eval-stories stories): after saving, the program prints it
// for the model in memory and for the model loaded back from the file, which must be the same
// number to the last bit; --load prints it for a saved model. The tokenizer and the text default
// to the files next to the checkpoint (--model) or to the saved model (--load).
#include <quant/algorithms/gptq.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "llama2c/calibrate.hpp"
#include "llama2c/llama2c.hpp"
#include "llama2c/save.hpp"
#include "report/formats.hpp"

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

struct args {
  fs::path model, load, out, tokenizer, text;
  std::string format, method = "rtn";
  bool fast = false, act_order = false;
  quant::quantize_options fit;
  std::size_t calib_first = 200, calib_stories = 32, eval_stories = 20;
};

const char* usage =
    "usage: quantize_model --model M.bin --format KEY [--method rtn|gptq] [--act-order] [--fast] [--mse] -o OUT.qmodel\n"
    "                      [--tokenizer T --text F] [--calib-first 200] [--calib-stories 32] [--eval-stories 20]\n"
    "       quantize_model --load OUT.qmodel [--tokenizer T --text F] [--eval-stories 20]\n"
    "       quantize_model --list   (the format keys)";

/// The tokenizer and text next to `file` when not given.
void default_files(args& a, const fs::path& file) {
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  if (a.tokenizer.empty())
    for (const char* name : {"tok512.bin", "tokenizer.bin"})
      if (a.tokenizer.empty() && fs::exists(dir / name)) a.tokenizer = dir / name;
  if (a.text.empty() && fs::exists(dir / "tinystories_valid.txt")) a.text = dir / "tinystories_valid.txt";
}

args parse(int argc, char** argv, const report::format_list& formats) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(f + ": missing value");
      return argv[++i];
    };
    if (f == "--model") a.model = value();
    else if (f == "--load") a.load = value();
    else if (f == "-o" || f == "--out") a.out = value();
    else if (f == "--format") a.format = value();
    else if (f == "--method") a.method = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "--text") a.text = value();
    else if (f == "--fast") a.fast = true;
    else if (f == "--act-order") a.act_order = true;
    else if (f == "--mse") a.fit.search = quant::scale_search::mse;
    else if (f == "--calib-first") a.calib_first = cli::parse_count(value(), f);
    else if (f == "--calib-stories") a.calib_stories = cli::parse_count(value(), f);
    else if (f == "--eval-stories") a.eval_stories = cli::parse_count(value(), f);
    else if (f == "--list") {
      for (const auto& e : formats.entries) fmt::print("{:<16} {}\n", e.key, e.name);
      fmt::print("{:<16} {}\n", "w8a8", "W8A8 int8 per-channel weights, int8 per-token activations (rtn only)");
      std::exit(0);
    } else if (f == "--help" || f == "-h") {
      std::puts(usage);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown option " + f + "\n" + usage);
    }
  }
  if (a.model.empty() == a.load.empty()) throw std::invalid_argument(std::string("give --model or --load\n") + usage);
  if (a.eval_stories == 0) throw std::invalid_argument("--eval-stories must be at least 1");
  if (!a.model.empty()) {
    if (a.out.empty()) throw std::invalid_argument("--model needs -o OUT.qmodel");
    if (a.format.empty()) throw std::invalid_argument("--model needs --format (--list names them)");
    if (a.format != "w8a8" && std::none_of(formats.entries.begin(), formats.entries.end(),
                                           [&](const auto& e) { return e.key == a.format; }))
      throw std::invalid_argument("--format: unknown format '" + a.format + "' (--list names them)");
    if (a.method != "rtn" && a.method != "gptq") throw std::invalid_argument("--method: rtn or gptq, got '" + a.method + "'");
    if (a.format == "w8a8" && a.method != "rtn") throw std::invalid_argument("--format w8a8 is rtn only");
    if (a.method == "gptq" && (a.calib_stories == 0 || a.calib_first < a.eval_stories))
      throw std::invalid_argument(fmt::format("--calib-stories must be >= 1 and --calib-first {} must not overlap the {} "
                                              "evaluation stories",
                                              a.calib_first, a.eval_stories));
    default_files(a, a.model);
    if (a.method == "gptq" && (a.tokenizer.empty() || a.text.empty()))
      throw std::invalid_argument("--method gptq needs --tokenizer and --text (none found next to " + a.model.string() + ")");
  } else {
    default_files(a, a.load);
    if (a.tokenizer.empty() || a.text.empty())
      throw std::invalid_argument("--load needs --tokenizer and --text (none found next to " + a.load.string() + ")");
  }
  return a;
}

/// Perplexity on the first n stories, printed with every digit that the comparison needs.
llama2c::perplexity_result evaluate(const char* label, const llama2c::model& m, const args& a) {
  const llama2c::tokenizer tok(a.tokenizer, m.cfg().vocab_size);
  const auto stories = llama2c::split_stories(llama2c::read_text(a.text));
  const auto t0 = clock_type::now();
  const auto r = llama2c::perplexity(m, tok, stories, 0, a.eval_stories);
  fmt::print("{:<10} perplexity {:.10f} (NLL sum {:.17g} over {} tokens of stories [0, {}), {:.1f} s)\n", label, r.ppl,
             r.nll_sum, r.tokens, a.eval_stories, seconds_since(t0));
  return r;
}

int quantize_and_save(const args& a, const report::format_list& formats) {
  const auto t0 = clock_type::now();
  llama2c::model m = llama2c::model::load(a.model);
  const auto& c = m.cfg();
  const llama2c::gemv_mode mode = a.fast ? llama2c::gemv_mode::fast : llama2c::gemv_mode::exact;
  const auto* f = a.format == "w8a8" ? nullptr
                                     : &*std::find_if(formats.entries.begin(), formats.entries.end(),
                                                      [&](const auto& e) { return e.key == a.format; });
  fmt::print("{}: dim {}, hidden {}, {} layers, vocab {}; {} {}{}\n", a.model.string(), c.dim, c.hidden_dim, c.n_layers,
             c.vocab_size, a.method, f ? f->name : "W8A8", a.method == "gptq" && a.act_order ? ", act-order" : "");
  if (!f) {
    for (std::size_t l = 0; l < c.n_layers; ++l)
      for (auto k : llama2c::all_kinds) m.set(l, k, std::make_unique<llama2c::w8a8_linear>(m.source(l, k)));
  } else if (a.method == "rtn") {
    for (std::size_t l = 0; l < c.n_layers; ++l)
      for (auto k : llama2c::all_kinds) m.set(l, k, f->rtn(m.source(l, k), mode, a.fit));
  } else {
    llama2c::tokenizer tok(a.tokenizer, c.vocab_size);
    const auto split = llama2c::split_text(tok, a.text, a.calib_first, a.calib_stories, a.eval_stories, c.seq_len);
    fmt::print("calibration: stories [{}, {}), {} tokens, sequential\n", a.calib_first, a.calib_first + a.calib_stories,
               llama2c::token_count(split.calib));
    quant::gptq::options o;
    o.act_order = a.act_order;
    o.fit = a.fit;
    quant::thread_pool pool;
    llama2c::calibrate_sequential(
        m, split.calib, {}, false,
        [&](const llama2c::group_job& job) {
          quant::gptq::hessian_accumulator h(job.calib.cols);
          h.add(job.calib.view());
          for (auto k : job.group.members) job.m.set(job.layer, k, f->gptq(job.m.source(job.layer, k), h.matrix(), mode, o));
        },
        pool);
  }
  std::size_t linear_weights = 0;
  for (std::size_t l = 0; l < c.n_layers; ++l)
    for (auto k : llama2c::all_kinds) linear_weights += llama2c::rows_of(c, k) * llama2c::cols_of(c, k);
  fmt::print("quantized in {:.2f} s: linears {:.3f} bits/weight\n", seconds_since(t0),
             8.0 * static_cast<double>(m.linear_bytes()) / static_cast<double>(linear_weights));
  llama2c::save_model(m, a.out);
  fmt::print("saved {} ({} bytes; the checkpoint has {})\n", a.out.string(), fs::file_size(a.out), fs::file_size(a.model));
  if (a.tokenizer.empty() || a.text.empty()) {
    fmt::print("no tokenizer and text next to the checkpoint: perplexity skipped (--tokenizer, --text)\n");
    return 0;
  }
  const auto in_memory = evaluate("in memory", m, a);
  const llama2c::model loaded = llama2c::load_model(a.out);
  const auto from_file = evaluate("from file", loaded, a);
  const bool same = in_memory.nll_sum == from_file.nll_sum && in_memory.tokens == from_file.tokens;
  fmt::print("{}\n", same ? "the saved model reproduces the in-memory perplexity exactly"
                          : "MISMATCH: the saved model does not reproduce the in-memory perplexity");
  return same ? 0 : 1;
}

int load_and_evaluate(const args& a) {
  const auto t0 = clock_type::now();
  const llama2c::model m = llama2c::load_model(a.load);
  const auto& c = m.cfg();
  fmt::print("{}: {} bytes, loaded and verified in {:.3f} s; dim {}, hidden {}, {} layers, vocab {}\n", a.load.string(),
             fs::file_size(a.load), seconds_since(t0), c.dim, c.hidden_dim, c.n_layers, c.vocab_size);
  fmt::print("  wq.0: {}\n  w2.0: {}\n  classifier: {}\n", m.get(0, llama2c::kind::wq).describe(),
             m.get(0, llama2c::kind::w2).describe(), m.classifier().describe());
  evaluate("loaded", m, a);
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const auto formats = report::all_formats();
  const args a = parse(argc, argv, formats);
  return a.load.empty() ? quantize_and_save(a, formats) : load_and_evaluate(a);
} catch (const std::exception& e) {
  std::fprintf(stderr, "quantize_model: %s\n", e.what());
  return 1;
}
