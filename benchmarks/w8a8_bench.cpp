// w8a8_bench: the W8A8 small-batch GEMM (int8 weights x per-token int8 activations, vpdpbusd)
// against the int8 weight-only fast GEMV called once per token and against an fp32 GEMV per token.
//
// For every shape, batch (tokens per call), thread count and regime (hot: one copy of the weights
// called again and again; cold: enough distinct copies, cycled call by call, that every call reads
// its weights from DRAM) it prints the time per call (the whole batch) and per token, the weight
// bytes of the method, GB/s = those bytes / time per call (the weights are read once per call by
// the W8A8 GEMM, once per token by the others: this is the rate at which the batch consumed the
// model), vs_sweep = t(read-only sweep of the same bytes, same threads and regime) / t(call), and
// the W8A8 GEMM's speed-up over the two per-token baselines measured in the same run.
//
//   w8a8_bench [--shapes 4096x4096,11008x4096] [--batch 1,4,16] [--threads 1,2] [--regime hot,cold]
//              [--csv FILE] [--min-time S] [--min-reps N] [--quick]
#include <fmt/core.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <quant/kernels/w8a8.hpp>

#include "bench_support.hpp"

namespace {

struct shape {
  std::size_t rows = 0, cols = 0;
  std::string label() const { return fmt::format("{}x{}", rows, cols); }
};

struct options {
  std::vector<shape> shapes{{4096, 4096}, {11008, 4096}};
  std::vector<std::size_t> batches{1, 4, 16};
  std::vector<std::size_t> threads{1, 2};
  std::vector<std::string> regimes{"hot", "cold"};
  std::string csv;
  bench::timing_options timing;
  bool quick = false;
};

shape parse_shape(const std::string& s) {
  const auto x = s.find('x');
  if (x == std::string::npos) throw std::invalid_argument(bench::message("--shapes: expected ROWSxCOLS, got '", s, "'"));
  shape sh{bench::parse_size(s.substr(0, x), "--shapes"), bench::parse_size(s.substr(x + 1), "--shapes")};
  if (sh.rows == 0 || sh.cols == 0) throw std::invalid_argument(bench::message("--shapes: empty shape '", s, "'"));
  return sh;
}

void usage(std::FILE* out) {
  fmt::print(out,
             "usage: w8a8_bench [options]\n"
             "  --shapes R1xC1,...   weight shapes, rows x cols (default 4096x4096,11008x4096)\n"
             "  --batch 1,4,16       tokens per call (default 1,4,16)\n"
             "  --threads 1,2        thread counts (default 1,2)\n"
             "  --regime hot,cold    regimes (default both)\n"
             "  --csv FILE           also write the table as CSV\n"
             "  --min-time S         minimum timed seconds per measurement (default 0.2)\n"
             "  --min-reps N         minimum timed calls per measurement (default 5)\n"
             "  --quick              smoke run: one small shape, hot, min time 0.02 s, 3 calls, 1 warm-up call\n");
}

options parse(int argc, char** argv) {
  options o;
  std::optional<double> min_time;
  std::optional<std::size_t> min_reps;
  bool shapes_given = false, regimes_given = false;
  static constexpr std::string_view regimes[] = {"hot", "cold"};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(bench::message(a, " needs a value"));
      return argv[++i];
    };
    if (a == "--shapes") {
      o.shapes.clear();
      for (const auto& s : bench::split_list(value())) o.shapes.push_back(parse_shape(s));
      if (o.shapes.empty()) throw std::invalid_argument("--shapes: empty list");
      shapes_given = true;
    } else if (a == "--batch") {
      o.batches.clear();
      for (const auto& s : bench::split_list(value())) {
        const std::size_t b = bench::parse_size(s, "--batch");
        if (b == 0) throw std::invalid_argument("--batch: batch sizes must be >= 1");
        o.batches.push_back(b);
      }
      if (o.batches.empty()) throw std::invalid_argument("--batch: empty list");
    } else if (a == "--threads") {
      o.threads = bench::parse_threads(value());
    } else if (a == "--regime") {
      o.regimes = bench::parse_choices(value(), regimes, "--regime");
      regimes_given = true;
    } else if (a == "--csv") {
      o.csv = value();
    } else if (a == "--min-time") {
      min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--min-reps") {
      min_reps = bench::parse_size(value(), "--min-reps");
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "' (--help lists them)"));
    }
  }
  if (o.quick) {
    o.timing = {.min_time = 0.02, .min_reps = 3, .max_reps = 100000, .warmup = 1};
    if (!shapes_given) o.shapes = {{1024, 1024}};
    if (!regimes_given) o.regimes = {"hot"};
  }
  if (min_time) o.timing.min_time = *min_time;
  if (min_reps) o.timing.min_reps = std::max<std::size_t>(1, *min_reps);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Output

