// qat_demo: quantization-aware training (quant/qat.hpp) against post-training quantization
// (round-to-nearest and GPTQ) at the same format, measured on a real checkpoint.
//
//   qat_demo [--model M --tokenizer T --text F] [--formats int4-g32,int4-g128,int3-g128]
//            [--steps 300] [--lr 0.02] [--damp 0.5] [--init rtn|mse|gptq] [--calib-first 200]
//            [--calib-stories 16] [--eval-stories 20] [--threads 1] [--per-layer] [--synthetic]
//
// Layer-wise QAT: for each format, the llama2.c model is quantized layer by layer in order
// (llama2c/calibrate.hpp: the inputs of each layer's linears are captured on calibration stories
// with the layers before already quantized by the same method). Each linear W is then trained to
// match the fp32 layer's outputs on those tokens: the latent weights W' (initialized to W), one
// scale and zero point per group (initialized by the library's fit) are updated by Adam for
// --steps steps on the loss
//   L = ||(W - Q(W', s, z)) X^T||^2 / ||W X^T||^2 = tr(D H D^T) / tr(W H W^T),  D = W - Q,
// with H = X^T X of the calibration tokens (the whole calibration set every step), the forward
// Q = qat::fake_quantize_with and the straight-through gradients of qat::backward (dL/dQ = 2 D H /
// tr(W H W^T), one GEMM). The straight-through estimator ignores that a code moves by a whole
// step: alone, it lets weights oscillate across rounding thresholds (Nagel et al. 2022 describe
// it), and on the real layers its loss ends above GPTQ's. So the latent weights also get the
// gradient of the dampening term damp * sum_rc (H_cc / tr(W H W^T)) (W'_rc - sg(Q_rc))^2: with
// damp = 1 it is the curvature of L along W_rc, so a weight crosses a threshold only when the
// change of code lowers L with the others held; --damp 0.5 (the default) leaves half of it,
// which also suits correlated inputs where weights move together. Step sizes are in units of
// each group's initial scale (lr for the weights, lr / 2 for the scales, lr codes for the zero
// points), with a cosine decay to zero; the iterate with the lowest calibration loss is exported
// with qat::quantize into the tensor that the model then runs. GPTQ (quant/algorithms/gptq.hpp)
// is calibrated the same way on its own sequential pass, round-to-nearest needs none. Single
// threaded unless --threads N (the captures).
//
// Printed: per format, the perplexity of each method on the evaluation stories (the models
// README's protocol, stories [0, 20)), and over the 35 linears the mean relative output error
// ||(W - Q) X^T||^2 / ||W X^T||^2 on held-out tokens (the evaluation stories, never used to
// train), the geometric mean of its ratio to round-to-nearest's on the same inputs, how many
// linears end below GPTQ's error, and the time each method took (QAT: training only). With
// --per-layer, every linear's errors. Without the checkpoint (or with --synthetic), the same
// comparison on one synthetic layer: Student-t weights, inputs with a correlated rank-16
// component, noise and 1% of channels x20, calibration and held-out tokens from one distribution.
#include <quant/algorithms/gptq.hpp>
#include <quant/linalg/gemm.hpp>
#include <quant/qat.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cli.hpp"
#include "llama2c/calibrate.hpp"
#include "llama2c/llama2c.hpp"

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

enum class init_kind { rtn, mse, gptq };

struct args {
  fs::path model, tokenizer, text;
  std::vector<std::string> formats{"int4-g32", "int4-g128", "int3-g128"};
  std::size_t steps = 300, calib_first = 200, calib_stories = 16, eval_stories = 20, threads = 1;
  double lr = 0.02, damp = 0.5;
  init_kind init = init_kind::rtn;
  bool per_layer = false, synthetic = false;
};

