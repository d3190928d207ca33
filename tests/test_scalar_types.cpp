// Tests of quant/core/scalar_types.hpp: fp16, bf16, e8m0 and scale_traits<S>.
//
// Every conversion is checked against a reference written here from the format's definition
// (in double precision, with std::ldexp / std::nearbyint), never against the library itself;
// fp16 is also compared with the F16C hardware conversion when the CPU has it.
#include <doctest/doctest.h>

#include <quant/quant.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <type_traits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define QUANT_TEST_X86_F16C 1
#endif

namespace {

using quant::bf16;
using quant::e8m0;
using quant::fp16;

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();
constexpr float flt_max = std::numeric_limits<float>::max();

float from_bits(std::uint32_t x) { return std::bit_cast<float>(x); }
std::uint32_t to_bits(float f) { return std::bit_cast<std::uint32_t>(f); }
float p2(int e) { return std::ldexp(1.0f, e); }  // 2^e, exact for -149 <= e <= 127
std::string hex(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", static_cast<unsigned>(v));
  return buf;
}
std::string fl(double v) {  // enough digits to tell floats apart
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// ---- independent references -----------------------------------------------------------------

/// binary16 value of a code, from IEEE 754: (-1)^s 2^(e-15) (1 + m/1024), subnormal m 2^-24.
double fp16_value(std::uint16_t h) {
  const double s = (h & 0x8000u) ? -1.0 : 1.0;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 31) return m == 0 ? s * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return s * std::ldexp(static_cast<double>(m), -24);
  return s * std::ldexp(1.0 + m / 1024.0, e - 15);
}

/// The binary16 value nearest to f (ties to even), as a double: f / quantum rounded to an even
/// integer in double precision (exact), overflow at 65520 = 65504 + half an ulp.
double fp16_round_ref(float f) {
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return std::copysign(std::numeric_limits<double>::infinity(), static_cast<double>(f));
  int e2 = 0;
  (void)std::frexp(a, &e2);                     // a = frac * 2^e2, frac in [0.5, 1)
  const int exponent = e2 - 1 < -14 ? -14 : e2 - 1;  // floor(log2 a), at least the subnormal one
  const double quantum = std::ldexp(1.0, exponent - 10);
  return std::copysign(std::nearbyint(a / quantum) * quantum, static_cast<double>(f));
}

/// bf16 nearest to a non-NaN f, ties to even: compare the two neighbouring bf16 values.
std::uint16_t bf16_round_ref(float f) {
  const std::uint32_t x = to_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7fffffffu;
  const std::uint32_t lo = ax >> 16;  // truncation toward zero
  if ((ax & 0xffffu) == 0) return static_cast<std::uint16_t>(sign | lo);
  const double a = std::fabs(static_cast<double>(f));
  const double vlo = static_cast<double>(from_bits(lo << 16));
  // Above the largest finite bf16 the next "value" is 2^128 (what Inf stands for in rounding).
  const double vhi = lo + 1 == 0x7f80u ? std::ldexp(1.0, 128) : static_cast<double>(from_bits((lo + 1) << 16));
  const double dl = a - vlo, dh = vhi - a;
  const bool up = dh < dl || (dh == dl && (lo & 1u));
  return static_cast<std::uint16_t>(sign | (up ? lo + 1 : lo));
}

/// Exponent of the power of two nearest to f > 0 (tie 1.5 * 2^k goes up), clamped to [-127, 127].
int e8m0_exponent_ref(float f) {
  const double a = static_cast<double>(f);
  int e2 = 0;
  (void)std::frexp(a, &e2);
  int k = e2 - 1;  // 2^k <= a < 2^(k+1)
  if (std::ldexp(1.0, k + 1) - a <= a - std::ldexp(1.0, k)) ++k;
  return k < -127 ? -127 : (k > 127 ? 127 : k);
}

/// A random float whose binary exponent field lies in [lo, hi] (biased), with random sign and mantissa.
float random_float_in_binades(std::mt19937& rng, unsigned lo, unsigned hi) {
  const std::uint32_t r = rng();
  const std::uint32_t e = lo + static_cast<std::uint32_t>(rng() % (hi - lo + 1));
  return from_bits((r & 0x807fffffu) | (e << 23));
}
/// A random float from a uniformly random bit pattern, NaN excluded.
float random_non_nan_float(std::mt19937& rng) {
  for (;;) {
    const float f = from_bits(rng());
    if (!std::isnan(f)) return f;
  }
}

#if defined(QUANT_TEST_X86_F16C)
// The test is built without -mf16c: the helper enables the instruction for itself, and the test
// runs it only after asking the CPU (F16C, and an OS that saves the VEX register state).
__attribute__((target("f16c"))) std::uint16_t fp16_hw(float f) {  // vcvtps2ph, round to nearest-even
  return static_cast<std::uint16_t>(_mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT)));
}
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  if (!(c & bit_F16C) || !(c & bit_OSXSAVE)) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & 6u) == 6u;
}
#endif