struct row {
  std::string shape, kernel, regime;
  std::size_t batch = 1, threads = 1, bytes = 0;
  bench::timing t;
  double vs_sweep = NAN, x_fp32 = NAN, x_int8 = NAN;
  bool finite = true;
};

class table {
 public:
  explicit table(const std::string& csv_path) {
    if (!csv_path.empty()) {
      csv_ = std::fopen(csv_path.c_str(), "w");
      if (csv_ == nullptr) throw std::runtime_error(bench::message("cannot write ", csv_path));
      fmt::print(csv_,
                 "shape,rows,cols,kernel,batch,threads,regime,bytes,median_us,min_us,us_per_token,reps,gbps,vs_sweep,"
                 "x_fp32,x_int8wo,finite\n");
    }
  }
  table(const table&) = delete;
  table& operator=(const table&) = delete;
  ~table() {
    if (csv_ != nullptr) std::fclose(csv_);
  }

  void header() const {
    fmt::print("{:<11} {:<16} {:>3} {:>3} {:<4} {:>7} {:>10} {:>9} {:>7} {:>8} {:>7} {:>8}\n", "shape", "kernel",
               "tok", "thr", "reg", "MB", "us/call", "us/token", "GB/s", "vs_sweep", "x_fp32", "x_int8wo");
  }

  void add(const row& r, std::size_t rows, std::size_t cols) {
    const double us = r.t.median * 1e6, min_us = r.t.min * 1e6, per_tok = us / static_cast<double>(r.batch);
    const double gbps = r.t.median > 0 ? static_cast<double>(r.bytes) / r.t.median * 1e-9 : NAN;
    const auto opt = [](double v) { return std::isnan(v) ? std::string("-") : fmt::format("{:.2f}", v); };
    fmt::print("{:<11} {:<16} {:>3} {:>3} {:<4} {:>7.2f} {:>10.1f} {:>9.1f} {:>7.2f} {:>8} {:>7} {:>8}{}\n", r.shape,
               r.kernel, r.batch, r.threads, r.regime, static_cast<double>(r.bytes) * 1e-6, us, per_tok, gbps,
               opt(r.vs_sweep), opt(r.x_fp32), opt(r.x_int8), r.finite ? "" : "  NON-FINITE y!");
    std::fflush(stdout);
    if (csv_ != nullptr) {
      const auto csv_opt = [](double v) { return std::isnan(v) ? std::string() : fmt::format("{:.4f}", v); };
      fmt::print(csv_, "{},{},{},{},{},{},{},{},{:.3f},{:.3f},{:.3f},{},{:.4f},{},{},{},{}\n", r.shape, rows, cols,
                 r.kernel, r.batch, r.threads, r.regime, r.bytes, us, min_us, per_tok, r.t.reps, gbps,
                 csv_opt(r.vs_sweep), csv_opt(r.x_fp32), csv_opt(r.x_int8), r.finite ? 1 : 0);
      std::fflush(csv_);
    }
  }

 private:
  std::FILE* csv_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The benchmark

using bench::pools;
using bench::with_executor;
using int8_tensor = quant::tensor<quant::int8, quant::per_channel<>>;

/// The W8A8 weights as a region list for the read sweep (padded codes, scales, code sums).
bench::region_list regions_of(const quant::w8a8::weights& w) {
  const auto v = w.cview();
  bench::region_list out;
  const auto add = [&out](auto span) {
    const auto b = std::as_bytes(span);
    out.push_back({b.data(), b.size()});
  };
  add(v.codes());
  add(v.scales());
  add(v.row_sums());
  return out;
}

double rel_error(const std::vector<float>& ref, const std::vector<float>& y) {
  double e = 0.0, s = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(ref[i]) - y[i];
    e += d * d;
    s += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(e / s);
}

class runner {
 public:
  explicit runner(options o) : o_(std::move(o)), table_(o_.csv), threshold_(bench::cold_threshold()) {}

  void run() {
    print_header();
    table_.header();
    for (const auto& sh : o_.shapes) run_shape(sh);
  }

