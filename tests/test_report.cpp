// The pieces of quant-report that decide what a user reads: the Pareto front of the plot, the SVG
// itself, and the mixed-precision bit allocation.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "report/mixed.hpp"
#include "report/svg.hpp"

TEST_CASE("pareto front: the points no other point beats on both axes, by increasing bits") {
  const std::vector<report::plot_point> p{{"rtn", "a", 4.0, 0.20}, {"gptq", "b", 4.0, 0.05}, {"rtn", "c", 8.0, 0.01},
                                          {"rtn", "d", 3.0, 0.40}, {"gptq", "e", 5.0, 0.06}, {"rtn", "f", 8.5, 0.01}};
  // d (fewest bits), b (beats a at the same bits), c (lowest error); e is beaten by b, f by c
  CHECK(report::pareto_front(p) == std::vector<std::size_t>{3, 1, 2});
  CHECK(report::pareto_front({}).empty());
}

TEST_CASE("svg: every point, the legend, escaped labels, a log axis") {
  const std::vector<report::plot_point> p{{"rtn", "int4 <g32>", 4.5, 0.1}, {"gptq & co", "int4 g32", 4.5, 0.03}};
  const std::string s = report::scatter_svg("t", "bits", "err", p, true);
  CHECK(s.rfind("<svg", 0) == 0);
  CHECK(s.find("</svg>") != std::string::npos);
  std::size_t circles = 0;
  for (std::size_t i = s.find("<circle"); i != std::string::npos; i = s.find("<circle", i + 1)) ++circles;
  CHECK(circles == 2 + 2);  // two points, two legend entries
  CHECK(s.find("int4 &lt;g32&gt;") != std::string::npos);
  CHECK(s.find("gptq &amp; co") != std::string::npos);
  CHECK(s.find("<g32>") == std::string::npos);
  CHECK(s.find("(log scale)") != std::string::npos);
}

TEST_CASE("mixed precision: the budget holds, the sensitive layers are widened first") {
  // four layers of 100 narrow / 200 wide bytes, and a large one
  const std::vector<report::layer_cost> c{{0.1, 100, 200}, {0.5, 100, 200}, {0.3, 100, 200}, {0.05, 100, 200},
                                          {0.6, 1000, 2000}};
  const std::size_t narrow = 1400;
  auto bytes = [&](const std::vector<bool>& w) {
    std::size_t b = 0;
    for (std::size_t i = 0; i < c.size(); ++i) b += w[i] ? c[i].wide_bytes : c[i].narrow_bytes;
    return b;
  };
  // room for two small layers: 0.6 / 1000 per byte is less than 0.5 / 100 and 0.3 / 100
  const auto s = report::allocate_by_sensitivity(c, narrow + 200);
  CHECK(s == std::vector<bool>{false, true, true, false, false});
  CHECK(bytes(s) <= narrow + 200);
  const auto o = report::allocate_in_model_order(c, narrow + 200);
  CHECK(o == std::vector<bool>{true, true, false, false, false});
  // a budget that fits the large layer: it goes once the better-per-byte small ones are in
  const auto big = report::allocate_by_sensitivity(c, narrow + 1300);
  CHECK(big == std::vector<bool>{true, true, true, false, true});
  CHECK(bytes(big) <= narrow + 1300);
  CHECK_THROWS_WITH_AS(report::allocate_by_sensitivity(c, narrow - 1), doctest::Contains("below the all-narrow size"),
                       std::invalid_argument);
}
