// Tests of the number formats: quant/formats/{format_traits,integer,minifloat,lut}.hpp.
//
// decode() is checked against the formats' specifications written out here (two's complement,
// the OCP FP8/FP4 formulas, the published NF4 table); encode() is checked against a brute-force
// nearest-value search over the decoded codes, against exact midpoints, and on hand-picked
// values. The built-in formats and two user-defined ones (an E3M2 minifloat and a 2-bit code
// table) run through the same generic tests.
#include <doctest/doctest.h>

#include <quant/quant.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

// ---- two user-defined formats ---------------------------------------------------------------

namespace user {
struct e3m2 {};  // 6-bit minifloat, bias 3, every code finite, max 2^4 * 1.75 = 28
struct lut2 {};  // 2-bit code table
inline constexpr std::array<float, 4> lut2_table{-1.5f, -0.5f, 0.0f, 1.0f};
struct lut2_straddle {};  // a table whose entries -0.25 and 0.5 straddle zero (see the lut_traits bug test)
inline constexpr std::array<float, 4> lut2_straddle_table{-1.5f, -0.25f, 0.5f, 2.0f};
}  // namespace user

namespace quant {
template <>
struct format_traits<user::e3m2> : minifloat_traits<3, 2, nonfinite::none> {
  static constexpr std::string_view name = "user_e3m2";
  static constexpr std::uint32_t id = 0x80000001u;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<user::lut2> : lut_traits<user::lut2_table> {
  static constexpr std::string_view name = "user_lut2";
  static constexpr std::uint32_t id = 0x80000002u;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<user::lut2_straddle> : lut_traits<user::lut2_straddle_table> {
  static constexpr std::string_view name = "user_lut2_straddle";
  static constexpr std::uint32_t id = 0x80000003u;
  static constexpr std::uint32_t layout_version = 1;
};
}  // namespace quant

namespace {

using quant::format_traits;

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

template <class F>
constexpr unsigned code_count = 1u << format_traits<F>::bits;

template <class F>
float dec(unsigned code) {
  return format_traits<F>::decode(static_cast<std::uint8_t>(code));
}
template <class F>
unsigned enc(float v) {
  return format_traits<F>::encode(v);
}
std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", v);
  return buf;
}
std::string fl(float v) {  // all the digits of a float
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

/// Brute force: the code whose finite decoded value is nearest to the finite v; a tie between
/// two values goes to the even code; between +0 and -0, to the zero with v's sign. Beyond the
/// range, the extreme value of that side (said explicitly: in double, the distances from 1e30
/// to the different codes round to the same number).
template <class F>
unsigned nearest_code(float v) {
  struct Table {
    std::vector<std::pair<float, unsigned>> finite;  // (value, code)
    unsigned lowest = 0, highest = 0;
  };
  static const Table t = [] {
    Table out;
    for (unsigned c = 0; c < code_count<F>; ++c)
      if (std::isfinite(dec<F>(c))) out.finite.emplace_back(dec<F>(c), c);
    for (const auto& [x, c] : out.finite) {
      if (x < dec<F>(out.lowest) || !std::isfinite(dec<F>(out.lowest))) out.lowest = c;
      if (x > dec<F>(out.highest) || !std::isfinite(dec<F>(out.highest))) out.highest = c;
    }
    return out;
  }();
  if (v >= dec<F>(t.highest)) return t.highest;
  if (v <= dec<F>(t.lowest)) return t.lowest;
  unsigned best = t.finite.front().second;
  float best_x = t.finite.front().first;
  double best_d = std::fabs(static_cast<double>(v) - static_cast<double>(best_x));
  for (const auto& [x, c] : t.finite) {
    const double d = std::fabs(static_cast<double>(v) - static_cast<double>(x));
    bool take = d < best_d;
    if (d == best_d) {
      if (x == best_x)  // +0 and -0
        take = std::signbit(x) == std::signbit(v) && std::signbit(best_x) != std::signbit(v);
      else
        take = c % 2 == 0 && best % 2 != 0;
    }
    if (take) best = c, best_x = x, best_d = d;
  }
  return best;
}

/// (value, code) of every finite code, ascending by value, -0 before +0.
template <class F>
std::vector<std::pair<float, unsigned>> sorted_codes() {
  std::vector<std::pair<float, unsigned>> out;
  for (unsigned c = 0; c < code_count<F>; ++c)
    if (std::isfinite(dec<F>(c))) out.emplace_back(dec<F>(c), c);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return std::signbit(a.first) && !std::signbit(b.first);
  });
  return out;
}

// ---- the specifications, written independently of the library ------------------------------

/// OCP FP8 E4M3: bias 7, exponent field 0 is subnormal 2^-6 * m/8, S.1111.111 is NaN, no Inf.
double ocp_e4m3(unsigned c) {
  const double s = (c & 0x80u) ? -1.0 : 1.0;
  const int e = (c >> 3) & 0xf, m = c & 0x7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return s * std::ldexp(m / 8.0, -6);
  return s * std::ldexp(1.0 + m / 8.0, e - 7);
}
/// OCP FP8 E5M2: bias 15, IEEE-like: exponent 31 is Inf (m = 0) or NaN.
double ocp_e5m2(unsigned c) {
  const double s = (c & 0x80u) ? -1.0 : 1.0;
  const int e = (c >> 2) & 0x1f, m = c & 0x3;
  if (e == 31) return m == 0 ? s * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return s * std::ldexp(m / 4.0, -14);
  return s * std::ldexp(1.0 + m / 4.0, e - 15);
}
/// OCP FP4 E2M1: the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign.
double ocp_e2m1(unsigned c) {
  constexpr double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  return (c & 0x8u) ? -mag[c & 7] : mag[c & 7];
}
/// The user E3M2: bias 3, exponent field 0 is subnormal 2^-2 * m/4, all codes finite.
double spec_e3m2(unsigned c) {
  const double s = (c & 0x20u) ? -1.0 : 1.0;
  const int e = (c >> 2) & 0x7, m = c & 0x3;
  if (e == 0) return s * std::ldexp(m / 4.0, -2);
  return s * std::ldexp(1.0 + m / 4.0, e - 3);
}
/// Two's complement of `bits` bits.
double twos_complement(unsigned c, unsigned bits) {
  return c < (1u << (bits - 1)) ? static_cast<double>(c) : static_cast<double>(c) - (1u << bits);
}

/// NF4 as published with QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes csrc/kernels.cu).
constexpr double qlora_nf4[16] = {-1.0,
                                  -0.6961928009986877,
                                  -0.5250730514526367,
                                  -0.39491748809814453,
                                  -0.28444138169288635,
                                  -0.18477343022823334,
                                  -0.09105003625154495,
                                  0.0,
                                  0.07958029955625534,
                                  0.16093020141124725,
                                  0.24611230194568634,
                                  0.33791524171829224,
                                  0.44070982933044434,
                                  0.5626170039176941,
                                  0.7229568362236023,
                                  1.0};

template <class F>
double spec_value(unsigned c) {
  if constexpr (std::is_same_v<F, quant::fp8_e4m3>) return ocp_e4m3(c);
  else if constexpr (std::is_same_v<F, quant::fp8_e5m2>) return ocp_e5m2(c);
  else if constexpr (std::is_same_v<F, quant::fp4_e2m1>) return ocp_e2m1(c);
  else if constexpr (std::is_same_v<F, user::e3m2>) return spec_e3m2(c);
  else if constexpr (std::is_same_v<F, quant::nf4>) return static_cast<double>(static_cast<float>(qlora_nf4[c]));
  else if constexpr (std::is_same_v<F, user::lut2>) return static_cast<double>(user::lut2_table[c]);
  else return twos_complement(c, format_traits<F>::bits);  // integer formats
}
template <class F>
constexpr bool is_minifloat = std::is_same_v<F, quant::fp8_e4m3> || std::is_same_v<F, quant::fp8_e5m2> ||
                              std::is_same_v<F, quant::fp4_e2m1> || std::is_same_v<F, user::e3m2>;

}  // namespace