bool fp16_is_nan(fp16 h) { return (h.bits & 0x7c00u) == 0x7c00u && (h.bits & 0x3ffu) != 0; }
bool bf16_is_nan(bf16 h) { return (h.bits & 0x7f80u) == 0x7f80u && (h.bits & 0x7fu) != 0; }

}  // namespace

// ---- basic properties -----------------------------------------------------------------------

static_assert(sizeof(fp16) == 2 && std::is_trivially_copyable_v<fp16> && std::is_standard_layout_v<fp16>);
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16> && std::is_standard_layout_v<bf16>);
static_assert(sizeof(e8m0) == 1 && std::is_trivially_copyable_v<e8m0> && std::is_standard_layout_v<e8m0>);
// The conversions are usable in constant expressions.
static_assert(fp16::from_float(1.0f).bits == 0x3c00 && fp16{0xc000}.to_float() == -2.0f);
static_assert(bf16::from_float(1.0f).bits == 0x3f80 && bf16{0xc000}.to_float() == -2.0f);
static_assert(e8m0::from_float(8.0f).bits == 130 && e8m0{}.to_float() == 1.0f);
static_assert(quant::is_scale_type_v<float> && quant::is_scale_type_v<fp16> && quant::is_scale_type_v<bf16> &&
              quant::is_scale_type_v<e8m0>);
static_assert(!quant::is_scale_type_v<double> && !quant::is_scale_type_v<int>);
static_assert(quant::scale_traits<e8m0>::power_of_two && !quant::scale_traits<fp16>::power_of_two &&
              !quant::scale_traits<bf16>::power_of_two && !quant::scale_traits<float>::power_of_two);

// ---- fp16 -----------------------------------------------------------------------------------

TEST_CASE("fp16: to_float matches the IEEE binary16 definition for all 65536 codes") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const fp16 h{static_cast<std::uint16_t>(b)};
    const double want = fp16_value(h.bits);
    const float got = h.to_float();
    INFO("code " << hex(b) << " decoded " << fl(got) << ", expected " << fl(want));
    if (std::isnan(want)) {
      CHECK(std::isnan(got));
    } else {
      CHECK(static_cast<double>(got) == want);
      CHECK(std::signbit(got) == ((b & 0x8000u) != 0));  // -0 decodes to -0.0f
    }
  }
}

TEST_CASE("fp16: from_float(to_float(h)) gives h back for every non-NaN code; NaN stays NaN") {
  int nan_codes = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const fp16 h{static_cast<std::uint16_t>(b)};
    const fp16 back = fp16::from_float(h.to_float());
    INFO("code " << hex(b) << " came back as " << hex(back.bits));
    if (fp16_is_nan(h)) {
      ++nan_codes;
      CHECK(fp16_is_nan(back));
    } else {
      CHECK(back.bits == h.bits);
    }
  }
  CHECK(nan_codes == 2 * 1023);
}

