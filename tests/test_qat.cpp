// quant/qat.hpp: fake quantization and its gradients.
//   - forward with the library's rules bit-identical to dequantize(quantize()) for every format
//     (built-in and user: a table, a hand-written encode, an integer width, a minifloat) and
//     symmetry, with every granularity (tensor, channel, static and run-time groups with a ragged
//     last group) and every scale type (the full product for int4 and fp4 e2m1), both scale
//     searches, all-zero blocks and strided input; the parameters it reports are the tensor's;
//     fake_quantize_with on them and the export qat::quantize agree bit for bit;
//   - every SIMD tier the build can run against the scalar reference (forward with learnable
//     parameters bit for bit, backward mask bit for bit, sums to rounding);
//   - the straight-through mask against an independent double computation;
//   - dL/ds, dL/dz and dL/dw against central finite differences in double of the surrogate the
//     header defines, dL/ds against finite differences of the true (piecewise) forward where the
//     codes do not change, the exact formula, LSQ's gradient scale, the rounding of s and z
//     passed straight through;
//   - a few hundred Adam steps of layer-wise QAT lowering a held-out output error below RTN's;
//   - bad input: a clear quant::error and untouched outputs.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <quant/qat.hpp>
#include <quant/quant.hpp>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "user_formats.hpp"

using namespace quant;