const char* usage =
    "qat_demo [--model M] [--tokenizer T] [--text F] [--formats LIST] [--steps 300] [--lr 0.02] [--damp 0.5]\n"
    "         [--init rtn|mse|gptq] [--calib-first 200] [--calib-stories 16] [--eval-stories 20]\n"
    "         [--threads 1] [--per-layer] [--synthetic]\n"
    "formats (asymmetric unless named otherwise): int4-g32, int4-g128, int3-g128, int2-g32, int4-g32-sym, nf4-g64, "
    "mxfp4\n"
    "--init: QAT starts from the round-to-nearest parameters (min-max, the default), the mse search's, or from GPTQ's\n"
    "        weights and parameters; --synthetic: the synthetic layer even when the checkpoint is there";

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
    else if (f == "--formats") {
      a.formats.clear();
      std::string v = value();
      for (std::size_t b = 0; b <= v.size();) {
        const std::size_t e = std::min(v.find(',', b), v.size());
        if (e > b) a.formats.push_back(v.substr(b, e - b));
        b = e + 1;
      }
      if (a.formats.empty()) throw std::invalid_argument("--formats: no format given");
    } else if (f == "--steps") a.steps = cli::parse_count(value(), f);
    else if (f == "--lr") {
      const std::string v = value();
      std::size_t used = 0;
      try {
        a.lr = std::stod(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || !(a.lr > 0.0 && a.lr < 1.0)) throw std::invalid_argument("--lr: expected a number in (0, 1), got '" + v + "'");
    } else if (f == "--damp") {
      const std::string v = value();
      std::size_t used = 0;
      try {
        a.damp = std::stod(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || !(a.damp >= 0.0)) throw std::invalid_argument("--damp: expected a number >= 0, got '" + v + "'");
    } else if (f == "--init") {
      const std::string v = value();
      if (v == "rtn") a.init = init_kind::rtn;
      else if (v == "mse") a.init = init_kind::mse;
      else if (v == "gptq") a.init = init_kind::gptq;
      else throw std::invalid_argument("--init: expected rtn, mse or gptq, got '" + v + "'");
    } else if (f == "--calib-first") a.calib_first = cli::parse_count(value(), f);
    else if (f == "--calib-stories") a.calib_stories = cli::parse_count(value(), f);
    else if (f == "--eval-stories") a.eval_stories = cli::parse_count(value(), f);
    else if (f == "--threads") a.threads = cli::parse_count(value(), f);
    else if (f == "--per-layer") a.per_layer = true;
    else if (f == "--synthetic") a.synthetic = true;
    else if (f == "--help" || f == "-h") {
      std::puts(usage);
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + f + "\n" + usage);
  }
  if (a.steps == 0) throw std::invalid_argument("--steps must be at least 1");
  if (a.calib_stories == 0 || a.eval_stories == 0) throw std::invalid_argument("--calib-stories and --eval-stories must be at least 1");
  if (a.threads == 0) throw std::invalid_argument("--threads must be at least 1");
  if (a.calib_first < a.eval_stories)
    throw std::invalid_argument(fmt::format("--calib-first {} overlaps the {} evaluation stories: calibrate on other text",
                                            a.calib_first, a.eval_stories));
  return a;
}

// ---- layer-wise QAT -----------------------------------------------------------------------------

struct qat_settings {
  std::size_t steps = 300;
  double lr = 0.02;
  init_kind init = init_kind::rtn;
  double damp = 0.5;
};

/// tr(A H B^T) for rows x cols matrices A, B and the cols x cols H, through the GEMM (ah: rows x cols scratch).
double trace_ahb(const float* a, const float* b, std::span<const float> h, std::size_t rows, std::size_t cols,
                 std::vector<float>& ah) {
  quant::linalg::gemm({quant::linalg::transpose::no, rows, cols, cols, 1.0f, a, cols, h.data(), cols, 0.0f, ah.data(), cols});
  double t = 0.0;
  for (std::size_t i = 0; i < rows * cols; ++i) t += static_cast<double>(ah[i]) * b[i];
  return t;
}