#define QUANT_TEST_ALL_FORMATS                                                                              \
  quant::int8, quant::int4, quant::int3, quant::int2, quant::nf4, quant::fp8_e4m3, quant::fp8_e5m2, \
      quant::fp4_e2m1, user::e3m2, user::lut2

// ---- compile-time properties ----------------------------------------------------------------

static_assert(quant::check_format<quant::int8>() && quant::check_format<quant::int4>() &&
              quant::check_format<quant::int3>() && quant::check_format<quant::int2>() &&
              quant::check_format<quant::nf4>() && quant::check_format<quant::fp8_e4m3>() &&
              quant::check_format<quant::fp8_e5m2>() && quant::check_format<quant::fp4_e2m1>() &&
              quant::check_format<user::e3m2>() && quant::check_format<user::lut2>());
static_assert(!quant::is_format_v<int> && !quant::is_format_v<float> && !quant::is_format_v<quant::fp16>);
static_assert(quant::is_format_v<quant::int4> && quant::is_format_v<const quant::nf4> && quant::is_format_v<user::e3m2>);
static_assert(quant::is_code_table_format_v<quant::nf4> && quant::is_code_table_format_v<user::lut2>);
static_assert(quant::check_format<user::lut2_straddle>() && quant::is_code_table_format_v<user::lut2_straddle>);
static_assert(!quant::is_code_table_format_v<quant::int4> && !quant::is_code_table_format_v<quant::fp4_e2m1>);
static_assert(quant::is_integer_format_v<quant::int8> && quant::is_integer_format_v<quant::int2>);
static_assert(!quant::is_integer_format_v<quant::nf4> && !quant::is_integer_format_v<quant::fp8_e4m3>);
static_assert(format_traits<quant::int8>::bits == 8 && format_traits<quant::int4>::bits == 4 &&
              format_traits<quant::int3>::bits == 3 && format_traits<quant::int2>::bits == 2 &&
              format_traits<quant::nf4>::bits == 4 && format_traits<quant::fp8_e4m3>::bits == 8 &&
              format_traits<quant::fp8_e5m2>::bits == 8 && format_traits<quant::fp4_e2m1>::bits == 4 &&
              format_traits<user::e3m2>::bits == 6 && format_traits<user::lut2>::bits == 2);
