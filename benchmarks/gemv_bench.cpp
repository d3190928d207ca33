// gemv_bench: quantized GEMV (y = W x) against the memory bound and against fp32.
//
// For every weight shape, format, mode (exact / fast), thread count and regime (hot: one copy
// called again and again; cold: enough distinct copies, cycled call by call, that every call
// reads its weights from DRAM) it prints the time per call, the bandwidth over the weight bytes
// (t.bytes() / time), the ratio to a read-only sweep over the same bytes (same threads, same
// regime: 1.0 means the GEMV runs as fast as memory can deliver its weights), and the speed-up
// over our fp32 GEMV and over OpenBLAS cblas_sgemv of the same shape (same threads and regime).
//
//   gemv_bench [--shapes 4096x4096,11008x4096,4096x11008] [--formats int4_g128,...]
//              [--mode exact,fast] [--threads 1,2] [--regime hot,cold] [--csv FILE]
//              [--min-time S] [--min-reps N] [--quick] [--list]
#include <fmt/core.h>
#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "bench_support.hpp"

namespace {

// ---------------------------------------------------------------------------------------------
// The formats

template <class F, class G>
struct format_case {
  using format = F;
  using granularity = G;
  std::string_view name;   ///< command-line name
  std::string_view label;  ///< table label
};

using mx_gran = quant::per_group<32, quant::symmetric, quant::e8m0>;

const auto all_formats = std::make_tuple(
    format_case<quant::int8, quant::per_channel<>>{"int8_pc", "int8 per-channel sym"},
    format_case<quant::int4, quant::per_group<32>>{"int4_g32", "int4 g32 sym"},
    format_case<quant::int4, quant::per_group<128>>{"int4_g128", "int4 g128 sym"},
    format_case<quant::int4, quant::per_group<128, quant::asymmetric>>{"int4_g128_asym", "int4 g128 asym"},
    format_case<quant::int3, quant::per_group<128, quant::asymmetric>>{"int3_g128_asym", "int3 g128 asym"},
    format_case<quant::int2, quant::per_group<64, quant::asymmetric>>{"int2_g64_asym", "int2 g64 asym"},
    format_case<quant::nf4, quant::per_group<64>>{"nf4_g64", "nf4 g64"},
    format_case<quant::fp4_e2m1, quant::per_group<32>>{"fp4_g32", "fp4 e2m1 g32"},
    format_case<quant::fp4_e2m1, mx_gran>{"mxfp4", "MXFP4"},
    format_case<quant::fp8_e4m3, quant::per_channel<>>{"fp8_e4m3_pc", "fp8 e4m3 per-channel"},
    format_case<quant::fp8_e5m2, quant::per_channel<>>{"fp8_e5m2_pc", "fp8 e5m2 per-channel"},
    format_case<quant::fp8_e4m3, mx_gran>{"mxfp8", "MXFP8"});

std::vector<std::string_view> format_names() {
  std::vector<std::string_view> names;
  std::apply([&](const auto&... c) { (names.push_back(c.name), ...); }, all_formats);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Options

struct shape {
  std::size_t rows = 0, cols = 0;
  std::string label() const { return fmt::format("{}x{}", rows, cols); }
};

struct options {
  std::vector<shape> shapes{{4096, 4096}, {11008, 4096}, {4096, 11008}};
  std::vector<std::string> formats;  // empty: all
  std::vector<std::string> modes{"exact", "fast"};
  std::vector<std::size_t> threads{1, 2};
  std::vector<std::string> regimes{"hot", "cold"};
  std::string csv;
  bench::timing_options timing;
  bool quick = false;
};

shape parse_shape(const std::string& s) {
  const auto x = s.find('x');
  if (x == std::string::npos)
    throw std::invalid_argument(bench::message("--shapes: expected ROWSxCOLS, got '", s, "'"));
  shape sh{bench::parse_size(s.substr(0, x), "--shapes"), bench::parse_size(s.substr(x + 1), "--shapes")};
  if (sh.rows == 0 || sh.cols == 0) throw std::invalid_argument(bench::message("--shapes: empty shape '", s, "'"));
  return sh;
}

void usage(std::FILE* out) {
  fmt::print(out,
             "usage: gemv_bench [options]\n"
             "  --shapes R1xC1,...   weight shapes, rows x cols (default 4096x4096,11008x4096,4096x11008)\n"
             "  --formats a,b,...    formats (default all; --list names them; none: only the fp32 baselines)\n"
             "  --mode exact,fast    GEMV modes (default both)\n"
             "  --threads 1,2        thread counts (default 1,2)\n"
             "  --regime hot,cold    regimes (default both)\n"
             "  --csv FILE           also write the table as CSV\n"
             "  --min-time S         minimum timed seconds per measurement (default 0.2)\n"
             "  --min-reps N         minimum timed calls per measurement (default 5)\n"
             "  --quick              smoke run: min time 0.02 s, 3 calls, 1 warm-up call\n"
             "  --list               list the formats and exit\n");
}

options parse(int argc, char** argv) {
  options o;
  std::optional<double> min_time;
  std::optional<std::size_t> min_reps;
  const auto names = format_names();
  static constexpr std::string_view modes[] = {"exact", "fast"};
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
    } else if (a == "--formats") {
      const std::string v = value();
      if (v == "none") {
        o.formats = {"none"};  // only the read sweep and fp32 baselines
      } else {
        o.formats = bench::parse_choices(v, names, "--formats");
      }
    } else if (a == "--mode") {
      o.modes = bench::parse_choices(value(), modes, "--mode");
    } else if (a == "--threads") {
      o.threads = bench::parse_threads(value());
    } else if (a == "--regime") {
      o.regimes = bench::parse_choices(value(), regimes, "--regime");
    } else if (a == "--csv") {
      o.csv = value();
    } else if (a == "--min-time") {
      min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--min-reps") {
      min_reps = bench::parse_size(value(), "--min-reps");
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--list") {
      std::apply([](const auto&... c) { (fmt::print("{:16} {}\n", c.name, c.label), ...); }, all_formats);
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "' (--help lists them)"));
    }
  }
  if (o.quick) o.timing = {.min_time = 0.02, .min_reps = 3, .max_reps = 100000, .warmup = 1};
  if (min_time) o.timing.min_time = *min_time;
  if (min_reps) o.timing.min_reps = std::max<std::size_t>(1, *min_reps);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Output