/// Trains Q(W', s, z) to match W on the inputs whose Hessian is h (see the top of this file) and
/// returns the quantized layer. `start` (optional) is GPTQ's result for --init gptq.
template <class F, class Gran>
quant::tensor<F, Gran> train_layer(quant::matrix_view<const float> w, std::span<const float> h, const Gran& gran,
                                   const qat_settings& o, std::type_identity_t<const quant::tensor<F, Gran>*> start) {
  namespace qat = quant::qat;
  const std::size_t rows = w.rows(), cols = w.cols(), n = rows * cols;
  const quant::scale_grid grid = quant::grid_of(gran, rows, cols, "qat_demo");
  const std::size_t np = grid.count();
  constexpr bool asym = Gran::is_asymmetric;
  std::vector<float> lw(w.data(), w.data() + n), s(np), z(asym ? np : 0);
  if (start) {  // GPTQ's weights and parameters
    quant::dequantize(*start, quant::matrix_view<float>(lw.data(), rows, cols));
    for (std::size_t k = 0; k < np; ++k) {
      s[k] = start->cview().scale(k);
      if (asym) z[k] = start->cview().zero(k);
    }
  } else {
    qat::fit<F>(w, {s, z}, gran, quant::quantize_options{o.init == init_kind::mse ? quant::scale_search::mse : quant::scale_search::minmax});
  }
  std::vector<float> step0(np);  // the unit of every step: the group's initial scale (or its mean)
  double mean_s = 0.0;
  for (float v : s) mean_s += v;
  mean_s = mean_s > 0.0 ? mean_s / static_cast<double>(np) : 1.0;
  for (std::size_t k = 0; k < np; ++k) step0[k] = s[k] > 0.0f ? s[k] : static_cast<float>(mean_s);
  std::vector<std::size_t> block(n);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) block[r * cols + c] = grid.index(r, c / grid.group);

  std::vector<float> q(n), d(n), g(n), gw(n), ds(np), dz(z.size()), scratch(n);
  const double norm = trace_ahb(w.data(), w.data(), h, rows, cols, scratch);
  if (!(norm > 0.0)) return qat::quantize<F>(quant::matrix_view<const float>(lw.data(), rows, cols), {s, z}, gran);
  std::vector<double> curvature(cols);  // d^2 L / dQ_rc^2 = 2 H_cc / tr(W H W^T)
  for (std::size_t c = 0; c < cols; ++c) curvature[c] = 2.0 * h[c * cols + c] / norm;
  // Adam state: weights, then scales, then zero points
  std::vector<float> m1(n + 2 * np, 0.0f), m2(n + 2 * np, 0.0f);
  std::vector<float> best_w = lw, best_s = s, best_z = z;
  double best = std::numeric_limits<double>::infinity();
  const double b1 = 0.9, b2 = 0.999;
  double b1t = 1.0, b2t = 1.0;
  for (std::size_t it = 0; it <= o.steps; ++it) {
    const quant::matrix_view<const float> lv(lw.data(), rows, cols);
    qat::fake_quantize_with<F>(lv, {s, z}, {q.data(), rows, cols}, gran);
    for (std::size_t i = 0; i < n; ++i) d[i] = q[i] - w.data()[i];
    // g = dL/dQ = 2 D H / tr(W H W^T); L = sum(D .* g) / 2
    quant::linalg::gemm({quant::linalg::transpose::no, rows, cols, cols, static_cast<float>(2.0 / norm), d.data(), cols,
                         h.data(), cols, 0.0f, g.data(), cols});
    double loss = 0.0;
    for (std::size_t i = 0; i < n; ++i) loss += static_cast<double>(d[i]) * g[i];
    loss *= 0.5;
    if (loss < best) best = loss, best_w = lw, best_s = s, best_z = z;
    if (it == o.steps) break;
    qat::backward<F>(lv, {s, z}, {g.data(), rows, cols}, {gw.data(), rows, cols}, {ds, dz}, gran);
    // oscillation dampening: + (H_cc / norm) ||W' - sg(Q)||^2, the curvature the STE leaves out
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c) {
        const std::size_t i = r * cols + c;
        gw[i] += static_cast<float>(o.damp * curvature[c] * (lw[i] - q[i]));
      }
    const double lr = o.lr * 0.5 * (1.0 + std::cos(3.141592653589793 * static_cast<double>(it) / o.steps));
    b1t *= b1, b2t *= b2;
    auto adam = [&](float& p, float grad, std::size_t i, double step) {
      m1[i] = static_cast<float>(b1 * m1[i] + (1 - b1) * grad);
      m2[i] = static_cast<float>(b2 * m2[i] + (1 - b2) * static_cast<double>(grad) * grad);
      const double mh = m1[i] / (1 - b1t), vh = m2[i] / (1 - b2t);
      if (vh > 0.0) p = static_cast<float>(p - step * mh / std::sqrt(vh));
    };
    for (std::size_t i = 0; i < n; ++i) adam(lw[i], gw[i], i, lr * step0[block[i]]);
    for (std::size_t k = 0; k < np; ++k) {
      adam(s[k], ds[k], n + k, 0.5 * lr * step0[k]);
      s[k] = std::max(s[k], 1e-3f * step0[k]);  // a scale stays positive
      if (asym) adam(z[k], dz[k], n + np + k, lr);
    }
  }
  return qat::quantize<F>(quant::matrix_view<const float>(best_w.data(), rows, cols), {best_s, best_z}, gran);
}

