// The SIMD quantize kernel (kernels/simd/quantize.hpp) against the scalar reference: codes
// (tail bits included), scales and zero points must be bit-identical for every built-in format,
// user formats (a table, an integer width, a minifloat and a hand-written encode that takes the
// scalar path), symmetric and asymmetric schemes, every granularity, ragged groups, strided
// sources, both scale searches and adversarial values (rounding ties, table midpoints, +-0,
// subnormals, saturation). The element encoders and the SIMD pack / unpack are also checked
// value by value against format_traits::encode and quant::pack_codes / unpack_codes.
// This file is compiled once per ISA tier the compiler supports (tests/CMakeLists.txt); each
// build checks every tier its flags allow.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <quant/quant.hpp>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "user_formats.hpp"

namespace user {  // besides nf3, sm3, int6 and e3m2 of user_formats.hpp
struct lut2 {};  // 2-bit table with an exact tie structure
inline constexpr std::array<float, 4> lut2_table{-1.5f, -0.5f, 0.25f, 2.0f};
struct e2m2 {};  // a 5-bit minifloat with Inf/NaN codes
}  // namespace user

template <>
struct quant::format_traits<user::lut2> : quant::lut_traits<user::lut2_table> {
  static constexpr std::string_view name = "lut2";
  static constexpr std::uint32_t id = 0x80000005;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct quant::format_traits<user::e2m2> : quant::minifloat_traits<2, 2, quant::nonfinite::ieee> {
  static constexpr std::string_view name = "e2m2";
  static constexpr std::uint32_t id = 0x80000006;
  static constexpr std::uint32_t layout_version = 1;
};

using namespace quant;

namespace {

// Calls f(tag) for every ISA tier this translation unit can run.
template <class Fn>
void for_each_tier(Fn&& f) {
  f(isa_generic{});
  if constexpr (isa_compiled_v<isa_sse4_2>) f(isa_sse4_2{});
  if constexpr (isa_compiled_v<isa_avx2>) f(isa_avx2{});
  if constexpr (isa_compiled_v<isa_avx512>) f(isa_avx512{});
}

using qt::bytes_of;

template <class F, class Gran>
void scribble(tensor<F, Gran>& t, std::uint8_t v) {
  const auto w = t.view();
  std::memset(w.codes().data(), v, w.codes().size());
  std::memset(static_cast<void*>(w.scales().data()), v, w.scales().size_bytes());
  if (!w.zeros().empty()) std::memset(w.zeros().data(), v, w.zeros().size());
}

// The reference, quant::quantize and (Tiers) the kernel of every tier on w (rows x cols,
// stride ld): all bit-identical. The big sweeps check the build's own tier only (quant::quantize;
// the per-tier builds of this file cover the others), to keep the compile time in bounds.
template <class F, bool Tiers = true, class Gran>
void check_case(const std::vector<float>& w, std::size_t rows, std::size_t cols, std::size_t ld, const Gran& gran,
                const quantize_options& o, const std::string& what) {
  const matrix_view<const float> wv(w.data(), rows, cols, ld);
  tensor<F, Gran> ref(rows, cols, gran), got(rows, cols, gran);
  scribble(ref, 0xA5);
  reference::quantize(wv, ref.view(), o);
  const auto expect = bytes_of(ref);
  scribble(got, 0x5A);
  quantize(wv, got.view(), o);
  INFO(what, " (quant::quantize, ", isa_name(default_isa::id), ")");
  REQUIRE(bytes_of(got) == expect);
  if constexpr (Tiers) for_each_tier([&](auto tier) {
    using Isa = decltype(tier);
    scribble(got, 0x3C);
    detail::quantize_kernel<F, Gran::is_asymmetric, typename Gran::scale_type, Isa>::run(wv, got.view(), o);
    INFO(what, " (kernel, ", isa_name(Isa::id), ")");
    REQUIRE(bytes_of(got) == expect);
  });
}

constexpr std::size_t col_counts[] = {1, 7, 33, 100, 257, 4096};

// Every shape, with and without a row stride (the gap is filled with NaN, which must never be
// read), both searches, realistic heavy-tailed weights.
template <class F, class Gran>
void check_shapes(const Gran& gran, const char* name, bool both_searches = true) {
  std::uint64_t seed = 1000;
  for (const std::size_t cols : col_counts) {
    const std::size_t rows = cols >= 4096 ? 2 : (cols == 1 ? 5 : 3);
    for (const std::size_t pad : {std::size_t{0}, std::size_t{5}}) {
      const std::size_t ld = cols + pad;
      const auto dense = qt::heavy_tailed(rows, cols, ++seed);
      std::vector<float> w(rows * ld, std::numeric_limits<float>::quiet_NaN());
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) w[r * ld + c] = dense[r * cols + c];
      for (const auto search : {scale_search::minmax, scale_search::mse}) {
        if (search == scale_search::mse && !both_searches) continue;
        const std::string what = std::string(name) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
                                 " ld " + std::to_string(ld) + (search == scale_search::mse ? " mse" : " minmax");
        check_case<F, false>(w, rows, cols, ld, gran, quantize_options{search}, what);
      }
    }
  }
}

// Symmetric granularities with float scales: tensor, channel, groups 32/64/128 and odd ones.
template <class F>
void check_symmetric(const char* name) {
  check_shapes<F>(per_tensor<>{}, (std::string(name) + " per-tensor").c_str());
  check_shapes<F>(per_channel<>{}, (std::string(name) + " per-channel").c_str());
  for (const std::size_t g : {32, 64, 128, 48, 100})
    check_shapes<F>(per_group<dynamic_group>{g}, (std::string(name) + " g" + std::to_string(g)).c_str());
  check_shapes<F>(per_group<128>{}, (std::string(name) + " static g128").c_str(), false);
}

template <class F>
void check_asymmetric(const char* name) {
  using A = asymmetric;
  check_shapes<F>(per_tensor<A>{}, (std::string(name) + " asym per-tensor").c_str());
  check_shapes<F>(per_channel<A>{}, (std::string(name) + " asym per-channel").c_str());
  for (const std::size_t g : {32, 64, 128, 48, 100})
    check_shapes<F>(per_group<dynamic_group, A>{g}, (std::string(name) + " asym g" + std::to_string(g)).c_str());
  check_shapes<F>(per_group<dynamic_group, A, fp16>{64}, (std::string(name) + " asym g64 fp16").c_str());
  check_shapes<F>(per_group<32, A, e8m0>{}, (std::string(name) + " asym g32 e8m0").c_str(), false);
}

// ------------------------------------------------------------------------------------------------
// Element encoders: every value v goes through the kernel with scale 1 (so w / s == v) and must
// give format_traits::encode(v), NaN and +-Inf included.

std::vector<float> probe_values(const std::vector<float>& points) {
  std::vector<float> v;
  auto add = [&](float x) {
    for (float y : {x, -x}) {
      v.push_back(y);
      v.push_back(std::nextafter(y, std::numeric_limits<float>::infinity()));
      v.push_back(std::nextafter(y, -std::numeric_limits<float>::infinity()));
    }
  };
  for (float p : points) add(p);
  for (float p : {0.0f, 1e-45f, 1e-40f, 1e-30f, 1e-8f, 1e30f, 3.4e38f, std::numeric_limits<float>::infinity()}) add(p);
  v.push_back(std::numeric_limits<float>::quiet_NaN());
  v.push_back(-std::numeric_limits<float>::quiet_NaN());
  for (int k = -300; k <= 300; ++k) add(static_cast<float>(k) * 0.5f);  // integer ties k + 0.5
  // A sweep over the bit patterns and random ones.
  for (std::uint64_t b = 0; b < (1ull << 32); b += 65521)
    v.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(b)));
  qt::rng g(7);
  for (int i = 0; i < 100000; ++i) v.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(g.next())));
  for (int i = 0; i < 100000; ++i) v.push_back(static_cast<float>(20.0 * (g.uniform() - 0.5)));
  return v;
}

