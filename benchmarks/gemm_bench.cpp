// gemm_bench: the dense fp32 linear algebra GPTQ runs on (linalg/gemm.hpp, linalg/cholesky.hpp)
// against the machine's fp32 FMA peak and against OpenBLAS.
//
// The peak is measured here, per thread count: every thread runs a register-only loop of
// independent fused multiply-add chains on the vectors quant's kernels use (16 chains, no memory
// access), and peak = flops / wall time. It is measured again right before every case and thread
// count, so that a machine shared with other work gives fractions of the peak available at that
// moment. For each case and thread count it prints the median time per call, GFLOP/s, that peak
// and the fraction of it, and, for the products, OpenBLAS cblas_sgemm on the same shape and
// thread count (openblas_set_num_threads) with quant's speed relative to it.
// Cases (m x n x k for C = alpha op(A) B + beta C, all row-major):
//   NN 4096x4096x128     GPTQ's block update (alpha = -1, beta = 1)
//   NN 11008x4096x128    the same for an MLP-sized matrix
//   TN 4096x4096x2048    the Hessian accumulation H = a X^T X + b H
//   cholesky_lower 4096            n^3/3 flops
//   inverse_upper_factor 4096      2 n^3/3 flops (one Cholesky, one triangular inverse)
//
//   gemm_bench [--threads 1,2] [--cases nn4096,nn11008,tn4096,chol,invf] [--min-time S] [--quick]
//
// --quick: a smoke run (the shapes scaled down 4x, short timings).
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <quant/linalg/cholesky.hpp>
#include <quant/linalg/gemm.hpp>

#include "bench_support.hpp"

namespace {

using quant::linalg::gemm_problem;
using quant::linalg::transpose;

constexpr std::string_view case_names[] = {"nn4096", "nn11008", "tn4096", "chol", "invf"};

struct options {
  std::vector<std::size_t> threads{1, 2};
  std::vector<std::string> cases;
  double min_time = 1.0;
  std::size_t min_reps = 3;
  std::size_t scale = 1;  ///< shapes divided by this (--quick: 4)
};

options parse(int argc, char** argv) {
  options o;
  for (const auto n : case_names) o.cases.emplace_back(n);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(bench::message(a, ": missing value"));
      return argv[++i];
    };
    if (a == "--threads") {
      o.threads = bench::parse_threads(value());
    } else if (a == "--cases") {
      o.cases = bench::parse_choices(value(), case_names, "--cases");
    } else if (a == "--min-time") {
      o.min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--quick") {
      o.scale = 4;
      o.min_time = 0.05;
      o.min_reps = 2;
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "'"));
    }
  }
  return o;
}

using bench::pools;
using bench::with_executor;

// ------------------------------------------------------------------------------------------------
// Timing: median of the call alone (set-up of in-place inputs untimed)

template <class Setup, class Call>
bench::timing time_calls(Setup&& setup, Call&& call, const options& o) {
  setup();
  call();  // warm-up
  std::vector<double> t;
  double total = 0.0;
  while (t.size() < o.min_reps || total < o.min_time) {
    setup();
    const auto t0 = bench::clock::now();
    call();
    const double dt = bench::seconds_since(t0);
    t.push_back(dt);
    total += dt;
    if (t.size() >= 1000) break;
  }
  std::sort(t.begin(), t.end());
  bench::timing r;
  r.reps = t.size();
  r.min = t.front();
  r.median = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
  r.mean = total / static_cast<double>(t.size());
  return r;
}

void print_row(std::string_view name, std::size_t threads, double flops, const bench::timing& t, double peak,
               std::string_view extra = {}) {
  const double gf = flops / t.median / 1e9;
  fmt::print("{:<34} {:>3} {:>9.2f} {:>9.2f} {:>9.1f} {:>8.1f} {:>7.1f}%  {}\n", name, threads, t.median * 1e3,
             t.min * 1e3, gf, peak, 100.0 * gf / peak, extra);
  std::fflush(stdout);
}

// ------------------------------------------------------------------------------------------------
// Cases

struct gemm_case {
  std::string_view key;
  transpose ta;
  std::size_t m, n, k;
  float alpha, beta;
};

/// Runs one product case; returns quant's GFLOP/s per thread count.
std::map<std::size_t, double> run_gemm(const gemm_case& gc, const options& o, pools& ps) {
  std::map<std::size_t, double> speed;
  const std::size_t m = gc.m / o.scale, n = gc.n / o.scale, k = gc.k / o.scale;
  const bool t = gc.ta == transpose::yes;
  bench::aligned_array<float> a(m * k), b(k * n), c(m * n), c_ref(m * n);
  bench::fill_gaussian(a.span(), 1, 1.0f);
  bench::fill_gaussian(b.span(), 2, 1.0f);
  bench::fill_gaussian(c.span(), 3, 1.0f);
  const std::size_t lda = t ? m : k;
  const gemm_problem p{gc.ta, m, n, k, gc.alpha, a.data(), lda, b.data(), n, gc.beta, c.data(), n};
  const std::string name = fmt::format("{} {}x{}x{}", t ? "TN" : "NN", m, n, k);
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  for (const std::size_t threads : o.threads) {
    const double peak = bench::fma_peak(ps, threads);
    const bench::timing tq = with_executor(ps, threads, [&](auto& exec) {
      return time_calls([] {}, [&] { quant::linalg::gemm(p, exec); }, o);
    });
    std::string extra;
#ifdef QUANT_BENCH_HAVE_OPENBLAS
    bench::openblas_threads(threads);
    const bench::timing tb = time_calls(
        [] {},
        [&] {
          cblas_sgemm(CblasRowMajor, t ? CblasTrans : CblasNoTrans, CblasNoTrans, static_cast<int>(m),
                      static_cast<int>(n), static_cast<int>(k), gc.alpha, a.data(), static_cast<int>(lda), b.data(),
                      static_cast<int>(n), gc.beta, c.data(), static_cast<int>(n));
        },
        o);
    bench::openblas_threads(1);
    const double gb = flops / tb.median / 1e9;
    extra = fmt::format("OpenBLAS {:.1f} GFLOP/s ({:.1f}%), quant/OpenBLAS {:.2f}x", gb, 100.0 * gb / peak,
                        tb.median / tq.median);
#endif
    print_row(name, threads, flops, tq, peak, extra);
    speed[threads] = flops / tq.median / 1e9;
  }
#ifdef QUANT_BENCH_HAVE_OPENBLAS
  // Agreement with OpenBLAS on one call from the same C (beta = 0 so that C's history does not matter).
  std::fill(c.data(), c.data() + c.size(), 0.0f);
  gemm_problem p0 = p;
  p0.beta = 0.0f;
  quant::linalg::gemm(p0);
  openblas_set_num_threads(1);
  cblas_sgemm(CblasRowMajor, t ? CblasTrans : CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), gc.alpha, a.data(), static_cast<int>(lda), b.data(), static_cast<int>(n), 0.0f,
              c_ref.data(), static_cast<int>(n));
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < c.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(c.data()[i]) - c_ref.data()[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(c_ref.data()[i])));
  }
  fmt::print("{:<38} max |quant - OpenBLAS| / max |C| = {:.2e}\n", "", diff / scale);
