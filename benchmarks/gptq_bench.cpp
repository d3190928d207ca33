// gptq_bench: the time GPTQ takes on LLM-sized layers, stage by stage, and what fraction of the
// machine's fp32 FMA peak its matrix products reach, measured in the same run.
//
//   gptq_bench [--shapes 4096x4096,11008x4096] [--tokens 2048] [--threads 1,2] [--quick]
//
// For each shape (rows x cols) and thread count: the Hessian accumulation over `tokens`
// calibration tokens (one TN GEMM), then gptq::quantize<int4, per_group<128, asymmetric>> with
// its report's stage times (factorization of H, the column passes, the lazy block updates) and
// the GFLOP/s of the updates against the FMA peak (a register-only FMA loop, same thread count).
// With OpenBLAS the updates run once more through the options::gemm hook with cblas_sgemm.
#include <quant/algorithms/gptq.hpp>
#include <quant/quant.hpp>

#include <fmt/core.h>

#include <cmath>
#include <cstdio>
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

std::vector<float> weights(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  std::vector<float> w(rows * cols);
  std::uint64_t s = seed;
  auto uniform = [&] {
    s += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  };
  for (auto& v : w) {  // Laplace-ish heavy tails
    const double u = uniform() - 0.5;
    v = static_cast<float>(-0.02 * (u < 0 ? -1.0 : 1.0) * std::log(1.0 - 2.0 * std::fabs(u) + 1e-12));
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) try {
  bench::ensure_openblas_coretype(argv);
  std::vector<shape> shapes{{4096, 4096}, {11008, 4096}};
  std::size_t tokens = 2048;
  std::vector<std::size_t> threads{1, 2};
  bool quick = false;
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
      }
    } else if (a == "--tokens") {
      tokens = bench::parse_size(value(), "--tokens");
    } else if (a == "--threads") {
      threads.clear();
      for (const auto& s : bench::split_list(value())) threads.push_back(bench::parse_size(s, "--threads"));
    } else if (a == "--quick") {
      quick = true;
      shapes = {{512, 1024}};
      tokens = 512;
    } else if (a == "--help" || a == "-h") {
      std::puts("gptq_bench [--shapes 4096x4096,11008x4096] [--tokens 2048] [--threads 1,2] [--quick]");
      return 0;
    } else {
      throw std::invalid_argument("unknown option " + a);
    }
  }
  fmt::print("gptq_bench: int4 per_group<128, asymmetric>, {} calibration tokens, ISA {}{}\n", tokens,
             quant::active_isa_name(), bench::have_openblas() ? ", OpenBLAS " + bench::openblas_description() : "");
  fmt::print("{:<11} {:>3} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}\n", "shape", "thr", "peak GF/s",
             "H s", "H GF/s", "factor s", "pass s", "update s", "upd GF/s", "of peak", "total s");
  bench::pools ps;
  for (const shape& sh : shapes) {
    const auto w = weights(sh.rows, sh.cols, 1);
    // activations: low-rank + noise with 1% outlier channels
    std::vector<float> x(tokens * sh.cols);
    {
      const auto base = weights(8, sh.cols, 2), noise = weights(tokens, sh.cols, 3), coef = weights(tokens, 8, 4);
      for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t c = 0; c < sh.cols; ++c) {
          float v = noise[t * sh.cols + c];
          for (std::size_t k = 0; k < 8; ++k) v += 50.0f * coef[t * 8 + k] * base[k * sh.cols + c];
          x[t * sh.cols + c] = c % 97 == 0 ? 20.0f * v : v;
        }
    }
    for (std::size_t th : threads) {
      quant::thread_pool pool(th);
      const double peak = bench::fma_peak(ps, th, quick ? 1 : 4) * 1e9;
      quant::gptq::hessian_accumulator acc(sh.cols);
      const auto t0 = bench::clock::now();
      acc.add(quant::matrix_view<const float>(x.data(), tokens, sh.cols), pool);
      const double h_s = bench::seconds_since(t0);
      const double h_flops = 2.0 * static_cast<double>(sh.cols) * sh.cols * tokens;
      auto run = [&](const char* label, quant::gptq::options o) {
        quant::gptq::report rep;
        const auto t1 = bench::clock::now();
        const auto t = quant::gptq::quantize<quant::int4>(quant::matrix_view<const float>(w.data(), sh.rows, sh.cols),
                                                          acc.matrix(), quant::per_group<128, quant::asymmetric>{}, o,
                                                          pool, &rep);
        const double total = bench::seconds_since(t1);
        bench::consume(t.cview().codes()[0]);
        const double upd = rep.update_flops / rep.update_seconds * 1e-9;
        fmt::print("{:<11} {:>3} {:>9.1f} {:>8.3f} {:>8.1f} {:>8.3f} {:>8.3f} {:>8.3f} {:>8.1f} {:>7.2f} {:>9.3f}  {}\n",
                   fmt::format("{}x{}", sh.rows, sh.cols), th, peak * 1e-9, h_s, h_flops / h_s * 1e-9,
                   rep.factor_seconds, rep.pass_seconds, rep.update_seconds, upd, upd * 1e9 / peak, total, label);
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
