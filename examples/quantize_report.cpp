// quantize_report: the main job at this stage. Quantizes weight matrices into every built-in
// format and scheme and prints, side by side, the bits per weight, the bytes, the weight error,
// the layer output error of both GEMV modes on held-out activations, and the time quantization
// took.
//
//   quantize_report                       a synthetic 1024 x 4096 layer with realistic structure:
//                                         heavy-tailed weights (Student-t, per-row scale),
//                                         activations with a correlated low-rank component and
//                                         1% outlier channels x20
//   quantize_report --model stories260K.bin   every linear layer of a llama2.c checkpoint
//   options: --rows N --cols N (synthetic shape), --mse (error-minimizing clip search)
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <quant/io/fmt.hpp>
#include <quant/quant.hpp>

namespace {

struct layer {
  std::string name;
  std::size_t rows, cols;
  std::vector<float> w;
  std::vector<float> x;  // held-out activations, tokens x cols
  std::size_t tokens;
  std::vector<double> y;  // fp32-weight outputs, tokens x rows (computed in double)

  void compute_reference() {
    y.assign(tokens * rows, 0.0);
    for (std::size_t k = 0; k < tokens; ++k)
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) y[k * rows + r] += double(w[r * cols + c]) * x[k * cols + c];
  }
};

// ---- inputs -----------------------------------------------------------------------------------
struct rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() { return std::sqrt(-2.0 * std::log(1.0 - uniform())) * std::cos(6.283185307179586 * uniform()); }
};

std::vector<float> realistic_activations(std::size_t tokens, std::size_t cols, std::uint64_t seed) {
  rng g{seed};
  const std::size_t rank = 8;
  std::vector<double> basis(rank * cols), chan(cols, 1.0);
  for (auto& b : basis) b = g.normal();
  rng fixed{777};  // the same outlier channels for every seed
  for (std::size_t i = 0; i < (cols + 99) / 100; ++i) chan[fixed.next() % cols] = 20.0;
  std::vector<float> x(tokens * cols);
  for (std::size_t t = 0; t < tokens; ++t) {
    double coef[rank];
    for (auto& c : coef) c = g.normal();
    for (std::size_t c = 0; c < cols; ++c) {
      double v = 0.3 * g.normal();
      for (std::size_t k = 0; k < rank; ++k) v += coef[k] * basis[k * cols + c] / std::sqrt(double(rank));
      x[t * cols + c] = static_cast<float>(v * chan[c]);
    }
  }
  return x;
}

layer synthetic_layer(std::size_t rows, std::size_t cols) {
  layer l{fmt::format("synthetic {}x{}", rows, cols), rows, cols, std::vector<float>(rows * cols), {}, 16, {}};
  rng g{2024};
  for (std::size_t r = 0; r < rows; ++r) {
    const double row_scale = 0.02 * std::exp(0.3 * g.normal());
    for (std::size_t c = 0; c < cols; ++c) {  // Student-t, 4 degrees of freedom
      double chi2 = 0;
      for (int i = 0; i < 4; ++i) {
        const double z = g.normal();
        chi2 += z * z;
      }
      l.w[r * cols + c] = static_cast<float>(row_scale * g.normal() / std::sqrt(chi2 / 4) / std::sqrt(2.0));
    }
  }
  l.x = realistic_activations(l.tokens, cols, 99);
  l.compute_reference();
  return l;
}

// The linear layers of a llama2.c checkpoint (layout: ../shared/models/README.md).
std::vector<layer> model_layers(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  if (!in || h[0] <= 0 || h[1] <= 0 || h[2] <= 0 || h[3] <= 0 || h[4] <= 0 || h[3] % h[4] != 0 || h[0] % h[3] != 0)
    throw std::runtime_error(path + ": not a llama2.c checkpoint (bad header)");
  const std::size_t dim = h[0], hidden = h[1], n_layers = h[2], kv_dim = dim * h[4] / h[3];
  const std::size_t vocab = static_cast<std::size_t>(std::abs(h[5]));
  std::vector<layer> out;
  auto skip = [&](std::size_t floats) { in.seekg(static_cast<std::streamoff>(4 * floats), std::ios::cur); };
  auto read = [&](const char* name, std::size_t rows, std::size_t cols) {
    for (std::size_t i = 0; i < n_layers; ++i) {
      layer l{fmt::format("{}.{}", name, i), rows, cols, std::vector<float>(rows * cols), {}, 16, {}};
      in.read(reinterpret_cast<char*>(l.w.data()), static_cast<std::streamsize>(4 * l.w.size()));
      l.x = realistic_activations(l.tokens, cols, 1000 + out.size());
      l.compute_reference();
      out.push_back(std::move(l));
    }
  };
  skip(vocab * dim + n_layers * dim);
  read("wq", dim, dim);
  read("wk", kv_dim, dim);
  read("wv", kv_dim, dim);
  read("wo", dim, dim);
  skip(n_layers * dim);
  read("w1", hidden, dim);
  read("w2", dim, hidden);
  read("w3", hidden, dim);
  if (!in) throw std::runtime_error(path + ": file too short for its header");
  return out;
}

// ---- measurement ------------------------------------------------------------------------------
struct totals {
  double w_err = 0, w_norm = 0, y_err = 0, y_fast_err = 0, y_norm = 0, seconds = 0;
  std::size_t bytes = 0, weights = 0;
};