namespace {

bool same_bits(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

using qt::bytes_of;

template <class Fn>
void for_each_tier(Fn&& f) {
  f(isa_generic{});
  if constexpr (isa_compiled_v<isa_sse4_2>) f(isa_sse4_2{});
  if constexpr (isa_compiled_v<isa_avx2>) f(isa_avx2{});
  if constexpr (isa_compiled_v<isa_avx512>) f(isa_avx512{});
}

/// A test matrix: heavy-tailed rows, one row 300x larger, an all-zero group (columns 32..63 of
/// row 1) and an all-zero last row; stored with row stride ld (the gap is NaN, never read).
struct matrix {
  std::size_t rows, cols, ld;
  std::vector<float> data;
  matrix(std::size_t r, std::size_t c, std::size_t pad, std::uint64_t seed, bool zeros = true)
      : rows(r), cols(c), ld(c + pad), data(r * (c + pad), std::numeric_limits<float>::quiet_NaN()) {
    const auto w = qt::heavy_tailed(r, c, seed);
    for (std::size_t i = 0; i < r; ++i)
      for (std::size_t j = 0; j < c; ++j) {
        float v = w[i * c + j] * (i == 0 && r > 1 ? 300.0f : 1.0f);
        if (zeros && ((i == 1 && j >= 32 && j < 64) || (i + 1 == r && r > 2))) v = 0.0f;
        data[i * ld + j] = v;
      }
  }
  matrix_view<const float> view() const { return {data.data(), rows, cols, ld}; }
};

// ------------------------------------------------------------------------------------------------
// Forward: bit-identical to dequantize(quantize())

/// What check_forward compares: the oracle dequantize(quantize()) and the tensor's parameters and
/// bytes, and every path of qat.hpp that must reproduce them.
struct forward_results {
  std::vector<float> expect, fake, fake_used, reference, with, in_place;
  std::vector<float> tensor_s, tensor_z, used_s, used_z, fit_s, fit_z;
  std::vector<std::uint8_t> tensor_bytes, export_bytes;
};

template <class F, class Gran>
forward_results run_forward(const Gran& gran, matrix_view<const float> wv, const quantize_options& o) {
  const std::size_t rows = wv.rows(), cols = wv.cols(), n = rows * cols;
  const std::size_t count = qat::param_count(rows, cols, gran), zc = Gran::is_asymmetric ? count : 0;
  forward_results r;
  const auto t = quantize<F>(wv, gran, o);
  r.expect.assign(n, 0.0f);
  dequantize(t, matrix_view<float>(r.expect.data(), rows, cols));
  r.tensor_bytes = bytes_of(t);
  for (std::size_t k = 0; k < t.cview().scales().size(); ++k) r.tensor_s.push_back(t.cview().scale(k));
  for (std::size_t k = 0; k < zc; ++k) r.tensor_z.push_back(static_cast<float>(t.cview().zero(k)));
  for (auto* v : {&r.fake, &r.fake_used, &r.reference, &r.with}) v->assign(n, 1234.5f);
  r.used_s.assign(count, -1.0f), r.used_z.assign(zc, -1.0f), r.fit_s.assign(count, -1.0f), r.fit_z.assign(zc, -1.0f);
  qat::fake_quantize<F>(wv, {r.fake.data(), rows, cols}, gran, o);
  qat::fake_quantize<F>(wv, {r.fake_used.data(), rows, cols}, {r.used_s, r.used_z}, gran, o);
  qat::fit<F>(wv, {r.fit_s, r.fit_z}, gran, o);
  qat::reference::fake_quantize<F>(wv, {r.reference.data(), rows, cols}, gran, o);
  qat::fake_quantize_with<F>(wv, {r.used_s, r.used_z}, {r.with.data(), rows, cols}, gran);
  r.export_bytes = bytes_of(qat::quantize<F>(wv, {r.used_s, r.used_z}, gran));
  r.in_place.resize(n);  // out is w itself (a dense copy)
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t c = 0; c < cols; ++c) r.in_place[i * cols + c] = wv(i, c);
  qat::fake_quantize<F>(matrix_view<const float>(r.in_place.data(), rows, cols), {r.in_place.data(), rows, cols}, gran, o);
  return r;
}

void verify_forward(const forward_results& r, const std::string& what) {
  INFO(what);
  const std::size_t n = r.expect.size();
  REQUIRE(same_bits(r.fake.data(), r.expect.data(), n));
  REQUIRE(same_bits(r.fake_used.data(), r.expect.data(), n));
  REQUIRE(same_bits(r.reference.data(), r.expect.data(), n));
  REQUIRE(same_bits(r.with.data(), r.expect.data(), n));
  REQUIRE(same_bits(r.in_place.data(), r.expect.data(), n));
  REQUIRE(r.used_s.size() == r.tensor_s.size());
  REQUIRE(same_bits(r.used_s.data(), r.tensor_s.data(), r.tensor_s.size()));
  REQUIRE(r.used_z == r.tensor_z);
  REQUIRE(same_bits(r.fit_s.data(), r.tensor_s.data(), r.tensor_s.size()));
  REQUIRE(r.fit_z == r.tensor_z);
  REQUIRE(r.export_bytes == r.tensor_bytes);
}

/// Every path of the forward against dequantize(quantize()) on matrices with a ragged last group
/// (172 = 5 x 32 + 12 = 3 x 48 + 28), all-zero groups, rows and tensors, row strides, both searches.
template <class F, class Gran>
void check_forward(const Gran& gran, const std::string& name) {
  struct shape_case {
    std::size_t rows, cols, pad;
    bool zeros;
  };
  const shape_case shapes[] = {{4, 172, 0, true}, {3, 64, 6, true}, {1, 1, 0, false}, {5, 33, 3, false}, {2, 40, 0, true}};
  std::uint64_t seed = 77;
  for (const auto& sc : shapes) {
    matrix m(sc.rows, sc.cols, sc.pad, ++seed, sc.zeros);
    if (sc.rows == 2) std::fill(m.data.begin(), m.data.end(), 0.0f);  // an all-zero tensor
    for (const auto search : {scale_search::minmax, scale_search::mse})
      verify_forward(run_forward<F>(gran, m.view(), quantize_options{search}),
                     name + " " + std::to_string(sc.rows) + "x" + std::to_string(sc.cols) + " ld " +
                         std::to_string(m.ld) + (search == scale_search::mse ? " mse" : " minmax"));
  }
}

// The kernels depend on the format, the symmetry and the scale type; the granularity reaches them
// as the scale grid only. So every format and symmetry runs with every granularity (f32 scales)
// and with every scale type (at run-time groups of 48, ragged), and int4 (both schemes) and fp4
// e2m1 with the full product of granularity and scale type: everything is covered without
// compiling 272 combinations (the compile time of this file stays near the other tests').
template <class F, class Sym, class S>
void forward_grans(const std::string& name) {
  const std::string n = name + " " + std::string(Sym::name) + " " + std::string(scale_traits<S>::name);
  check_forward<F>(per_tensor<Sym, S>{}, n + " per-tensor");
  check_forward<F>(per_channel<Sym, S>{}, n + " per-channel");
  check_forward<F>(per_group<32, Sym, S>{}, n + " g32");
  check_forward<F>(per_group<dynamic_group, Sym, S>{48}, n + " dynamic g48");
}

template <class F, class Sym, bool FullProduct = false>
void forward_scales(const std::string& name) {
  forward_grans<F, Sym, float>(name);
  if constexpr (FullProduct) {
    forward_grans<F, Sym, fp16>(name);
    forward_grans<F, Sym, bf16>(name);
    forward_grans<F, Sym, e8m0>(name);
  } else {
    const std::string n = name + " " + std::string(Sym::name);
    check_forward<F>(per_group<dynamic_group, Sym, fp16>{48}, n + " f16 dynamic g48");
    check_forward<F>(per_group<dynamic_group, Sym, bf16>{48}, n + " bf16 dynamic g48");
    check_forward<F>(per_group<dynamic_group, Sym, e8m0>{48}, n + " e8m0 dynamic g48");
  }
}

// ------------------------------------------------------------------------------------------------
// Learnable parameters: the fitted ones moved around, so that some weights clip and zero points
// are not integers.

template <class F, class Gran>
std::pair<std::vector<float>, std::vector<float>> moved_params(matrix_view<const float> w, const Gran& gran,
                                                               std::uint64_t seed) {
  const std::size_t count = qat::param_count(w.rows(), w.cols(), gran);
  std::vector<float> s(count), z(Gran::is_asymmetric ? count : 0);
  qat::fit<F>(w, {s, z}, gran);
  qt::rng g(seed);
  for (auto& v : s) v *= static_cast<float>(0.55 + 0.6 * g.uniform());  // < 1: clipping
  for (auto& v : z) v += static_cast<float>(3.0 * g.uniform() - 1.5);
  return {s, z};
}

template <class F, class Gran>
void check_tiers(const Gran& gran, const std::string& name) {
  constexpr bool asym = Gran::is_asymmetric;
  matrix m(5, 172, 4, 901);
  const auto wv = m.view();
  const std::size_t rows = m.rows, cols = m.cols, n = rows * cols;
  const auto params = moved_params<F>(wv, gran, 5);
  const auto& s = params.first;
  const auto& z = params.second;
  const auto go = qt::gaussian(n, 6, 1.0);
  const matrix_view<const float> gov(go.data(), rows, cols);
  std::vector<float> ref_out(n), ref_gw(n), ref_ds(s.size()), ref_dz(z.size());
  qat::reference::fake_quantize_with<F>(wv, {s, z}, matrix_view<float>(ref_out.data(), rows, cols), gran);
  const std::size_t ref_clipped = qat::reference::backward<F>(wv, {s, z}, gov, matrix_view<float>(ref_gw.data(), rows, cols),
                                                              {ref_ds, ref_dz}, gran);
  CHECK(ref_clipped > 0);
  CHECK(ref_clipped < n / 2);
  // the sums' scale: sum over the block of |g| (|v| + |u|) >= the sum of |g (v - u [inside])|
  std::vector<double> bound(s.size(), 0.0);
  const scale_grid grid = grid_of(gran, rows, cols, "test");
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t k = grid.index(r, c / grid.group);
      const double u = s[k] > 0 ? wv(r, c) / static_cast<double>(s[k]) : 0.0;
      bound[k] += std::fabs(go[r * cols + c]) * (std::fabs(u) + format_range<F>().max_abs());
    }
  for_each_tier([&](auto tier) {
    using Isa = decltype(tier);
    INFO(name, " tier ", isa_name(Isa::id));
    std::vector<float> out(n, 7.0f), gw(n, 7.0f), ds(s.size(), 7.0f), dz(z.size(), 7.0f);
    using D = qat::detail::driver_for<F, Gran, Isa>;
    D::fake_quantize_with(wv, {s, z}, matrix_view<float>(out.data(), rows, cols), grid);
    REQUIRE(same_bits(out.data(), ref_out.data(), n));
    const std::size_t clipped = D::backward(wv, {s, z}, gov, matrix_view<float>(gw.data(), rows, cols), {ds, dz}, grid, false);
    REQUIRE(clipped == ref_clipped);
    REQUIRE(same_bits(gw.data(), ref_gw.data(), n));
    for (std::size_t k = 0; k < s.size(); ++k) {
      REQUIRE(std::fabs(ds[k] - ref_ds[k]) <= 4e-6 * bound[k] + 1e-30);
      if (asym) REQUIRE(std::fabs(dz[k] - ref_dz[k]) <= 4e-6 * bound[k] * s[k] + 1e-30);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Gradients in double

/// The value in scale units v = decode(encode(w / s')) (or q - z') as the header defines it.
template <class F, bool Asym>
double value_of(float w, float s, std::uint8_t z) {
  const std::uint8_t c = detail::quantize_value<F, Asym>(w, s, z);
  return Asym ? static_cast<double>(c) - z : static_cast<double>(format_traits<F>::decode(c));
}

/// Checks backward() of one block-structured layer against the header's formulas in double and
/// against central finite differences of the surrogate (and, for dL/ds, of the true forward).
template <class F, class Gran>
void check_gradients(const Gran& gran, const std::string& name, bool lsq) {
  constexpr bool asym = Gran::is_asymmetric;
  static_assert(std::is_same_v<typename Gran::scale_type, float>);
  matrix m(3, 172, 0, 4242, false);
  const auto wv = m.view();
  const std::size_t rows = m.rows, cols = m.cols, n = rows * cols;
  auto params = moved_params<F>(wv, gran, 17);
  auto& s = params.first;
  auto& z = params.second;
  const double qmax = asym ? static_cast<double>((1u << format_traits<F>::bits) - 1u) : 0.0;
  for (auto& v : z) v = static_cast<float>(std::clamp(std::nearbyint(static_cast<double>(v)), 0.0, qmax));  // z' itself
  const auto go = qt::gaussian(n, 18, 1.0);
  std::vector<float> gw(n), ds(s.size()), dz(z.size());
  qat::backward<F>(wv, {s, z}, {go.data(), rows, cols}, {gw.data(), rows, cols}, {ds, dz}, gran,
                   qat::backward_options{lsq});
  const scale_grid grid = grid_of(gran, rows, cols, "test");
  const code_range fr = format_range<F>();
  INFO(name, std::string(lsq ? " with LSQ gradient scale" : ""));

  // Per weight: u0, v0 and the residual r0 = v0 - clamp(u0) at the point (s0, z0).
  auto range_of = [&](double zz) {
    return asym ? std::pair<double, double>{-zz, qmax - zz} : std::pair<double, double>{fr.min, fr.max};
  };
  // The surrogate w~(w, s, z) of one weight with the residual fixed at the point.
  auto surrogate = [&](double w, double sv, double zv, double r0) {
    if (asym) return sv * (std::clamp(w / sv + zv, 0.0, qmax) + r0 - zv);
    const auto [lo, hi] = range_of(0.0);
    return sv * (std::clamp(w / sv, lo, hi) + r0);
  };
  std::vector<double> r0(n);
  std::size_t boundary_hits = 0, inside_count = 0, outside_count = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t k = grid.index(r, c / grid.group);
      const double zk = asym ? z[k] : 0.0;
      const double u = static_cast<double>(wv(r, c)) / s[k];
      const auto [lo, hi] = range_of(zk);
      const double v = value_of<F, asym>(wv(r, c), s[k], static_cast<std::uint8_t>(zk));
      r0[r * cols + c] = asym ? (v + zk) - std::clamp(u + zk, 0.0, qmax) : v - std::clamp(u, lo, hi);
      const bool in = u >= lo && u <= hi;
      (in ? inside_count : outside_count)++;
      if (std::fabs(u - lo) < 1e-4 || std::fabs(u - hi) < 1e-4) ++boundary_hits;
      // dL/dw: the mask, exactly, and the surrogate's slope in w
      REQUIRE(gw[r * cols + c] == (in ? go[r * cols + c] : 0.0f));
      const double h = 1e-6 * s[k];
      const double fd = (surrogate(wv(r, c) + h, s[k], zk, r0[r * cols + c]) -
                         surrogate(wv(r, c) - h, s[k], zk, r0[r * cols + c])) /
                        (2 * h) * go[r * cols + c];
      REQUIRE(std::fabs(fd - gw[r * cols + c]) <= 1e-6 * std::fabs(go[r * cols + c]) * (1.0 + 1e-3 * std::fabs(u)));
    }
  REQUIRE(boundary_hits == 0);  // every weight is at a differentiable point of the surrogate
  REQUIRE(inside_count > 0);
  REQUIRE(outside_count > 0);

  std::size_t true_checked = 0;
  for (std::size_t k = 0; k < s.size(); ++k) {
    // the block's weights
    std::vector<std::pair<std::size_t, std::size_t>> idx;
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t c = 0; c < cols; ++c)
        if (grid.index(r, c / grid.group) == k) idx.emplace_back(r, c);
    const double f = lsq ? 1.0 / std::sqrt(static_cast<double>(idx.size()) * qat::lsq_qmax<F, Gran>()) : 1.0;
    const double zk = asym ? z[k] : 0.0;
    const auto [lo, hi] = range_of(zk);
    auto loss = [&](double sv, double zv) {
      double l = 0.0;
      for (const auto& [r, c] : idx) l += go[r * cols + c] * surrogate(wv(r, c), sv, zv, r0[r * cols + c]);
      return l;
    };
    double exact = 0.0, exact_z = 0.0, scale = 0.0, true_part = 0.0, inside_u = 0.0;
    for (const auto& [r, c] : idx) {
      const double g = go[r * cols + c], u = static_cast<double>(wv(r, c)) / s[k];
      const double v = value_of<F, asym>(wv(r, c), s[k], static_cast<std::uint8_t>(zk));
      const bool in = u >= lo && u <= hi;
      exact += g * (v - (in ? u : 0.0));
      exact_z += in ? 0.0 : -static_cast<double>(s[k]) * g;
      scale += std::fabs(g) * (std::fabs(v) + std::fabs(u));
      true_part += g * v;
      if (in) inside_u += g * u;
    }
    // the exact formula (float sums against double)
    REQUIRE(std::fabs(ds[k] - f * exact) <= 1e-5 * f * scale);
    // finite differences of the surrogate
    const double h = 1e-6 * s[k];
    const double fd_s = (loss(s[k] + h, zk) - loss(s[k] - h, zk)) / (2 * h);
    REQUIRE(std::fabs(ds[k] - f * fd_s) <= 1e-5 * f * scale);
    if (asym) {
      const double fd_z = (loss(s[k], zk + 1e-6) - loss(s[k], zk - 1e-6)) / 2e-6;
      REQUIRE(std::fabs(dz[k] - f * fd_z) <= 1e-5 * f * scale * s[k]);
      REQUIRE(std::fabs(dz[k] - f * exact_z) <= 1e-5 * f * scale * s[k]);
    }
    // the true forward, sum g * s * decode(encode(w / s)), where no code changes between s - h and
    // s + h: its slope is sum g v, which the LSQ gradient equals after adding the STE term back
    const double ht = 1e-5 * s[k];
    bool codes_fixed = true;
    double lp = 0.0, lm = 0.0;
    for (const auto& [r, c] : idx) {
      const auto sp = static_cast<float>(s[k] + ht), sm = static_cast<float>(s[k] - ht);
      const auto zz = static_cast<std::uint8_t>(zk);
      codes_fixed = codes_fixed && detail::quantize_value<F, asym>(wv(r, c), sp, zz) ==
                                       detail::quantize_value<F, asym>(wv(r, c), s[k], zz) &&
                    detail::quantize_value<F, asym>(wv(r, c), sm, zz) == detail::quantize_value<F, asym>(wv(r, c), s[k], zz);
      lp += go[r * cols + c] * static_cast<double>(sp) * value_of<F, asym>(wv(r, c), sp, zz);
      lm += go[r * cols + c] * static_cast<double>(sm) * value_of<F, asym>(wv(r, c), sm, zz);
    }
    true_checked += codes_fixed;
    if (codes_fixed) {
      const double sp = static_cast<float>(s[k] + ht), sm = static_cast<float>(s[k] - ht);
      const double fd_true = (lp - lm) / (sp - sm);
      REQUIRE(std::fabs(fd_true - true_part) <= 1e-9 * scale);
      REQUIRE(std::fabs(ds[k] / f + inside_u - fd_true) <= 1e-5 * scale);
    }
  }
  REQUIRE(true_checked > 0);
}

// ------------------------------------------------------------------------------------------------
// Errors

void expect_error(const std::function<void()>& f, std::initializer_list<const char*> parts) {
  std::string what;
  try {
    f();
  } catch (const quant::error& e) {
    what = e.what();
  }
  INFO("message: \"", what, "\"");
  REQUIRE_FALSE(what.empty());
  for (const char* p : parts) CHECK(what.find(p) != std::string::npos);
}

}  // namespace

TEST_CASE("qat::fake_quantize: bit-identical to dequantize(quantize()), integer formats, both schemes") {
  forward_scales<int8, symmetric>("int8");
  forward_scales<int8, asymmetric>("int8");
  forward_scales<int4, symmetric, true>("int4");
  forward_scales<int4, asymmetric, true>("int4");
  forward_scales<int3, symmetric>("int3");
  forward_scales<int3, asymmetric>("int3");
  forward_scales<int2, symmetric>("int2");
  forward_scales<int2, asymmetric>("int2");
}

TEST_CASE("qat::fake_quantize: bit-identical to dequantize(quantize()), nf4, fp8, fp4") {
  forward_scales<nf4, symmetric>("nf4");
  forward_scales<fp8_e4m3, symmetric>("fp8_e4m3");
  forward_scales<fp8_e5m2, symmetric>("fp8_e5m2");
  forward_scales<fp4_e2m1, symmetric, true>("fp4_e2m1");
}

TEST_CASE("qat::fake_quantize: bit-identical to dequantize(quantize()), user formats through format_traits") {
  forward_scales<user::nf3, symmetric>("nf3");
  forward_scales<user::sm3, symmetric>("sm3");
  forward_scales<user::int6, symmetric>("int6");
  forward_scales<user::int6, asymmetric>("int6");
  forward_scales<user::e3m2, symmetric>("e3m2");
}

TEST_CASE("qat: every SIMD tier equals the scalar reference (learnable forward, backward)") {
  check_tiers<int4>(per_group<32>{}, "int4 g32");
  check_tiers<int4>(per_group<32, asymmetric>{}, "int4 g32 asym");
  check_tiers<int3>(per_group<dynamic_group, asymmetric, fp16>{48}, "int3 g48 asym fp16");
  check_tiers<int2>(per_channel<asymmetric>{}, "int2 per-channel asym");
  check_tiers<int8>(per_tensor<>{}, "int8 per-tensor");
  check_tiers<nf4>(per_group<64, symmetric, bf16>{}, "nf4 g64 bf16");
  check_tiers<fp4_e2m1>(per_group<32, symmetric, e8m0>{}, "MXFP4");
  check_tiers<fp8_e4m3>(per_channel<>{}, "fp8 e4m3 per-channel");
  check_tiers<fp8_e5m2>(per_group<32>{}, "fp8 e5m2 g32");
  check_tiers<user::nf3>(per_group<32>{}, "nf3 g32");
  check_tiers<user::sm3>(per_group<32>{}, "sm3 g32 (scalar encode)");
  check_tiers<user::e3m2>(per_channel<>{}, "e3m2 per-channel");
}

TEST_CASE("qat::backward: the clipping mask, computed independently in double") {
  matrix m(4, 172, 0, 31);
  const auto wv = m.view();
  const per_group<32> gran;
  const auto s = moved_params<int4>(wv, gran, 32).first;
  const auto go = qt::gaussian(m.rows * m.cols, 33, 1.0);
  std::vector<float> gw(go.size());
  const std::size_t clipped = qat::backward<int4>(wv, {s}, {go.data(), m.rows, m.cols}, {gw.data(), m.rows, m.cols}, {}, gran);
  std::size_t expect_clipped = 0;
  for (std::size_t r = 0; r < m.rows; ++r)
    for (std::size_t c = 0; c < m.cols; ++c) {
      const float sk = s[r * 6 + c / 32];
      const double u = sk > 0 ? wv(r, c) / static_cast<double>(sk) : 0.0;
      // u within [-8, 7]; float division rounding can only matter within 1 ulp of the edges
      const bool in = u >= -8.0 && u <= 7.0;
      if (std::fabs(u + 8.0) > 1e-5 && std::fabs(u - 7.0) > 1e-5) REQUIRE(gw[r * m.cols + c] == (in ? go[r * m.cols + c] : 0.0f));
      expect_clipped += !in;
    }
  CHECK(clipped == expect_clipped);
  CHECK(clipped > 10);
  // the library's own parameters clip nothing with min-max (all scales represent the extremes)
  std::vector<float> used(s.size()), out(go.size());
  qat::fake_quantize<int4>(wv, {out.data(), m.rows, m.cols}, {used}, gran);
  CHECK(qat::backward<int4>(wv, {used}, {go.data(), m.rows, m.cols}, {gw.data(), m.rows, m.cols}, {}, gran) == 0);
  CHECK(gw == go);
  // in place: grad_w is grad_out
  auto g2 = go;
  qat::backward<int4>(wv, {s}, {g2.data(), m.rows, m.cols}, {g2.data(), m.rows, m.cols}, {}, gran);
  qat::backward<int4>(wv, {s}, {go.data(), m.rows, m.cols}, {gw.data(), m.rows, m.cols}, {}, gran);
  CHECK(g2 == gw);
}

TEST_CASE("qat::backward: dL/ds, dL/dz, dL/dw against finite differences in double and the exact formula") {
  for (const bool lsq : {false, true}) {
    check_gradients<int4>(per_group<32>{}, "int4 g32", lsq);
    check_gradients<int4>(per_group<32, asymmetric>{}, "int4 g32 asym", lsq);
    check_gradients<int3>(per_group<dynamic_group, asymmetric>{48}, "int3 g48 asym", lsq);
    check_gradients<int8>(per_channel<>{}, "int8 per-channel", lsq);
    check_gradients<int2>(per_tensor<asymmetric>{}, "int2 per-tensor asym", lsq);
    check_gradients<nf4>(per_group<64>{}, "nf4 g64", lsq);
    check_gradients<fp4_e2m1>(per_group<32>{}, "fp4 e2m1 g32", lsq);
    check_gradients<fp8_e4m3>(per_channel<>{}, "fp8 e4m3 per-channel", lsq);
    check_gradients<fp8_e5m2>(per_group<32>{}, "fp8 e5m2 g32", lsq);
    check_gradients<user::nf3>(per_group<32>{}, "nf3 g32", lsq);
    check_gradients<user::sm3>(per_group<32>{}, "sm3 g32", lsq);
  }
}

TEST_CASE("qat::backward: LSQ's gradient scale per block, ragged last group included") {
  matrix m(2, 172, 0, 51, false);
  const auto wv = m.view();
  const per_group<32, asymmetric> gran;
  const auto params = moved_params<int4>(wv, gran, 52);
  const auto& s = params.first;
  const auto& z = params.second;
  const auto go = qt::gaussian(m.rows * m.cols, 53, 1.0);
  std::vector<float> gw(go.size()), ds(s.size()), dz(s.size()), ds1(s.size()), dz1(s.size());
  const matrix_view<const float> gov(go.data(), m.rows, m.cols);
  qat::backward<int4>(wv, {s, z}, gov, {gw.data(), m.rows, m.cols}, {ds, dz}, gran);
  qat::backward<int4>(wv, {s, z}, gov, {gw.data(), m.rows, m.cols}, {ds1, dz1}, gran, {true});
  CHECK(qat::lsq_qmax<int4, per_group<32, asymmetric>>() == 15.0f);
  CHECK(qat::lsq_qmax<int4, per_group<32>>() == 7.0f);
  CHECK(qat::lsq_qmax<nf4, per_group<32>>() == 1.0f);
  CHECK(qat::lsq_qmax<fp8_e4m3, per_group<32>>() == 448.0f);
  for (std::size_t k = 0; k < s.size(); ++k) {
    const double n = k % 6 == 5 ? 12.0 : 32.0;  // 172 = 5 x 32 + 12
    CHECK(ds1[k] == doctest::Approx(ds[k] / std::sqrt(n * 15.0)).epsilon(1e-6));
    CHECK(dz1[k] == doctest::Approx(dz[k] / std::sqrt(n * 15.0)).epsilon(1e-6));
  }
  // only dL/ds wanted: the zero span left empty
  std::vector<float> ds2(s.size());
  qat::backward<int4>(wv, {s, z}, gov, {gw.data(), m.rows, m.cols}, {ds2}, gran);
  CHECK(ds2 == ds);
}

TEST_CASE("qat: the rounding of s to the scale type and of z to an integer passes straight through") {
  matrix m(3, 172, 0, 61);
  const auto wv = m.view();
  const auto params = moved_params<int3>(wv, per_group<32, asymmetric, fp16>{}, 62);
  const auto& s = params.first;
  const auto& z = params.second;
  auto check = [&](auto gran_narrow, std::vector<float> rounded_s) {
    using G = decltype(gran_narrow);
    using S = typename G::scale_type;
    for (auto& v : rounded_s) v = scale_traits<S>::decode(scale_traits<S>::encode(v));
    std::vector<float> rz(z.size());
    for (std::size_t k = 0; k < z.size(); ++k) rz[k] = std::clamp(std::nearbyint(z[k]), 0.0f, 7.0f);
    const per_group<32, asymmetric> gran_float;
    const auto go = qt::gaussian(m.rows * m.cols, 63, 1.0);
    const std::size_t n = go.size();
    std::vector<float> a(n), b(n), ga(n), gb(n), dsa(s.size()), dsb(s.size()), dza(s.size()), dzb(s.size());
    qat::fake_quantize_with<int3>(wv, {s, z}, {a.data(), m.rows, m.cols}, gran_narrow);
    qat::fake_quantize_with<int3>(wv, {rounded_s, rz}, {b.data(), m.rows, m.cols}, gran_float);
    REQUIRE(same_bits(a.data(), b.data(), n));
    qat::backward<int3>(wv, {s, z}, {go.data(), m.rows, m.cols}, {ga.data(), m.rows, m.cols}, {dsa, dza}, gran_narrow);
    qat::backward<int3>(wv, {rounded_s, rz}, {go.data(), m.rows, m.cols}, {gb.data(), m.rows, m.cols}, {dsb, dzb},
                        gran_float);
    REQUIRE(ga == gb);
    REQUIRE(dsa == dsb);
    REQUIRE(dza == dzb);
    // and the export stores what the forward used
    std::vector<float> d(n);
    dequantize(qat::quantize<int3>(wv, {s, z}, gran_narrow), matrix_view<float>(d.data(), m.rows, m.cols));
    REQUIRE(same_bits(d.data(), a.data(), n));
  };
  check(per_group<32, asymmetric, fp16>{}, s);
  check(per_group<32, asymmetric, bf16>{}, s);
  check(per_group<32, asymmetric, e8m0>{}, s);
}

TEST_CASE("qat: all-zero blocks give zero weights, the full gradient and no NaN") {
  std::vector<float> w(2 * 64, 0.0f);
  for (std::size_t c = 32; c < 64; ++c) w[c] = 0.01f * static_cast<float>(c);  // row 0, group 1
  const matrix_view<const float> wv(w.data(), 2, 64);
  const per_group<32, asymmetric> gran;
  std::vector<float> s(4), z(4), out(w.size()), gw(w.size()), ds(4), dz(4);
  qat::fake_quantize<int4>(wv, {out.data(), 2, 64}, {s, z}, gran);
  CHECK(s[0] == 0.0f);
  CHECK(s[1] > 0.0f);
  const auto go = qt::gaussian(w.size(), 71, 1.0);
  CHECK(qat::backward<int4>(wv, {s, z}, {go.data(), 2, 64}, {gw.data(), 2, 64}, {ds, dz}, gran) == 0);
  CHECK(gw == go);
  for (std::size_t k : {0u, 2u, 3u}) {
    CHECK(ds[k] == 0.0f);
    CHECK(dz[k] == 0.0f);
  }
  for (float v : out) CHECK(std::isfinite(v));
}

TEST_CASE("qat: a few hundred Adam steps of layer-wise QAT beat round-to-nearest on held-out tokens") {
  // y = W x on correlated inputs with outlier channels; minimize ||(W - Q(W', s, z)) X^T||^2 on
  // calibration tokens through H = X^T X, straight-through gradients, Adam on W', s and z (the
  // recipe of examples/qat_demo.cpp, oscillation dampening included).
  const std::size_t rows = 48, cols = 96;
  const auto w = qt::heavy_tailed(rows, cols, 81);
  const auto x = qt::activations(768, cols, 82);  // one distribution: calibration, then held-out tokens
  const std::vector<float> xc(x.begin(), x.begin() + 512 * cols), xe(x.begin() + 512 * cols, x.end());
  auto gram = [&](const std::vector<float>& x) {
    std::vector<double> h(cols * cols, 0.0);
    for (std::size_t t = 0; t < x.size() / cols; ++t)
      for (std::size_t i = 0; i < cols; ++i)
        for (std::size_t j = 0; j < cols; ++j) h[i * cols + j] += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
    return h;
  };
  const auto hc = gram(xc), he = gram(xe);
  auto rel_err = [&](const std::vector<float>& q, const std::vector<double>& h) {  // tr(D H D^T) / tr(W H W^T)
    double e = 0.0, b = 0.0;
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t i = 0; i < cols; ++i)
        for (std::size_t j = 0; j < cols; ++j) {
          const double di = w[r * cols + i] - q[r * cols + i], dj = w[r * cols + j] - q[r * cols + j];
          e += di * h[i * cols + j] * dj;
          b += w[r * cols + i] * h[i * cols + j] * w[r * cols + j];
        }
    return e / b;
  };
  using G = per_group<32, asymmetric>;
  const matrix_view<const float> wv(w.data(), rows, cols);
  std::vector<float> rtn(w.size());
  qat::fake_quantize<int3, G>(wv, {rtn.data(), rows, cols});
  const double err_rtn = rel_err(rtn, he);