#endif
  return speed;
}

/// A symmetric positive-definite matrix: random symmetric entries, diagonally dominant.
bench::aligned_array<float> spd(std::size_t n) {
  bench::aligned_array<float> out(n * n);
  float* h = out.data();
  bench::rng g(42);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < i; ++j) h[i * n + j] = h[j * n + i] = g.uniform() - 0.5f;
    h[i * n + i] = 0.5f * static_cast<float>(n) + g.uniform();
  }
  return out;
}

void run_factorization(bool inverse, const options& o, pools& ps, const std::map<std::size_t, double>& gemm_speed) {
  const std::size_t n = 4096 / o.scale;
  const bench::aligned_array<float> h = spd(n);
  bench::aligned_array<float> work(n * n);
  const double flops = (inverse ? 2.0 : 1.0) * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / 3.0;
  const std::string name = fmt::format("{} {}", inverse ? "inverse_upper_factor" : "cholesky_lower", n);
  for (const std::size_t threads : o.threads) {
    const double peak = bench::fma_peak(ps, threads);
    std::size_t result = 0;
    const bench::timing t = with_executor(ps, threads, [&](auto& exec) {
      return time_calls([&] { std::memcpy(work.data(), h.data(), h.bytes()); },
                        [&] {
                          result = inverse ? quant::linalg::inverse_upper_factor(n, work.data(), n, exec)
                                           : quant::linalg::cholesky_lower(n, work.data(), n, exec);
                        },
                        o);
    });
    std::string extra = result == n ? "" : fmt::format("FAILED at pivot {}", result);
    if (const auto it = gemm_speed.find(threads); it != gemm_speed.end() && result == n)
      extra = fmt::format("{:.0f}% of the TN gemm's speed", 100.0 * flops / t.median / 1e9 / it->second);
    print_row(name, threads, flops, t, peak, extra);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::ensure_openblas_coretype(argv);
  try {
    const options o = parse(argc, argv);
    pools ps;
    fmt::print("quant {} dense fp32 linear algebra benchmark{}\n", quant::version_string, o.scale > 1 ? " (--quick)" : "");
    fmt::print("quant kernels: {} (tile {}x{}); CPU: {}, {} hardware threads\n", quant::isa_name(quant::default_isa::id),
               quant::linalg::detail::gemm_default::MR, quant::linalg::detail::gemm_default::NR, bench::cpu_model(),
               std::thread::hardware_concurrency());
    fmt::print("{}\n", bench::openblas_description());
    for (const std::size_t t : o.threads)
      fmt::print("fp32 FMA peak, {} thread{}: {:.1f} GFLOP/s (16 independent chains, registers only; measured "
                 "again before every row)\n",
                 t, t == 1 ? "" : "s", bench::fma_peak(ps, t, 8));
    fmt::print("timing: median per call over >= {} calls and >= {} s, after one warm-up call; ", o.min_reps,
               o.min_time);
    fmt::print("GFLOP/s and the fractions are from the median; min = the fastest call\n\n");
    fmt::print("{:<34} {:>3} {:>9} {:>9} {:>9} {:>8} {:>8}\n", "case", "thr", "ms", "min ms", "GFLOP/s", "peak",
               "of peak");
    // The factorizations are also given relative to the Hessian product's speed (when it ran).
    std::map<std::size_t, double> tn_speed;
    const gemm_case gemms[] = {{"nn4096", transpose::no, 4096, 4096, 128, -1.0f, 1.0f},
                               {"nn11008", transpose::no, 11008, 4096, 128, -1.0f, 1.0f},
                               {"tn4096", transpose::yes, 4096, 4096, 2048, 1.0f / 2048.0f, 0.5f}};
    for (const auto& gc : gemms)
      if (bench::contains(o.cases, gc.key)) {
        auto speed = run_gemm(gc, o, ps);
        if (gc.key == "tn4096") tn_speed = std::move(speed);
      }
    if (bench::contains(o.cases, "chol")) run_factorization(false, o, ps, tn_speed);
    if (bench::contains(o.cases, "invf")) run_factorization(true, o, ps, tn_speed);
  } catch (const std::exception& e) {
    fmt::print(stderr, "gemm_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