static_assert(format_traits<quant::fp8_e4m3>::max_code == 0x7E && format_traits<quant::fp8_e5m2>::max_code == 0x7B &&
              format_traits<quant::fp4_e2m1>::max_code == 0x7 && format_traits<user::e3m2>::max_code == 0x1F);
static_assert(format_traits<user::e3m2>::bias == 3 && format_traits<user::e3m2>::max_value == 28.0f);

TEST_CASE("format ids are unique, names are unique, user ids are in the user range") {
  struct Info {
    std::uint32_t id;
    std::string_view name;
  };
  const Info all[] = {
      {format_traits<quant::int8>::id, format_traits<quant::int8>::name},
      {format_traits<quant::int4>::id, format_traits<quant::int4>::name},
      {format_traits<quant::int3>::id, format_traits<quant::int3>::name},
      {format_traits<quant::int2>::id, format_traits<quant::int2>::name},
      {format_traits<quant::nf4>::id, format_traits<quant::nf4>::name},
      {format_traits<quant::fp8_e4m3>::id, format_traits<quant::fp8_e4m3>::name},
      {format_traits<quant::fp8_e5m2>::id, format_traits<quant::fp8_e5m2>::name},
      {format_traits<quant::fp4_e2m1>::id, format_traits<quant::fp4_e2m1>::name},
      {format_traits<user::e3m2>::id, format_traits<user::e3m2>::name},
      {format_traits<user::lut2>::id, format_traits<user::lut2>::name},
      {format_traits<user::lut2_straddle>::id, format_traits<user::lut2_straddle>::name},
  };
  std::set<std::uint32_t> ids;
  std::set<std::string_view> names;
  for (const Info& f : all) {
    INFO("format " << f.name << " id " << f.id);
    CHECK(ids.insert(f.id).second);
    CHECK(names.insert(f.name).second);
    CHECK(!f.name.empty());
  }
  for (std::size_t i = 0; i < 8; ++i) CHECK(all[i].id < 0x80000000u);  // built-ins
  CHECK(format_traits<quant::int4>::name == "int4");
  CHECK(format_traits<quant::nf4>::name == "nf4");
  CHECK(format_traits<quant::fp8_e4m3>::name == "fp8_e4m3");
}

