// gptq_llama2c: GPTQ on a real llama2.c checkpoint, layer by layer, next to round-to-nearest.
//
//   gptq_llama2c [--model M --tokenizer T --text F] [--format int4-g32] [--act-order]
//                [--calib-first 200 --calib-stories 32] [--eval-stories 20] [--no-true-sequential]
//
// Calibrates sequentially as GPTQ prescribes: the inputs of each layer's linears are captured on
// calibration stories with the layers before already quantized by GPTQ (and, by default, the
// earlier input groups of the same layer too: --true-sequential), their Hessian accumulated,
// and each linear quantized with quant::gptq::quantize. Prints per linear the GPTQ time and the
// relative output error ||(W - Q) X||^2 / ||W X||^2 of GPTQ and of round-to-nearest (same format)
// on the calibration inputs and on held-out inputs (stories not used for calibration), then the
// perplexity of fp32, round-to-nearest and GPTQ on the held-out stories.
//
// Defaults: the stories260K checkpoint, its tokenizer and TinyStories text in ../shared/models.
#include <quant/algorithms/gptq.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cli.hpp"
#include "llama2c/calibrate.hpp"
#include "llama2c/llama2c.hpp"

namespace {

namespace fs = std::filesystem;

struct args {
  fs::path model, tokenizer, text;
  std::string format = "int4-g32";
  bool act_order = false, true_sequential = true;
  std::size_t calib_first = 200, calib_stories = 32, eval_stories = 20;
};

const char* usage =
    "gptq_llama2c [--model M] [--tokenizer T] [--text F] [--format NAME] [--act-order]\n"
    "             [--calib-first 200] [--calib-stories 32] [--eval-stories 20] [--no-true-sequential]\n"
    "formats: int4-g32 (asymmetric, the default), int4-g128, int4-channel, int3-g128, nf4-g64, mxfp4\n"
    "held-out stories: the first --eval-stories of the text; calibration: --calib-stories from --calib-first";

args parse(int argc, char** argv) {
  args a;
  const fs::path dir = cli::models_dir();
  a.model = dir / "stories260K.bin";
  a.tokenizer = dir / "tok512.bin";
  a.text = dir / "tinystories_valid.txt";
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(f + ": missing value");
      return argv[++i];
    };
    if (f == "--model") a.model = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "--text") a.text = value();
    else if (f == "--format") a.format = value();
    else if (f == "--act-order") a.act_order = true;
    else if (f == "--no-true-sequential") a.true_sequential = false;
    else if (f == "--calib-first") a.calib_first = cli::parse_count(value(), f);
    else if (f == "--calib-stories") a.calib_stories = cli::parse_count(value(), f);
    else if (f == "--eval-stories") a.eval_stories = cli::parse_count(value(), f);
    else if (f == "--help" || f == "-h") {
      std::puts(usage);
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + f + "\n" + usage);
  }
  if (a.calib_stories == 0) throw std::invalid_argument("--calib-stories must be at least 1");
  if (a.eval_stories == 0) throw std::invalid_argument("--eval-stories must be at least 1");
  if (a.calib_first < a.eval_stories)
    throw std::invalid_argument(fmt::format("--calib-first {} overlaps the {} held-out stories: calibrate on other text",
                                            a.calib_first, a.eval_stories));
  return a;
}

/// Relative output error ||(W - Q) X||^2 / ||W X||^2 over the tokens of x, through the Hessian.
double rel_error(quant::matrix_view<const float> w, quant::matrix_view<const float> q, const llama2c::activations& x) {
  quant::gptq::hessian_accumulator h(x.cols);
  h.add(x.view());
  return quant::gptq::output_error(w, q, h.matrix());
}

template <class F, class Gran>
std::vector<float> dequantized(const quant::tensor<F, Gran>& t) {
  std::vector<float> d(t.rows() * t.cols());
  quant::dequantize(t, quant::matrix_view<float>(d.data(), t.rows(), t.cols()));
  return d;
}