// The midpoints of a format's sorted values (in double, rounded to float) and the values.
template <class F>
std::vector<float> format_points() {
  std::vector<double> vals;
  for (unsigned c = 0; c < (1u << format_traits<F>::bits); ++c) {
    const float x = format_traits<F>::decode(static_cast<std::uint8_t>(c));
    if (std::isfinite(x)) vals.push_back(x);
  }
  std::sort(vals.begin(), vals.end());
  std::vector<float> p;
  for (std::size_t i = 0; i < vals.size(); ++i) {
    p.push_back(static_cast<float>(vals[i]));
    if (i + 1 < vals.size()) p.push_back(static_cast<float>((vals[i] + vals[i + 1]) / 2));
  }
  return p;
}

template <class F>
void check_encoder(const char* name) {
  const auto v = probe_values(format_points<F>());
  constexpr unsigned mask = (1u << format_traits<F>::bits) - 1u;
  block_params<float> p;
  p.stored = 1.0f, p.scale = 1.0f;
  for_each_tier([&](auto tier) {
    using K = detail::quantize_kernel<F, false, float, decltype(tier)>;
    std::vector<std::uint8_t> got(v.size());
    K::encode(v.data(), v.size(), p, got.data(), K::use_scalar());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const unsigned want = format_traits<F>::encode(v[i]) & mask;
      if (got[i] != want && bad++ < 5)
        FAIL_CHECK(name, " ", isa_name(decltype(tier)::id), ": encode(", v[i], " = 0x", std::hex,
                   std::bit_cast<std::uint32_t>(v[i]), std::dec, ") = ", unsigned(got[i]), ", expected ", want);
    }
    CHECK(bad == 0);
  });
}