// ---- generic, exhaustive tests over every code ----------------------------------------------

TEST_CASE_TEMPLATE("decode matches the format's specification for every code", F, QUANT_TEST_ALL_FORMATS) {
  INFO("format " << format_traits<F>::name);
  for (unsigned c = 0; c < code_count<F>; ++c) {
    const double want = spec_value<F>(c);
    const float got = dec<F>(c);
    INFO("code " << hex(c) << ": decoded " << got << ", spec " << want);
    if (std::isnan(want)) {
      CHECK(std::isnan(got));
    } else {
      CHECK(static_cast<double>(got) == want);
      if (want == 0.0) CHECK(std::signbit(got) == std::signbit(want));  // the minifloat -0 code is -0.0f
    }
  }
}

TEST_CASE_TEMPLATE("decode reads only the low `bits` bits of a code", F, QUANT_TEST_ALL_FORMATS) {
  constexpr unsigned bits = format_traits<F>::bits;
  if constexpr (bits < 8) {
    for (unsigned c = 0; c < code_count<F>; ++c)
      for (unsigned high = 1; high < (256u >> bits); ++high) {
        const float a = dec<F>(c), b = dec<F>(c | (high << bits));
        INFO("format " << format_traits<F>::name << " code " << c << " high bits " << high);
        CHECK(std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b));
      }
  }
}

TEST_CASE_TEMPLATE("encode(decode(c)) == c for every code with a finite value", F, QUANT_TEST_ALL_FORMATS) {
  int finite = 0;
  for (unsigned c = 0; c < code_count<F>; ++c) {
    const float v = dec<F>(c);
    if (!std::isfinite(v)) continue;
    ++finite;
    INFO("format " << format_traits<F>::name << " code " << hex(c) << " value " << v << " encoded to "
                   << hex(enc<F>(v)));
    CHECK(enc<F>(v) == c);
  }
  CHECK(finite > 0);
}

TEST_CASE_TEMPLATE("encode: midpoints between adjacent values go to the even code", F, QUANT_TEST_ALL_FORMATS) {
  const auto codes = sorted_codes<F>();
  int ties = 0;
  for (std::size_t i = 0; i + 1 < codes.size(); ++i) {
    const float a = codes[i].first, b = codes[i + 1].first;
    const unsigned ca = codes[i].second, cb = codes[i + 1].second;
    if (a == b) continue;  // -0 and +0
    const double mid = (static_cast<double>(a) + static_cast<double>(b)) / 2;  // exact in double
    const float m = static_cast<float>(mid);
    const unsigned even = ca % 2 == 0 ? ca : cb;
    const unsigned at_m = static_cast<double>(m) < mid ? ca : (static_cast<double>(m) > mid ? cb : even);
    ties += static_cast<double>(m) == mid;
    INFO("format " << format_traits<F>::name << ": between " << a << " (" << hex(ca) << ") and " << b << " ("
                   << hex(cb) << "), midpoint " << fl(m));
    REQUIRE(ca % 2 != cb % 2);  // adjacent values have codes of different parity
    CHECK(enc<F>(m) == at_m);
    CHECK(enc<F>(std::nextafter(m, -inf)) == ca);
    CHECK(enc<F>(std::nextafter(m, inf)) == cb);
    // The 256 floats on each side of the midpoint go to the nearer value.
    float below = m, above = m;
    for (int k = 0; k < 256; ++k) {
      below = std::nextafter(below, -inf);
      above = std::nextafter(above, inf);
      if (enc<F>(below) != ca || enc<F>(above) != cb) {
        INFO((k + 1) << " ulps from the midpoint: " << fl(below) << " -> " << hex(enc<F>(below)) << ", " << fl(above)
                   << " -> " << hex(enc<F>(above)));
        CHECK(enc<F>(below) == ca);
        CHECK(enc<F>(above) == cb);
        break;
      }
    }
  }
  if constexpr (is_minifloat<F> || quant::is_integer_format_v<F>) {
    CHECK(ties == static_cast<int>(codes.size()) - 1 - (is_minifloat<F> ? 1 : 0));  // every midpoint is exact
  }
}

