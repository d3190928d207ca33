// quantize_bench: round-to-nearest quantization of fp32 weights, the scalar reference against the
// SIMD kernel (kernels/simd/quantize.hpp).
//
// For every weight shape and format it prints the time per call of reference::quantize, of the
// SIMD kernel alone (detail::quantize_kernel on this build's tier) and of quant::quantize (the
// kernel plus argument validation, which scans the weights for non-finite values), the input
// bandwidth of the kernel (rows * cols * 4 bytes / time) and its speed-up over the reference. It
// also checks that the kernel's output is bit-identical to the reference's. Single-threaded.
//
//   quantize_bench [--shapes 4096x4096,11008x4096] [--formats int4_g128,...] [--min-time S]
//                  [--quick] [--list]
#include <fmt/core.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "bench_support.hpp"

namespace {

template <class F, class G>
struct format_case {
  using format = F;
  using granularity = G;
  std::string_view name;   ///< command-line name
  std::string_view label;  ///< table label
  quant::scale_search search = quant::scale_search::minmax;
};

using mx_gran = quant::per_group<32, quant::symmetric, quant::e8m0>;

const auto all_formats = std::make_tuple(
    format_case<quant::int4, quant::per_group<128>>{"int4_g128", "int4 g128 sym"},
    format_case<quant::int4, quant::per_group<128, quant::asymmetric>>{"int4_g128_asym", "int4 g128 asym"},
    format_case<quant::int8, quant::per_channel<>>{"int8_pc", "int8 per-channel"},
    format_case<quant::nf4, quant::per_group<64>>{"nf4_g64", "nf4 g64"},
    format_case<quant::fp4_e2m1, mx_gran>{"mxfp4", "MXFP4 (e2m1 g32 e8m0)"},
    format_case<quant::fp8_e4m3, quant::per_channel<>>{"fp8_e4m3_pc", "fp8 e4m3 per-channel"},
    format_case<quant::int3, quant::per_group<128>>{"int3_g128", "int3 g128 sym"},
    format_case<quant::int2, quant::per_group<64>>{"int2_g64", "int2 g64 sym"},
    format_case<quant::int4, quant::per_group<128>>{"int4_g128_mse", "int4 g128 sym, mse search",
                                                    quant::scale_search::mse});

std::vector<std::string_view> format_names() {
  std::vector<std::string_view> n;
  std::apply([&](const auto&... c) { (n.push_back(c.name), ...); }, all_formats);
  return n;
}

struct options {
  std::vector<std::pair<std::size_t, std::size_t>> shapes{{4096, 4096}, {11008, 4096}};
  std::vector<std::string> formats;
  double min_time = 1.0;
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
      }
    } else if (a == "--formats") {
      o.formats = bench::parse_choices(value(), names, "--formats");
    } else if (a == "--min-time") {
      o.min_time = bench::parse_double(value(), "--min-time");
    } else if (a == "--quick") {
      o.quick = true;
      o.shapes = {{4096, 4096}};
      o.min_time = 0.2;
    } else if (a == "--list") {
      for (const auto n : names) fmt::print("{}\n", n);
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "'"));
    }
  }
  return o;
}

template <class C>
void run_case(const C& c, std::size_t rows, std::size_t cols, const std::vector<float>& w, const options& opt) {
  using F = typename C::format;
  using G = typename C::granularity;
  using K = quant::detail::quantize_kernel<F, G::is_asymmetric, typename G::scale_type, quant::default_isa>;
  const quant::quantize_options qo{c.search};
  const quant::matrix_view<const float> wv(w.data(), rows, cols);
  quant::tensor<F, G> ref(rows, cols), simd(rows, cols), api(rows, cols);

  const bool slow = c.search == quant::scale_search::mse;  // the mse reference takes seconds
  const bench::timing_options tref{opt.min_time, slow ? 1u : 3u, 100000, slow ? 0u : 1u};
  const bench::timing_options tk{opt.min_time, 5, 100000, 2};
  const bench::timing r = bench::measure([&] { quant::reference::quantize(wv, ref.view(), qo); }, tref);
  const bench::timing k = bench::measure([&] { K::run(wv, simd.view(), qo); }, tk);
  const bench::timing a = bench::measure([&] { quant::quantize(wv, api.view(), qo); }, tk);

  auto same = [&](const quant::tensor<F, G>& t) {
    const auto x = t.cview(), y = ref.cview();
    return std::memcmp(x.codes().data(), y.codes().data(), x.codes().size()) == 0 &&
           std::memcmp(static_cast<const void*>(x.scales().data()), y.scales().data(), x.scales().size_bytes()) == 0 &&
           std::memcmp(x.zeros().data(), y.zeros().data(), x.zeros().size()) == 0;
  };
  const double gb = static_cast<double>(rows * cols * sizeof(float)) / 1e9;
  fmt::print("{:<28} {:>6}x{:<6} {:>10.2f} {:>9.2f} {:>9.2f} {:>8.2f} {:>8.1f}x  {}\n", c.label, rows, cols,
             r.median * 1e3, k.median * 1e3, a.median * 1e3, gb / k.median, r.median / k.median,
             same(simd) && same(api) ? "identical" : "MISMATCH");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options opt = parse(argc, argv);
    fmt::print("quantize_bench: {}, tier {}, 1 thread\n", bench::cpu_model(), quant::isa_name(quant::default_isa::id));
    fmt::print("{:<28} {:>13} {:>10} {:>9} {:>9} {:>8} {:>9}  {}\n", "format", "shape", "ref ms", "simd ms", "api ms",
               "GB/s", "speed-up", "output");
    for (const auto& [rows, cols] : opt.shapes) {
      std::vector<float> w(rows * cols);
      bench::fill_gaussian(w, rows * 31 + cols, 0.02f);
      std::apply(
          [&](const auto&... c) {
            auto one = [&](const auto& fc) {
              if (!bench::contains(opt.formats, fc.name)) return;
              run_case(fc, rows, cols, w, opt);
            };
            (one(c), ...);
          },
          all_formats);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "quantize_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