TEST_CASE("fp16: from_float rounds to nearest, ties to even") {
  struct Case {
    float in;
    std::uint16_t want;
  };
  const float one_half_ulp = 1.0f + p2(-11);       // halfway between 1 and 1 + 2^-10
  const float three_half_ulp = 1.0f + 3 * p2(-11);  // halfway between 1 + 2^-10 and 1 + 2^-9
  const Case cases[] = {
      {1.0f, 0x3c00},
      {1.0f + p2(-10), 0x3c01},
      {one_half_ulp, 0x3c00},                                 // tie, 0x3c00 is even
      {std::nextafter(one_half_ulp, 2.0f), 0x3c01},            // just above the tie
      {three_half_ulp, 0x3c02},                               // tie, 0x3c02 (1 + 2^-9) is even
      {std::nextafter(three_half_ulp, 0.0f), 0x3c01},          // just below the tie
      {-three_half_ulp, 0xbc02},
      {2049.0f, 0x6800},  // ulp is 2 in [2048, 4096): 2049 ties 2048 (even) and 2050
      {2051.0f, 0x6802},  // ties 2050 (odd) and 2052 (even)
      {2047.5f, 0x6800},  // ties 2047 (0x67ff, odd) and 2048: the carry moves into the exponent
      {2046.5f, 0x67fe},  // ties 2046 (even) and 2047
      {0.1f, 0x2e66},
      {3.14159265f, 0x4248},
      {-2.0f, 0xc000},
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
  };
  for (const Case& c : cases) {
    INFO("from_float(" << fl(c.in) << ") = " << hex(fp16::from_float(c.in).bits) << ", want " << hex(c.want));
    CHECK(fp16::from_float(c.in).bits == c.want);
  }
}

TEST_CASE("fp16: overflow goes to infinity at 65520, subnormals round to even") {
  struct Case {
    float in;
    std::uint16_t want;
  };
  const Case cases[] = {
      {65504.0f, 0x7bff},
      {65519.0f, 0x7bff},
      {65519.99f, 0x7bff},
      {std::nextafter(65520.0f, 0.0f), 0x7bff},
      {65520.0f, 0x7c00},  // the tie between 65504 (odd mantissa) and 65536 rounds up: Inf
      {65536.0f, 0x7c00},
      {1e9f, 0x7c00},
      {flt_max, 0x7c00},
      {inf, 0x7c00},
      {-65519.0f, 0xfbff},
      {-65520.0f, 0xfc00},
      {-inf, 0xfc00},
      // Subnormals are multiples of 2^-24.
      {p2(-24), 0x0001},
      {p2(-25), 0x0000},  // tie between 0 (even) and 2^-24
      {std::nextafter(p2(-25), 1.0f), 0x0001},
      {0.75f * p2(-24), 0x0001},
      {0.25f * p2(-24), 0x0000},
      {3 * p2(-25), 0x0002},  // 1.5 * 2^-24: tie between 1 and 2
      {5 * p2(-25), 0x0002},  // 2.5: tie between 2 and 3
      {7 * p2(-25), 0x0004},  // 3.5: tie between 3 and 4
      {1022.5f * p2(-24), 0x03fe},
      {1023.0f * p2(-24), 0x03ff},
      {1023.5f * p2(-24), 0x0400},  // rounds up into the smallest normal, 2^-14
      {p2(-14), 0x0400},
      {p2(-14) * (1.0f + p2(-11)), 0x0400},  // tie just above the smallest normal
      {p2(-26), 0x0000},
      {1e-30f, 0x0000},
      {std::numeric_limits<float>::denorm_min(), 0x0000},
      {-p2(-25), 0x8000},  // rounds to -0
      {-3 * p2(-25), 0x8002},
      {-1e-30f, 0x8000},
  };
  for (const Case& c : cases) {
    INFO("from_float(" << fl(c.in) << ") = " << hex(fp16::from_float(c.in).bits) << ", want " << hex(c.want));
    CHECK(fp16::from_float(c.in).bits == c.want);
  }
}

TEST_CASE("fp16: NaN inputs give a NaN") {
  const float nans[] = {qnan, -qnan, from_bits(0x7f800001u), from_bits(0xff800001u), from_bits(0x7f801fffu),
                        from_bits(0x7fffffffu), from_bits(0xffffffffu)};
  for (float f : nans) {
    INFO("input bits " << hex(to_bits(f)) << " gave " << hex(fp16::from_float(f).bits));
    CHECK(fp16_is_nan(fp16::from_float(f)));
  }
}

