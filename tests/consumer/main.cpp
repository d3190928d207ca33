// Built by tests/consumer/CMakeLists.txt against quant::quant (add_subdirectory, FetchContent or
// find_package) and run by .ci/run: quantizes a small matrix and checks y = W x.
#include <quant/quant.hpp>

#include <cmath>
#include <cstdio>
#include <string_view>
#include <vector>

int main() {
  const std::size_t rows = 4, cols = 64;
  std::vector<float> w(rows * cols), x(cols, 1.0f), y(rows);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.1f * static_cast<float>(i));
  const auto t = quant::quantize<quant::int8, quant::per_channel<>>({w.data(), rows, cols});
  quant::gemv(t, x, y);
  double worst = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double ref = 0;
    for (std::size_t c = 0; c < cols; ++c) ref += w[r * cols + c];
    worst = std::fmax(worst, std::fabs(ref - y[r]));
  }
  std::printf("quant %s: int8 gemv max abs error %.2g\n", quant::version_string, worst);
  return std::string_view(quant::version_string) == "0.1.0" && worst < 0.05 ? 0 : 1;
}