TEST_CASE_TEMPLATE("encode picks the nearest code (brute-force reference)", F, QUANT_TEST_ALL_FORMATS) {
  const float max_abs = quant::format_range<F>().max_abs();
  std::mt19937 rng(0xf0 + format_traits<F>::bits);
  std::uniform_real_distribution<float> wide(-1.5f * max_abs, 1.5f * max_abs);
  std::uniform_real_distribution<float> narrow(-0.1f * max_abs, 0.1f * max_abs);
  std::vector<float> values;
  for (int i = 0; i < 20000; ++i) values.push_back(wide(rng));
  for (int i = 0; i < 10000; ++i) values.push_back(narrow(rng));
  for (int i = 0; i < 10000; ++i) {  // any finite float: huge, tiny and subnormal values
    const float f = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
    if (std::isfinite(f)) values.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 1e-30f, -1e-30f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()})
    values.push_back(f);
  long failures = 0;
  for (float v : values) {
    const unsigned got = enc<F>(v), want = nearest_code<F>(v);
    if (got != want || got >= code_count<F>) {
      ++failures;
      INFO("format " << format_traits<F>::name << ": encode(" << fl(v) << ") = " << hex(got) << " (" << dec<F>(got)
                     << "), nearest is " << hex(want) << " (" << dec<F>(want) << ")");
      CHECK(got == want);
    }
  }
  CHECK(failures == 0);
}

TEST_CASE_TEMPLATE("encode saturates at the largest finite value of each sign", F, QUANT_TEST_ALL_FORMATS) {
  const auto codes = sorted_codes<F>();
  const float lo = codes.front().first, hi = codes.back().first;
  const unsigned lo_code = codes.front().second, hi_code = codes.back().second;
  INFO("format " << format_traits<F>::name << " range [" << lo << ", " << hi << "]");
  for (float v : {hi, std::nextafter(hi, inf), hi * 1.01f, hi * 1.0625f, hi * 2.0f, hi * 1000.0f, 1e30f,
                  std::numeric_limits<float>::max(), inf}) {
    INFO("encode(" << fl(v) << ") = " << hex(enc<F>(v)));
    CHECK(enc<F>(v) == hi_code);
  }
  for (float v : {lo, std::nextafter(lo, -inf), lo * 1.01f, lo * 1.0625f, lo * 2.0f, lo * 1000.0f, -1e30f,
                  -std::numeric_limits<float>::max(), -inf}) {
    INFO("encode(" << fl(v) << ") = " << hex(enc<F>(v)));
    CHECK(enc<F>(v) == lo_code);
  }
}