template <unsigned Bits>
void check_pack() {
  qt::rng g(Bits);
  for (std::size_t n = 0; n < 600; n += (n < 140 ? 1 : 37)) {
    for (const std::size_t len : {n, n + 4096 * (n == 599)}) {
      std::vector<std::uint8_t> codes(len);
      for (auto& c : codes) c = static_cast<std::uint8_t>(g.next());  // high bits must be ignored
      const std::size_t nb = packed_bytes(len, Bits);
      std::vector<std::uint8_t> want(nb + 64, 0xEE);
      pack_codes(codes, Bits, want.data());
      std::vector<std::uint8_t> low(len);
      unpack_codes(want.data(), Bits, low);
      for_each_tier([&](auto tier) {
        using Isa = decltype(tier);
        std::vector<std::uint8_t> got(nb + 64, 0xEE);
        detail::pack_row<Bits, Isa>(codes.data(), len, got.data());
        INFO("pack ", Bits, " bits, n = ", len, ", ", isa_name(Isa::id));
        REQUIRE(got == want);  // the guard bytes after the row are untouched too
        std::vector<std::uint8_t> back(len + 64, 0xEE);
        detail::unpack_row<Bits, Isa>(want.data(), len, back.data());
        REQUIRE(std::equal(low.begin(), low.end(), back.begin()));
        for (std::size_t i = len; i < back.size(); ++i) REQUIRE(back[i] == 0xEE);
      });
    }
  }
}

}  // namespace

TEST_CASE("pack_row and unpack_row match pack_codes / unpack_codes for 1..8 bits") {
  check_pack<1>();
  check_pack<2>();
  check_pack<3>();
  check_pack<4>();
  check_pack<5>();
  check_pack<6>();
  check_pack<7>();
  check_pack<8>();
}

TEST_CASE("the encoders take the paths they should") {
  using detail::encode_path;
  using detail::encode_path_of;
  CHECK(encode_path_of<int8>() == encode_path::integer);
  CHECK(encode_path_of<int2>() == encode_path::integer);
  CHECK(encode_path_of<user::int6>() == encode_path::integer);
  CHECK(encode_path_of<fp8_e4m3>() == encode_path::minifloat);
  CHECK(encode_path_of<fp8_e5m2>() == encode_path::minifloat);
  CHECK(encode_path_of<fp4_e2m1>() == encode_path::minifloat);
  CHECK(encode_path_of<user::e3m2>() == encode_path::minifloat);
  CHECK(encode_path_of<nf4>() == encode_path::table);
  CHECK(encode_path_of<user::nf3>() == encode_path::table);
  CHECK(encode_path_of<user::sm3>() == encode_path::scalar);
  CHECK(detail::table_thresholds<nf4>::get().ok);
  CHECK(detail::table_thresholds<user::nf3>::get().ok);
  CHECK(detail::table_thresholds<user::lut2>::get().ok);
}