// ---- the model ----------------------------------------------------------------------------------

/// One linear's held-out errors: the method's and round-to-nearest's on the same inputs.
struct layer_errors {
  std::string name, shape;
  double calib = 0.0, held = 0.0, rtn_held = 0.0;
};

struct method_result {
  std::string method;
  double ppl = 0.0, seconds = 0.0;
  std::vector<layer_errors> layers;
};

template <class F, class Gran>
std::vector<float> dequantized(const quant::tensor<F, Gran>& t) {
  std::vector<float> d(t.rows() * t.cols());
  quant::dequantize(t, quant::matrix_view<float>(d.data(), t.rows(), t.cols()));
  return d;
}

double rel_error(quant::matrix_view<const float> w, const std::vector<float>& q, std::span<const float> h) {
  return quant::gptq::output_error(w, quant::matrix_view<const float>(q.data(), w.rows(), w.cols()), h);
}

struct text_data {
  llama2c::tokenizer tok;
  std::vector<std::string> stories;
  llama2c::text_split split;
};

/// A sequential pass of one method (GPTQ or QAT) over the model: quantizes every linear, records
/// its errors, and measures the perplexity of the result.
template <class F, class Gran, class Method, class Exec>
method_result sequential(llama2c::model& m, const text_data& t, const args& a, const char* name, const Gran& gran,
                         Method&& method, Exec& exec) {
  method_result res;
  res.method = name;
  m.reset_fp32();
  llama2c::calibrate_sequential(m, t.split.calib, t.split.eval, false, [&](const llama2c::group_job& job) {
    quant::gptq::hessian_accumulator hc(job.calib.cols), he(job.eval.cols);
    hc.add(job.calib.view());
    he.add(job.eval.view());
    for (llama2c::kind k : job.group.members) {
      const auto w = job.m.source(job.layer, k);
      const auto t0 = clock_type::now();
      quant::tensor<F, Gran> q = method(w, hc.matrix());
      res.seconds += seconds_since(t0);
      const auto dq = dequantized(q), rq = dequantized(quant::quantize<F>(w, gran));
      res.layers.push_back({fmt::format("{}.{}", llama2c::name(k), job.layer), fmt::format("{}x{}", w.rows(), w.cols()),
                            rel_error(w, dq, hc.matrix()), rel_error(w, dq, he.matrix()), rel_error(w, rq, he.matrix())});
      job.m.set(job.layer, k, std::make_unique<llama2c::quantized_linear<F, Gran>>(std::move(q)));
    }
  }, exec);
  res.ppl = llama2c::perplexity(m, t.tok, t.stories, 0, a.eval_stories).ppl;
  return res;
}