struct row {
  std::string shape, format, kernel, regime;
  std::size_t threads = 1, bytes = 0;
  bench::timing t;
  double vs_sweep = NAN, x_fp32 = NAN, x_blas = NAN;
  bool finite = true;
};

class table {
 public:
  explicit table(const std::string& csv_path) {
    if (!csv_path.empty()) {
      csv_ = std::fopen(csv_path.c_str(), "w");
      if (csv_ == nullptr) throw std::runtime_error(bench::message("cannot write ", csv_path));
      fmt::print(csv_,
                 "shape,rows,cols,format,kernel,threads,regime,bytes,median_us,min_us,reps,gbps,vs_sweep,x_fp32,"
                 "x_openblas,finite\n");
    }
  }
  table(const table&) = delete;
  table& operator=(const table&) = delete;
  ~table() {
    if (csv_ != nullptr) std::fclose(csv_);
  }

  void header() const {
    fmt::print("{:<11} {:<21} {:<10} {:>3} {:<4} {:>8} {:>10} {:>10} {:>7} {:>8} {:>7} {:>7}\n", "shape", "format",
               "kernel", "thr", "reg", "MB", "us/call", "min us", "GB/s", "vs_sweep", "x_fp32", "x_blas");
  }

  void add(const row& r, std::size_t rows, std::size_t cols) {
    const double us = r.t.median * 1e6, min_us = r.t.min * 1e6;
    const double gbps = r.t.median > 0 ? static_cast<double>(r.bytes) / r.t.median * 1e-9 : NAN;
    const auto opt = [](double v) { return std::isnan(v) ? std::string("-") : fmt::format("{:.2f}", v); };
    fmt::print("{:<11} {:<21} {:<10} {:>3} {:<4} {:>8.2f} {:>10.1f} {:>10.1f} {:>7.2f} {:>8} {:>7} {:>7}{}\n", r.shape,
               r.format, r.kernel, r.threads, r.regime, static_cast<double>(r.bytes) * 1e-6, us, min_us, gbps,
               opt(r.vs_sweep), opt(r.x_fp32), opt(r.x_blas), r.finite ? "" : "  NON-FINITE y!");
    std::fflush(stdout);
    if (csv_ != nullptr) {
      const auto csv_opt = [](double v) { return std::isnan(v) ? std::string() : fmt::format("{:.4f}", v); };
      fmt::print(csv_, "{},{},{},\"{}\",{},{},{},{},{:.3f},{:.3f},{},{:.4f},{},{},{},{}\n", r.shape, rows, cols,
                 r.format, r.kernel, r.threads, r.regime, r.bytes, us, min_us, r.t.reps, gbps, csv_opt(r.vs_sweep),
                 csv_opt(r.x_fp32), csv_opt(r.x_blas), r.finite ? 1 : 0);
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

/// quant::gemv on a tensor with the given mode on `threads` threads (the plain call for one).
template <class T, class Mode>
void run_gemv(const T& t, std::span<const float> x, std::span<float> y, Mode mode, pools& ps, std::size_t threads) {
  if (threads <= 1) {
    quant::gemv(t, x, y, mode);
  } else {
    quant::gemv(t, x, y, mode, ps.get(threads));
  }
}

struct key {
  std::string regime;
  std::size_t threads;
  auto operator<=>(const key&) const = default;
};

struct baselines {
  std::map<key, double> fp32, blas;  // median seconds per call
};

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
    const std::size_t l3 = bench::l3_bytes();
    fmt::print("quant {} GEMV benchmark\n", quant::version_string);
    fmt::print("quant kernels: {}; baselines (read sweep, fp32 GEMV): {}\n", quant::active_isa_name(),
               bench::simd_name());
    fmt::print("CPU: {}, {} hardware threads, L3 of cpu0 {} MiB\n", bench::cpu_model(),
               std::thread::hardware_concurrency(), l3 >> 20);
    fmt::print("{}\n", bench::openblas_description());
    fmt::print(
        "cold: N distinct copies, N x bytes > 2 x max(L3, {} MiB) = {} MiB, cycled call by call; hot: one copy\n",
        bench::assumed_l3_floor >> 20, threshold_ >> 20);
    fmt::print("timing: median per call over >= {} calls and >= {} s, after {} warm-up calls\n", o_.timing.min_reps,
               o_.timing.min_time, o_.timing.warmup);
    fmt::print(
        "MB = weight bytes per call (1e6); GB/s = MB / time; vs_sweep = t(read sweep of the same bytes) / t "
        "(1 = at the read bandwidth);\n"
        "x_fp32, x_blas = speed-up over our fp32 GEMV / OpenBLAS sgemv of the same shape (same threads, "
        "regime)\n\n");
    std::fflush(stdout);
  }

  bool want(std::string_view name) const { return o_.formats.empty() || bench::contains(o_.formats, name); }

  void run_shape(const shape& sh) {
    const std::string label = sh.label();
    bench::aligned_array<float> w(sh.rows * sh.cols);
    bench::fill_gaussian(w.span(), 0x5eed0000 + sh.rows * 31 + sh.cols, 0.02f);
    std::vector<float> x(sh.cols), y(sh.rows);
    bench::fill_gaussian(x, 0xacc0 + sh.cols, 1.0f);

    baselines base = run_fp32(sh, label, w, x, y);
    std::apply([&](const auto&... c) { (run_format(c, sh, label, w, x, y, base), ...); }, all_formats);
  }

  baselines run_fp32(const shape& sh, const std::string& label, const bench::aligned_array<float>& w,
                     const std::vector<float>& x, std::vector<float>& y) {
    baselines base;
    const std::size_t bytes = w.bytes();
    bench::cold_set<bench::aligned_array<float>> cold;
    if (bench::contains(o_.regimes, "cold")) {
      fmt::print(stderr, "[{}] building the fp32 cold set: {} copies of {:.1f} MB\n", label,
                 bench::cold_copies(bytes, threshold_), bytes * 1e-6);
      cold = bench::cold_set<bench::aligned_array<float>>(w, bench::cold_copies(bytes, threshold_));
    }
    for (const auto& regime : o_.regimes) {
      const bool is_cold = regime == "cold";
      const auto next = [&]() -> const bench::aligned_array<float>& { return is_cold ? cold.next() : w; };
      for (const std::size_t threads : o_.threads) {
        row r{label, "fp32", "read-sweep", regime, threads, bytes, {}, 1.0, NAN, NAN, true};
        r.t = with_executor(ps_, threads, [&](auto& exec) {
          return bench::measure([&] { (void)bench::read_sweep(bench::regions_of(next()), exec); }, o_.timing);
        });
        table_.add(r, sh.rows, sh.cols);
        const double sweep_t = r.t.median;

        row f{label, "fp32", "sgemv-ours", regime, threads, bytes, {}, NAN, 1.0, NAN, true};
        f.t = with_executor(ps_, threads, [&](auto& exec) {
          return bench::measure([&] { bench::sgemv(next().data(), sh.rows, sh.cols, x.data(), y.data(), exec); },
                                o_.timing);
        });
        f.finite = bench::all_finite(y);
        f.vs_sweep = sweep_t / f.t.median;
        base.fp32[{regime, threads}] = f.t.median;

#ifdef QUANT_BENCH_HAVE_OPENBLAS
        row b{label, "fp32", "sgemv-blas", regime, threads, bytes, {}, NAN, NAN, 1.0, true};
        bench::openblas_threads(threads);
        b.t = bench::measure([&] { bench::openblas_sgemv(next().data(), sh.rows, sh.cols, x.data(), y.data()); },
                             o_.timing);
        bench::openblas_threads(1);
        // OpenBLAS workers busy-wait for a while after a parallel call; let them go to sleep
        // before the next measurement shares the cores with them.
        if (threads > 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
        b.finite = bench::all_finite(y);
        b.vs_sweep = sweep_t / b.t.median;
        b.x_fp32 = f.t.median / b.t.median;
        base.blas[{regime, threads}] = b.t.median;
        f.x_blas = b.t.median / f.t.median;
        table_.add(f, sh.rows, sh.cols);
        table_.add(b, sh.rows, sh.cols);
#else
        table_.add(f, sh.rows, sh.cols);
#endif
      }
    }
    return base;
  }

  template <class F, class G>
  void run_format(const format_case<F, G>& c, const shape& sh, const std::string& label,
                  const bench::aligned_array<float>& w, const std::vector<float>& x, std::vector<float>& y,
                  const baselines& base) {
    if (!want(c.name)) return;
    using tensor_t = quant::tensor<F, G>;
    const auto t0 = bench::clock::now();
    const tensor_t t = quant::quantize<F, G>(quant::matrix_view<const float>(w.data(), sh.rows, sh.cols));
    const std::size_t bytes = t.bytes();
    bench::cold_set<tensor_t> cold;
    std::size_t copies = 0;
    if (bench::contains(o_.regimes, "cold")) {
      copies = bench::cold_copies(bytes, threshold_);
      cold = bench::cold_set<tensor_t>(t, copies);
    }
    fmt::print(stderr, "[{} {}] quantized in {:.2f} s, {:.2f} MB{}\n", label, c.label, bench::seconds_since(t0),
               bytes * 1e-6, copies ? fmt::format(", cold set of {} copies", copies) : std::string());

    for (const auto& regime : o_.regimes) {
      const bool is_cold = regime == "cold";
      const auto next = [&]() -> const tensor_t& { return is_cold ? cold.next() : t; };
      for (const std::size_t threads : o_.threads) {
        row s{label, std::string(c.label), "read-sweep", regime, threads, bytes, {}, 1.0, NAN, NAN, true};
        s.t = with_executor(ps_, threads, [&](auto& exec) {
          return bench::measure([&] { (void)bench::read_sweep(bench::regions_of(next()), exec); }, o_.timing);
        });
        const auto fp32 = base.fp32.find({regime, threads});
        const auto blas = base.blas.find({regime, threads});
        if (fp32 != base.fp32.end()) s.x_fp32 = fp32->second / s.t.median;
        if (blas != base.blas.end()) s.x_blas = blas->second / s.t.median;
        table_.add(s, sh.rows, sh.cols);

        for (const auto& mode_name : o_.modes) {
          const auto run_mode = [&](auto mode) {
            row r{label, std::string(c.label), mode_name, regime, threads, bytes, {}, NAN, NAN, NAN, true};
            std::fill(y.begin(), y.end(), NAN);
            r.t = bench::measure([&] { run_gemv(next(), x, y, mode, ps_, threads); }, o_.timing);
            r.finite = bench::all_finite(y);
            r.vs_sweep = s.t.median / r.t.median;
            if (fp32 != base.fp32.end()) r.x_fp32 = fp32->second / r.t.median;
            if (blas != base.blas.end()) r.x_blas = blas->second / r.t.median;
            table_.add(r, sh.rows, sh.cols);
          };
          if (mode_name == "exact")
            run_mode(quant::exact);
          else
            run_mode(quant::fast);
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
  bench::ensure_openblas_coretype(argv);
  try {
    runner(parse(argc, argv)).run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "gemv_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