TEST_CASE("element encoders equal format_traits::encode: ties, midpoints, +-0, subnormals, Inf, NaN") {
  check_encoder<int8>("int8");
  check_encoder<int4>("int4");
  check_encoder<int3>("int3");
  check_encoder<int2>("int2");
  check_encoder<user::int6>("int6");
  check_encoder<nf4>("nf4");
  check_encoder<user::nf3>("nf3");
  check_encoder<user::lut2>("lut2");
  check_encoder<fp4_e2m1>("e2m1");
  check_encoder<fp8_e4m3>("e4m3");
  check_encoder<fp8_e5m2>("e5m2");
  check_encoder<user::e3m2>("e3m2");
  check_encoder<user::e2m2>("e2m2");
  check_encoder<user::sm3>("sm3");
}

TEST_CASE("quantize is bit-identical to the reference: integer formats") {
  check_symmetric<int8>("int8");
  check_symmetric<int4>("int4");
  check_symmetric<int3>("int3");
  check_symmetric<int2>("int2");
  check_asymmetric<int8>("int8");
  check_asymmetric<int4>("int4");
  check_asymmetric<int3>("int3");
  check_asymmetric<int2>("int2");
}

TEST_CASE("quantize is bit-identical to the reference: table and minifloat formats") {
  check_symmetric<nf4>("nf4");
  check_symmetric<fp4_e2m1>("e2m1");
  check_symmetric<fp8_e4m3>("e4m3");
  check_symmetric<fp8_e5m2>("e5m2");
  using mx = per_group<32, symmetric, e8m0>;
  check_shapes<fp4_e2m1>(mx{}, "MXFP4");
  check_shapes<fp8_e4m3>(mx{}, "MXFP8");
  check_shapes<nf4>(per_group<dynamic_group, symmetric, bf16>{64}, "nf4 g64 bf16");
  check_shapes<fp8_e4m3>(per_channel<symmetric, fp16>{}, "e4m3 per-channel fp16");
}

TEST_CASE("quantize is bit-identical to the reference: user formats") {
  check_shapes<user::nf3>(per_group<dynamic_group>{48}, "nf3 g48");
  check_shapes<user::lut2>(per_channel<>{}, "lut2 per-channel");
  check_shapes<user::sm3>(per_group<dynamic_group>{32}, "sm3 g32");
  check_shapes<user::int6>(per_group<dynamic_group>{100}, "int6 g100");
  check_shapes<user::int6>(per_group<dynamic_group, asymmetric>{64}, "int6 asym g64");
  check_shapes<user::e3m2>(per_group<dynamic_group>{64}, "e3m2 g64");
}