TEST_CASE("fp16: from_float agrees with a double-precision reference") {
  auto check = [](float f) {
    const fp16 h = fp16::from_float(f);
    const double want = fp16_round_ref(f);
    const double got = fp16_value(h.bits);
    const bool ok = got == want && std::signbit(got) == std::signbit(want);
    if (!ok) {
      INFO("input " << fl(f) << " (bits " << hex(to_bits(f)) << ") -> " << hex(h.bits) << " = " << fl(got)
                    << ", want " << fl(want));
      CHECK(ok);
    }
    return ok;
  };
  long failures = 0;
  // Every float whose low 13 bits sit at a normal-range rounding boundary (19 high bits x 6 tails).
  const std::uint32_t tails[] = {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x1fffu};
  for (std::uint32_t hi = 0; hi < (1u << 19); ++hi)
    for (std::uint32_t t : tails) {
      const float f = from_bits((hi << 13) | t);
      if (!std::isnan(f)) failures += !check(f);
    }
  // Every subnormal rounding boundary: k + 1/2 ulps and its neighbours.
  for (int k = 0; k < 1024; ++k) {
    const float mid = (static_cast<float>(k) + 0.5f) * p2(-24);
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1.0f)}) failures += !check(f) + !check(-f);
  }
  std::mt19937 rng(0x5eed16);
  for (int i = 0; i < 1000000; ++i) failures += !check(random_float_in_binades(rng, 100, 145));
  for (int i = 0; i < 200000; ++i) failures += !check(random_non_nan_float(rng));
  CHECK(failures == 0);
}

TEST_CASE("fp16: from_float agrees with the F16C hardware conversion") {
#if defined(QUANT_TEST_X86_F16C)
  if (!cpu_has_f16c()) {
    MESSAGE("skipped: this CPU has no F16C");
    return;
  }
  long failures = 0, checked = 0;
  auto check = [&](float f) {
    ++checked;
    const fp16 got = fp16::from_float(f);
    const std::uint16_t want = fp16_hw(f);
    if (std::isnan(f)) {
      if (!fp16_is_nan(got)) {
        ++failures;
        INFO("NaN input " << hex(to_bits(f)) << " gave " << hex(got.bits));
        CHECK(fp16_is_nan(got));
      }
    } else if (got.bits != want) {
      ++failures;
      INFO("input " << fl(f) << " (bits " << hex(to_bits(f)) << "): library " << hex(got.bits) << ", F16C "
                    << hex(want));
      CHECK(got.bits == want);
    }
  };
  std::mt19937 rng(0xf16c);
  for (int i = 0; i < 3000000; ++i) check(random_float_in_binades(rng, 100, 145));
  for (int i = 0; i < 1000000; ++i) check(from_bits(rng()));  // any bit pattern, NaNs included
  CHECK(failures == 0);
  CHECK(checked == 4000000);
#else
  MESSAGE("skipped: not an x86 build");
#endif
}

// ---- bf16 -----------------------------------------------------------------------------------

TEST_CASE("bf16: every code is the top half of a binary32 and round-trips; NaN stays NaN") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const bf16 h{static_cast<std::uint16_t>(b)};
    const float f = h.to_float();
    INFO("code " << hex(b));
    if (bf16_is_nan(h)) {
      CHECK(std::isnan(f));
      CHECK(bf16_is_nan(bf16::from_float(f)));
    } else {
      CHECK(to_bits(f) == (b << 16));
      CHECK(bf16::from_float(f).bits == h.bits);
    }
  }
}

