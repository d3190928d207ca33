// qat_bench: the fake-quantization primitives of quant/qat.hpp (SIMD, this build's tier) against
// their scalar reference (qat::reference) and against a plain fp32 copy of the same bytes.
//
// For every weight shape and format it times, single-threaded:
//   copy       std::memcpy of the rows x cols fp32 weights into another buffer: the bandwidth
//              baseline (a read and a write of the same bytes as the forward pass)
//   fwd fit    qat::fake_quantize: the library's scale fit per block, then w_hat
//   fwd param  qat::fake_quantize_with: w_hat with given (learnable) scales and zero points
//   backward   qat::backward: dL/dw (the STE with the clipping mask) and dL/ds, dL/dz per block;
//              it reads two matrices (w and dL/dw_hat) and writes one, 1.5x the copy's traffic
// and prints the time per call of the scalar reference, of the SIMD kernel alone and of the API
// (the kernel after argument validation, which scans the inputs for non-finite values), the
// API's throughput in GB/s of fp32 weights (rows * cols * 4 bytes / time), its ratio to the copy
// (t_copy / t_api: 1 is copy speed) and the kernel's speed-up over the scalar path. The outputs of
// the kernel and of the reference are compared bit for bit (dL/dw) and printed as "identical".
//
//   qat_bench [--shapes 1024x1024,4096x4096] [--formats int4_g128_asym,...] [--min-time S]
//             [--quick] [--list]
#include <fmt/core.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <quant/qat.hpp>

#include "bench_support.hpp"

namespace {

template <class F, class G>
struct format_case {
  using format = F;
  using granularity = G;
  std::string_view name;   ///< command-line name
  std::string_view label;  ///< table label
};

const auto all_formats = std::make_tuple(
    format_case<quant::int4, quant::per_group<128, quant::asymmetric>>{"int4_g128_asym", "int4 g128 asym"},
    format_case<quant::int4, quant::per_group<32>>{"int4_g32", "int4 g32 sym"},
    format_case<quant::int3, quant::per_group<128, quant::asymmetric>>{"int3_g128_asym", "int3 g128 asym"},
    format_case<quant::int2, quant::per_group<64, quant::asymmetric>>{"int2_g64_asym", "int2 g64 asym"},
    format_case<quant::int8, quant::per_channel<>>{"int8_pc", "int8 per-channel"},
    format_case<quant::nf4, quant::per_group<64>>{"nf4_g64", "nf4 g64"},
    format_case<quant::fp4_e2m1, quant::per_group<32, quant::symmetric, quant::e8m0>>{"mxfp4", "MXFP4"},
    format_case<quant::fp8_e4m3, quant::per_channel<>>{"fp8_e4m3_pc", "fp8 e4m3 per-channel"});

std::vector<std::string_view> format_names() {
  std::vector<std::string_view> n;
  std::apply([&](const auto&... c) { (n.push_back(c.name), ...); }, all_formats);
  return n;
}

struct options {
  std::vector<std::pair<std::size_t, std::size_t>> shapes{{1024, 1024}, {4096, 4096}};
  std::vector<std::string> formats;
  double min_time = 0.5;
  bool quick = false;
};

options parse(int argc, char** argv) {
  options o;
  const auto names = format_names();
  for (const auto n : names) o.formats.emplace_back(n);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(bench::message(a, ": missing value"));
      return argv[++i];
    };
    if (a == "--shapes") {
      o.shapes.clear();
      for (const auto& s : bench::split_list(value())) {
        const auto x = s.find('x');
        if (x == std::string::npos) throw std::invalid_argument(bench::message("--shapes: not RxC: '", s, "'"));
        o.shapes.emplace_back(bench::parse_size(s.substr(0, x), "--shapes"),
                              bench::parse_size(s.substr(x + 1), "--shapes"));
        if (o.shapes.back().first == 0 || o.shapes.back().second == 0)
          throw std::invalid_argument(bench::message("--shapes: empty shape '", s, "'"));
      }
      if (o.shapes.empty()) throw std::invalid_argument("--shapes: empty list");
    } else if (a == "--formats") {
      o.formats = bench::parse_choices(value(), names, "--formats");
    } else if (a == "--min-time") {
      o.min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--quick") {
      o.quick = true;
      o.shapes = {{1024, 1024}};
      o.min_time = 0.05;
    } else if (a == "--list") {
      for (const auto n : names) fmt::print("{}\n", n);
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      fmt::print("qat_bench [--shapes 1024x1024,4096x4096] [--formats NAME,...] [--min-time S] [--quick] [--list]\n");
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "' (--help)"));
    }
  }
  return o;
}

struct line {
  const char* op;
  bench::timing scalar, kernel, api;
  bool identical;
};

void print_line(const std::string& label, const std::string& shape, const line& l, double bytes, double t_copy) {
  fmt::print("{:<22} {:>10} {:<10} {:>10.2f} {:>9.3f} {:>9.3f} {:>8.2f} {:>7.2f} {:>8.1f}x  {}\n", label, shape, l.op,
             l.scalar.median * 1e3, l.kernel.median * 1e3, l.api.median * 1e3, bytes / l.api.median / 1e9,
             t_copy / l.api.median, l.scalar.median / l.kernel.median, l.identical ? "identical" : "MISMATCH");
}