 private:
  void print_header() const {
    fmt::print("quant {} W8A8 benchmark\n", quant::version_string);
    fmt::print("W8A8 kernels: {}; int8 weight-only GEMV: {}; baselines (read sweep, fp32 GEMV): {}\n",
               quant::isa_name(quant::w8a8::kernel_isa()), quant::active_isa_name(), bench::simd_name());
    fmt::print("CPU: {}, {} hardware threads, L3 of cpu0 {} MiB\n", bench::cpu_model(),
               std::thread::hardware_concurrency(), bench::l3_bytes() >> 20);
    fmt::print("cold: N distinct copies, N x bytes > {} MiB, cycled call by call; hot: one copy\n", threshold_ >> 20);
    fmt::print("timing: median per call over >= {} calls and >= {} s, after {} warm-up calls\n", o_.timing.min_reps,
               o_.timing.min_time, o_.timing.warmup);
    fmt::print(
        "kernels: w8a8-gemm = quant::w8a8::gemm, all tokens of the call at once (activations quantized per token "
        "inside);\n"
        "         int8-wo-fast = quant::gemv(int8 per-channel, quant::fast) once per token; fp32-sgemv = our fp32 "
        "GEMV once per token\n"
        "MB = weight bytes of the method; GB/s = MB / time per call; vs_sweep = t(read sweep of the same bytes) / "
        "t(call);\n"
        "x_fp32, x_int8wo = speed-up of the call over fp32-sgemv / int8-wo-fast at the same batch, threads, "
        "regime\n\n");
    std::fflush(stdout);
  }

