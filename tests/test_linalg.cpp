// Dense fp32 linear algebra (linalg/gemm.hpp, linalg/cholesky.hpp) against double-precision
// references. Tolerances are the classical rounding-error bounds of each computation (Higham,
// "Accuracy and Stability of Numerical Algorithms"), with u = 2^-24 and gamma_n = n u / (1 - n u):
//   gemm            |C - C_exact| <= gamma_{k+2} (|alpha| |op(A)| |B| + |beta| |C0|)   (each k block
//                   is a sum of products, blocks are added to C one by one: k + 2 roundings at most)
//   cholesky_lower  |L L^T - A| <= gamma_{n+1} |L| |L|^T                               (Thm 10.3)
//   invert_upper    |X T - I| <= c_n u |X| |T|, c_n = 2n                              (row-wise
//                   substitution is backward stable per row of X; the blocked recurrence keeps it)
//   inverse factor  |U^T U H - I| <= 4 n u kappa_2(H)                                  (forward
//                   error of an inverse: first order in kappa, kappa estimated in double)
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <quant/linalg/cholesky.hpp>
#include <quant/linalg/gemm.hpp>
#include <quant/quant.hpp>

#include "test_support.hpp"

using namespace quant;
using linalg::gemm_problem;
using linalg::transpose;

namespace {

constexpr double unit_roundoff = 0x1.0p-24;
double gamma_n(double n) { return n * unit_roundoff / (1.0 - n * unit_roundoff); }

/// A matrix with row stride ld (>= cols), padding filled with a sentinel.
struct mat {
  std::size_t rows = 0, cols = 0, ld = 0;
  std::vector<float> v;
  mat(std::size_t r, std::size_t c, std::size_t pad = 0, float fill = 0.0f)
      : rows(r), cols(c), ld(c + pad), v(std::max<std::size_t>(1, r * (c + pad)), -12345.0f) {
    for (std::size_t i = 0; i < r; ++i)
      for (std::size_t j = 0; j < c; ++j) v[i * ld + j] = fill;
  }
  float& operator()(std::size_t i, std::size_t j) { return v[i * ld + j]; }
  float operator()(std::size_t i, std::size_t j) const { return v[i * ld + j]; }
  float* data() { return v.data(); }
  bool padding_intact() const {
    for (std::size_t i = 0; i < rows; ++i)
      for (std::size_t j = cols; j < ld; ++j)
        if (v[i * ld + j] != -12345.0f) return false;
    return true;
  }
};

mat random_mat(std::size_t r, std::size_t c, std::size_t pad, std::uint64_t seed) {
  mat m(r, c, pad);
  qt::rng g(seed);
  for (std::size_t i = 0; i < r; ++i)
    for (std::size_t j = 0; j < c; ++j) m(i, j) = static_cast<float>(g.normal());
  return m;
}

/// Checks C (after gemm) against the double product, with the gemm bound above.
void check_gemm_result(const gemm_problem& p, const mat& a, const mat& b, const mat& c0, const mat& c,
                       const std::string& what) {
  const bool ta = p.ta == transpose::yes;
  const double g = gamma_n(static_cast<double>(p.k) + 2.0);
  double worst = 0.0;
  for (std::size_t i = 0; i < p.m; ++i)
    for (std::size_t j = 0; j < p.n; ++j) {
      double s = 0.0, sa = 0.0;
      for (std::size_t q = 0; q < p.k; ++q) {
        const double x = ta ? a(q, i) : a(i, q);
        s += x * b(q, j);
        sa += std::fabs(x * b(q, j));
      }
      double ref = p.alpha * s, bound = std::fabs(p.alpha) * sa;
      if (p.beta != 0.0f) {
        ref += static_cast<double>(p.beta) * c0(i, j);
        bound += std::fabs(static_cast<double>(p.beta) * c0(i, j));
      }
      const double err = std::fabs(c(i, j) - ref), tol = g * bound + 1e-30;
      worst = std::max(worst, err / tol);
      if (!(err <= tol)) {
        INFO(what, ": C(", i, ", ", j, ") = ", c(i, j), ", reference ", ref, ", tolerance ", tol);
        REQUIRE(err <= tol);
      }
    }
  CHECK(c.padding_intact());
  (void)worst;
}

/// One gemm call on fresh operands; checks it and returns C.
mat run_gemm(transpose ta, std::size_t m, std::size_t n, std::size_t k, float alpha, float beta, std::size_t pad,
             std::uint64_t seed, bool nan_c = false) {
  const bool t = ta == transpose::yes;
  const mat a = t ? random_mat(k, m, pad, seed) : random_mat(m, k, pad, seed);
  const mat b = random_mat(k, n, pad + 2, seed + 1);
  mat c0 = random_mat(m, n, pad + 1, seed + 2);
  if (nan_c)
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < n; ++j) c0(i, j) = std::numeric_limits<float>::quiet_NaN();
  mat c = c0;
  const gemm_problem p{ta,   m, n, k, alpha, a.v.data(), a.ld, b.v.data(), b.ld, beta, c.data(), c.ld};
  linalg::gemm(p);
  check_gemm_result(p, a, b, c0, c,
                    std::string(t ? "TN " : "NN ") + std::to_string(m) + "x" + std::to_string(n) + "x" +
                        std::to_string(k));
  return c;
}