template <class F, class Gran>
void measure(const std::vector<layer>& layers, const quant::quantize_options& opt, const char* label) {
  totals t;
  for (const layer& l : layers) {
    const auto start = std::chrono::steady_clock::now();
    const auto q = quant::quantize<F, Gran>({l.w.data(), l.rows, l.cols}, opt);
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    t.bytes += q.bytes();
    t.weights += l.rows * l.cols;
    std::vector<float> d(l.w.size()), y(l.rows), yf(l.rows);
    quant::dequantize(q, {d.data(), l.rows, l.cols});
    for (std::size_t i = 0; i < d.size(); ++i) t.w_err += (d[i] - l.w[i]) * double(d[i] - l.w[i]), t.w_norm += l.w[i] * double(l.w[i]);
    for (std::size_t k = 0; k < l.tokens; ++k) {
      const std::span<const float> x(&l.x[k * l.cols], l.cols);
      quant::gemv(q, x, y);
      quant::gemv(q, x, yf, quant::fast);
      for (std::size_t r = 0; r < l.rows; ++r) {
        const double ref = l.y[k * l.rows + r];
        t.y_err += (y[r] - ref) * (y[r] - ref), t.y_fast_err += (yf[r] - ref) * (yf[r] - ref), t.y_norm += ref * ref;
      }
    }
  }
  fmt::print("{:<34} {:>6.3f} {:>11} {:>10.5f} {:>10.5f} {:>10.5f} {:>9.1f}\n", label,
             8.0 * double(t.bytes) / double(t.weights), t.bytes, std::sqrt(t.w_err / t.w_norm), std::sqrt(t.y_err / t.y_norm),
             std::sqrt(t.y_fast_err / t.y_norm), 1e3 * t.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t rows = 1024, cols = 4096;
  std::string model;
  quant::quantize_options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) model = argv[++i];
    else if (a == "--rows" && i + 1 < argc) rows = std::stoul(argv[++i]);
    else if (a == "--cols" && i + 1 < argc) cols = std::stoul(argv[++i]);
    else if (a == "--mse") opt.search = quant::scale_search::mse;
    else {
      fmt::print(stderr, "usage: {} [--model llama2c.bin] [--rows N --cols N] [--mse]\n", argv[0]);
      return 2;
    }
  }
  try {
    const std::vector<layer> layers = model.empty() ? std::vector<layer>{synthetic_layer(rows, cols)} : model_layers(model);
    std::size_t weights = 0;
    for (const layer& l : layers) weights += l.rows * l.cols;
    fmt::print("quant {} round-to-nearest report: {} ({} layer{}, {} weights, fp32 {} bytes), scales: {}\n",
               quant::version_string, model.empty() ? layers[0].name : model, layers.size(), layers.size() == 1 ? "" : "s",
               weights, 4 * weights, opt.search == quant::scale_search::mse ? "mse clip search" : "min-max");
    fmt::print("output error: relative RMS of y = W x against fp32 on {} held-out tokens per layer "
               "(activations with low-rank structure and 1% outlier channels)\n\n",
               layers[0].tokens);
    fmt::print("{:<34} {:>6} {:>11} {:>10} {:>10} {:>10} {:>9}\n", "format / scheme", "bits/w", "bytes", "weight err",
               "out exact", "out fast", "quant ms");
    using namespace quant;
    using sym = symmetric;
    using asym = asymmetric;
    measure<int8, per_channel<sym>>(layers, opt, "int8 per-channel sym");
    measure<int8, per_channel<asym>>(layers, opt, "int8 per-channel asym");
    measure<int8, per_tensor<sym>>(layers, opt, "int8 per-tensor sym");
    measure<fp8_e4m3, per_channel<sym>>(layers, opt, "fp8 e4m3 per-channel");
    measure<fp8_e5m2, per_channel<sym>>(layers, opt, "fp8 e5m2 per-channel");
    measure<fp8_e4m3, per_group<32, sym, e8m0>>(layers, opt, "MXFP8 (e4m3 g32, e8m0 scale)");
    measure<int4, per_group<32, sym, fp16>>(layers, opt, "int4 g32 sym f16");
    measure<int4, per_group<32, asym, fp16>>(layers, opt, "int4 g32 asym f16");
    measure<int4, per_group<128, sym, fp16>>(layers, opt, "int4 g128 sym f16");
    measure<int4, per_group<128, asym, fp16>>(layers, opt, "int4 g128 asym f16");
    measure<int4, per_channel<asym>>(layers, opt, "int4 per-channel asym");
    measure<nf4, per_group<64, sym, fp16>>(layers, opt, "nf4 g64 f16");
    measure<fp4_e2m1, per_group<32, sym, e8m0>>(layers, opt, "MXFP4 (e2m1 g32, e8m0 scale)");
    measure<fp4_e2m1, per_group<32, sym, fp16>>(layers, opt, "fp4 e2m1 g32 f16");
    measure<int3, per_group<128, sym, fp16>>(layers, opt, "int3 g128 sym f16");
    measure<int3, per_group<128, asym, fp16>>(layers, opt, "int3 g128 asym f16");
    measure<int2, per_group<32, asym, fp16>>(layers, opt, "int2 g32 asym f16");
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