template <class F, class Gran>
int run(const args& a, const Gran& gran) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  llama2c::model m = llama2c::model::load(a.model);
  llama2c::tokenizer tok;
  tok.load(a.tokenizer, m.cfg().vocab_size);
  const auto [calib, eval] =
      llama2c::split_text(tok, a.text, a.calib_first, a.calib_stories, a.eval_stories, m.cfg().seq_len);
  const auto stories = llama2c::split_stories(llama2c::read_text(a.text));  // for perplexity()
  const auto& c = m.cfg();
  fmt::print("GPTQ on {} (dim {}, hidden {}, {} layers), {} {}{}, {}\n", a.model.filename().string(), c.dim,
             c.hidden_dim, c.n_layers, quant::format_traits<F>::name, llama2c::granularity_name(gran),
             a.act_order ? ", act-order" : "", a.true_sequential ? "true-sequential" : "one capture per layer");
  fmt::print("calibration: stories [{}, {}), {} tokens; held-out: stories [0, {}), {} tokens\n", a.calib_first,
             a.calib_first + a.calib_stories, llama2c::token_count(calib), a.eval_stories, llama2c::token_count(eval));
  fmt::print("error: ||(W-Q)X||^2 / ||WX||^2 of each linear on its inputs (the earlier layers quantized by GPTQ)\n\n");
  fmt::print("{:<6} {:>9} {:>9} {:>11} {:>11} {:>9} {:>11} {:>11} {:>9}\n", "linear", "shape", "GPTQ ms", "calib RTN",
             "calib GPTQ", "RTN/GPTQ", "held RTN", "held GPTQ", "RTN/GPTQ");

  quant::gptq::options o;
  o.act_order = a.act_order;
  double sum_time = 0.0;
  std::size_t better = 0, linears = 0;
  quant::thread_pool pool;  // captures: the stories split over the machine's threads
  llama2c::calibrate_sequential(m, calib, eval, a.true_sequential, [&](const llama2c::group_job& job) {
    quant::gptq::hessian_accumulator h(job.calib.cols);
    h.add(job.calib.view());
    for (llama2c::kind k : job.group.members) {
      const auto w = job.m.source(job.layer, k);
      const auto t0 = clock::now();
      auto t = quant::gptq::quantize<F>(w, h.matrix(), gran, o);
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      sum_time += ms;
      const auto q = dequantized(t);
      const auto r = dequantized(quant::quantize<F>(w, gran));
      const quant::matrix_view<const float> qv(q.data(), w.rows(), w.cols()), rv(r.data(), w.rows(), w.cols());
      const double cg = quant::gptq::output_error(w, qv, h.matrix()), cr = quant::gptq::output_error(w, rv, h.matrix());
      const double eg = rel_error(w, qv, job.eval), er = rel_error(w, rv, job.eval);
      better += eg < er;
      ++linears;
      fmt::print("{:<6} {:>9} {:>9.2f} {:>11.3e} {:>11.3e} {:>9.2f} {:>11.3e} {:>11.3e} {:>9.2f}\n",
                 fmt::format("{}.{}", llama2c::name(k), job.layer), fmt::format("{}x{}", w.rows(), w.cols()), ms, cr,
                 cg, cr / cg, er, eg, er / eg);
      job.m.set(job.layer, k, std::make_unique<llama2c::quantized_linear<F, Gran>>(std::move(t)));
    }
  }, pool);
  const std::size_t gptq_bytes = m.linear_bytes();
  const auto ppl_gptq = llama2c::perplexity(m, tok, stories, 0, a.eval_stories);
  llama2c::quantize_all<F>(m, llama2c::gemv_mode::exact, gran);
  const auto ppl_rtn = llama2c::perplexity(m, tok, stories, 0, a.eval_stories);
  m.reset_fp32();
  const std::size_t fp32_bytes = m.linear_bytes();
  const auto ppl_fp32 = llama2c::perplexity(m, tok, stories, 0, a.eval_stories);
  fmt::print("\nGPTQ lowered the held-out error of {} of {} linears; GPTQ time {:.1f} ms in all\n", better, linears,
             sum_time);
  fmt::print("perplexity on the held-out stories ({} predicted tokens), linears {} bytes fp32, {} quantized:\n",
             ppl_fp32.tokens, fp32_bytes, gptq_bytes);
  fmt::print("  fp32 {:.4f}   round-to-nearest {:.4f} ({:+.2f}%)   GPTQ {:.4f} ({:+.2f}%)\n", ppl_fp32.ppl, ppl_rtn.ppl,
             100.0 * (ppl_rtn.ppl / ppl_fp32.ppl - 1.0), ppl_gptq.ppl, 100.0 * (ppl_gptq.ppl / ppl_fp32.ppl - 1.0));
  fmt::print("total {:.1f} s\n", std::chrono::duration<double>(clock::now() - t_start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const args a = parse(argc, argv);
  using namespace quant;
  const std::map<std::string, std::function<int()>> formats{
      {"int4-g32", [&] { return run<int4>(a, per_group<32, asymmetric>{}); }},
      {"int4-g128", [&] { return run<int4>(a, per_group<128, asymmetric>{}); }},
      {"int4-channel", [&] { return run<int4>(a, per_channel<asymmetric>{}); }},
      {"int3-g128", [&] { return run<int3>(a, per_group<128, asymmetric>{}); }},
      {"nf4-g64", [&] { return run<nf4>(a, per_group<64>{}); }},
      {"mxfp4", [&] { return run<fp4_e2m1>(a, per_group<32, symmetric, e8m0>{}); }},
  };
  const auto it = formats.find(a.format);
  if (it == formats.end()) throw std::invalid_argument("--format: unknown format '" + a.format + "'\n" + usage);
  return it->second();
} catch (const std::exception& e) {
  std::fprintf(stderr, "gptq_llama2c: %s\n", e.what());
  return 1;
}