// ------------------------------------------------------------------------------------------------
// SPD matrices like real Hessians: H = 2/t X^T X of correlated activations with outlier channels,
// plus damp * mean(diag) on the diagonal (GPTQ's damping).

std::vector<double> hessian_double(std::size_t n, std::uint64_t seed, double damp = 0.01) {
  const std::size_t tokens = 2 * n + 16;
  const auto x = qt::activations(tokens, n, seed);
  std::vector<double> h(n * n, 0.0);
  for (std::size_t t = 0; t < tokens; ++t)
    for (std::size_t i = 0; i < n; ++i) {
      const double xi = x[t * n + i];
      for (std::size_t j = 0; j <= i; ++j) h[i * n + j] += xi * x[t * n + j];
    }
  double mean = 0.0;
  for (std::size_t i = 0; i < n; ++i) mean += h[i * n + i];
  mean /= static_cast<double>(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j <= i; ++j) h[i * n + j] = h[j * n + i] = 2.0 * h[i * n + j] / static_cast<double>(tokens);
  }
  for (std::size_t i = 0; i < n; ++i) h[i * n + i] += damp * 2.0 * mean / static_cast<double>(tokens);
  return h;
}

mat to_float(const std::vector<double>& h, std::size_t n, std::size_t pad) {
  mat m(n, n, pad);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) m(i, j) = static_cast<float>(h[i * n + j]);
  return m;
}

/// Lower Cholesky in double (the reference), false when not positive definite.
bool cholesky_double(std::size_t n, std::vector<double>& a) {
  for (std::size_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (std::size_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0.0)) return false;
    d = std::sqrt(d);
    a[j * n + j] = d;
    for (std::size_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (std::size_t k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / d;
    }
    for (std::size_t i = 0; i < j; ++i) a[i * n + j] = 0.0;
  }
  return true;
}

/// kappa_2 of an SPD matrix: power iteration on H and on H^-1 (through its double Cholesky).
double condition_spd(std::size_t n, const std::vector<double>& h) {
  std::vector<double> l = h;
  REQUIRE(cholesky_double(n, l));
  auto solve = [&](std::vector<double> b) {  // H^-1 b = L^-T L^-1 b
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t k = 0; k < i; ++k) b[i] -= l[i * n + k] * b[k];
      b[i] /= l[i * n + i];
    }
    for (std::size_t i = n; i-- > 0;) {
      for (std::size_t k = i + 1; k < n; ++k) b[i] -= l[k * n + i] * b[k];
      b[i] /= l[i * n + i];
    }
    return b;
  };
  auto power = [&](auto&& apply) {
    std::vector<double> v(n, 1.0);
    double lambda = 0.0;
    for (int it = 0; it < 100; ++it) {
      std::vector<double> w = apply(v);
      double norm = 0.0;
      for (const double x : w) norm += x * x;
      norm = std::sqrt(norm);
      lambda = norm;
      for (std::size_t i = 0; i < n; ++i) v[i] = w[i] / norm;
    }
    return lambda;
  };
  const double big = power([&](const std::vector<double>& v) {
    std::vector<double> w(n, 0.0);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) w[i] += h[i * n + j] * v[j];
    return w;
  });
  const double small_inv = power(solve);
  return big * small_inv;
}