TEST_CASE("bf16: from_float rounds to nearest, ties to even, overflows to infinity") {
  struct Case {
    float in;
    std::uint16_t want;
  };
  const float tie_even = 1.0f + p2(-8);     // between 1 (0x3f80) and 1 + 2^-7 (0x3f81)
  const float tie_odd = 1.0f + 3 * p2(-8);  // between 0x3f81 and 0x3f82
  const Case cases[] = {
      {1.0f, 0x3f80},
      {tie_even, 0x3f80},
      {std::nextafter(tie_even, 2.0f), 0x3f81},
      {tie_odd, 0x3f82},
      {std::nextafter(tie_odd, 0.0f), 0x3f81},
      {-tie_odd, 0xbf82},
      {3.14159265f, 0x4049},
      {0.1f, 0x3dcd},
      {from_bits(0x7f7f7fffu), 0x7f7f},  // just below the tie with infinity
      {from_bits(0x7f7f8000u), 0x7f80},  // tie between 0x7f7f (odd) and Inf
      {flt_max, 0x7f80},
      {-flt_max, 0xff80},
      {inf, 0x7f80},
      {-inf, 0xff80},
      {from_bits(0x00008000u), 0x0000},  // subnormal tie between 0 (even) and 0x0001
      {from_bits(0x00008001u), 0x0001},
      {from_bits(0x00018000u), 0x0002},  // tie between 0x0001 and 0x0002
      {from_bits(0x80008000u), 0x8000},
      {-0.0f, 0x8000},
  };
  for (const Case& c : cases) {
    INFO("from_float(bits " << hex(to_bits(c.in)) << ") = " << hex(bf16::from_float(c.in).bits) << ", want "
                            << hex(c.want));
    CHECK(bf16::from_float(c.in).bits == c.want);
  }
  const float nans[] = {qnan, -qnan, from_bits(0x7f800001u), from_bits(0xff800001u), from_bits(0x7fffffffu),
                        from_bits(0xffffffffu)};
  for (float f : nans) {
    INFO("NaN input bits " << hex(to_bits(f)) << " gave " << hex(bf16::from_float(f).bits));
    CHECK(bf16_is_nan(bf16::from_float(f)));
  }
}

TEST_CASE("bf16: from_float agrees with a reference on random floats") {
  std::mt19937 rng(0xbf16);
  long failures = 0;
  // Half uniformly random bit patterns, half with the low 16 bits at a rounding boundary.
  const std::uint32_t tails[] = {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu};
  for (int i = 0; i < 2000000; ++i) {
    const std::uint32_t r = rng();
    const float f = i % 2 ? random_non_nan_float(rng) : from_bits((r & 0xffff0000u) | tails[r % 6]);
    if (std::isnan(f)) continue;
    const std::uint16_t want = bf16_round_ref(f);
    const std::uint16_t got = bf16::from_float(f).bits;
    if (got != want) {
      ++failures;
      INFO("input bits " << hex(to_bits(f)) << ": got " << hex(got) << ", want " << hex(want));
      CHECK(got == want);
    }
  }
  CHECK(failures == 0);
}

// ---- e8m0 -----------------------------------------------------------------------------------

TEST_CASE("e8m0: the 255 non-NaN codes are 2^(e-127), 0xFF is NaN") {
  for (int b = 0; b < 255; ++b) {
    const e8m0 s{static_cast<std::uint8_t>(b)};
    INFO("code " << b);
    CHECK(s.to_float() == std::ldexp(1.0f, b - 127));
    CHECK(s.exponent() == b - 127);
    CHECK(e8m0::from_float(s.to_float()).bits == b);
    CHECK(e8m0::from_exponent(b - 127).bits == b);
  }
  CHECK(std::isnan(e8m0{0xFF}.to_float()));
  CHECK(e8m0::from_float(qnan).bits == 0xFF);
  CHECK(e8m0::from_float(-qnan).bits == 0xFF);
  CHECK(e8m0{}.to_float() == 1.0f);  // the default is 1
  CHECK(e8m0::from_exponent(-500).bits == 0x00);
  CHECK(e8m0::from_exponent(500).bits == 0xFE);
}

TEST_CASE("e8m0: from_float picks the nearest power of two, a tie going up") {
  struct Case {
    float in;
    int exponent;
  };
  const Case cases[] = {
      {1.0f, 0},
      {1.49f, 0},
      {std::nextafter(1.5f, 0.0f), 0},
      {1.5f, 1},  // tie between 1 and 2
      {2.99f, 1},
      {3.0f, 2},  // tie between 2 and 4
      {0.75f, 0},  // tie between 0.5 and 1
      {0.74f, -1},
      {6.0f, 3},
      {1000.0f, 10},
      {p2(127), 127},
      {flt_max, 127},  // would be 2^128: clamped
      {inf, 127},
      {0.0f, -127},  // zero and negatives give the smallest scale
      {-0.0f, -127},
      {-5.0f, -127},
      {-inf, -127},
      {p2(-126), -126},
      {p2(-127), -127},                      // binary32 subnormal
      {1.5f * p2(-127), -126},               // subnormal tie goes up
      {std::nextafter(1.5f * p2(-127), 0.0f), -127},
      {p2(-140), -127},
      {std::numeric_limits<float>::denorm_min(), -127},
  };
  for (const Case& c : cases) {
    INFO("from_float(" << fl(c.in) << ") exponent " << e8m0::from_float(c.in).exponent() << ", want " << c.exponent);
    CHECK(e8m0::from_float(c.in).bits == c.exponent + 127);
  }
  std::mt19937 rng(0xe8);
  long failures = 0;
  for (int i = 0; i < 1000000; ++i) {
    const float f = std::fabs(random_non_nan_float(rng));
    if (f == 0.0f || std::isinf(f)) continue;
    const int want = e8m0_exponent_ref(f);
    const int got = e8m0::from_float(f).exponent();
    if (got != want) {
      ++failures;
      INFO("input bits " << hex(to_bits(f)) << ": exponent " << got << ", want " << want);
      CHECK(got == want);
    }
  }
  CHECK(failures == 0);
}