TEST_CASE_TEMPLATE("encode(NaN) and signed zero", F, QUANT_TEST_ALL_FORMATS) {
  using T = format_traits<F>;
  INFO("format " << T::name);
  if constexpr (is_minifloat<F>) {
    // The -0 code decodes to -0.0f and encode(-0.0f) gives it back.
    CHECK(std::signbit(dec<F>(T::sign_bit)));
    CHECK(dec<F>(T::sign_bit) == 0.0f);
    CHECK(enc<F>(-0.0f) == T::sign_bit);
    CHECK(enc<F>(0.0f) == 0u);
    CHECK(enc<F>(-1e-30f) == T::sign_bit);  // a negative value rounding to zero keeps its sign
    if constexpr (T::has_nan) {
      CHECK(std::isnan(dec<F>(enc<F>(qnan))));
      CHECK(std::isnan(dec<F>(enc<F>(-qnan))));
    } else {
      CHECK(enc<F>(qnan) == 0u);  // documented: no NaN code, NaN gives 0
    }
  } else {
    // At most one zero: -0.0f and NaN both give the code of 0 (the code nearest to 0).
    const unsigned zero = enc<F>(0.0f);
    if constexpr (!std::is_same_v<F, user::lut2>) CHECK(dec<F>(zero) == 0.0f);  // lut2 has no 0
    CHECK(enc<F>(-0.0f) == zero);
    CHECK(enc<F>(qnan) == zero);
  }
}

TEST_CASE("non-finite codes: fp8 NaN and Inf codes, fp4 has none") {
  std::vector<unsigned> e4m3_nan, e5m2_nan, e5m2_inf;
  for (unsigned c = 0; c < 256; ++c) {
    if (std::isnan(dec<quant::fp8_e4m3>(c))) e4m3_nan.push_back(c);
    CHECK(!std::isinf(dec<quant::fp8_e4m3>(c)));
    if (std::isnan(dec<quant::fp8_e5m2>(c))) e5m2_nan.push_back(c);
    if (std::isinf(dec<quant::fp8_e5m2>(c))) e5m2_inf.push_back(c);
  }
  CHECK(e4m3_nan == std::vector<unsigned>{0x7F, 0xFF});
  CHECK(e5m2_nan == std::vector<unsigned>{0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF});
  CHECK(e5m2_inf == std::vector<unsigned>{0x7C, 0xFC});
  CHECK(dec<quant::fp8_e5m2>(0x7C) == inf);
  CHECK(dec<quant::fp8_e5m2>(0xFC) == -inf);
  for (unsigned c = 0; c < 16; ++c) CHECK(std::isfinite(dec<quant::fp4_e2m1>(c)));
  for (unsigned c = 0; c < 64; ++c) CHECK(std::isfinite(dec<user::e3m2>(c)));
}

// ---- named values ---------------------------------------------------------------------------