// Adversarial matrices through quant::quantize and every tier: exact rounding ties under a
// power-of-two scale, table midpoints, +-0, all-zero blocks, subnormal and huge weights.
template <class F, bool Tiers = false, class Gran>
void check_adversarial(const Gran& gran, const char* name) {
  const std::size_t rows = 6, cols = 96;
  std::vector<float> w(rows * cols);
  // Row 0: ties k + 0.5 at scale 0.125 (the extremes pin s = 0.875 / 7 = 0.125 for int4 sym).
  for (std::size_t c = 0; c < cols; ++c) w[c] = (static_cast<float>(c % 16) - 8.0f + 0.5f) * 0.125f;
  w[0] = 0.875f, w[1] = -1.0f;
  // Row 1: the format's midpoints and values, scaled by a power of two.
  const auto pts = format_points<F>();
  const float fmax = format_range<F>().max_abs();
  for (std::size_t c = 0; c < cols; ++c) w[cols + c] = pts[c % pts.size()] * (c % 2 ? 0.25f : -0.25f);
  w[cols] = fmax * 0.25f;
  // Row 2: +-0 only (a zero scale), then signed zeros around one value.
  for (std::size_t c = 0; c < cols; ++c) w[2 * cols + c] = c % 3 ? -0.0f : 0.0f;
  // Row 3: subnormals.
  for (std::size_t c = 0; c < cols; ++c)
    w[3 * cols + c] = std::bit_cast<float>(static_cast<std::uint32_t>(c * 977 + 1)) * (c % 2 ? -1.0f : 1.0f);
  // Row 4: huge weights (scales saturate in fp16 / bf16) mixed with tiny ones.
  for (std::size_t c = 0; c < cols; ++c) w[4 * cols + c] = (c % 5 == 0 ? 3.0e38f : 1.0e-3f) * (c % 2 ? -1.0f : 1.0f);
  // Row 5: one nonzero per group, -0.0 first.
  for (std::size_t c = 0; c < cols; ++c) w[5 * cols + c] = c % 32 == 7 ? 0.3f : -0.0f;
  for (const auto search : {scale_search::minmax, scale_search::mse})
    check_case<F, Tiers>(w, rows, cols, cols, gran, quantize_options{search},
                  std::string(name) + " adversarial" + (search == scale_search::mse ? " mse" : ""));
}

template <class F>
void check_adversarial_all(const char* name) {
  check_adversarial<F>(per_tensor<>{}, name);
  check_adversarial<F>(per_channel<>{}, name);
  check_adversarial<F>(per_group<dynamic_group>{32}, name);
  check_adversarial<F, true>(per_group<dynamic_group>{48}, name);
  check_adversarial<F>(per_group<dynamic_group, symmetric, fp16>{32}, name);
  check_adversarial<F>(per_group<dynamic_group, symmetric, bf16>{32}, name);
  check_adversarial<F>(per_group<32, symmetric, e8m0>{}, name);
}

TEST_CASE("quantize is bit-identical to the reference on adversarial weights") {
  check_adversarial_all<int8>("int8");
  check_adversarial_all<int4>("int4");
  check_adversarial_all<int3>("int3");
  check_adversarial_all<int2>("int2");
  check_adversarial_all<nf4>("nf4");
  check_adversarial_all<fp4_e2m1>("e2m1");
  check_adversarial_all<fp8_e4m3>("e4m3");
  check_adversarial_all<fp8_e5m2>("e5m2");
  check_adversarial_all<user::sm3>("sm3");
  check_adversarial<int4>(per_tensor<asymmetric>{}, "int4 asym");
  check_adversarial<int4>(per_group<dynamic_group, asymmetric>{32}, "int4 asym g32");
  check_adversarial<int3>(per_group<dynamic_group, asymmetric, fp16>{48}, "int3 asym g48 fp16");
  check_adversarial<int2>(per_group<32, asymmetric, e8m0>{}, "int2 asym e8m0");
  check_adversarial<int8>(per_channel<asymmetric, bf16>{}, "int8 asym per-channel bf16");
}

TEST_CASE("quantize: custom mse options give the reference's choice") {
  const std::size_t rows = 4, cols = 300;
  const auto w = qt::heavy_tailed(rows, cols, 5);
  for (const unsigned grid : {1u, 3u, 37u})
    for (const float shrink : {0.0f, 0.2f, 0.9f}) {
      const quantize_options o{scale_search::mse, grid, shrink};
      const std::string what = "grid " + std::to_string(grid) + " shrink " + std::to_string(shrink);
      check_case<int4>(w, rows, cols, cols, per_group<dynamic_group>{64}, o, "int4 " + what);
      check_case<int3>(w, rows, cols, cols, per_group<dynamic_group, asymmetric>{100}, o, "int3 asym " + what);
      check_case<nf4>(w, rows, cols, cols, per_channel<>{}, o, "nf4 " + what);
    }
}
