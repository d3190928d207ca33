// A number format defined outside the library, run through quantize, dequantize and gemv with no
// change to quant: specializing quant::format_traits is the whole job.
//
// nf3 here is a 3-bit NormalFloat-style code table (quantiles of a normal distribution with an
// exact zero), built with the lut_traits helper. log4 is written out member by member: a 4-bit
// sign + magnitude logarithmic format (values +-2^-k), to show every member a format provides.
// The program quantizes a heavy-tailed matrix with each and prints size and error next to the
// built-in int3 and int4.
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <quant/io/fmt.hpp>
#include <quant/quant.hpp>

// ---- a code-table format through lut_traits -------------------------------------------------
struct nf3 {};
inline constexpr std::array<float, 8> nf3_table{-1.0f, -0.5350f, -0.2469f, 0.0f, 0.1833f, 0.3819f, 0.6229f, 1.0f};

template <>
struct quant::format_traits<nf3> : quant::lut_traits<nf3_table> {
  static constexpr std::string_view name = "nf3 (user)";
  static constexpr std::uint32_t id = 0x80000001;  // user formats take ids >= 0x80000000
  static constexpr std::uint32_t layout_version = 1;
};

// ---- a format written member by member --------------------------------------------------------
// Code s.mmm: s the sign, m = 0 means 0, m = 1..7 means 2^(m - 7) (1/64 .. 1).
struct log4 {};

template <>
struct quant::format_traits<log4> {
  static constexpr std::string_view name = "log4 (user)";
  static constexpr unsigned bits = 4;
  static constexpr std::uint32_t id = 0x80000002;
  static constexpr std::uint32_t layout_version = 1;

  static float decode(std::uint8_t code) {
    const unsigned m = code & 7u;
    const float v = m == 0 ? 0.0f : std::ldexp(1.0f, static_cast<int>(m) - 7);
    return (code & 8u) ? -v : v;
  }
  static std::uint8_t encode(float v) {  // nearest magnitude (ties to the even code), saturating
    const std::uint8_t sign = std::signbit(v) ? 8 : 0;
    const float a = std::fabs(v);
    std::uint8_t best = 0;
    for (std::uint8_t m = 1; m < 8; ++m) {
      const float d = std::fabs(decode(m) - a), db = std::fabs(decode(best) - a);
      if (d < db || (d == db && m % 2 == 0)) best = m;
    }
    return static_cast<std::uint8_t>(sign | best);
  }
};

static_assert(quant::check_format<nf3>() && quant::check_format<log4>());

namespace {
template <class F, class Gran>
void report(const std::vector<float>& w, std::size_t rows, std::size_t cols, const std::vector<float>& x) {
  const auto t = quant::quantize<F, Gran>({w.data(), rows, cols});
  std::vector<float> d(w.size()), y(rows), y_ref(rows, 0.0f);
  quant::dequantize(t, {d.data(), rows, cols});
  quant::gemv(t, x, y);
  double e = 0, s = 0, ey = 0, sy = 0;
  for (std::size_t i = 0; i < w.size(); ++i) e += (w[i] - d[i]) * (w[i] - d[i]), s += w[i] * w[i];
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) y_ref[r] += w[r * cols + c] * x[c];
    ey += (y[r] - y_ref[r]) * (y[r] - y_ref[r]), sy += y_ref[r] * y_ref[r];
  }
  fmt::print("{:<62} weight rel. RMS {:.4f}   gemv rel. error {:.4f}\n", fmt::format("{}", t), std::sqrt(e / s),
             std::sqrt(ey / sy));
}
}  // namespace

int main() {
  const std::size_t rows = 256, cols = 1024;
  std::mt19937 gen(42);
  std::student_t_distribution<float> heavy(4.0f);
  std::normal_distribution<float> normal;
  std::vector<float> w(rows * cols), x(cols);
  for (auto& v : w) v = 0.02f * heavy(gen);
  for (auto& v : x) v = normal(gen);

  using G = quant::per_group<64, quant::symmetric, quant::fp16>;
  report<nf3, G>(w, rows, cols, x);
  report<quant::int3, G>(w, rows, cols, x);
  report<log4, G>(w, rows, cols, x);
  report<quant::int4, G>(w, rows, cols, x);
}
