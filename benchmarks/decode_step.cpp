// decode_step: one token through a Llama-2-7B-shaped stack of int4 layers.
//
// Each of the 32 layers holds q, k, v, o (dim x dim), gate and up (ffn x dim) and down (dim x ffn),
// dim 4096, ffn 11008, quantized as int4 g128 symmetric with fp16 scales (3.3 GB in all). A step
// runs the 7 GEMVs of every layer for one token: the weights are read once per step, so the step
// time is bounded by the memory bandwidth. It is compared with a read-only sweep over the same
// buffers on the same threads: once with one sweep per matrix (the same call structure as the
// step), once as a single pass over everything.
//
// Only one layer is quantized (from random weights); the others are deep copies of it: the
// bytes are what matters, and the scalar quantizer would take minutes for 6.5 G weights. Each
// layer starts from the same input vector (q, k, v read x; o reads v; gate, up read o's output;
// down reads gate's output): attention, norms and the residual are left out.
//
//   decode_step [--layers 32] [--mode fast|exact] [--threads 1,2] [--steps 10] [--warmup 2]
//               [--dim 4096] [--ffn 11008] [--quick]
#include <fmt/core.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bench_support.hpp"

namespace {

using gran = quant::per_group<128, quant::symmetric, quant::fp16>;
using tensor_t = quant::tensor<quant::int4, gran>;

struct options {
  std::size_t layers = 32, dim = 4096, ffn = 11008, steps = 10, warmup = 2;
  std::string mode = "fast";
  std::vector<std::size_t> threads{1, 2};
};

void usage(std::FILE* out) {
  fmt::print(out,
             "usage: decode_step [options]\n"
             "  --layers N        layers (default 32)\n"
             "  --mode fast|exact GEMV mode (default fast)\n"
             "  --threads 1,2     thread counts (default 1,2)\n"
             "  --steps N         timed steps (default 10)\n"
             "  --warmup N        untimed steps first (default 2)\n"
             "  --dim N           model dimension (default 4096)\n"
             "  --ffn N           feed-forward dimension (default 11008)\n"
             "  --quick           smoke run: 2 layers, 3 steps, 1 warm-up step\n");
}

options parse(int argc, char** argv) {
  options o;
  bool quick = false, layers_set = false, steps_set = false, warmup_set = false;
  static constexpr std::string_view modes[] = {"exact", "fast"};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(bench::message(a, " needs a value"));
      return argv[++i];
    };
    const auto positive = [&](const char* what) {
      const std::size_t n = bench::parse_size(value(), what);
      if (n == 0) throw std::invalid_argument(bench::message(what, " must be >= 1"));
      return n;
    };
    if (a == "--layers") {
      o.layers = positive("--layers");
      layers_set = true;
    } else if (a == "--mode") {
      const auto m = bench::parse_choices(value(), modes, "--mode");
      if (m.size() != 1) throw std::invalid_argument("--mode: one of exact, fast");
      o.mode = m.front();
    } else if (a == "--threads") {
      o.threads = bench::parse_threads(value());
    } else if (a == "--steps") {
      o.steps = positive("--steps");
      steps_set = true;
    } else if (a == "--warmup") {
      o.warmup = bench::parse_size(value(), "--warmup");
      warmup_set = true;
    } else if (a == "--dim") {
      o.dim = positive("--dim");
    } else if (a == "--ffn") {
      o.ffn = positive("--ffn");
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument(bench::message("unknown argument '", a, "' (--help lists them)"));
    }
  }
  if (quick) {
    if (!layers_set) o.layers = 2;
    if (!steps_set) o.steps = 3;
    if (!warmup_set) o.warmup = 1;
  }
  return o;
}

/// One transformer layer's linear weights.
struct layer {
  std::array<tensor_t, 7> w;  // q, k, v, o, gate, up, down
};

/// Quantizes one layer from random weights (one matrix at a time, to bound the fp32 memory).
layer make_layer(const options& o) {
  layer l;
  for (std::size_t m = 0; m < 7; ++m) {
    const std::size_t rows = m == 6 ? o.dim : (m >= 4 ? o.ffn : o.dim);
    const std::size_t cols = m == 6 ? o.ffn : o.dim;
    std::vector<float> w(rows * cols);
    bench::fill_gaussian(w, 0x1a7e40 + m, 0.02f);
    l.w[m] = quant::quantize<quant::int4, gran>(quant::matrix_view<const float>(w.data(), rows, cols));
  }
  return l;
}

struct activations {
  std::vector<float> x, q, k, v, o, gate, up, down;
  explicit activations(const options& opt)
      : x(opt.dim), q(opt.dim), k(opt.dim), v(opt.dim), o(opt.dim), gate(opt.ffn), up(opt.ffn), down(opt.dim) {
    bench::fill_gaussian(x, 0xacc, 1.0f);
  }
  bool finite() const {
    for (const auto* a : {&q, &k, &v, &o, &gate, &up, &down})
      if (!bench::all_finite(*a)) return false;
    return true;
  }
};

template <class Mode, class Gemv>
void step(const std::vector<layer>& layers, activations& a, Mode mode, Gemv&& gemv) {
  for (const layer& l : layers) {
    gemv(l.w[0], a.x, a.q, mode);
    gemv(l.w[1], a.x, a.k, mode);
    gemv(l.w[2], a.x, a.v, mode);
    gemv(l.w[3], a.v, a.o, mode);
    gemv(l.w[4], a.o, a.gate, mode);
    gemv(l.w[5], a.o, a.up, mode);
    gemv(l.w[6], a.gate, a.down, mode);
  }
}