  void run_shape(const shape& sh) {
    const std::string label = sh.label();
    const std::size_t max_batch = *std::max_element(o_.batches.begin(), o_.batches.end());
    bench::aligned_array<float> w(sh.rows * sh.cols);
    bench::fill_gaussian(w.span(), 0x5eed0000 + sh.rows * 31 + sh.cols, 0.02f);
    std::vector<float> x(max_batch * sh.cols), y(max_batch * sh.rows);
    bench::fill_gaussian(x, 0xacc0 + sh.cols, 1.0f);

    const auto t0 = bench::clock::now();
    const quant::matrix_view<const float> wv(w.data(), sh.rows, sh.cols);
    const int8_tensor t = quant::quantize<quant::int8, quant::per_channel<>>(wv);
    const quant::w8a8::weights q = quant::w8a8::quantize_weights(wv);
    fmt::print(stderr, "[{}] quantized in {:.2f} s\n", label, bench::seconds_since(t0));

    // Accuracy of the two int8 paths against fp32 on these (outlier-free) activations.
    {
      const std::size_t n = max_batch;
      std::vector<float> yf(n * sh.rows), yq(n * sh.rows), yw(n * sh.rows);
      for (std::size_t i = 0; i < n; ++i) {
        bench::sgemv(w.data(), sh.rows, sh.cols, x.data() + i * sh.cols, yf.data() + i * sh.rows);
        quant::gemv(t, std::span<const float>(x.data() + i * sh.cols, sh.cols),
                    std::span<float>(yw.data() + i * sh.rows, sh.rows), quant::fast);
      }
      quant::w8a8::gemm(q, quant::matrix_view<const float>(x.data(), n, sh.cols),
                        quant::matrix_view<float>(yq.data(), n, sh.rows));
      fmt::print("[{}] relative error against fp32 over {} Gaussian tokens: w8a8-gemm {:.5f}, int8-wo-fast {:.5f}\n",
                 label, n, rel_error(yf, yq), rel_error(yf, yw));
    }

    const bool any_cold = bench::contains(o_.regimes, "cold");
    bench::cold_set<bench::aligned_array<float>> cold_f;
    bench::cold_set<int8_tensor> cold_t;
    bench::cold_set<quant::w8a8::weights> cold_q;
    if (any_cold) {
      fmt::print(stderr, "[{}] building the cold sets ({} + {} + {} copies)\n", label,
                 bench::cold_copies(w.bytes(), threshold_), bench::cold_copies(t.bytes(), threshold_),
                 bench::cold_copies(q.bytes(), threshold_));
      cold_f = bench::cold_set<bench::aligned_array<float>>(w, bench::cold_copies(w.bytes(), threshold_));
      cold_t = bench::cold_set<int8_tensor>(t, bench::cold_copies(t.bytes(), threshold_));
      cold_q = bench::cold_set<quant::w8a8::weights>(q, bench::cold_copies(q.bytes(), threshold_));
    }
    std::vector<std::byte> ws_raw(quant::w8a8::gemm_workspace_size(q, max_batch) + 64);
    std::byte* ws = ws_raw.data() + (64 - reinterpret_cast<std::uintptr_t>(ws_raw.data()) % 64) % 64;
    const std::span<std::byte> wspan(ws, ws_raw.size() - 64);

    for (const auto& regime : o_.regimes) {
      const bool is_cold = regime == "cold";
      const auto next_f = [&]() -> const bench::aligned_array<float>& { return is_cold ? cold_f.next() : w; };
      const auto next_t = [&]() -> const int8_tensor& { return is_cold ? cold_t.next() : t; };
      const auto next_q = [&]() -> const quant::w8a8::weights& { return is_cold ? cold_q.next() : q; };
      for (const std::size_t threads : o_.threads) {
        // the read sweeps do not depend on the batch
        const auto sweep = [&](auto&& regions_of_next) {
          return with_executor(ps_, threads, [&](auto& exec) {
            return bench::measure([&] { (void)bench::read_sweep(regions_of_next(), exec); }, o_.timing);
          });
        };
        const bench::timing sw_q = sweep([&] { return regions_of(next_q()); });
        const bench::timing sw_t = sweep([&] { return bench::regions_of(next_t()); });
        const bench::timing sw_f = sweep([&] { return bench::regions_of(next_f()); });
        table_.add({label, "sweep-w8a8", regime, 1, threads, q.bytes(), sw_q, 1.0, NAN, NAN, true}, sh.rows, sh.cols);
        table_.add({label, "sweep-int8", regime, 1, threads, t.bytes(), sw_t, 1.0, NAN, NAN, true}, sh.rows, sh.cols);
        table_.add({label, "sweep-fp32", regime, 1, threads, w.bytes(), sw_f, 1.0, NAN, NAN, true}, sh.rows, sh.cols);

        for (const std::size_t batch : o_.batches) {
          const quant::matrix_view<const float> xb(x.data(), batch, sh.cols);
          const quant::matrix_view<float> yb(y.data(), batch, sh.rows);
          const auto finite = [&] { return bench::all_finite(std::span<const float>(y.data(), batch * sh.rows)); };

          row f{label, "fp32-sgemv", regime, batch, threads, w.bytes(), {}, NAN, 1.0, NAN, true};
          std::fill(y.begin(), y.end(), NAN);
          f.t = with_executor(ps_, threads, [&](auto& exec) {
            return bench::measure(
                [&] {
                  const auto& wf = next_f();
                  for (std::size_t i = 0; i < batch; ++i)
                    bench::sgemv(wf.data(), sh.rows, sh.cols, x.data() + i * sh.cols, y.data() + i * sh.rows, exec);
                },
                o_.timing);
          });
          f.finite = finite();
          f.vs_sweep = sw_f.median / f.t.median;

          row i8{label, "int8-wo-fast", regime, batch, threads, t.bytes(), {}, NAN, NAN, 1.0, true};
          std::fill(y.begin(), y.end(), NAN);
          i8.t = bench::measure(
              [&] {
                const auto& tt = next_t();
                for (std::size_t i = 0; i < batch; ++i) {
                  const std::span<const float> xi(x.data() + i * sh.cols, sh.cols);
                  const std::span<float> yi(y.data() + i * sh.rows, sh.rows);
                  if (threads <= 1) quant::gemv(tt, xi, yi, quant::fast);
                  else quant::gemv(tt, xi, yi, quant::fast, ps_.get(threads));
                }
              },
              o_.timing);
          i8.finite = finite();
          i8.vs_sweep = sw_t.median / i8.t.median;
          i8.x_fp32 = f.t.median / i8.t.median;
          f.x_int8 = i8.t.median / f.t.median;

          row g{label, "w8a8-gemm", regime, batch, threads, q.bytes(), {}, NAN, NAN, NAN, true};
          std::fill(y.begin(), y.end(), NAN);
          g.t = with_executor(ps_, threads, [&](auto& exec) {
            return bench::measure([&] { quant::w8a8::gemm(next_q(), xb, yb, wspan, exec); }, o_.timing);
          });
          g.finite = finite();
          g.vs_sweep = sw_q.median / g.t.median;
          g.x_fp32 = f.t.median / g.t.median;
          g.x_int8 = i8.t.median / g.t.median;

          table_.add(f, sh.rows, sh.cols);
          table_.add(i8, sh.rows, sh.cols);
          table_.add(g, sh.rows, sh.cols);
        }
      }
    }
  }

  options o_;
  table table_;
  std::size_t threshold_;
  pools ps_;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    runner(parse(argc, argv)).run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "w8a8_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
