// quant/formats/minifloat.hpp: one parametrized description of small floating-point formats,
// and the OCP formats built from it: fp8_e4m3, fp8_e5m2 and fp4_e2m1.
//
// minifloat_traits<E, M, P> describes a sign bit, E exponent bits with bias 2^(E-1)-1 and M
// mantissa bits (as CUTLASS's exmy types do). P says what the all-ones exponent means:
//   nonfinite::ieee      Inf (mantissa 0) and NaN (mantissa != 0), as IEEE 754    (OCP E5M2)
//   nonfinite::nan_only  a normal binade, except S.1..1.1..1 which is NaN         (OCP E4M3FN)
//   nonfinite::none      a normal binade, every code finite                      (OCP E2M1)
// Values: exponent field 0 is subnormal, (-1)^s * 2^(1-bias) * m/2^M; otherwise
// (-1)^s * 2^(e-bias) * (1 + m/2^M). encode() rounds to nearest-even and saturates to the
// largest finite value (OCP's saturating conversion); Inf saturates too, NaN becomes the NaN
// code (or 0 when the format has none).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

#include "../config.hpp"
#include "format_traits.hpp"

QUANT_NAMESPACE_BEGIN

/// What the all-ones exponent field of a minifloat encodes.
enum class nonfinite { ieee, nan_only, none };

/// Traits of a minifloat with E exponent and M mantissa bits (1 + E + M <= 8).
template <unsigned E, unsigned M, nonfinite P>
struct minifloat_traits {
  static_assert(E >= 1 && 1 + E + M <= 8, "quant::minifloat_traits: need E >= 1 and 1 + E + M <= 8");
  static_assert(P == nonfinite::none || (E >= 2 && M >= 1),
                "quant::minifloat_traits: Inf/NaN codes need E >= 2 and M >= 1 (use nonfinite::none)");

  static constexpr unsigned bits = 1 + E + M;
  static constexpr unsigned exponent_bits = E;
  static constexpr unsigned mantissa_bits = M;
  static constexpr nonfinite nonfinite_policy = P;
  static constexpr int bias = (1 << (E - 1)) - 1;
  static constexpr std::uint8_t sign_bit = static_cast<std::uint8_t>(1u << (E + M));
  static constexpr unsigned max_exponent_field = P == nonfinite::ieee ? (1u << E) - 2u : (1u << E) - 1u;
  static constexpr unsigned max_mantissa_at_top = P == nonfinite::nan_only ? (1u << M) - 2u : (1u << M) - 1u;
  /// The code of the largest finite positive value (0x7E for E4M3FN, 0x7B for E5M2, 0x7 for E2M1).
  static constexpr std::uint8_t max_code = static_cast<std::uint8_t>((max_exponent_field << M) | max_mantissa_at_top);
  static constexpr bool has_nan = P != nonfinite::none;
  static constexpr bool has_inf = P == nonfinite::ieee;

  /// 2^k as a float, for the exponents a minifloat can need (|k| < 126 - M).
  static constexpr float exp2i(int k) noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(k + 127) << 23); }

  static constexpr float decode(std::uint8_t code) noexcept {
    const bool neg = (code & sign_bit) != 0;
    const unsigned e = (code >> M) & ((1u << E) - 1u);
    const unsigned m = code & ((1u << M) - 1u);
    float v;
    if (P == nonfinite::ieee && e == (1u << E) - 1u)
      v = m == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
    else if (P == nonfinite::nan_only && e == (1u << E) - 1u && m == (1u << M) - 1u)
      v = std::numeric_limits<float>::quiet_NaN();
    else if (e == 0)
      v = exp2i(1 - bias) * (static_cast<float>(m) / static_cast<float>(1u << M));
    else
      v = exp2i(static_cast<int>(e) - bias) * (1.0f + static_cast<float>(m) / static_cast<float>(1u << M));
    return neg ? -v : v;
  }

  static constexpr float max_value = decode(max_code);
  static constexpr float min_normal = exp2i(1 - bias);

  /// Nearest code, ties to even, saturating at +-max_value.
  static std::uint8_t encode(float v) noexcept {
    const std::uint8_t sign = std::signbit(v) ? sign_bit : std::uint8_t{0};
    const float a = std::fabs(v);
    if (a != a) {
      if constexpr (P == nonfinite::ieee) return static_cast<std::uint8_t>(sign | (((1u << E) - 1u) << M) | (1u << (M - 1)));
      else if constexpr (P == nonfinite::nan_only) return static_cast<std::uint8_t>(sign | ((1u << (E + M)) - 1u));
      else return 0;
    }
    if (a >= max_value) return static_cast<std::uint8_t>(sign | max_code);
    unsigned code;
    if (a < min_normal) {
      // Subnormal: an integer multiple of 2^(1-bias-M); the multiple 2^M is the smallest normal.
      code = static_cast<unsigned>(std::nearbyint(a * exp2i(M + bias - 1)));
    } else {
      const int e = static_cast<int>(std::bit_cast<std::uint32_t>(a) >> 23) - 127;  // floor(log2 a)
      auto q = static_cast<unsigned>(std::nearbyint((a * exp2i(-e) - 1.0f) * static_cast<float>(1u << M)));
      code = (static_cast<unsigned>(e + bias) << M) + q;  // q == 2^M carries into the exponent
    }
    if (code > max_code) code = max_code;
    return static_cast<std::uint8_t>(sign | code);
  }
};

struct fp8_e4m3 {};
struct fp8_e5m2 {};
struct fp4_e2m1 {};

template <>
struct format_traits<fp8_e4m3> : minifloat_traits<4, 3, nonfinite::nan_only> {
  static constexpr std::string_view name = "fp8_e4m3";
  static constexpr std::uint32_t id = 0x20;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<fp8_e5m2> : minifloat_traits<5, 2, nonfinite::ieee> {
  static constexpr std::string_view name = "fp8_e5m2";
  static constexpr std::uint32_t id = 0x21;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<fp4_e2m1> : minifloat_traits<2, 1, nonfinite::none> {
  static constexpr std::string_view name = "fp4_e2m1";
  static constexpr std::uint32_t id = 0x22;
  static constexpr std::uint32_t layout_version = 1;
};

QUANT_NAMESPACE_END