template <class Mode>
int run(const options& o, Mode mode) {
  const std::size_t l3 = bench::l3_bytes();
  fmt::print(
      "quant {} decode step: Llama-2-7B-shaped layers (dim {}, ffn {}), {} layers x 7 matrices (q k v o gate "
      "up down), int4 g128 sym fp16, {} mode\n",
      quant::version_string, o.dim, o.ffn, o.layers, o.mode);
  fmt::print("quant kernels: {}; read sweep: {}\n", quant::active_isa_name(), bench::simd_name());
  fmt::print("CPU: {}, {} hardware threads, L3 of cpu0 {} MiB\n", bench::cpu_model(),
             std::thread::hardware_concurrency(), l3 >> 20);
  std::fflush(stdout);

  const auto t0 = bench::clock::now();
  std::vector<layer> layers;
  layers.reserve(o.layers);
  layers.push_back(make_layer(o));
  const double quant_s = bench::seconds_since(t0);
  for (std::size_t i = 1; i < o.layers; ++i) layers.push_back(layers.front());
  std::vector<bench::region> all;
  std::vector<bench::region_list> per_matrix;
  std::size_t layer_bytes = 0;
  for (const auto& t : layers.front().w) layer_bytes += t.bytes();
  for (const layer& l : layers)
    for (const auto& t : l.w) {
      bench::append_regions(all, t);
      per_matrix.push_back(bench::regions_of(t));
    }
  const std::size_t bytes = bench::total_bytes(all);
  fmt::print(
      "weights: {:.3f} GB ({:.2f} MB per layer, {:.3f} bits/weight); one layer quantized in {:.1f} s, "
      "copied {} times in {:.1f} s\n",
      bytes * 1e-9, layer_bytes * 1e-6, layers.front().w[0].bits_per_weight(), quant_s, o.layers - 1,
      bench::seconds_since(t0) - quant_s);
  fmt::print(
      "timing: median over {} steps after {} warm-up steps; sweep/step = t(read sweep) / t(step), 1 = at "
      "the read bandwidth\n\n",
      o.steps, o.warmup);
  if (bytes < bench::cold_threshold())
    fmt::print(
        "note: {:.0f} MB of weights is below 2 x max(L3, 260 MiB): part of the step may be served from "
        "cache\n\n",
        bytes * 1e-6);

  fmt::print("{:>3} {:>10} {:>10} {:>7} | {:>12} {:>7} {:>9} | {:>12} {:>7} {:>9}\n", "thr", "ms/step", "min ms",
             "GB/s", "sweep/matrix", "GB/s", "sweep/step", "sweep 1-pass", "GB/s", "sweep/step");
  std::fflush(stdout);

  activations a(o);
  const bench::timing_options topt{.min_time = 0, .min_reps = o.steps, .max_reps = o.steps, .warmup = o.warmup};
  const auto gbps = [&](double s) { return static_cast<double>(bytes) / s * 1e-9; };
  bool ok = true;
  for (const std::size_t threads : o.threads) {
    // One persistent pool per thread count, for the step and the sweeps alike.
    const auto pool = threads > 1 ? std::make_unique<quant::thread_pool>(threads) : nullptr;
    bench::timing t;
    if (!pool) {
      t = bench::measure(
          [&] {
            step(layers, a, mode, [](const tensor_t& w, const auto& x, auto& y, auto m) { quant::gemv(w, x, y, m); });
          },
          topt);
    } else {
      t = bench::measure(
          [&] {
            step(layers, a, mode,
                 [&pool](const tensor_t& w, const auto& x, auto& y, auto m) { quant::gemv(w, x, y, m, *pool); });
          },
          topt);
    }
    const bool finite = a.finite();
    ok = ok && finite;

    // The same bytes read by a sweep, one call per matrix and in a single pass, on the same threads.
    bench::timing sm, sp;
    if (!pool) {
      sm = bench::measure(
          [&] {
            for (const auto& r : per_matrix) (void)bench::read_sweep(r);
          },
          topt);
      sp = bench::measure([&] { (void)bench::read_sweep(all); }, topt);
    } else {
      sm = bench::measure(
          [&] {
            for (const auto& r : per_matrix) (void)bench::read_sweep(r, *pool);
          },
          topt);
      sp = bench::measure([&] { (void)bench::read_sweep(all, *pool); }, topt);
    }
    fmt::print("{:>3} {:>10.2f} {:>10.2f} {:>7.2f} | {:>12.2f} {:>7.2f} {:>9.2f} | {:>12.2f} {:>7.2f} {:>9.2f}{}\n",
               threads, t.median * 1e3, t.min * 1e3, gbps(t.median), sm.median * 1e3, gbps(sm.median),
               sm.median / t.median, sp.median * 1e3, gbps(sp.median), sp.median / t.median,
               finite ? "" : "  NON-FINITE y!");
    std::fflush(stdout);
  }
  return ok ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    return o.mode == "exact" ? run(o, quant::exact) : run(o, quant::fast);
  } catch (const std::exception& e) {
    fmt::print(stderr, "decode_step: {}\n", e.what());
    return 1;
  }
}