double geo_mean_ratio(const method_result& r) {
  double s = 0.0;
  for (const auto& l : r.layers) s += std::log(l.held / l.rtn_held);
  return std::exp(s / static_cast<double>(r.layers.size()));
}
double mean_held(const method_result& r) {
  double s = 0.0;
  for (const auto& l : r.layers) s += l.held;
  return s / static_cast<double>(r.layers.size());
}

template <class F, class Gran>
void run_model(llama2c::model& m, const text_data& t, const args& a, const std::string& label, const Gran& gran,
               double ppl_fp32) {
  quant::thread_pool pool(a.threads);
  const qat_settings qs{a.steps, a.lr, a.init, a.damp};
  // round-to-nearest
  const auto t0 = clock_type::now();
  llama2c::quantize_all<F>(m, llama2c::gemv_mode::exact, gran);
  const double rtn_s = seconds_since(t0);
  const double ppl_rtn = llama2c::perplexity(m, t.tok, t.stories, 0, a.eval_stories).ppl;
  // GPTQ, then QAT, each on its own sequential pass
  const auto gptq = sequential<F, Gran>(m, t, a, "GPTQ", gran, [&](quant::matrix_view<const float> w, std::span<const float> h) {
    return quant::gptq::quantize<F>(w, h, gran);
  }, pool);
  const auto qat = sequential<F, Gran>(m, t, a, "QAT", gran, [&](quant::matrix_view<const float> w, std::span<const float> h) {
    if (qs.init == init_kind::gptq) {
      const auto start = quant::gptq::quantize<F>(w, h, gran);
      return train_layer<F>(w, h, gran, qs, &start);
    }
    return train_layer<F>(w, h, gran, qs, nullptr);
  }, pool);
  std::size_t below = 0;
  for (std::size_t i = 0; i < qat.layers.size(); ++i) below += qat.layers[i].held < gptq.layers[i].held;
  auto row = [&](const char* method, double ppl, const std::string& err, const std::string& ratio, const std::string& b,
                 double secs) {
    fmt::print("{:<16} {:<5} {:>8.4f} {:>+8.2f} {:>12} {:>9} {:>8} {:>8.2f}\n", method == std::string("RTN") ? label : "",
               method, ppl, 100.0 * (ppl / ppl_fp32 - 1.0), err, ratio, b, secs);
  };
  double rtn_mean = 0.0;
  for (const auto& l : gptq.layers) rtn_mean += l.rtn_held;
  rtn_mean /= static_cast<double>(gptq.layers.size());
  row("RTN", ppl_rtn, fmt::format("{:.3e}", rtn_mean), "1", "", rtn_s);
  row("GPTQ", gptq.ppl, fmt::format("{:.3e}", mean_held(gptq)), fmt::format("{:.3f}", geo_mean_ratio(gptq)), "", gptq.seconds);
  row("QAT", qat.ppl, fmt::format("{:.3e}", mean_held(qat)), fmt::format("{:.3f}", geo_mean_ratio(qat)),
      fmt::format("{}/{}", below, qat.layers.size()), qat.seconds);
  if (a.per_layer) {
    fmt::print("  {:<6} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11}\n", "linear", "shape", "RTN held", "GPTQ held", "QAT held",
               "GPTQ calib", "QAT calib");
    for (std::size_t i = 0; i < qat.layers.size(); ++i)
      fmt::print("  {:<6} {:>7} {:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e}\n", qat.layers[i].name, qat.layers[i].shape,
                 gptq.layers[i].rtn_held, gptq.layers[i].held, qat.layers[i].held, gptq.layers[i].calib,
                 qat.layers[i].calib);
  }
  std::fflush(stdout);
}

// ---- the synthetic layer ------------------------------------------------------------------------

struct synthetic_layer {
  std::size_t rows = 384, cols = 768, calib = 2048, held = 512;
  std::vector<float> w, x;  // x: calib + held tokens x cols
};