  const std::size_t np = qat::param_count(rows, cols, G{});
  std::vector<float> lw = w, s(np), z(np), q(w.size()), gq(w.size()), gw(w.size()), ds(np), dz(np);
  qat::fit<int3, G>(wv, {s, z});
  const std::vector<float> s0 = s;
  std::vector<double> m1(w.size() + 2 * np, 0.0), m2(m1.size(), 0.0);
  double hnorm = 0.0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t i = 0; i < cols; ++i)
      for (std::size_t j = 0; j < cols; ++j) hnorm += w[r * cols + i] * hc[i * cols + j] * w[r * cols + j];
  const int steps = 300;
  for (int it = 1; it <= steps; ++it) {
    const matrix_view<const float> lv(lw.data(), rows, cols);
    qat::fake_quantize_with<int3, G>(lv, {s, z}, {q.data(), rows, cols});
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t j = 0; j < cols; ++j) {
        double a = 0.0;
        for (std::size_t i = 0; i < cols; ++i) a += (q[r * cols + i] - w[r * cols + i]) * hc[i * cols + j];
        gq[r * cols + j] = static_cast<float>(2.0 * a / hnorm);
      }
    qat::backward<int3, G>(lv, {s, z}, {gq.data(), rows, cols}, {gw.data(), rows, cols}, {ds, dz});
    for (std::size_t i = 0; i < w.size(); ++i)  // oscillation dampening with the loss's curvature (qat_demo)
      gw[i] += static_cast<float>(0.5 * 2.0 * hc[(i % cols) * (cols + 1)] / hnorm * (lw[i] - q[i]));
    const double lr = 0.02 * (0.5 + 0.5 * std::cos(3.14159265358979 * it / steps));
    auto adam = [&](float& p, float g, std::size_t i, double step) {
      m1[i] = 0.9 * m1[i] + 0.1 * g;
      m2[i] = 0.999 * m2[i] + 0.001 * static_cast<double>(g) * g;
      const double mh = m1[i] / (1 - std::pow(0.9, it)), vh = m2[i] / (1 - std::pow(0.999, it));
      p = static_cast<float>(p - step * mh / (std::sqrt(vh) + 1e-12));
    };
    for (std::size_t i = 0; i < w.size(); ++i) adam(lw[i], gw[i], i, lr * s0[(i / cols) * 3 + (i % cols) / 32]);
    for (std::size_t k = 0; k < np; ++k) {
      adam(s[k], ds[k], w.size() + k, 0.5 * lr * s0[k]);
      adam(z[k], dz[k], w.size() + np + k, lr);
      s[k] = std::max(s[k], 1e-3f * s0[k]);
    }
  }
  const matrix_view<const float> lv(lw.data(), rows, cols);
  std::vector<float> trained(w.size());
  dequantize(qat::quantize<int3, G>(lv, {s, z}), matrix_view<float>(trained.data(), rows, cols));
  const double err_qat = rel_err(trained, he);
  MESSAGE("int3 g32 asym, 48 x 96, held-out relative output error: RTN ", err_rtn, ", QAT (", steps, " Adam steps) ", err_qat);
  CHECK(err_qat < 0.25 * err_rtn);
}

