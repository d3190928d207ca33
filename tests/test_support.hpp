// Shared helpers of the test suite: a deterministic RNG, realistic synthetic weights and
// activations, error metrics, and the llama2.c checkpoint reader for the real-weight tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <quant/tensor/tensor.hpp>

namespace qt {

/// True in sanitizer builds (ASan; UBSan goes with it in CI), which run shorter model protocols.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// A tensor's three sections (codes, scales, zero points) as bytes.
template <class F, class Gran>
std::vector<std::uint8_t> bytes_of(const quant::tensor<F, Gran>& t) {
  const auto v = t.cview();
  std::vector<std::uint8_t> b(v.codes().begin(), v.codes().end());
  const auto* s = reinterpret_cast<const std::uint8_t*>(v.scales().data());
  b.insert(b.end(), s, s + v.scales().size_bytes());
  b.insert(b.end(), v.zeros().begin(), v.zeros().end());
  return b;
}

/// splitmix64: deterministic on every platform and standard library.
struct rng {
  std::uint64_t state;
  explicit rng(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {  // Box-Muller
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  /// Student-t with nu degrees of freedom (heavy tails, like trained weights), unit-ish scale.
  double student_t(int nu) {
    double chi2 = 0.0;
    for (int i = 0; i < nu; ++i) {
      const double z = normal();
      chi2 += z * z;
    }
    return normal() / std::sqrt(chi2 / nu);
  }
};

inline std::vector<float> gaussian(std::size_t n, std::uint64_t seed, double sigma = 0.02) {
  rng g(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(sigma * g.normal());
  return v;
}

/// Heavy-tailed weights: Student-t (nu = 4) with per-row scale variation, as in trained layers.
inline std::vector<float> heavy_tailed(std::size_t rows, std::size_t cols, std::uint64_t seed, double sigma = 0.02) {
  rng g(seed);
  std::vector<float> v(rows * cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const double row_scale = sigma * std::exp(0.3 * g.normal());
    for (std::size_t c = 0; c < cols; ++c) v[r * cols + c] = static_cast<float>(row_scale * g.student_t(4) / std::sqrt(2.0));
  }
  return v;
}

/// Activations tokens x cols with a correlated low-rank component, noise, and a fixed 1% of
/// outlier channels scaled x20 (the structure real LLM layer inputs have).
inline std::vector<float> activations(std::size_t tokens, std::size_t cols, std::uint64_t seed, std::size_t rank = 8) {
  rng g(seed);
  std::vector<double> basis(rank * cols);
  for (auto& b : basis) b = g.normal();
  std::vector<double> chan(cols, 1.0);
  rng outl(0x0u + 12345);  // the outlier channels are the same for every seed (fixed channels)
  for (std::size_t i = 0; i < (cols + 99) / 100; ++i) chan[outl.next() % cols] = 20.0;
  std::vector<float> x(tokens * cols);
  for (std::size_t t = 0; t < tokens; ++t) {
    std::vector<double> coef(rank);
    for (auto& c : coef) c = g.normal();
    for (std::size_t c = 0; c < cols; ++c) {
      double v = 0.3 * g.normal();
      for (std::size_t k = 0; k < rank; ++k) v += coef[k] * basis[k * cols + c] / std::sqrt(static_cast<double>(rank));
      x[t * cols + c] = static_cast<float>(v * chan[c]);
    }
  }
  return x;
}

/// ||a - b|| / ||a||.
inline double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0.0, s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    e += d * d;
    s += static_cast<double>(a[i]) * a[i];
  }
  return std::sqrt(e / s);
}

/// y = W x in double (W row-major rows x cols).
inline std::vector<double> matvec(const std::vector<float>& w, std::size_t rows, std::size_t cols, const float* x) {
  std::vector<double> y(rows, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) y[r] += static_cast<double>(w[r * cols + c]) * x[c];
  return y;
}

/// The linear layers of a llama2.c checkpoint (../shared/models/README.md has the layout).
struct llama2c_linear {
  std::string name;
  std::size_t rows, cols;
  std::vector<float> w;
};

inline std::filesystem::path models_dir() {
#ifdef QUANT_TEST_MODELS_DIR
  return QUANT_TEST_MODELS_DIR;
#else
  return "../shared/models";
#endif
}

/// Reads every linear weight matrix (wq, wk, wv, wo, w1, w2, w3 per layer) of a checkpoint;
/// nullopt when the file is absent.
inline std::optional<std::vector<llama2c_linear>> load_llama2c_linears(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::nullopt;
  std::int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  const std::size_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4];
  const std::size_t vocab = static_cast<std::size_t>(h[5] < 0 ? -h[5] : h[5]);
  const std::size_t kv_dim = dim * kv_heads / heads;
  auto skip = [&](std::size_t floats) { in.seekg(static_cast<std::streamoff>(floats * 4), std::ios::cur); };
  std::vector<llama2c_linear> out;
  auto read = [&](const char* name, std::size_t rows, std::size_t cols) {
    for (std::size_t l = 0; l < layers; ++l) {
      llama2c_linear m{std::string(name) + "." + std::to_string(l), rows, cols, std::vector<float>(rows * cols)};
      in.read(reinterpret_cast<char*>(m.w.data()), static_cast<std::streamsize>(m.w.size() * 4));
      out.push_back(std::move(m));
    }
  };
  skip(vocab * dim + layers * dim);  // token embedding, rms_att
  read("wq", dim, dim);
  read("wk", kv_dim, dim);
  read("wv", kv_dim, dim);
  read("wo", dim, dim);
  skip(layers * dim);  // rms_ffn
  read("w1", hidden, dim);
  read("w2", dim, hidden);
  read("w3", hidden, dim);
  if (!in) return std::nullopt;
  return out;
}

}  // namespace qt