TEST_CASE("fp8 and fp4: named values from the OCP specification") {
  using E4 = quant::fp8_e4m3;
  using E5 = quant::fp8_e5m2;
  using E2 = quant::fp4_e2m1;
  CHECK(dec<E4>(0x01) == std::ldexp(1.0f, -9));  // smallest subnormal
  CHECK(dec<E4>(0x07) == 7 * std::ldexp(1.0f, -9));
  CHECK(dec<E4>(0x08) == std::ldexp(1.0f, -6));  // smallest normal
  CHECK(dec<E4>(0x38) == 1.0f);
  CHECK(dec<E4>(0x7E) == 448.0f);
  CHECK(dec<E4>(0xFE) == -448.0f);
  CHECK(dec<E5>(0x01) == std::ldexp(1.0f, -16));
  CHECK(dec<E5>(0x04) == std::ldexp(1.0f, -14));
  CHECK(dec<E5>(0x3C) == 1.0f);
  CHECK(dec<E5>(0x7B) == 57344.0f);
  CHECK(dec<E5>(0xFB) == -57344.0f);
  CHECK(dec<E2>(0x1) == 0.5f);
  CHECK(dec<E2>(0x2) == 1.0f);
  CHECK(dec<E2>(0x7) == 6.0f);
  CHECK(dec<E2>(0xF) == -6.0f);
  // Hand-picked roundings.
  CHECK(enc<E4>(464.0f) == 0x7E);   // would round to 480 (the NaN code) without saturation
  CHECK(enc<E4>(1.0625f) == 0x38);  // tie between 1 (0x38) and 1.125 (0x39)
  CHECK(enc<E4>(1.1875f) == 0x3A);  // tie between 1.125 (0x39) and 1.25 (0x3A)
  CHECK(enc<E4>(-1.1875f) == 0xBA);
  CHECK(enc<E4>(std::ldexp(1.0f, -10)) == 0x00);  // half the smallest subnormal: tie to 0
  CHECK(enc<E4>(std::ldexp(3.0f, -10)) == 0x02);
  CHECK(enc<E5>(61440.0f) == 0x7B);  // IEEE would give Inf; OCP saturating conversion gives max
  CHECK(enc<E5>(inf) == 0x7B);
  CHECK(enc<E5>(-inf) == 0xFB);
  CHECK(enc<E2>(5.0f) == 0x6);   // tie between 4 (0x6) and 6 (0x7)
  CHECK(enc<E2>(2.5f) == 0x4);   // tie between 2 (0x4) and 3 (0x5)
  CHECK(enc<E2>(0.25f) == 0x0);  // tie between 0 and 0.5
  CHECK(enc<E2>(0.75f) == 0x2);  // tie between 0.5 (0x1) and 1 (0x2)
  CHECK(enc<E2>(-0.75f) == 0xA);
  CHECK(enc<E2>(7.0f) == 0x7);
  CHECK(enc<E2>(-100.0f) == 0xF);
  CHECK(format_traits<E4>::max_value == 448.0f);
  CHECK(format_traits<E5>::max_value == 57344.0f);
  CHECK(format_traits<E2>::max_value == 6.0f);
}

TEST_CASE_TEMPLATE("integer formats: ties to even and saturation", F, quant::int8, quant::int4, quant::int3,
                   quant::int2) {
  using T = format_traits<F>;
  constexpr int lo = -(1 << (T::bits - 1)), hi = (1 << (T::bits - 1)) - 1;
  CHECK(T::min_code_value == lo);
  CHECK(T::max_code_value == hi);
  struct Case {
    float in;
    int rounded;  // before saturation
  };
  const Case cases[] = {{0.5f, 0},   {1.5f, 2},   {2.5f, 2},    {3.5f, 4},    {-0.5f, 0},      {-1.5f, -2},
                        {-2.5f, -2}, {-3.5f, -4}, {0.49f, 0},   {0.51f, 1},   {2.51f, 3},      {-2.51f, -3},
                        {6.5f, 6},   {7.5f, 8},   {-8.5f, -8},  {126.5f, 126}, {127.5f, 128},  {-128.5f, -128},
                        {1e9f, 1000000000}, {-1e9f, -1000000000}};
  for (const Case& c : cases) {
    const int want = std::clamp(c.rounded, lo, hi);
    INFO("format " << T::name << ": encode(" << c.in << ") decodes to " << dec<F>(enc<F>(c.in)) << ", want " << want);
    CHECK(dec<F>(enc<F>(c.in)) == static_cast<float>(want));
    CHECK(enc<F>(c.in) == (static_cast<unsigned>(want) & ((1u << T::bits) - 1u)));
  }
  CHECK(enc<F>(inf) == static_cast<unsigned>(hi));
  CHECK(enc<F>(-inf) == (static_cast<unsigned>(lo) & ((1u << T::bits) - 1u)));
}