TEST_CASE("qat: bad input is rejected with a clear message before anything is written") {
  const std::size_t rows = 3, cols = 40;
  auto w = qt::gaussian(rows * cols, 91);
  const matrix_view<const float> wv(w.data(), rows, cols);
  const per_group<16, asymmetric> gran;  // 3 groups per row, 9 blocks
  std::vector<float> s(9, 0.01f), z(9, 8.0f), out(rows * cols, 42.0f), gw(rows * cols, 42.0f), ds(9, 42.0f),
      dz(9, 42.0f);
  const auto go = qt::gaussian(rows * cols, 92, 1.0);
  const matrix_view<float> ov(out.data(), rows, cols), gwv(gw.data(), rows, cols);
  const matrix_view<const float> gov(go.data(), rows, cols);
  auto untouched = [&] {
    return std::all_of(out.begin(), out.end(), [](float v) { return v == 42.0f; }) &&
           std::all_of(gw.begin(), gw.end(), [](float v) { return v == 42.0f; }) &&
           std::all_of(ds.begin(), ds.end(), [](float v) { return v == 42.0f; }) &&
           std::all_of(dz.begin(), dz.end(), [](float v) { return v == 42.0f; });
  };
  using G = per_group<16, asymmetric>;

  expect_error([&] { qat::fake_quantize<int4>(wv, {out.data(), rows, cols - 1}, gran); },
               {"quant::qat::fake_quantize", "out is 3 x 39", "3 x 40"});
  expect_error([&] { qat::fake_quantize<int4>(matrix_view<const float>(w.data(), 0, cols), ov, gran); },
               {"quant::qat::fake_quantize", "w is empty"});
  expect_error([&] { qat::fake_quantize<int4>(wv, ov, per_group<dynamic_group>{0}); },
               {"quant::qat::fake_quantize", "group size is 0"});
  expect_error([&] { qat::fake_quantize<int4>(wv, ov, gran, {scale_search::mse, 0}); },
               {"quant::qat::fake_quantize", "clip_grid is 0"});
  expect_error([&] { qat::fake_quantize<int4>(wv, ov, {std::span(ds).first(8)}, gran); },
               {"quant::qat::fake_quantize", "used.scale has 8 entries, expected 9"});
  expect_error([&] { qat::fake_quantize<int4>(wv, ov, {ds}, gran); }, {"used.zero has 0 entries, expected 9"});
  expect_error([&] { qat::fake_quantize<int4>(wv, ov, {ds, dz}, per_group<16>{}); },
               {"used.zero has 9 entries; a symmetric scheme has no zero points"});
  // partial overlap of out with w
  std::vector<float> shared(rows * cols + 1);
  expect_error([&] {
    qat::fake_quantize<int4>(matrix_view<const float>(shared.data(), rows, cols),
                             matrix_view<float>(shared.data() + 1, rows, cols), gran);
  }, {"quant::qat::fake_quantize", "out overlaps w"});
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto wb = w;
    wb.back() = bad;
    expect_error([&] { qat::fake_quantize<int4>({wb.data(), rows, cols}, ov, gran); },
                 {"quant::qat::fake_quantize", "w(2, 39)", "finite"});
    expect_error([&] { qat::fit<int4>({wb.data(), rows, cols}, {ds, dz}, gran); }, {"quant::qat::fit", "w(2, 39)"});
    auto gb = go;
    gb.back() = bad;
    expect_error([&] { qat::backward<int4, G>(wv, {s, z}, {gb.data(), rows, cols}, gwv, {ds, dz}); },
                 {"quant::qat::backward", "grad_out(2, 39)", "finite"});
  }
  // caller-given parameters
  expect_error([&] { qat::fake_quantize_with<int4, G>(wv, {std::span(s).first(8), z}, ov); },
               {"quant::qat::fake_quantize_with", "params.scale has 8 entries, expected 9"});
  auto sb = s;
  sb[4] = -0.5f;
  expect_error([&] { qat::fake_quantize_with<int4, G>(wv, {sb, z}, ov); },
               {"params.scale[4] = -0.5", "finite and >= 0"});
  sb[4] = std::numeric_limits<float>::infinity();
  expect_error([&] { qat::backward<int4, G>(wv, {sb, z}, gov, gwv, {ds, dz}); }, {"quant::qat::backward", "params.scale[4]"});
  auto zb = z;
  zb[8] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { qat::quantize<int4, G>(wv, {s, zb}); }, {"quant::qat::quantize", "params.zero[8]", "finite"});
  expect_error([&] { qat::fake_quantize_with<int4, per_group<16>>(wv, {s, z}, ov); },
               {"params.zero has 9 entries; a symmetric scheme has no zero points"});
  // backward buffers
  expect_error([&] { qat::backward<int4, G>(wv, {s, z}, {go.data(), rows, cols - 1}, gwv, {ds, dz}); },
               {"quant::qat::backward", "grad_out is 3 x 39"});
  expect_error([&] { qat::backward<int4, G>(wv, {s, z}, gov, {gw.data(), rows - 1, cols}, {ds, dz}); },
               {"quant::qat::backward", "grad_w is 2 x 40"});
  expect_error([&] { qat::backward<int4, G>(wv, {s, z}, gov, gwv, {std::span(ds).first(3), dz}); },
               {"grad_params.scale has 3 entries, expected 9"});
  expect_error([&] { qat::backward<int4, G>(wv, {s, z}, gov, gwv, {s, dz}); }, {"grad_params overlaps params"});
  expect_error([&] {
    qat::backward<int4, G>(wv, {s, z}, matrix_view<const float>(out.data(), rows, cols),
                           matrix_view<float>(out.data() + 3, rows, cols), {ds, dz});
  }, {"grad_w overlaps grad_out"});
  // export
  tensor<int4, G> t(rows, cols);
  const auto before = bytes_of(t);
  tensor<int4, G> wrong(rows, cols + 1);
  expect_error([&] { qat::quantize(wv, {s, z}, wrong.view()); }, {"quant::qat::quantize", "w is 3 x 40", "out is 3 x 41"});
  expect_error([&] { qat::quantize(wv, {std::span(s).first(2), z}, t.view()); }, {"params.scale has 2 entries"});
  CHECK(bytes_of(t) == before);
  CHECK(untouched());
}