/// An executor that runs the tasks last to first.
struct reverse_executor {
  std::size_t* calls;
  template <class Task>
  void operator()(std::size_t n, Task&& task) const {
    ++*calls;
    for (std::size_t i = n; i-- > 0;) task(i);
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// gemm

TEST_CASE("gemm matches the double product for both layouts and odd sizes in every dimension") {
  // Every pair of sizes meets in every pair of dimensions: (s_i, s_{i+j}, s_{i+2j}) mod 5.
  const std::size_t sizes[] = {1, 7, 33, 130, 257};
  std::uint64_t seed = 10;
  for (const transpose ta : {transpose::no, transpose::yes})
    for (std::size_t i = 0; i < 5; ++i)
      for (std::size_t j = 0; j < 5; ++j) {
        const std::size_t m = sizes[i], n = sizes[(i + j) % 5], k = sizes[(i + 2 * j) % 5];
        run_gemm(ta, m, n, k, -1.0f, 1.0f, 0, seed += 3);
      }
}

TEST_CASE("gemm with row strides larger than the rows, and alpha / beta cases") {
  std::uint64_t seed = 500;
  for (const transpose ta : {transpose::no, transpose::yes}) {
    run_gemm(ta, 70, 45, 300, 1.0f, 0.0f, 3, seed += 3, /*nan_c=*/true);  // beta = 0 never reads C
    run_gemm(ta, 33, 130, 129, 0.5f, -2.0f, 5, seed += 3);
    run_gemm(ta, 130, 33, 7, 2.0f, 0.25f, 1, seed += 3);
    run_gemm(ta, 9, 257, 513, -1.0f, 1.0f, 7, seed += 3);  // several k blocks
    const mat c = run_gemm(ta, 17, 19, 23, 1.0f, 0.0f, 2, seed += 3, /*nan_c=*/true);
    for (std::size_t i = 0; i < c.rows; ++i)
      for (std::size_t j = 0; j < c.cols; ++j) REQUIRE(std::isfinite(c(i, j)));
  }
}

TEST_CASE("gemm with k = 0 or alpha = 0 scales C by beta; empty C is a no-op") {
  mat c(5, 6, 2, 3.0f);
  const float dummy = 1.0f;
  linalg::gemm({transpose::no, 5, 6, 0, 1.0f, nullptr, 0, nullptr, 0, 2.0f, c.data(), c.ld});
  CHECK(c(4, 5) == 6.0f);
  linalg::gemm({transpose::yes, 5, 6, 3, 0.0f, &dummy, 5, &dummy, 6, 0.5f, c.data(), c.ld});
  CHECK(c(0, 0) == 3.0f);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 6; ++j) c(i, j) = std::numeric_limits<float>::quiet_NaN();
  linalg::gemm({transpose::no, 5, 6, 0, 1.0f, nullptr, 0, nullptr, 0, 0.0f, c.data(), c.ld});
  CHECK(c(2, 3) == 0.0f);
  CHECK(c.padding_intact());
  linalg::gemm({transpose::no, 0, 6, 4, 1.0f, nullptr, 4, &dummy, 6, 0.0f, nullptr, 6});
  linalg::gemm({transpose::no, 5, 0, 4, 1.0f, &dummy, 4, nullptr, 0, 0.0f, nullptr, 0});
}

TEST_CASE("gemm results do not depend on the executor or on how C is split") {
  // Large enough for many tasks; odd sizes so that tasks have edge tiles.
  for (const transpose ta : {transpose::no, transpose::yes}) {
    const std::size_t m = 611, n = 523, k = ta == transpose::yes ? 517 : 300;
    const bool t = ta == transpose::yes;
    const mat a = t ? random_mat(k, m, 3, 91) : random_mat(m, k, 3, 91);
    const mat b = random_mat(k, n, 1, 92);
    const mat c0 = random_mat(m, n, 2, 93);
    mat c1 = c0, c2 = c0, c3 = c0, c4 = c0;
    auto problem = [&](mat& c) { return gemm_problem{ta, m, n, k, 0.75f, a.v.data(), a.ld, b.v.data(), b.ld, -0.5f, c.data(), c.ld}; };
    REQUIRE(linalg::detail::split_for(problem(c1)).tasks() > 1);
    linalg::gemm(problem(c1));
    thread_pool pool(2);
    linalg::gemm(problem(c2), pool);
    std::size_t calls = 0;
    linalg::gemm(problem(c3), reverse_executor{&calls});
    CHECK(calls == 1);
    // A sub-block computed by its own call: the same bits as inside the full product.
    const std::size_t i0 = 37, i1 = 300, j0 = 101, j1 = 460;
    gemm_problem sub = problem(c4);
    sub.m = i1 - i0;
    sub.n = j1 - j0;
    sub.a = t ? a.v.data() + i0 : a.v.data() + i0 * a.ld;
    sub.b = b.v.data() + j0;
    sub.c = c4.data() + i0 * c4.ld + j0;
    linalg::gemm(sub);
    CHECK(std::memcmp(c1.v.data(), c2.v.data(), c1.v.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(c1.v.data(), c3.v.data(), c1.v.size() * sizeof(float)) == 0);
    bool same = true;
    for (std::size_t i = i0; i < i1; ++i)
      same = same && std::memcmp(&c1(i, j0), &c4(i, j0), (j1 - j0) * sizeof(float)) == 0;
    CHECK(same);
    check_gemm_result(problem(c1), a, b, c0, c1, t ? "TN split" : "NN split");
  }
}

TEST_CASE("gemm and check reject short row strides and null pointers") {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 7.0f);
  const auto p = [&](transpose ta, std::size_t lda, std::size_t ldb, std::size_t ldc) {
    return gemm_problem{ta, 3, 4, 5, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), ldc};
  };
  CHECK_NOTHROW(linalg::check(p(transpose::no, 5, 4, 4), "test"));
  CHECK_THROWS_WITH_AS(linalg::gemm(p(transpose::no, 4, 4, 4)), doctest::Contains("lda = 4 is less than the row length 5"),
                       error);
  CHECK_THROWS_WITH_AS(linalg::gemm(p(transpose::yes, 2, 4, 4)), doctest::Contains("lda = 2 is less than the row length 3"),
                       error);
  CHECK_THROWS_WITH_AS(linalg::gemm(p(transpose::no, 5, 3, 4)), doctest::Contains("ldb = 3"), error);
  CHECK_THROWS_WITH_AS(linalg::gemm(p(transpose::no, 5, 4, 2)), doctest::Contains("ldc = 2"), error);
  CHECK_THROWS_WITH_AS(linalg::check(p(transpose::no, 5, 4, 2), "my_fn"), doctest::Contains("my_fn: ldc = 2"), error);
  gemm_problem q = p(transpose::no, 5, 4, 4);
  q.a = nullptr;
  CHECK_THROWS_WITH_AS(linalg::gemm(q), doctest::Contains("a is null"), error);
  q = p(transpose::no, 5, 4, 4);
  q.b = nullptr;
  CHECK_THROWS_WITH_AS(linalg::gemm(q), doctest::Contains("b is null"), error);
  q = p(transpose::no, 5, 4, 4);
  q.c = nullptr;
  CHECK_THROWS_WITH_AS(linalg::gemm(q), doctest::Contains("c is null"), error);
  CHECK(std::all_of(c.begin(), c.end(), [](float x) { return x == 7.0f; }));  // nothing written
}

