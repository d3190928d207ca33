// gptq_bench: time and quality of GPTQ on LLM-sized layers, next to round-to-nearest, stage by
// stage, with the fraction of the machine's fp32 FMA peak its matrix products reach, measured in
// the same run.
//
//   gptq_bench [--shapes 4096x4096,11008x4096] [--tokens N] [--eval-tokens 512] [--noise 0.05]
//              [--threads 1,2] [--dump DIR] [--quick]
//
// The layer: heavy-tailed weights (Student-t, per-row scale) and activations shaped like real
// hidden states: a rank-16 correlated component, per-channel scales, a fixed 1% of channels x20
// and i.i.d. noise of relative size --noise. GPTQ is calibrated on --tokens tokens (default
// 2 x cols: fewer tokens than inputs make GPTQ fit the calibration set, not the layer) and both
// methods are scored on --eval-tokens other tokens of the same distribution: the relative output
// error ||(W - Q) X^T|| / ||W X^T||.
//
// For each shape and thread count: the Hessian accumulation (one TN GEMM), round-to-nearest
// (quant::quantize) and gptq::quantize for int4 per_group<128, asymmetric> with the report's
// stage times (factorization of H, the column passes, the lazy block updates) and the GFLOP/s of
// the updates against the FMA peak (a register-only FMA loop, same thread count). With OpenBLAS
// the GPTQ pass runs once more with cblas_sgemm plugged into options::gemm.
//
// --dump DIR writes the layer and the results as raw little-endian float32, row-major, for side-
// by-side runs of other implementations on the same data: W (rows x cols), Xc (calibration
// tokens x cols), Xe (held-out tokens x cols), Q_rtn and Q_gptq (dequantized, rows x cols; those
// of the last thread count).
#include <quant/algorithms/gptq.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench_support.hpp"

#if defined(QUANT_BENCH_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace {

struct shape {
  std::size_t rows, cols;
};

struct rng {
  std::uint64_t s;
  double uniform() {  // splitmix64, (0, 1)
    s += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (static_cast<double>((z ^ (z >> 31)) >> 11) + 0.5) * 0x1.0p-53;
  }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
  double student_t(double dof) {  // normal / sqrt(chi2 / dof)
    double chi2 = 0.0;
    for (int i = 0; i < static_cast<int>(dof); ++i) {
      const double z = normal();
      chi2 += z * z;
    }
    return normal() / std::sqrt(chi2 / dof);
  }
};

std::vector<float> weights(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  rng g{seed};
  std::vector<float> w(rows * cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const double scale = 0.02 * std::exp(0.3 * g.normal()) / std::sqrt(5.0 / 3.0);
    for (std::size_t c = 0; c < cols; ++c) w[r * cols + c] = static_cast<float>(scale * g.student_t(5));
  }
  return w;
}

/// The distribution of a layer's inputs: fixed per layer, sampled with different seeds for the
/// calibration and evaluation tokens.
struct activation_model {
  static constexpr std::size_t rank = 16;
  std::size_t cols;
  double noise;
  std::vector<float> mix;    // rank x cols
  std::vector<float> scale;  // per channel: lognormal, 1% of channels x20

  activation_model(std::size_t c, double n, std::uint64_t seed) : cols(c), noise(n), mix(rank * c), scale(c) {
    rng g{seed};
    for (auto& m : mix) m = static_cast<float>(g.normal() / std::sqrt(double{rank}));
    for (auto& s : scale) s = static_cast<float>(std::exp(0.5 * g.normal()));
    for (std::size_t i = 0; i < (cols + 99) / 100; ++i) scale[static_cast<std::size_t>(g.uniform() * cols)] *= 20.0f;
  }
  std::vector<float> sample(std::size_t tokens, std::uint64_t seed) const {
    rng g{seed};
    std::vector<float> x(tokens * cols);
    float z[rank];
    for (std::size_t t = 0; t < tokens; ++t) {
      for (auto& v : z) v = static_cast<float>(g.normal());
      float* row = x.data() + t * cols;
      for (std::size_t c = 0; c < cols; ++c) row[c] = static_cast<float>(noise * g.normal());
      for (std::size_t k = 0; k < rank; ++k)
        for (std::size_t c = 0; c < cols; ++c) row[c] += z[k] * mix[k * cols + c];
      for (std::size_t c = 0; c < cols; ++c) row[c] *= scale[c];
    }
    return x;
  }
};