TEST_CASE("nf4: the published QLoRA table, nearest-value encoding") {
  using T = format_traits<quant::nf4>;
  for (unsigned c = 0; c < 16; ++c) {
    INFO("code " << c);
    CHECK(T::code_table[c] == static_cast<float>(qlora_nf4[c]));
    CHECK(dec<quant::nf4>(c) == static_cast<float>(qlora_nf4[c]));
  }
  CHECK(enc<quant::nf4>(0.03f) == 7);
  CHECK(enc<quant::nf4>(0.05f) == 8);   // past the midpoint 0.0398 of 0 and 0.0796
  CHECK(enc<quant::nf4>(0.85f) == 14);  // below the midpoint 0.8615 of 0.7230 and 1
  CHECK(enc<quant::nf4>(0.9f) == 15);
  CHECK(enc<quant::nf4>(-0.85f) == 0);  // below the midpoint -0.8481 of -1 and -0.6962
  CHECK(enc<quant::nf4>(-0.84f) == 1);
  CHECK(enc<quant::nf4>(-0.0455f) == 7);
  CHECK(enc<quant::nf4>(-0.0456f) == 6);
  CHECK(enc<quant::nf4>(1.7f) == 15);
  CHECK(enc<quant::nf4>(-3.0f) == 0);
}

TEST_CASE("user code table: decode, nearest, ties to the even code") {
  using L = user::lut2;
  for (unsigned c = 0; c < 4; ++c) CHECK(dec<L>(c) == user::lut2_table[c]);
  CHECK(enc<L>(-1.0f) == 0);    // tie between codes 0 and 1
  CHECK(enc<L>(-0.25f) == 2);   // tie between codes 1 and 2
  CHECK(enc<L>(0.5f) == 2);     // tie between codes 2 and 3
  CHECK(enc<L>(-0.26f) == 1);
  CHECK(enc<L>(0.51f) == 3);
  CHECK(enc<L>(-1.2f) == 0);
  CHECK(enc<L>(qnan) == 2);  // NaN gives the code nearest to 0
  CHECK(quant::format_range<L>().min == -1.5f);
  CHECK(quant::format_range<L>().max == 1.0f);
  CHECK(quant::format_range<L>().max_abs() == 1.5f);
}

// lut_traits<Table>::encode must compare exact distances: in float, v - Table[lo] and
// Table[hi] - v round when the entries straddle zero, so a value a few ulps from the midpoint
// would pass for a tie. v = nextafter(0.125f, 0) is 2^-27 below the midpoint of -0.25 (code 1)
// and 0.5 (code 2); both float distances round to 0.375f.
TEST_CASE("lut_traits::encode is exact near a midpoint between entries of opposite sign") {
  using L = user::lut2_straddle;
  const float mid = 0.125f;  // between -0.25 and 0.5
  CHECK(enc<L>(mid) == 2);   // an exact tie: the even code
  for (float v = std::nextafter(mid, 0.0f); v > mid - 64 * std::ldexp(1.0f, -27); v = std::nextafter(v, 0.0f)) {
    INFO("encode(" << fl(v) << ") = " << hex(enc<L>(v)) << ", nearest is code 1 (-0.25)");
    CHECK(enc<L>(v) == 1);
  }
  CHECK(enc<L>(std::nextafter(mid, 1.0f)) == 2);
}

TEST_CASE("format_range gives each format's finite [min, max]") {
  auto check = [](quant::code_range r, float lo, float hi) {
    INFO("range [" << r.min << ", " << r.max << "], want [" << lo << ", " << hi << "]");
    CHECK(r.min == lo);
    CHECK(r.max == hi);
    CHECK(r.max_abs() == std::max(-lo, hi));
  };
  check(quant::format_range<quant::int8>(), -128.0f, 127.0f);
  check(quant::format_range<quant::int4>(), -8.0f, 7.0f);
  check(quant::format_range<quant::int3>(), -4.0f, 3.0f);
  check(quant::format_range<quant::int2>(), -2.0f, 1.0f);
  check(quant::format_range<quant::nf4>(), -1.0f, 1.0f);
  check(quant::format_range<quant::fp8_e4m3>(), -448.0f, 448.0f);
  check(quant::format_range<quant::fp8_e5m2>(), -57344.0f, 57344.0f);
  check(quant::format_range<quant::fp4_e2m1>(), -6.0f, 6.0f);
  check(quant::format_range<user::e3m2>(), -28.0f, 28.0f);
  check(quant::format_range<const quant::int4>(), -8.0f, 7.0f);
}