synthetic_layer make_synthetic() {
  synthetic_layer l;
  std::mt19937_64 g(2024);
  std::normal_distribution<double> nd;
  std::student_t_distribution<double> td(4.0);
  l.w.resize(l.rows * l.cols);
  for (std::size_t r = 0; r < l.rows; ++r) {
    const double row_scale = 0.02 * std::exp(0.3 * nd(g));
    for (std::size_t c = 0; c < l.cols; ++c) l.w[r * l.cols + c] = static_cast<float>(row_scale * td(g) / std::sqrt(2.0));
  }
  const std::size_t rank = 16, tokens = l.calib + l.held;
  std::vector<double> basis(rank * l.cols), chan(l.cols, 1.0);
  for (auto& b : basis) b = nd(g);
  for (std::size_t i = 0; i < (l.cols + 99) / 100; ++i) chan[g() % l.cols] = 20.0;
  l.x.resize(tokens * l.cols);
  for (std::size_t t = 0; t < tokens; ++t) {
    double coef[16];
    for (auto& c : coef) c = nd(g);
    for (std::size_t c = 0; c < l.cols; ++c) {
      double v = 0.3 * nd(g);
      for (std::size_t k = 0; k < rank; ++k) v += coef[k] * basis[k * l.cols + c] / 4.0;
      l.x[t * l.cols + c] = static_cast<float>(v * chan[c]);
    }
  }
  return l;
}

template <class F, class Gran>
void run_synthetic(const synthetic_layer& l, const args& a, const std::string& label, const Gran& gran) {
  const quant::matrix_view<const float> w(l.w.data(), l.rows, l.cols);
  quant::gptq::hessian_accumulator hc(l.cols), he(l.cols);
  hc.add({l.x.data(), l.calib, l.cols});
  he.add({l.x.data() + l.calib * l.cols, l.held, l.cols});
  auto t0 = clock_type::now();
  const auto rtn = dequantized(quant::quantize<F>(w, gran));
  const double rtn_s = seconds_since(t0);
  t0 = clock_type::now();
  const auto gq = quant::gptq::quantize<F>(w, hc.matrix(), gran);
  const double gptq_s = seconds_since(t0);
  t0 = clock_type::now();
  const qat_settings qs{a.steps, a.lr, a.init, a.damp};
  const auto qq = train_layer<F>(w, hc.matrix(), gran, qs, qs.init == init_kind::gptq ? &gq : nullptr);
  const double qat_s = seconds_since(t0);
  const auto gd = dequantized(gq), qd = dequantized(qq);
  fmt::print("{:<16} {:>11.3e} {:>11.3e} {:>11.3e} | {:>11.3e} {:>11.3e} {:>11.3e} | {:>7.3f} {:>7.3f} {:>7.2f}\n", label,
             rel_error(w, rtn, hc.matrix()), rel_error(w, gd, hc.matrix()), rel_error(w, qd, hc.matrix()),
             rel_error(w, rtn, he.matrix()), rel_error(w, gd, he.matrix()), rel_error(w, qd, he.matrix()), rtn_s, gptq_s,
             qat_s);
  std::fflush(stdout);
}

/// Calls f.template operator()<F>(gran, label) for a format name of --formats.
template <class Fn>
void with_format(const std::string& name, Fn&& f) {
  using namespace quant;
  if (name == "int4-g32") f.template operator()<int4>(per_group<32, asymmetric>{}, "int4 g32 asym");
  else if (name == "int4-g128") f.template operator()<int4>(per_group<128, asymmetric>{}, "int4 g128 asym");
  else if (name == "int3-g128") f.template operator()<int3>(per_group<128, asymmetric>{}, "int3 g128 asym");
  else if (name == "int2-g32") f.template operator()<int2>(per_group<32, asymmetric>{}, "int2 g32 asym");
  else if (name == "int4-g32-sym") f.template operator()<int4>(per_group<32>{}, "int4 g32 sym");
  else if (name == "nf4-g64") f.template operator()<nf4>(per_group<64>{}, "nf4 g64");
  else if (name == "mxfp4") f.template operator()<fp4_e2m1>(per_group<32, symmetric, e8m0>{}, "MXFP4");
  else throw std::invalid_argument("--formats: unknown format '" + name + "'\n" + usage);
}

