// quant/core/scalar_types.hpp: the storage types a tensor's scales can have, and their traits.
//
// A scale is computed in float and stored in one of four types, chosen by the granularity's
// Scale parameter:
//   float  32-bit IEEE binary32, stored as is.
//   fp16   IEEE binary16 (1-5-10), round to nearest-even.
//   bf16   bfloat16 (1-8-7, the top half of a binary32), round to nearest-even.
//   e8m0   the OCP MX shared scale: 8 exponent bits, no sign, no mantissa; value 2^(e - 127),
//          0xFF is NaN. With fp4_e2m1 and per_group<32> it makes MXFP4.
// scale_traits<S> is what the quantizer uses: encode a positive float to the nearest stored
// value (never to zero or infinity for a positive finite input, so a group never loses its
// scale), decode it back.
#pragma once

#include <bit>
#include <cstdint>
#include <limits>
#include <string_view>

#include "../config.hpp"

QUANT_NAMESPACE_BEGIN

/// IEEE 754 binary16. A plain 16-bit value type (trivially copyable, standard layout).
struct fp16 {
  std::uint16_t bits = 0;

  /// Round to nearest-even; overflow gives infinity, NaN stays NaN (quiet).
  static constexpr fp16 from_float(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00u)};  // NaN
    if (ax >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // >= 65520: Inf
    if (ax < 0x38800000u) {  // below 2^-14: a binary16 subnormal, m * 2^-24
      // Scaling by 2^24 is exact; rounding the integer part to even is the subnormal rounding.
      const float m = std::bit_cast<float>(ax) * 16777216.0f;
      auto mi = static_cast<std::uint32_t>(m);
      const float rem = m - static_cast<float>(mi);
      if (rem > 0.5f || (rem == 0.5f && (mi & 1u))) ++mi;  // mi == 1024 is the smallest normal
      return {static_cast<std::uint16_t>(sign | mi)};
    }
    const std::uint32_t mant = ax & 0x7fffffu;
    std::uint32_t h = (((ax >> 23) - 127u + 15u) << 10) | (mant >> 13);
    const std::uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return {static_cast<std::uint16_t>(sign | h)};
  }

  constexpr float to_float() const noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t e = (bits >> 10) & 0x1fu;
    const std::uint32_t m = bits & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24
      const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
      return sign ? -v : v;
    }
    if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
    return std::bit_cast<float>(sign | ((e - 15u + 127u) << 23) | (m << 13));
  }
  friend constexpr bool operator==(fp16, fp16) noexcept = default;
};

/// bfloat16: the upper 16 bits of a binary32.
struct bf16 {
  std::uint16_t bits = 0;

  /// Round to nearest-even; overflow gives infinity, NaN stays NaN (quiet).
  static constexpr bf16 from_float(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((x >> 16) | 0x40u)};
    return {static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
  }
  constexpr float to_float() const noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  friend constexpr bool operator==(bf16, bf16) noexcept = default;
};

/// OCP MX E8M0 scale: value 2^(bits - 127); bits == 0xFF is NaN. No zero, no sign.
struct e8m0 {
  std::uint8_t bits = 127;  // 1.0

  static constexpr int bias = 127;
  static constexpr int min_exponent = -127;  // bits 0x00
  static constexpr int max_exponent = 127;   // bits 0xFE

  /// The scale 2^e, with e clamped to [-127, 127].
  static constexpr e8m0 from_exponent(int e) noexcept {
    e = e < min_exponent ? min_exponent : (e > max_exponent ? max_exponent : e);
    return {static_cast<std::uint8_t>(e + bias)};
  }
  /// The power of two nearest to f in value (a tie, f = 1.5 * 2^k, goes up), clamped to the
  /// representable range; zero and negatives give 2^-127, NaN gives NaN.
  static constexpr e8m0 from_float(float f) noexcept {
    if (f != f) return {0xFF};
    if (!(f > 0.0f)) return from_exponent(min_exponent);
    if (f == std::numeric_limits<float>::infinity()) return from_exponent(max_exponent);
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x >> 23) == 0) return from_exponent(x >= 0x00600000u ? -126 : -127);  // binary32 subnormal
    const int e = static_cast<int>(x >> 23) - 127;
    return from_exponent((x & 0x7fffffu) >= 0x400000u ? e + 1 : e);  // mantissa >= 1.5 rounds up
  }
  constexpr int exponent() const noexcept { return static_cast<int>(bits) - bias; }
  constexpr float to_float() const noexcept {
    if (bits == 0xFF) return std::numeric_limits<float>::quiet_NaN();
    // 2^(bits-127) in binary32: bits >= 1 is a normal with that biased exponent; bits == 0 is
    // the subnormal 2^-127.
    return bits == 0 ? std::bit_cast<float>(0x00400000u) : std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 23);
  }
  friend constexpr bool operator==(e8m0, e8m0) noexcept = default;
};

/// Traits of a scale storage type S: float, fp16, bf16 or e8m0.
template <class S>
struct scale_traits;

namespace detail {
template <class S, class Self>
struct narrow_scale_traits {
  /// Nearest stored value to a non-negative scale; zero stays zero, a positive value never
  /// becomes zero or infinity (it is clamped to the smallest / largest finite positive value).
  static constexpr S encode(float v) noexcept {
    if (v == 0.0f) return S{};
    float c = v < Self::min_positive ? Self::min_positive : v;
    c = c > Self::max_finite ? Self::max_finite : c;
    return S::from_float(c);
  }
  static constexpr float decode(S s) noexcept { return s.to_float(); }
};
}  // namespace detail

template <>
struct scale_traits<float> {
  static constexpr std::string_view name = "f32";
  static constexpr bool power_of_two = false;
  static constexpr float encode(float v) noexcept { return v; }
  static constexpr float decode(float s) noexcept { return s; }
};
template <>
struct scale_traits<fp16> : detail::narrow_scale_traits<fp16, scale_traits<fp16>> {
  static constexpr std::string_view name = "f16";
  static constexpr bool power_of_two = false;
  static constexpr float min_positive = 5.9604644775390625e-8f;  // 2^-24
  static constexpr float max_finite = 65504.0f;
};
template <>
struct scale_traits<bf16> : detail::narrow_scale_traits<bf16, scale_traits<bf16>> {
  static constexpr std::string_view name = "bf16";
  static constexpr bool power_of_two = false;
  static constexpr float min_positive = 9.18354961579912115600575419705e-41f;  // 2^-133
  static constexpr float max_finite = 3.38953138925153547590470800371e38f;    // 0x7F7F
};
template <>
struct scale_traits<e8m0> {
  static constexpr std::string_view name = "e8m0";
  static constexpr bool power_of_two = true;
  /// Nearest power of two (see e8m0::from_float); zero gives the smallest scale, 2^-127.
  static constexpr e8m0 encode(float v) noexcept { return e8m0::from_float(v); }
  static constexpr float decode(e8m0 s) noexcept { return s.to_float(); }
};

/// True for the four scale storage types.
template <class S>
inline constexpr bool is_scale_type_v = requires { scale_traits<S>::power_of_two; };

QUANT_NAMESPACE_END