/// ||(W - Q) X^T|| / ||W X^T|| for X given transposed (cols x tokens), products with linalg::gemm.
template <class Exec>
double output_error(const std::vector<float>& w, const std::vector<float>& q, const std::vector<float>& xt,
                    std::size_t rows, std::size_t cols, std::size_t tokens, Exec& exec) {
  std::vector<float> d(w.size()), y(rows * tokens), e(rows * tokens);
  for (std::size_t i = 0; i < w.size(); ++i) d[i] = w[i] - q[i];
  using quant::linalg::transpose;
  quant::linalg::gemm({transpose::no, rows, tokens, cols, 1.0f, w.data(), cols, xt.data(), tokens, 0.0f, y.data(), tokens},
                      exec);
  quant::linalg::gemm({transpose::no, rows, tokens, cols, 1.0f, d.data(), cols, xt.data(), tokens, 0.0f, e.data(), tokens},
                      exec);
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) num += double{e[i]} * e[i], den += double{y[i]} * y[i];
  return std::sqrt(num / den);
}

void dump(const std::filesystem::path& file, const std::vector<float>& v) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!out) throw std::runtime_error("--dump: cannot write " + file.string());
}

}  // namespace

int main(int argc, char** argv) try {
  bench::ensure_openblas_coretype(argv);
  std::vector<shape> shapes{{4096, 4096}, {11008, 4096}};
  std::size_t tokens = 0, eval_tokens = 512;
  double noise = 0.05;
  std::vector<std::size_t> threads{1, 2};
  std::filesystem::path dump_dir;
  const char* usage =
      "gptq_bench [--shapes 4096x4096,11008x4096] [--tokens N (default 2 x cols)] [--eval-tokens 512]\n"
      "           [--noise 0.05] [--threads 1,2] [--dump DIR] [--quick]";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    if (a == "--shapes") {
      shapes.clear();
      for (const auto& s : bench::split_list(value())) {
        const auto x = s.find('x');
        if (x == std::string::npos) throw std::invalid_argument("--shapes: expected ROWSxCOLS, got '" + s + "'");
        shapes.push_back({bench::parse_size(s.substr(0, x), "--shapes"), bench::parse_size(s.substr(x + 1), "--shapes")});
        if (shapes.back().rows == 0 || shapes.back().cols == 0) throw std::invalid_argument("--shapes: empty shape '" + s + "'");
      }
    } else if (a == "--tokens") {
      tokens = bench::parse_size(value(), "--tokens");
    } else if (a == "--eval-tokens") {
      eval_tokens = bench::parse_size(value(), "--eval-tokens");
    } else if (a == "--noise") {
      const std::string v = value();
      std::size_t used = 0;
      noise = std::stod(v, &used);
      if (used != v.size() || !(noise >= 0.0)) throw std::invalid_argument("--noise: expected a number >= 0, got '" + v + "'");
    } else if (a == "--threads") {
      threads.clear();
      for (const auto& s : bench::split_list(value())) threads.push_back(bench::parse_size(s, "--threads"));
    } else if (a == "--dump") {
      dump_dir = value();
      std::filesystem::create_directories(dump_dir);
    } else if (a == "--quick") {
      shapes = {{512, 1024}};
      eval_tokens = 256;
    } else if (a == "--help" || a == "-h") {
      std::puts(usage);
      return 0;
    } else {
      throw std::invalid_argument("unknown option " + a + "\n" + std::string(usage));
    }
  }
  if (eval_tokens == 0) throw std::invalid_argument("--eval-tokens: must be at least 1");
  fmt::print("gptq_bench: int4 per_group<128, asymmetric>, ISA {}{}\n", quant::active_isa_name(),
             bench::have_openblas() ? ", OpenBLAS " + bench::openblas_description() : "");
  fmt::print("layer: Student-t(5) weights; inputs rank-16 + noise {} with 1% channels x20; error = "
             "||(W-Q)X^T||/||WX^T|| on {} held-out tokens\n",
             noise, eval_tokens);
  fmt::print("{:<11} {:>5} {:>3} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>7}  {}\n",
             "shape", "calib", "thr", "peak", "H s", "RTN s", "factor s", "pass s", "update s", "upd GF/s", "of peak",
             "GPTQ s", "RTN err", "GPTQ err", "RTN/GQ", "updates by");
  bench::pools ps;
  for (const shape& sh : shapes) {
    const std::size_t calib = tokens ? tokens : 2 * sh.cols;
    const auto w = weights(sh.rows, sh.cols, 1);
    const activation_model am(sh.cols, noise, 2);
    const auto xc = am.sample(calib, 3);
    std::vector<float> xt(sh.cols * eval_tokens);  // held-out tokens, transposed
    {
      const auto xe = am.sample(eval_tokens, 4);
      if (!dump_dir.empty()) {
        const auto tag = fmt::format("{}x{}_", sh.rows, sh.cols);
        dump(dump_dir / (tag + "W.f32"), w);
        dump(dump_dir / (tag + "Xc.f32"), xc);
        dump(dump_dir / (tag + "Xe.f32"), xe);
      }
      for (std::size_t t = 0; t < eval_tokens; ++t)
        for (std::size_t c = 0; c < sh.cols; ++c) xt[c * eval_tokens + t] = xe[t * sh.cols + c];
    }
    const quant::matrix_view<const float> wv(w.data(), sh.rows, sh.cols);
    const quant::per_group<128, quant::asymmetric> gran;
    std::vector<float> q(w.size());
    for (std::size_t th : threads) {
      quant::thread_pool pool(th);
      const double peak = bench::fma_peak(ps, th, 4) * 1e9;
      quant::gptq::hessian_accumulator acc(sh.cols);
      const auto t0 = bench::clock::now();
      acc.add(quant::matrix_view<const float>(xc.data(), calib, sh.cols), pool);
      const double h_s = bench::seconds_since(t0);
      const auto t1 = bench::clock::now();
      const auto rtn = quant::quantize<quant::int4>(wv, gran);
      const double rtn_s = bench::seconds_since(t1);
      quant::dequantize(rtn, quant::matrix_view<float>(q.data(), sh.rows, sh.cols));
      const double rtn_err = output_error(w, q, xt, sh.rows, sh.cols, eval_tokens, pool);
      if (!dump_dir.empty()) dump(dump_dir / fmt::format("{}x{}_Q_rtn.f32", sh.rows, sh.cols), q);
      auto run = [&](const char* label, quant::gptq::options o) {
        quant::gptq::report rep;
        const auto t2 = bench::clock::now();
        const auto t = quant::gptq::quantize<quant::int4>(wv, acc.matrix(), gran, o, pool, &rep);
        const double total = bench::seconds_since(t2);
        quant::dequantize(t, quant::matrix_view<float>(q.data(), sh.rows, sh.cols));
        const double err = output_error(w, q, xt, sh.rows, sh.cols, eval_tokens, pool);
        if (!dump_dir.empty() && !o.gemm) dump(dump_dir / fmt::format("{}x{}_Q_gptq.f32", sh.rows, sh.cols), q);
        const double upd = rep.update_flops / rep.update_seconds;
        fmt::print(
            "{:<11} {:>5} {:>3} {:>6.1f} {:>7.3f} {:>7.3f} {:>8.3f} {:>8.3f} {:>8.3f} {:>8.1f} {:>7.2f} {:>8.3f} {:>9.5f} "
            "{:>9.5f} {:>7.2f}  {}\n",
            fmt::format("{}x{}", sh.rows, sh.cols), calib, th, peak * 1e-9, h_s, rtn_s, rep.factor_seconds,
            rep.pass_seconds, rep.update_seconds, upd * 1e-9, upd / peak, total, rtn_err, err, rtn_err / err, label);
        std::fflush(stdout);
      };
      run("quant gemm", {});
#if defined(QUANT_BENCH_HAVE_OPENBLAS)
      quant::gptq::options blas;
      openblas_set_num_threads(static_cast<int>(th));
      blas.gemm = [](const quant::linalg::gemm_problem& p) {
        cblas_sgemm(CblasRowMajor, p.ta == quant::linalg::transpose::yes ? CblasTrans : CblasNoTrans, CblasNoTrans,
                    static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k), p.alpha, p.a,
                    static_cast<int>(p.lda), p.b, static_cast<int>(p.ldb), p.beta, p.c, static_cast<int>(p.ldc));
      };
      run("cblas_sgemm hook", blas);
#endif
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "gptq_bench: %s\n", e.what());
  return 1;
}