const char* init_name(init_kind k) { return k == init_kind::rtn ? "min-max" : k == init_kind::mse ? "mse search" : "GPTQ"; }

}  // namespace

int main(int argc, char** argv) try {
  const auto t_start = clock_type::now();
  const args a = parse(argc, argv);
  for (const auto& f : a.formats) with_format(f, []<class F>(const auto&, const char*) {});  // reject unknown names first
  const bool have_model = fs::exists(a.model) && fs::exists(a.tokenizer) && fs::exists(a.text);
  fmt::print("QAT: {} Adam steps per linear on all calibration tokens, lr {} of the initial scale (cosine decay), "
             "learnable scales and zero points, {} initialization; straight-through gradients of quant/qat.hpp\n",
             a.steps, a.lr, init_name(a.init));
  if (have_model && !a.synthetic) {
    llama2c::model m = llama2c::model::load(a.model);
    text_data t;
    t.tok.load(a.tokenizer, m.cfg().vocab_size);
    t.stories = llama2c::split_stories(llama2c::read_text(a.text));
    t.split = llama2c::split_text(t.tok, a.text, a.calib_first, a.calib_stories, a.eval_stories, m.cfg().seq_len);
    const auto& c = m.cfg();
    fmt::print("model {} (dim {}, hidden {}, {} layers, {} linears), layer-wise: each method calibrated sequentially\n",
               a.model.filename().string(), c.dim, c.hidden_dim, c.n_layers, 7 * c.n_layers);
    fmt::print("calibration: stories [{}, {}), {} tokens; evaluation and held-out layer inputs: stories [0, {}), {} tokens\n",
               a.calib_first, a.calib_first + a.calib_stories, llama2c::token_count(t.split.calib), a.eval_stories,
               llama2c::token_count(t.split.eval));
    fmt::print("layer err: ||(W - Q) X||^2 / ||W X||^2 on held-out tokens, mean over the linears; / RTN: geometric mean "
               "of the ratio to round-to-nearest on the same inputs; < GPTQ: linears whose error is below GPTQ's\n\n");
    const double ppl_fp32 = llama2c::perplexity(m, t.tok, t.stories, 0, a.eval_stories).ppl;
    fmt::print("{:<16} {:<5} {:>8} {:>8} {:>12} {:>9} {:>8} {:>8}\n", "format", "", "ppl", "dppl %", "layer err", "/ RTN",
               "< GPTQ", "time s");
    fmt::print("{:<16} {:<5} {:>8.4f} {:>+8.2f}\n", "fp32", "", ppl_fp32, 0.0);
    for (const auto& f : a.formats)
      with_format(f, [&]<class F>(const auto& gran, const char* label) { run_model<F>(m, t, a, label, gran, ppl_fp32); });
    fmt::print("\ntime s: quantization of the 35 linears (QAT: training; GPTQ: the algorithm), captures and "
               "perplexity not included\n");
  } else {
    if (!have_model && !a.synthetic)
      fmt::print("{} not found (or its tokenizer or text): the synthetic layer instead\n", a.model.string());
    const synthetic_layer l = make_synthetic();
    fmt::print("synthetic layer {} x {}: Student-t weights; inputs rank 16 + noise, 1% of channels x20; {} calibration "
               "and {} held-out tokens of one distribution\n",
               l.rows, l.cols, l.calib, l.held);
    fmt::print("error: ||(W - Q) X||^2 / ||W X||^2\n\n");
    fmt::print("{:<16} {:>11} {:>11} {:>11} | {:>11} {:>11} {:>11} | {:>7} {:>7} {:>7}\n", "format", "calib RTN",
               "calib GPTQ", "calib QAT", "held RTN", "held GPTQ", "held QAT", "RTN s", "GPTQ s", "QAT s");
    for (const auto& f : a.formats)
      with_format(f, [&]<class F>(const auto& gran, const char* label) { run_synthetic<F>(l, a, label, gran); });
  }
  fmt::print("total {:.1f} s\n", seconds_since(t_start));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "qat_demo: %s\n", e.what());
  return 1;
}
