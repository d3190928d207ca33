// quant/formats/integer.hpp: the integer formats int8, int4, int3 and int2.
//
// With a symmetric scheme a code is a signed two's-complement integer of `bits` bits,
// -2^(bits-1) .. 2^(bits-1)-1, and w = s * q. With an asymmetric scheme the code is unsigned,
// 0 .. 2^bits-1, with an integer zero point z per scale, and w = s * (q - z) (is_integer = true
// enables that). integer_traits<Bits> is public so a user can define, say, an int5 or int6 with
// one line plus a name and an id.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "../config.hpp"
#include "format_traits.hpp"

QUANT_NAMESPACE_BEGIN

/// Traits of a Bits-bit two's-complement integer format (2 <= Bits <= 8).
template <unsigned Bits>
struct integer_traits {
  static_assert(Bits >= 2 && Bits <= 8, "quant::integer_traits: Bits must be between 2 and 8");
  static constexpr unsigned bits = Bits;
  static constexpr bool is_integer = true;
  static constexpr int min_code_value = -(1 << (Bits - 1));  ///< -8 for int4
  static constexpr int max_code_value = (1 << (Bits - 1)) - 1;  ///< 7 for int4
  static constexpr std::uint8_t mask = static_cast<std::uint8_t>((1u << Bits) - 1u);

  /// Round to nearest, ties to even, and saturate to [min_code_value, max_code_value]; NaN gives 0.
  static std::uint8_t encode(float v) noexcept {
    float r = std::nearbyint(v);
    if (!(r == r)) r = 0.0f;
    r = r < static_cast<float>(min_code_value) ? static_cast<float>(min_code_value) : r;
    r = r > static_cast<float>(max_code_value) ? static_cast<float>(max_code_value) : r;
    return static_cast<std::uint8_t>(static_cast<unsigned>(static_cast<int>(r)) & mask);
  }
  /// Sign-extends the low Bits bits.
  static constexpr float decode(std::uint8_t code) noexcept {
    int v = code & mask;
    if (v > max_code_value) v -= (1 << Bits);
    return static_cast<float>(v);
  }
};

struct int8 {};
struct int4 {};
struct int3 {};
struct int2 {};

template <>
struct format_traits<int8> : integer_traits<8> {
  static constexpr std::string_view name = "int8";
  static constexpr std::uint32_t id = 0x01;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<int4> : integer_traits<4> {
  static constexpr std::string_view name = "int4";
  static constexpr std::uint32_t id = 0x02;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<int3> : integer_traits<3> {
  static constexpr std::string_view name = "int3";
  static constexpr std::uint32_t id = 0x03;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct format_traits<int2> : integer_traits<2> {
  static constexpr std::string_view name = "int2";
  static constexpr std::uint32_t id = 0x04;
  static constexpr std::uint32_t layout_version = 1;
};

QUANT_NAMESPACE_END