// ------------------------------------------------------------------------------------------------
// cholesky_lower

TEST_CASE("cholesky_lower factors Hessian-like matrices: residual within gamma_{n+1} |L| |L|^T") {
  std::uint64_t seed = 700;
  for (const std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{129}, std::size_t{300}}) {
    const auto hd = hessian_double(n, ++seed);
    const std::size_t pad = n % 2 ? 3 : 0;
    const mat h = to_float(hd, n, pad);
    mat l = h;
    // only the lower triangle is read: garbage above the diagonal
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) l(i, j) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE(linalg::cholesky_lower(n, l.data(), l.ld) == n);
    CHECK(l.padding_intact());
    const double g = gamma_n(static_cast<double>(n) + 1.0);
    for (std::size_t i = 0; i < n; ++i) {
      REQUIRE(l(i, i) > 0.0f);
      for (std::size_t j = i + 1; j < n; ++j) REQUIRE(l(i, j) == 0.0f);
      for (std::size_t j = 0; j <= i; ++j) {
        double s = 0.0, sa = 0.0;
        for (std::size_t k = 0; k <= j; ++k) {
          s += static_cast<double>(l(i, k)) * l(j, k);
          sa += std::fabs(static_cast<double>(l(i, k)) * l(j, k));
        }
        const double err = std::fabs(s - h(i, j)), tol = g * sa;
        if (!(err <= tol)) {
          INFO("n = ", n, ": (L L^T)(", i, ", ", j, ") = ", s, ", A = ", h(i, j), ", tolerance ", tol);
          REQUIRE(err <= tol);
        }
      }
    }
    // the same bits through a thread pool
    mat l2 = h;
    thread_pool pool(2);
    REQUIRE(linalg::cholesky_lower(n, l2.data(), l2.ld, pool) == n);
    CHECK(std::memcmp(l.v.data(), l2.v.data(), l.v.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("cholesky_lower returns the first pivot that is not positive") {
  for (const std::size_t n : {std::size_t{5}, std::size_t{300}})
    for (const std::size_t bad : {std::size_t{0}, std::size_t{3}, n - 1, std::size_t{200}}) {
      if (bad >= n) continue;
      mat a(n, n);
      qt::rng g(bad + n);
      for (std::size_t i = 0; i < n; ++i) {
        a(i, i) = 4.0f;
        for (std::size_t j = 0; j < i; ++j) a(i, j) = a(j, i) = static_cast<float>(0.5 * (g.uniform() - 0.5) / n);
      }
      a(bad, bad) = -1.0f;  // the leading minors up to bad are positive, the next one is not
      mat l = a;
      CHECK(linalg::cholesky_lower(n, l.data(), l.ld) == bad);
      mat nan_matrix = a;
      nan_matrix(bad, bad) = std::numeric_limits<float>::quiet_NaN();
      CHECK(linalg::cholesky_lower(n, nan_matrix.data(), nan_matrix.ld) == bad);
    }
  // indefinite through a negative eigenvalue: [[1, 2], [2, 1]]
  float m2[4] = {1.0f, 2.0f, 2.0f, 1.0f};
  CHECK(linalg::cholesky_lower(2, m2, 2) == 1);
  CHECK_THROWS_WITH_AS(linalg::cholesky_lower(3, m2, 2), doctest::Contains("lda = 2 is less than n = 3"), error);
  CHECK_THROWS_WITH_AS(linalg::cholesky_lower(3, nullptr, 3), doctest::Contains("a is null"), error);
  CHECK(linalg::cholesky_lower(0, nullptr, 0) == 0);
}

// ------------------------------------------------------------------------------------------------
// invert_upper and inverse_upper_factor

TEST_CASE("invert_upper: residual within 2n u |X| |T|, strict lower triangle zero") {
  std::uint64_t seed = 900;
  for (const std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{129}, std::size_t{300}}) {
    // T = L^T of a Hessian's Cholesky factor (as in GPTQ), with garbage below the diagonal.
    const auto hd = hessian_double(n, ++seed);
    mat l = to_float(hd, n, 1);
    REQUIRE(linalg::cholesky_lower(n, l.data(), l.ld) == n);
    mat t(n, n, 1);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) t(i, j) = j >= i ? l(j, i) : 99.0f;
    mat x = t;
    linalg::invert_upper(n, x.data(), x.ld);
    CHECK(x.padding_intact());
    const double c = 2.0 * static_cast<double>(n) * unit_roundoff;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        if (j < i) {
          REQUIRE(x(i, j) == 0.0f);
          continue;
        }
        double s = 0.0, sa = 0.0;
        for (std::size_t k = i; k <= j; ++k) {
          s += static_cast<double>(x(i, k)) * t(k, j);
          sa += std::fabs(static_cast<double>(x(i, k)) * t(k, j));
        }
        const double err = std::fabs(s - (i == j ? 1.0 : 0.0)), tol = c * sa;
        if (!(err <= tol)) {
          INFO("n = ", n, ": (X T)(", i, ", ", j, ") = ", s, ", tolerance ", tol);
          REQUIRE(err <= tol);
        }
      }
    mat x2 = t;
    thread_pool pool(2);
    linalg::invert_upper(n, x2.data(), x2.ld, pool);
    CHECK(std::memcmp(x.v.data(), x2.v.data(), x.v.size() * sizeof(float)) == 0);
  }
  CHECK_THROWS_WITH_AS(linalg::invert_upper(4, nullptr, 4), doctest::Contains("a is null"), error);
}