template <class C>
void run_case(const C& c, std::size_t rows, std::size_t cols, const std::vector<float>& w, const std::vector<float>& g,
              const options& opt) {
  using F = typename C::format;
  using G = typename C::granularity;
  namespace qat = quant::qat;
  using D = qat::detail::driver_for<F, G>;
  const G gran{};
  const std::size_t n = rows * cols;
  const quant::matrix_view<const float> wv(w.data(), rows, cols), gv(g.data(), rows, cols);
  const quant::scale_grid grid = quant::grid_of(gran, rows, cols, "qat_bench");
  const std::size_t np = grid.count(), nz = G::is_asymmetric ? np : 0;
  std::vector<float> s(np), z(nz), ds(np), dz(nz);
  qat::fit<F>(wv, {s, z}, gran);
  for (auto& v : s) v *= 0.9f;  // learnable scales a little below min-max: some weights clip
  bench::aligned_array<float> out(n), ref(n), copy(n);
  const quant::matrix_view<float> ov(out.data(), rows, cols), rv(ref.data(), rows, cols);

  const bench::timing_options tk{opt.min_time, 5, 100000, 2};
  const bench::timing_options tref{opt.min_time, opt.quick ? 1u : 3u, 100000, opt.quick ? 0u : 1u};
  const bench::timing t_copy = bench::measure([&] { std::memcpy(copy.data(), w.data(), n * sizeof(float)); }, tk);
  const double bytes = static_cast<double>(n * sizeof(float));
  const std::string label(c.label), shape = fmt::format("{}x{}", rows, cols);
  fmt::print("{:<22} {:>10} {:<10} {:>10} {:>9} {:>9.3f} {:>8.2f} {:>7.2f}\n", label, shape, "copy", "", "",
             t_copy.median * 1e3, bytes / t_copy.median / 1e9, 1.0);

  line fwd{"fwd fit", {}, {}, {}, false};
  fwd.scalar = bench::measure([&] { qat::reference::fake_quantize<F>(wv, rv, gran); }, tref);
  fwd.kernel = bench::measure([&] { D::fake_quantize(wv, ov, {}, grid, {}); }, tk);
  fwd.api = bench::measure([&] { qat::fake_quantize<F>(wv, ov, gran); }, tk);
  fwd.identical = std::memcmp(out.data(), ref.data(), n * sizeof(float)) == 0;
  print_line("", "", fwd, bytes, t_copy.median);

  line with{"fwd param", {}, {}, {}, false};
  with.scalar = bench::measure([&] { qat::reference::fake_quantize_with<F>(wv, {s, z}, rv, gran); }, tref);
  with.kernel = bench::measure([&] { D::fake_quantize_with(wv, {s, z}, ov, grid); }, tk);
  with.api = bench::measure([&] { qat::fake_quantize_with<F>(wv, {s, z}, ov, gran); }, tk);
  with.identical = std::memcmp(out.data(), ref.data(), n * sizeof(float)) == 0;
  print_line("", "", with, bytes, t_copy.median);

  line bwd{"backward", {}, {}, {}, false};
  std::size_t clipped = 0;
  bwd.scalar = bench::measure([&] { qat::reference::backward<F>(wv, {s, z}, gv, rv, {ds, dz}, gran); }, tref);
  bwd.kernel = bench::measure([&] { clipped = D::backward(wv, {s, z}, gv, ov, {ds, dz}, grid, false); }, tk);
  bwd.api = bench::measure([&] { qat::backward<F>(wv, {s, z}, gv, ov, {ds, dz}, gran); }, tk);
  bwd.identical = std::memcmp(out.data(), ref.data(), n * sizeof(float)) == 0;
  print_line("", "", bwd, bytes, t_copy.median);
  bench::consume(clipped);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options opt = parse(argc, argv);
    fmt::print("qat_bench: {}, tier {}, 1 thread; GB/s of fp32 weights; x copy = t(memcpy of the weights) / t(api); "
               "x scalar = t(reference) / t(kernel)\n",
               bench::cpu_model(), quant::isa_name(quant::default_isa::id));
    fmt::print("{:<22} {:>10} {:<10} {:>10} {:>9} {:>9} {:>8} {:>7} {:>9}  {}\n", "format", "shape", "op", "scalar ms",
               "simd ms", "api ms", "GB/s", "x copy", "x scalar", "dL/dw, w_hat");
    for (const auto& shape : opt.shapes) {
      const std::size_t rows = shape.first, cols = shape.second;  // not a structured binding: the lambda below uses them
      std::vector<float> w(rows * cols), g(rows * cols);
      bench::fill_gaussian(w, rows * 31 + cols, 0.02f);
      bench::fill_gaussian(g, rows * 37 + cols, 1.0f);
      std::apply(
          [&](const auto&... c) {
            auto one = [&](const auto& fc) {
              if (!bench::contains(opt.formats, fc.name)) return;
              run_case(fc, rows, cols, w, g, opt);
            };
            (one(c), ...);
          },
          all_formats);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "qat_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