// ---- scale_traits ---------------------------------------------------------------------------

TEST_CASE_TEMPLATE("scale_traits<S>::encode: zero stays zero, a positive scale never becomes 0 or Inf", S, fp16,
                   bf16) {
  using T = quant::scale_traits<S>;
  CHECK(T::encode(0.0f).bits == 0);
  CHECK(T::decode(T::encode(0.0f)) == 0.0f);
  CHECK(T::encode(1.0f).bits == S::from_float(1.0f).bits);
  CHECK(T::decode(T::encode(0.375f)) == 0.375f);
  CHECK(T::decode(T::encode(-0.0f)) == 0.0f);

  const float extremes[] = {std::numeric_limits<float>::denorm_min(), 1e-45f, 1e-40f, 1e-30f, p2(-25), p2(-26),
                            1e-8f, 65505.0f, 65520.0f, 1e5f, 1e30f, 3.3e38f, 3.4e38f, flt_max, inf};
  for (float v : extremes) {
    const float d = T::decode(T::encode(v));
    INFO("encode(" << fl(v) << ") decodes to " << fl(d));
    CHECK(d > 0.0f);
    CHECK(std::isfinite(d));
  }
  // Tiny inputs land on the smallest positive value, huge ones on the largest finite one.
  const float smallest = S{0x0001}.to_float();
  const float largest = std::is_same_v<S, fp16> ? 65504.0f : from_bits(0x7f7f0000u);
  CHECK(T::decode(T::encode(1e-45f)) == smallest);
  CHECK(T::decode(T::encode(flt_max)) == largest);
  CHECK(T::min_positive == smallest);
  CHECK(T::max_finite == largest);

  std::mt19937 rng(0x5ca1e);
  long failures = 0;
  for (int i = 0; i < 200000; ++i) {
    const float v = std::fabs(random_non_nan_float(rng));
    if (v == 0.0f || std::isinf(v)) continue;
    const float d = T::decode(T::encode(v));
    if (!(d > 0.0f && std::isfinite(d))) {
      ++failures;
      INFO("encode(" << fl(v) << ") decodes to " << fl(d));
      CHECK(false);
    }
  }
  CHECK(failures == 0);
}

TEST_CASE("scale_traits<float> and scale_traits<e8m0>") {
  using F = quant::scale_traits<float>;
  for (float v : {0.0f, 1e-45f, 0.1f, 3.0f, 1e30f}) {
    CHECK(F::encode(v) == v);
    CHECK(F::decode(v) == v);
  }
  CHECK(std::bit_cast<std::uint32_t>(F::encode(0.0f)) == 0u);

  using E = quant::scale_traits<e8m0>;
  CHECK(E::encode(3.0f).bits == 129);
  CHECK(E::decode(E::encode(0.7f)) == 0.5f);
  CHECK(E::decode(E::encode(0.0f)) == p2(-127));  // documented: zero gives the smallest scale
  CHECK(E::decode(E::encode(1e-45f)) == p2(-127));
  CHECK(E::decode(E::encode(flt_max)) == p2(127));
  CHECK(quant::scale_traits<float>::name == "f32");
  CHECK(quant::scale_traits<fp16>::name == "f16");
  CHECK(quant::scale_traits<bf16>::name == "bf16");
  CHECK(E::name == "e8m0");
}