TEST_CASE("inverse_upper_factor: U upper with U^T U H = I, as invert_upper(J chol(J H J) J)") {
  std::uint64_t seed = 1100;
  for (const std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{129}, std::size_t{300}}) {
    const auto hd = hessian_double(n, ++seed);
    const mat h = to_float(hd, n, 2);
    mat u = h;
    REQUIRE(linalg::inverse_upper_factor(n, u.data(), u.ld) == n);
    CHECK(u.padding_intact());
    for (std::size_t i = 0; i < n; ++i) {
      REQUIRE(u(i, i) > 0.0f);
      for (std::size_t j = 0; j < i; ++j) REQUIRE(u(i, j) == 0.0f);
    }
    // U^T U H - I against 4 n u kappa(H), the H used being the float one.
    std::vector<double> hf(n * n);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) hf[i * n + j] = h(i, j);
    const double kappa = condition_spd(n, hf);
    const double tol = 4.0 * static_cast<double>(n) * unit_roundoff * kappa;
    std::vector<double> uh(n * n, 0.0);  // U H
    for (std::size_t k = 0; k < n; ++k)
      for (std::size_t q = k; q < n; ++q)
        for (std::size_t j = 0; j < n; ++j) uh[k * n + j] += static_cast<double>(u(k, q)) * hf[q * n + j];
    double worst = 0.0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (std::size_t k = 0; k <= i; ++k) s += static_cast<double>(u(k, i)) * uh[k * n + j];
        worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
    INFO("n = ", n, ": kappa(H) = ", kappa, ", max |U^T U H - I| = ", worst, ", tolerance ", tol);
    CHECK(worst <= tol);
    // The same bits as the two steps spelled out with the public functions.
    mat r(n, n, 2);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) r(i, j) = h(n - 1 - i, n - 1 - j);
    REQUIRE(linalg::cholesky_lower(n, r.data(), r.ld) == n);
    mat v(n, n, 2);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) v(i, j) = r(n - 1 - i, n - 1 - j);
    linalg::invert_upper(n, v.data(), v.ld);
    CHECK(std::memcmp(u.v.data(), v.v.data(), u.v.size() * sizeof(float)) == 0);
    // and through a thread pool
    mat u2 = h;
    thread_pool pool(2);
    REQUIRE(linalg::inverse_upper_factor(n, u2.data(), u2.ld, pool) == n);
    CHECK(std::memcmp(u.v.data(), u2.v.data(), u.v.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("inverse_upper_factor reports the column whose pivot fails, in H's order") {
  const std::size_t n = 300;
  for (const std::size_t bad : {std::size_t{0}, std::size_t{150}, std::size_t{299}}) {
    mat h(n, n);
    for (std::size_t i = 0; i < n; ++i) h(i, i) = 2.0f;
    h(bad, bad) = -1.0f;
    CHECK(linalg::inverse_upper_factor(n, h.data(), h.ld) == bad);
  }
  CHECK_THROWS_WITH_AS(linalg::inverse_upper_factor(4, nullptr, 4), doctest::Contains("h is null"), error);
  float one = 4.0f;
  CHECK_THROWS_WITH_AS(linalg::inverse_upper_factor(2, &one, 1), doctest::Contains("ldh = 1 is less than n = 2"),
                       error);
  REQUIRE(linalg::inverse_upper_factor(1, &one, 1) == 1);
  CHECK(one == 0.5f);
}
